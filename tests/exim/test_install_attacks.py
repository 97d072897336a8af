"""``eximauthd exim install`` / ``uninstall`` against a tree someone prepared: it runs as root,
so a symlink or a backup planted in the tree must never make it write outside the tree, put back
content it did not save, or read a file it was pointed at.

Refusals happen while the tree is read, before any write and before Exim is run, so these use a
small tree of their own (Debian's settings file and the conf.d directories) and need no Exim.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from eximauthd.exim.install import shipped_files

from .. import eximkit
from .test_install import _copy, _require_debian_exim

DROP_IN = "conf.d/main/000_eximauthd"


def _tree(tmp_path: Path) -> Path:
    etc = tmp_path / "etc-exim4"
    for sub in ("main", "acl", "auth", "router", "transport", "retry", "rewrite"):
        (etc / "conf.d" / sub).mkdir(parents=True)
    (etc / "update-exim4.conf.conf").write_text("dc_use_split_config='true'\n")
    return etc


def _state(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under *root*: a symlink's target or a file's hash, and its mode (lstat)."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        what = (f"-> {os.readlink(path)}" if path.is_symlink() else
                hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir")
        state[str(path.relative_to(root))] = (what, info.st_mode)
    return state


def _run(command: str, etc: Path) -> tuple[int, str]:
    run = eximkit.eximauthd_cli("exim", command, "--layout", "debian-split", "--etc", str(etc))
    return run.returncode, run.stderr


# Each case plants one symlink in the tree; "outside" is a file (or a name) out of the tree.
SYMLINKS = {
    # The drop-in itself points at a file outside: reading it would copy that file into a backup.
    "drop-in-to-a-file": (DROP_IN, True),
    # A dangling backup symlink: the backup copy would create the file it names, as root.
    "dangling-backup": (DROP_IN + ".eximauthd-bak", False),
    # A backup pointing at a file: uninstall would move the link into the drop-in's place.
    "backup-to-a-file": (DROP_IN + ".eximauthd-bak", True),
}


@pytest.mark.parametrize("command", ["install", "uninstall"])
@pytest.mark.parametrize("case", sorted(SYMLINKS))
def test_a_symlink_in_the_tree_is_refused_and_nothing_is_written(
        tmp_path: Path, command: str, case: str) -> None:
    etc = _tree(tmp_path)
    link, outside_exists = SYMLINKS[case]
    outside = tmp_path / "outside" / "shadow"
    outside.parent.mkdir()
    if outside_exists:
        outside.write_bytes(b"root:$6$secret-hash:19000:0:99999:7:::\n")
        outside.chmod(0o640)
    if link.endswith(".eximauthd-bak"):
        # The drop-in exists and differs from the shipped one, so install would back it up.
        (etc / DROP_IN).write_bytes(b"# the admin's own main options\n")
    (etc / link).symlink_to(outside)
    before, outside_before = _state(etc), _state(outside.parent)
    code, stderr = _run(command, etc)
    assert code == 4, stderr
    assert stderr == (f"eximauthd: error: {etc / link}: is a symlink (eximauthd writes only "
                      "regular files: remove it, or replace it by the file itself)\n")
    assert _state(etc) == before
    assert _state(outside.parent) == outside_before
    assert b"secret-hash" not in b"".join(p.read_bytes() for p in etc.rglob("*")
                                         if p.is_file() and not p.is_symlink())


@pytest.mark.parametrize("command", ["install", "uninstall"])
@pytest.mark.parametrize("mode", [0o666, 0o620])
def test_a_file_others_may_write_is_refused(tmp_path: Path, command: str, mode: int) -> None:
    """A backup another user could have written is not put back, nor a drop-in of that kind
    taken over: what uninstall restores must be what install saved."""
    etc = _tree(tmp_path)
    shipped = shipped_files()[f"debian/{DROP_IN}"]
    (etc / DROP_IN).write_bytes(shipped)
    planted = etc / (DROP_IN + ".eximauthd-bak")
    planted.write_bytes(b"daemon_smtp_ports = 25\nopen_relay_anyway = yes\n")
    planted.chmod(mode)
    before = _state(etc)
    code, stderr = _run(command, etc)
    assert code == 4, stderr
    assert stderr == (f"eximauthd: error: {planted}: writable by other users than its owner "
                      f"(mode {mode:04o}; chmod go-w {planted}, after checking its content)\n")
    assert _state(etc) == before


def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    """In a directory anyone may write, what was read could be swapped before it is written."""
    etc = _tree(tmp_path)
    where = etc / "conf.d" / "main"
    where.chmod(0o777)
    before = _state(etc)
    code, stderr = _run("install", etc)
    assert code == 4, stderr
    assert stderr == (f"eximauthd: error: {where}: writable by other users than its owner "
                      f"(mode 0777; chmod go-w {where}, after checking its content)\n")
    assert _state(etc) == before


@pytest.mark.exim
def test_exims_complaint_reaches_the_terminal_without_its_escape_sequences(
        tmp_path: Path) -> None:
    """A site file quoted back by Exim may carry terminal escapes: the error line has none,
    and the install is rolled back."""
    _require_debian_exim()
    etc = _copy(tmp_path, split=True)
    (etc / "conf.d/main/00_site").write_bytes(b".include /nonexistent-\x1b]0;owned\x07\x1b[2J\n")
    before = _state(etc)
    code, stderr = _run("install", etc)
    assert code == 5, stderr
    assert stderr.startswith("eximauthd: error: exim4 -bV refuses the configuration"), stderr
    assert "/nonexistent-?]0;owned??[2J" in stderr
    assert stderr.count("\n") == 1
    assert _state(etc) == before


def test_a_tree_whose_path_holds_a_newline_is_refused(tmp_path: Path) -> None:
    """The monolithic layout writes the tree's path into the template and localmacros: a
    newline in it would add a line of the attacker's choosing to Exim's configuration."""
    etc = tmp_path / "exim4\nspool_directory = attacker"
    etc.mkdir()
    (etc / "update-exim4.conf.conf").write_text("dc_use_split_config='false'\n")
    (etc / "exim4.conf.template").write_bytes(b"begin acl\n\nbegin authenticators\n\n")
    before = _state(etc)
    run = eximkit.eximauthd_cli("exim", "install", "--layout", "debian-monolithic", "--etc",
                                str(etc))
    assert run.returncode == 4, run.stderr
    assert run.stderr == (f"eximauthd: error: --etc {str(etc)!r}: holds a control character "
                          "(rename the directory)\n")
    assert _state(etc) == before
