"""The Unix socket Exim asks on: a stale one replaced, a live one or another file left alone."""

from __future__ import annotations

import asyncio
import errno
import grp
import os
import socket
import stat
from collections.abc import Callable

from ..errors import ConfigError

__all__ = ["BACKLOG", "bind_unix_socket", "open_listeners", "prepare_socket_path"]

# A burst of Exim processes connects at once; a short backlog turns the burst into refused
# connections, which Exim reports as temporary failures.  The kernel caps it at somaxconn.
BACKLOG = 1024


def prepare_socket_path(path: str, key: str = "socket") -> None:
    """Remove a stale socket at *path*; refuse to steal a live one or replace another file.

    :raises ConfigError: another process answers on *path*, or *path* is not a socket.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{key}.path: {path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: a leftover from a killed process
        return
    except OSError as exc:
        if exc.errno not in {errno.ECONNREFUSED, errno.ENOENT}:
            raise ConfigError(f"{key}.path: cannot probe {path}: {exc.strerror}") from None
        os.unlink(path)
        return
    finally:
        probe.close()
    raise ConfigError(f"{key}.path: another process is serving {path}; not stealing it")


def bind_unix_socket(path: str, mode: int, group: str, key: str = "socket") -> socket.socket:
    """Listen on *path* with *mode* and *group*, replacing only a stale socket there.

    *key* names the configuration section in error messages.
    """
    prepare_socket_path(path, key)
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"{key}.group: no such group {group!r}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bind under a umask that leaves the owner alone, then widen to the configured mode: the
    # socket is never reachable by others, not even between bind() and chmod().
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"socket.path: cannot create {path}: {exc.strerror} (create its "
                          "directory, writable by eximauthd's user, or set socket.path)") from None
    finally:
        os.umask(old_umask)
    if gid != -1:
        os.chown(path, -1, gid)
    os.chmod(path, mode)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def open_listeners(factory: Callable[[], asyncio.Protocol], *, path: str, mode: str,
                         group: str, listen: str, key: str) -> list[asyncio.AbstractServer]:
    """A front end's listeners: its Unix socket (as :func:`bind_unix_socket` makes it) and,
    when *listen* is set, its loopback TCP address (``HOST:PORT``, validated by the config).

    :raises ConfigError: the socket or the TCP address cannot be used (``KEY.path``,
        ``KEY.listen`` named).
    """
    loop = asyncio.get_running_loop()
    sock = bind_unix_socket(path, int(mode, 8), group, key=key)
    servers: list[asyncio.AbstractServer] = [
        await loop.create_unix_server(factory, sock=sock, backlog=BACKLOG)]
    if listen:
        host, _, port = listen.rpartition(":")
        try:
            servers.append(await loop.create_server(factory, host.strip("[]"), int(port),
                                                    backlog=BACKLOG, reuse_address=True))
        except OSError as exc:
            for server in servers:
                server.close()
            raise ConfigError(f"{key}.listen: could not listen on {listen}: "
                              f"{exc.strerror}") from None
    return servers
