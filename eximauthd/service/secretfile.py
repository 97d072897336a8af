"""The HTTP API's bearer token file: read it, or create it the first time, readable by us only.

A token file is trusted only if nobody but the service user could have read or replaced it: a
regular file (not a symlink, not a FIFO), owned by the effective user, with no group or other
permission bits.  A new one is written to a temporary name created ``O_EXCL`` with mode 0600 and
linked into place, so no other user ever sees it and no reader ever sees it half written.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass, field

from ..errors import ConfigError

__all__ = ["MAX_TOKEN_BYTES", "MIN_TOKEN_CHARS", "LoadedToken", "check_token", "load_or_create"]

MIN_TOKEN_CHARS = 16
MAX_TOKEN_BYTES = 1024
# RFC 6750 b64token and then some: visible ASCII, no space.  Anything else could never be sent
# in an Authorization header, so a file holding it is a mistake to report, not a token.
_VISIBLE = frozenset(range(0x21, 0x7F))


@dataclass(frozen=True, slots=True)
class LoadedToken:
    """A token and where it came from (``created``: this start wrote the file)."""

    value: str = field(repr=False)
    path: str
    created: bool

    def __repr__(self) -> str:
        return f"LoadedToken(value='***', path={self.path!r}, created={self.created})"


def check_token(raw: bytes, where: str) -> str:
    """*raw* without one trailing newline, if it is a usable token.  Pure.

    :raises ConfigError: empty, shorter than 16 characters, too long, or not visible ASCII.
    """
    if raw.endswith(b"\r\n"):
        raw = raw[:-2]
    elif raw.endswith(b"\n"):
        raw = raw[:-1]
    if not raw:
        raise ConfigError(f"{where}: is empty")
    if len(raw) > MAX_TOKEN_BYTES:
        raise ConfigError(f"{where}: holds more than {MAX_TOKEN_BYTES} bytes")
    if not set(raw) <= _VISIBLE:
        raise ConfigError(f"{where}: the token must be printable ASCII without spaces or "
                          f"line breaks")
    if len(raw) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{where}: the token must be at least {MIN_TOKEN_CHARS} characters")
    return raw.decode("ascii")


def load_or_create(path: str, key: str = "http.token_file") -> LoadedToken:
    """The token in *path*; a new random one written there (mode 0600) if *path* is absent.

    :raises ConfigError: *path* is a symlink, not a regular file, owned by another user,
        accessible to group or others, unreadable, or holds no usable token; or it cannot be
        created.  The message names *key* and *path*, never the token.
    """
    try:
        return LoadedToken(_read(path, key), path, created=False)
    except FileNotFoundError:
        pass
    created = _create(path, key)
    # Another process may have won the race to create it: read whatever is there now, with
    # the same checks.
    try:
        return LoadedToken(_read(path, key), path, created=created)
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path} vanished while being created") from None


def _read(path: str, key: str) -> str:
    where = f"{key}: {path}"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{where}: is a symlink; point {key} at the file itself")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{where}: is not a regular file")
    # O_NOFOLLOW and O_NONBLOCK: a symlink or FIFO swapped in after lstat() fails instead of
    # being followed or blocking start-up; the checks below are made on what was opened.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        _check_owner_and_mode(info, where)
        raw = os.read(fd, MAX_TOKEN_BYTES + 3)
    finally:
        os.close(fd)
    return check_token(raw, where)


def _check_owner_and_mode(info: os.stat_result, where: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{where}: is not a regular file")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"{where}: is owned by uid {info.st_uid}, not by the service user "
                          f"(uid {os.geteuid()})")
    if info.st_mode & 0o077:
        raise ConfigError(f"{where}: is accessible to group or others (mode "
                          f"{stat.S_IMODE(info.st_mode):04o}); chmod 600 it")


def _create(path: str, key: str) -> bool:
    """Write a new token to *path* unless something is there already; True if we wrote it."""
    directory = os.path.dirname(path) or "."
    token = secrets.token_urlsafe(32).encode("ascii") + b"\n"
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(8)}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        # Mode 0600 at creation (the umask can only narrow it): never readable by others.
        fd = os.open(temporary, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"{key}: cannot create {path}: {exc.strerror}") from None
    try:
        try:
            os.write(fd, token)
            os.fsync(fd)
        finally:
            os.close(fd)
        # link() never replaces an existing file: the first of two racing starts wins and
        # both then read the same token.
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        except OSError as exc:
            raise ConfigError(f"{key}: cannot create {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
    return True
