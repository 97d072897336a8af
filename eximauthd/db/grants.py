"""Send-as grants: which user may send with which envelope sender (``eximauthd_grants``).

As for accounts (:mod:`eximauthd.db.accounts`), who a row is for is decided in Python by
:func:`~eximauthd.core.addresses.stored_address`, never by the database's collation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..core.addresses import stored_address
from ..errors import StorageError, UserExistsError
from . import tables
from .engine import Database, is_duplicate
from .prepared import Prepared

__all__ = ["Grant", "GrantStore"]


@dataclass(frozen=True, slots=True)
class Grant:
    """``user`` may send with envelope sender ``sender`` (an address or ``@domain``)."""

    user: str
    sender: str


class GrantStore:
    """Send-as grants in ``eximauthd_grants``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._t = tables.grants
        t = self._t
        # A RELAY from a sender other than the login's own asks this on every recipient.
        self._of_user = Prepared(sa.select(t.c.user_address, t.c.sender)
                                 .where(t.c.user_address == sa.bindparam("user"))
                                 .order_by(t.c.user_address, t.c.sender))

    def add(self, grant: Grant) -> bool:
        """Record *grant* (canonical, as :mod:`eximauthd.cli.grants` builds it); False when it
        already existed."""
        try:
            with self.db.write("add grant") as conn:
                conn.execute(sa.insert(self._t).values(user_address=grant.user,
                                                      sender=grant.sender))
        except StorageError as exc:
            if not is_duplicate(exc):
                raise
            with self.db.write("add grant") as conn:
                if self._exact_ids(conn, grant):
                    return False
            # Only a look-alike is there (a table still in a caseless collation).
            raise UserExistsError(f"cannot add the grant {grant.user} -> {grant.sender}: a "
                                  "grant the database's collation calls equal exists; run "
                                  "`eximauthd db upgrade`") from None
        return True

    def remove(self, grant: Grant) -> bool:
        """Delete *grant*, byte for byte (never a look-alike); False when there was none."""
        t = self._t
        with self.db.write("remove grant") as conn:
            ids = self._exact_ids(conn, grant)
            if not ids:
                return False
            return conn.execute(sa.delete(t).where(t.c.id.in_(ids))).rowcount > 0

    def _exact_ids(self, conn: Connection, grant: Grant) -> list[int]:
        t = self._t
        rows = conn.execute(sa.select(t.c.id, t.c.user_address, t.c.sender).where(
            t.c.user_address == grant.user, t.c.sender == grant.sender)).all()
        want = (stored_address(grant.user), _grant_sender(grant.sender))
        return [int(r.id) for r in rows
                if want[0] is not None and want[1] is not None
                and (stored_address(r.user_address), _grant_sender(r.sender)) == want]

    def list(self, user: str | None = None, *, primary: bool = False) -> list[Grant]:
        """Every grant, or the grants of *user*: only rows whose user is that very account
        under :func:`stored_address`, never a row the collation calls equal.  *primary*: read
        *user*'s grants from the primary even when a replica serves reads."""
        if user is None:
            t = self._t
            query = sa.select(t.c.user_address, t.c.sender).order_by(t.c.user_address,
                                                                     t.c.sender)
            return [Grant(r.user_address, r.sender)
                    for r in self.db.run("list grants", lambda conn: conn.execute(query).all())]
        owner = stored_address(user)
        if owner is None:
            return []
        values = {"user": str(owner)}
        rows: list[Any] = self.db.run(
            "list grants", lambda conn: list(self._of_user.execute(conn, values)),
            primary=primary)
        return [Grant(str(owner), row[1]) for row in rows if stored_address(row[0]) == owner]


def _grant_sender(sender: str) -> str | None:
    """The canonical form of a stored grant's sender (``local@domain`` or ``@domain``)."""
    if sender.startswith("@"):
        domain = stored_address("postmaster" + sender)
        return None if domain is None else "@" + domain.domain
    address = stored_address(sender)
    return None if address is None else str(address)
