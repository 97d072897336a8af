"""The HTTP token file: created private and atomically, refused when anyone else could read it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from eximauthd.errors import ConfigError
from eximauthd.service.server import secretfile

from ..support import FAST_HASHING_ENV

GOOD = "k" * 24


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Run with umask 0, so only the mode given at creation protects a new file."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_missing_file_is_created_0600_even_with_umask_0(tmp_path: Path, no_umask: None) -> None:
    """A new token file is mode 0600 from creation, holds a long token, and leaves no temp
    file behind."""
    path = tmp_path / "http.token"
    loaded = secretfile.load_or_create(str(path))
    assert loaded.created
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == loaded.value + "\n"
    assert len(loaded.value) >= 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["http.token"]
    again = secretfile.load_or_create(str(path))
    assert (again.value, again.created) == (loaded.value, False)


def test_racing_starts_agree_on_one_token(tmp_path: Path) -> None:
    """Several starts creating the file at once all end up with the same token."""
    path = str(tmp_path / "http.token")
    results: list[secretfile.LoadedToken] = []
    threads = [threading.Thread(target=lambda: results.append(secretfile.load_or_create(path)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.value for r in results}) == 1
    assert sum(r.created for r in results) == 1


@pytest.mark.parametrize(("data", "expected"), [
    (GOOD.encode() + b"\n", GOOD), (GOOD.encode() + b"\r\n", GOOD), (GOOD.encode(), GOOD),
])
def test_one_trailing_newline_is_stripped(tmp_path: Path, data: bytes, expected: str) -> None:
    """`echo TOKEN > file` works: one trailing newline is not part of the token."""
    path = _write(tmp_path / "t", data)
    assert secretfile.load_or_create(str(path)).value == expected


@pytest.mark.parametrize(("data", "message"), [
    (b"", "is empty"), (b"\n", "is empty"), (b"short\n", "at least 16"),
    (GOOD.encode() + b"\n\n", "printable ASCII"), (b"two words " + GOOD.encode(), "printable"),
    ("k\u00e9y".encode() * 8, "printable"), (b"k" * 2000, "more than"),
])
def test_unusable_contents_are_refused(tmp_path: Path, data: bytes, message: str) -> None:
    """An empty, short, too long or non-ASCII token file is refused."""
    path = _write(tmp_path / "t", data)
    with pytest.raises(ConfigError, match=message) as info:
        secretfile.load_or_create(str(path))
    assert str(info.value).startswith(f"http.token_file: {path}: ")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o666, 0o610])
def test_group_or_world_access_is_refused(tmp_path: Path, mode: int) -> None:
    """A token file others could read or replace is refused, and its token not echoed."""
    path = _write(tmp_path / "t", GOOD.encode(), mode)
    with pytest.raises(ConfigError, match="accessible to group or others") as info:
        secretfile.load_or_create(str(path))
    assert GOOD not in str(info.value)


def test_symlink_is_refused(tmp_path: Path) -> None:
    """A symlink is refused even to a good private file."""
    target = _write(tmp_path / "real", GOOD.encode())
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="is a symlink"):
        secretfile.load_or_create(str(link))
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="is a symlink"):
        secretfile.load_or_create(str(dangling))
    assert not (tmp_path / "nowhere").exists()  # nothing created through the link


def test_directory_and_fifo_are_refused(tmp_path: Path) -> None:
    """A directory or a FIFO is not a token file (and a FIFO does not hang the start)."""
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        secretfile.load_or_create(str(tmp_path / "dir"))
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(ConfigError, match="not a regular file"):
        secretfile.load_or_create(str(tmp_path / "fifo"))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file away")
def test_a_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    """A private file that belongs to another user is not the service's token."""
    path = _write(tmp_path / "t", GOOD.encode())
    os.chown(path, 65534, -1)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        secretfile.load_or_create(str(path))


def test_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    """A token file in a directory that does not exist is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"^http.token_file: cannot create .*No such file"):
        secretfile.load_or_create(str(tmp_path / "no" / "t"))


def test_loaded_token_repr_hides_the_value(tmp_path: Path) -> None:
    """The token never shows in a repr."""
    loaded = secretfile.load_or_create(str(_write(tmp_path / "t", GOOD.encode())))
    assert GOOD not in repr(loaded)


def test_serve_refuses_a_readable_token_file_in_one_line(sqlite_url: str, tmp_path: Path) -> None:
    """`eximauthd serve` with a group-readable token file exits 2 with one error line and
    binds nothing."""
    token = _write(tmp_path / "http.token", GOOD.encode(), 0o640)
    sock = tmp_path / "s.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env |= FAST_HASHING_ENV | {"EXIMAUTHD_DATABASE_URL": sqlite_url,
                               "EXIMAUTHD_SOCKET_PATH": str(sock),
                               "EXIMAUTHD_HTTP_TOKEN_FILE": str(token)}
    run = subprocess.run([sys.executable, "-m", "eximauthd", "serve"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"eximauthd: error: http.token_file: {token}: is accessible to group or others "
        "(mode 0640); chmod 600 it"]
    assert not sock.exists()
    assert GOOD not in run.stderr + run.stdout
