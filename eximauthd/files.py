"""Files that hold secrets: created private, and a warning when others can read them.

The SQLite database holds every password hash; SQLite creates its ``-wal`` and ``-shm`` files
with the main file's permissions (checked with SQLite 3.40: a 0600 database gets 0600
companions whatever the umask).  So the main file is created 0600 here, before SQLite opens it,
with ``os.open`` rather than a umask change: the umask is per process and the service has
threads.

An existing file is never chmod-ed behind the admin's back (a group may have been given access
on purpose); a file that *others* can read gets one warning with the path and the fix.
"""

from __future__ import annotations

import logging
import os
import stat
import threading

from .errors import StorageError

__all__ = ["create_private", "readable_by_others", "warn_if_readable_by_others"]

_log = logging.getLogger("eximauthd.files")
_warned: set[str] = set()
_warned_lock = threading.Lock()


def readable_by_others(mode: int) -> bool:
    """True when *mode* lets users outside the owner and group read the file.  Pure."""
    return bool(mode & stat.S_IROTH)


def create_private(path: str) -> None:
    """Create *path* empty with mode 0600 unless it exists; warn if others can read it.

    :raises StorageError: the file can neither be opened nor created (a missing directory, no
        permission): SQLite would fail on it too, with a vaguer message.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot open or create the SQLite file {path}: "
                           f"{exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if readable_by_others(mode):
        _warn_once(path, mode, "the SQLite database (every password hash)",
                   f"chmod 600 {path} {path}-wal {path}-shm")


def warn_if_readable_by_others(path: str, what: str) -> None:
    """Log one warning if *path* (holding *what*) is readable by others; silent otherwise."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # whoever reads the file reports that
    if readable_by_others(mode):
        _warn_once(path, mode, what, f"chmod o-rwx {path}")


def _warn_once(path: str, mode: int, what: str, fix: str) -> None:
    key = os.path.abspath(path)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    _log.warning("%s holds %s and is readable by every local user (mode %04o): %s",
                 path, what, stat.S_IMODE(mode), fix)
