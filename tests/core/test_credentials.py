"""AUTH credentials read at the edge: every refusal that needs no lookup, in its order, and the
typed credentials every later layer takes."""

from __future__ import annotations

import pytest

from eximauthd.core.addresses import Address
from eximauthd.core.clients import read_client
from eximauthd.core.credentials import MAX_PASSWORD_BYTES, Credentials, read_credentials
from eximauthd.core.decision import Decision, Reason

PASSWORD = "correct horse"
ALICE = "alice@example.test"
CLIENT = read_client("192.0.2.1", 32, 64)


def test_the_password_limit_is_1024_bytes_not_characters() -> None:
    """1024 UTF-8 bytes are read; one byte more is refused before any lookup."""
    assert MAX_PASSWORD_BYTES == 1024
    assert isinstance(read_credentials(ALICE, "é" * 512, CLIENT), Credentials)
    assert isinstance(read_credentials(ALICE, "x" * 1024, CLIENT), Credentials)
    assert read_credentials(ALICE, "é" * 512 + "x", CLIENT) == Decision.no(
        Reason.PASSWORD_TOO_LONG)
    assert read_credentials(ALICE, "x" * 1025, CLIENT) == Decision.no(Reason.PASSWORD_TOO_LONG)


@pytest.mark.parametrize(("username", "password", "reason"), [
    ("", PASSWORD, "empty-username"),
    ("", "", "empty-username"),
    (ALICE, "", "empty-password"),
    ("alice", "", "empty-password"),
    ("alice", PASSWORD, "malformed-username"),
    ("alice", "x" * 1025, "password-too-long"),
    (ALICE, "\udcff", "malformed-password"),
    ("alice", "\udcff", "malformed-username"),
    (ALICE, "x" * 1025, "password-too-long"),
])
def test_refusals_before_the_lookup_are_no_and_come_in_order(
        username: str, password: str, reason: str) -> None:
    """Reading needs no database: the empty password of the classic attack is refused even
    when it is down; with several faults the first rule that applies names the refusal."""
    assert read_credentials(username, password, CLIENT) == Decision.no(Reason(reason))


def test_the_credentials_carry_the_canonical_address_and_the_client() -> None:
    """What passes is typed: the lower-cased address, the password as sent, the client."""
    read = read_credentials("Alice@EXAMPLE.test", PASSWORD, CLIENT)
    assert isinstance(read, Credentials)
    assert (read.address, read.user, read.password, read.client) == (
        Address("alice", "example.test"), ALICE, PASSWORD, CLIENT)


def test_the_repr_of_credentials_never_shows_the_password() -> None:
    """Credentials end up in tracebacks and debug lines: the password must not."""
    read = read_credentials(ALICE, "hunter2-secret", CLIENT)
    assert "hunter2-secret" not in repr(read)
    assert ALICE.split("@", maxsplit=1)[0] in repr(read)
