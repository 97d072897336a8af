"""``eximauthd exim install`` / ``uninstall``: wire the shipped snippets into Debian's Exim.

The plan is pure: :func:`plan_install` and :func:`plan_uninstall` compute the file actions from
the layout, the shipped snippets and the current content of every file involved (a mapping
path -> bytes, ``None`` for a missing file).  :func:`read_tree` gathers that mapping and
:func:`apply_plan` writes the result, backing up and rolling back; :func:`check_config` runs
``update-exim4.conf`` and ``exim -bV`` on the result.  The command glues them together.

Backups: a file that exists and is changed is first copied to ``<file>.eximauthd-bak``.  An
existing backup is never overwritten: it holds the file as it was before eximauthd first
changed it, which is what ``uninstall`` puts back.  The suffix has a dot, so
``update-exim4.conf`` ignores a backup left in ``conf.d`` (it reads ``[[:alnum:]_-]+`` names).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..errors import EximauthdError

__all__ = [
    "BACKUP_SUFFIX",
    "DEFAULT_ETC",
    "SNIPPETS_DIR",
    "Action",
    "Auth",
    "CheckFailedError",
    "FileAction",
    "HostMismatchError",
    "Layout",
    "Plan",
    "apply_plan",
    "check_config",
    "check_host",
    "include_lines",
    "plan_install",
    "plan_uninstall",
    "read_tree",
    "require_tools",
    "shipped_files",
    "unapply",
]

SNIPPETS_DIR = Path(__file__).resolve().parent.parent / "share" / "exim-snippets"
DEFAULT_ETC = Path("/etc/exim4")
BACKUP_SUFFIX = ".eximauthd-bak"

_SPLIT_FILES = ("conf.d/main/000_eximauthd", "conf.d/acl/35_eximauthd_rcpt",
                "conf.d/auth/20_eximauthd")
_TEMPLATE = "exim4.conf.template"
_LOCALMACROS = "exim4.conf.localmacros"
_MONO_AUTH = "eximauthd-auth.conf"
_MONO_ACL = "eximauthd-rcpt-acl"
_SETTINGS = "update-exim4.conf.conf"


class HostMismatchError(EximauthdError):
    """The host does not fit the layout (no Exim tree, other layout, unwritable): unchanged."""


class CheckFailedError(EximauthdError):
    """update-exim4.conf or exim -bV refused the result; every file was put back."""


class Layout(Enum):
    DEBIAN_SPLIT = "debian-split"
    DEBIAN_MONOLITHIC = "debian-monolithic"
    INCLUDE = "include"


class Auth(Enum):
    """How Exim asks eximauthd for AUTH: ``${readsocket}`` or its own ``dovecot`` driver."""

    READSOCKET = "readsocket"
    DOVECOT = "dovecot"


class Action(Enum):
    CREATE = "created"
    REPLACE = "replaced"
    SWITCH = "switched"
    UNCHANGED = "unchanged"
    RESTORE = "restored"
    REMOVE = "removed"
    STRIP = "took eximauthd's lines out of"
    ABSENT = "absent"
    KEEP = "kept"


@dataclass(frozen=True)
class FileAction:
    """What happens to one file.  *content* is what it holds afterwards (None: removed);
    *backup* is the backup written (install) or put back and deleted (uninstall)."""

    path: Path
    action: Action
    content: bytes | None = None
    backup: Path | None = None

    def describe(self) -> str:
        if self.action is Action.REPLACE and self.backup is not None:
            return f"replaced {self.path} (backup: {self.backup})"
        if self.action is Action.REPLACE:
            return f"replaced {self.path} (backup kept from before: {self.path}{BACKUP_SUFFIX})"
        if self.action is Action.SWITCH:
            return (f"replaced {self.path} (eximauthd's other --auth variant: no backup, "
                    "uninstall removes it)")
        if self.action is Action.RESTORE:
            return f"restored {self.path} from {self.backup}"
        if self.action is Action.UNCHANGED:
            return f"unchanged {self.path} (already installed)"
        if self.action is Action.ABSENT:
            return f"absent {self.path} (not installed)"
        if self.action is Action.KEEP:
            return (f"kept {self.path} (not the file eximauthd installs: yours to remove by "
                    "hand)")
        return f"{self.action.value} {self.path}"


@dataclass(frozen=True)
class Plan:
    layout: Layout
    etc: Path
    actions: tuple[FileAction, ...]

    @property
    def changes(self) -> bool:
        return any(a.action not in _NO_CHANGE for a in self.actions)


_NO_CHANGE = (Action.UNCHANGED, Action.ABSENT, Action.KEEP)


# --- pure: what the files should hold --------------------------------------------------------

def _backup(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def shipped_files(snippets: Path = SNIPPETS_DIR) -> dict[str, bytes]:
    """The shipped snippets, by their path under the snippets directory."""
    return {str(p.relative_to(snippets)): p.read_bytes()
            for p in sorted(snippets.rglob("*")) if p.is_file()}


def _auth_include(etc: Path) -> bytes:
    # Same lines as debian/monolithic/exim4.conf.template.patch, with the tree's own path.
    return (b"# eximauthd: PLAIN and LOGIN checked by the eximauthd service "
            b"(eximauthd exim install).\n"
            b".include_if_exists " + str(etc / _MONO_AUTH).encode() + b"\n\n")


_AUTH_ANCHOR = b"\nbegin authenticators\n\n"


def _with_auth_include(template: bytes, etc: Path) -> bytes:
    lines = _auth_include(etc)
    if lines in template:
        return template
    if template.count(_AUTH_ANCHOR) != 1:
        raise HostMismatchError(
            f"{etc / _TEMPLATE}: no single `begin authenticators` line followed by a blank "
            "line (apply debian/monolithic/exim4.conf.template.patch by hand, docs/exim.md)")
    at = template.index(_AUTH_ANCHOR) + len(_AUTH_ANCHOR)
    return template[:at] + lines + template[at:]


def _localmacros_block(shipped: Mapping[str, bytes], etc: Path) -> bytes:
    block = shipped["debian/monolithic/exim4.conf.localmacros"]
    return block.replace(b"/etc/exim4/" + _MONO_ACL.encode(), str(etc / _MONO_ACL).encode())


def _with_block(current: bytes | None, block: bytes) -> bytes:
    if current is None or current == b"":
        return block
    if block in current:
        return current
    return current + (b"" if current.endswith(b"\n") else b"\n") + block


def _rcpt_acl(shipped: Mapping[str, bytes]) -> bytes:
    return shipped["debian/monolithic/eximauthd-rcpt-acl"]


_AUTH_SNIPPET = {Auth.READSOCKET: "debian/conf.d/auth/20_eximauthd",
                 Auth.DOVECOT: "debian/dovecot/conf.d/auth/20_eximauthd"}
_SPLIT_AUTH = "conf.d/auth/20_eximauthd"


def _auth_path(layout: Layout, etc: Path) -> Path:
    return etc / (_SPLIT_AUTH if layout is Layout.DEBIAN_SPLIT else _MONO_AUTH)


def _ours(layout: Layout, etc: Path, shipped: Mapping[str, bytes]) -> dict[Path, set[bytes]]:
    """eximauthd's own files: every content it may have installed there, whichever --auth.
    The drop-in of the split layout is used as is as the monolithic eximauthd-auth.conf: it
    brings its own macro defaults (.ifndef) and the template includes it where authenticators
    go, so one file per --auth serves both layouts."""
    if layout is Layout.INCLUDE:
        return {}
    if layout is Layout.DEBIAN_SPLIT:
        found = {etc / name: {shipped[f"debian/{name}"]} for name in _SPLIT_FILES}
    else:
        found = {etc / _MONO_ACL: {_rcpt_acl(shipped)}}
    found[_auth_path(layout, etc)] = {shipped[name] for name in _AUTH_SNIPPET.values()}
    return found


def _targets(layout: Layout, etc: Path, shipped: Mapping[str, bytes],
             auth: Auth = Auth.READSOCKET) -> dict[Path, Callable[[bytes | None], bytes]]:
    """Each file the layout touches, and its wanted content as a function of its current one."""
    def fixed(content: bytes) -> Callable[[bytes | None], bytes]:
        return lambda _current: content

    auth_file = shipped[_AUTH_SNIPPET[auth]]
    if layout is Layout.DEBIAN_SPLIT:
        return {etc / name: fixed(auth_file if name == _SPLIT_AUTH else shipped[f"debian/{name}"])
                for name in _SPLIT_FILES}
    if layout is Layout.DEBIAN_MONOLITHIC:
        block = _localmacros_block(shipped, etc)

        def template(current: bytes | None) -> bytes:
            if current is None:
                raise HostMismatchError(f"{etc / _TEMPLATE} is missing (is exim4-config "
                                        "installed? or use --layout debian-split)")
            return _with_auth_include(current, etc)

        return {
            etc / _MONO_AUTH: fixed(auth_file),
            etc / _MONO_ACL: fixed(_rcpt_acl(shipped)),
            etc / _LOCALMACROS: lambda current: _with_block(current, block),
            etc / _TEMPLATE: template,
        }
    return {}


def _paths(layout: Layout, etc: Path) -> list[Path]:
    if layout is Layout.DEBIAN_SPLIT:
        files = [etc / name for name in _SPLIT_FILES]
    elif layout is Layout.DEBIAN_MONOLITHIC:
        files = [etc / name for name in (_MONO_AUTH, _MONO_ACL, _LOCALMACROS, _TEMPLATE)]
    else:
        files = []
    return [*files, *(_backup(p) for p in files)]


def plan_install(layout: Layout, etc: Path, files: Mapping[Path, bytes | None],
                 shipped: Mapping[str, bytes], auth: Auth = Auth.READSOCKET) -> Plan:
    """The actions that install *layout* with *auth* into *etc*, given the current *files*.

    Installing over eximauthd's other *auth* variant replaces it without a backup: a backup
    holds the file as it was before eximauthd, and the variant is not that.  Pure.

    :raises HostMismatchError: the monolithic template cannot take the change.
    """
    ours = _ours(layout, etc, shipped)
    actions = []
    for path, wanted in _targets(layout, etc, shipped, auth).items():
        current = files.get(path)
        content = wanted(current)
        if current == content:
            actions.append(FileAction(path, Action.UNCHANGED, content))
        elif current is None:
            actions.append(FileAction(path, Action.CREATE, content))
        elif current in ours.get(path, ()) and files.get(_backup(path)) is None:
            actions.append(FileAction(path, Action.SWITCH, content))
        else:
            backup = _backup(path)
            actions.append(FileAction(path, Action.REPLACE, content,
                                      None if files.get(backup) is not None else backup))
    return Plan(layout, etc, tuple(actions))


def _without(current: bytes, part: bytes) -> bytes:
    return current.replace(part, b"", 1)


def plan_uninstall(layout: Layout, etc: Path, files: Mapping[Path, bytes | None],
                   shipped: Mapping[str, bytes]) -> Plan:
    """The actions that undo :func:`plan_install`: put backups back, remove what it created,
    and take eximauthd's lines out of a shared file that has no backup.  A file of eximauthd's
    name that holds something else than eximauthd installs (with either --auth) is kept (an
    edited or older copy is the admin's to remove).  Pure."""
    shared = {etc / _TEMPLATE: _auth_include(etc),
              etc / _LOCALMACROS: _localmacros_block(shipped, etc)}
    ours = _ours(layout, etc, shipped)
    actions = []
    for path in _targets(layout, etc, shipped):
        current, backup = files.get(path), _backup(path)
        saved = files.get(backup)
        if saved is not None:
            actions.append(FileAction(path, Action.RESTORE, saved, backup))
        elif current is None:
            actions.append(FileAction(path, Action.ABSENT))
        elif path in shared:
            content = _without(current, shared[path])
            if content == current:
                actions.append(FileAction(path, Action.ABSENT, current))
            elif content == b"" and path.name == _LOCALMACROS:
                actions.append(FileAction(path, Action.REMOVE))
            else:
                actions.append(FileAction(path, Action.STRIP, content))
        elif current in ours.get(path, ()):
            actions.append(FileAction(path, Action.REMOVE))
        else:
            actions.append(FileAction(path, Action.KEEP, current))
    return Plan(layout, etc, tuple(actions))


def include_lines(snippets: Path = SNIPPETS_DIR, auth: Auth = Auth.READSOCKET) -> str:
    """The lines a hand-written configuration includes (``--layout include``)."""
    auth_file = "eximauthd-dovecot-auth.conf" if auth is Auth.DOVECOT else "eximauthd-auth.conf"
    return (
        "# main section, before `begin acl`\n"
        f".include {snippets}/eximauthd-main.conf\n"
        "# first lines of the rcpt ACL (acl_smtp_rcpt)\n"
        f"  .include {snippets}/eximauthd-rcpt-acl.conf\n"
        "# after `begin authenticators`\n"
        f".include {snippets}/{auth_file}\n"
    )


def _split_setting(settings: str) -> str | None:
    found = re.search(r"^dc_use_split_config\s*=\s*['\"]?(\w*)['\"]?\s*$", settings, re.MULTILINE)
    return found.group(1) if found else None


def check_host(layout: Layout, etc: Path, settings: str | None) -> None:
    """Refuse a tree that is not Debian's, or whose split setting is the other layout.  Pure.

    :raises HostMismatchError: with the fix in the message.
    """
    if settings is None:
        raise HostMismatchError(f"{etc / _SETTINGS} not found: not Debian's exim4-config tree "
                                "(install exim4-config, pass --etc, or use --layout include)")
    split = _split_setting(settings)
    if layout is Layout.DEBIAN_SPLIT and split != "true":
        raise HostMismatchError(f"{etc} uses the monolithic template (dc_use_split_config="
                                f"'{split or 'false'}'): use --layout debian-monolithic")
    if layout is Layout.DEBIAN_MONOLITHIC and split == "true":
        raise HostMismatchError(f"{etc} uses the split configuration (dc_use_split_config="
                                "'true'): use --layout debian-split")


# --- I/O at the edge ----------------------------------------------------------------------------

def read_tree(layout: Layout, etc: Path) -> tuple[dict[Path, bytes | None], str | None]:
    """The current content of every file *layout* touches, and update-exim4.conf.conf's text.

    :raises HostMismatchError: *etc* is not a directory, or a file cannot be read.
    """
    if re.search(r"[\x00-\x1f\x7f]", str(etc)):
        # The path is written into Exim's files (.include lines): a newline would add a line.
        raise HostMismatchError(f"--etc {str(etc)!r}: holds a control character (rename the "
                                "directory)")
    try:
        is_dir = etc.is_dir()
    except OSError as exc:
        raise HostMismatchError(f"{etc}: cannot read: {exc.strerror} (run as root)") from None
    if not is_dir:
        raise HostMismatchError(f"{etc}: no such directory (is exim4 installed? or pass --etc)")
    files: dict[Path, bytes | None] = {}
    paths = _paths(layout, etc)
    for where in sorted({p.parent for p in paths}):
        try:
            _trusted(where)
        except FileNotFoundError:
            pass  # the write names it
        except OSError as exc:
            raise HostMismatchError(f"{where}: cannot read: {exc.strerror} (run as root)") from None
    for path in paths:
        try:
            _trusted(path)
            files[path] = path.read_bytes()
        except FileNotFoundError:
            files[path] = None
        except OSError as exc:
            raise HostMismatchError(f"{path}: cannot read: {exc.strerror} (run as root)") from None
    try:
        settings: str | None = (etc / _SETTINGS).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        settings = None
    except OSError as exc:
        raise HostMismatchError(f"{etc / _SETTINGS}: cannot read: {exc.strerror} "
                                "(run as root)") from None
    return files, settings


def _trusted(path: Path) -> None:
    """Refuse what would let another user steer a root run: a symlink (reading it copies its
    target into a backup or the generated configuration; writing a backup through a dangling
    one creates the file it names), or a file or directory others may write (a backup planted
    there would be "restored"; a file read there could be swapped before it is written).

    :raises FileNotFoundError: nothing is at *path*.
    :raises HostMismatchError: with the fix.
    """
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise HostMismatchError(f"{path}: is a symlink (eximauthd writes only regular files: "
                                "remove it, or replace it by the file itself)")
    if info.st_mode & 0o022:
        raise HostMismatchError(f"{path}: writable by other users than its owner (mode "
                                f"{stat.S_IMODE(info.st_mode):04o}; chmod go-w {path}, after "
                                "checking its content)")


def _write(path: Path, content: bytes, like: Path | None) -> None:
    """Write *path* atomically, with the mode and owner of *like* (else 0644)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        if like is not None and like.exists():
            shutil.copymode(like, tmp)
            info = like.stat()
            with contextlib.suppress(PermissionError):
                os.chown(tmp, info.st_uid, info.st_gid)
        else:
            os.chmod(tmp, 0o644)  # Exim (Debian-exim) reads these files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def apply_plan(plan: Plan, files: Mapping[Path, bytes | None]) -> None:
    """Carry out *plan*; on any error put every file back as in *files* and re-raise.

    :raises HostMismatchError: a file could not be written (nothing is left changed).
    """
    done: list[FileAction] = []
    try:
        for act in plan.actions:
            if act.action in _NO_CHANGE:
                continue
            done.append(act)
            if act.action is Action.REPLACE and act.backup is not None:
                shutil.copy2(act.path, act.backup)
            if act.action is Action.RESTORE and act.backup is not None:
                # The backup is the original file: mode, owner and times come back with it.
                os.replace(act.backup, act.path)
            elif act.content is None:
                act.path.unlink()
            else:
                _write(act.path, act.content, act.path if act.path.exists() else None)
    except OSError as exc:
        unapply(done, files)
        # The target, not the temporary file next to it that the error may name.
        where = done[-1].path if done else plan.etc
        raise HostMismatchError(f"{where}: cannot write: {exc.strerror} "
                                "(run as root; nothing was changed)") from None


def unapply(done: list[FileAction], files: Mapping[Path, bytes | None]) -> None:
    """Put every file *done* touched (and its backup) back to its content in *files*."""
    for act in reversed(done):
        for path in (act.path, act.backup):
            if path is None:
                continue
            before = files.get(path)
            with contextlib.suppress(OSError):
                if before is None:
                    path.unlink(missing_ok=True)
                elif not path.exists() or path.read_bytes() != before:
                    _write(path, before, path if path.exists() else None)


def require_tools() -> tuple[str, str]:
    """update-exim4.conf and exim4, looked for before anything is written.

    :raises HostMismatchError: one is missing.
    """
    return _tool("update-exim4.conf"), _tool("exim4")


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        raise HostMismatchError(f"{name} not found (install exim4-config / exim4-daemon-heavy)")
    return found


def check_config(etc: Path) -> None:
    """Generate the configuration from *etc* into a temporary file and have Exim parse it.

    update-exim4.conf (monolithic) prepends ``<etc>/exim4.conf.localmacros`` only when
    ``/etc/exim4/exim4.conf.localmacros`` exists, whatever ``-d`` says; for another tree the
    copy's own file is prepended here so that the check sees what a host with that tree gets.

    :raises CheckFailedError: with the first line of what the tool said.
    :raises HostMismatchError: a tool is missing.
    """
    update, exim = require_tools()
    with tempfile.TemporaryDirectory(prefix="eximauthd-check-") as tmp:
        out = Path(tmp) / "exim4.conf"
        run = _tool_run([update, "-d", str(etc), "-o", str(out)], f"update-exim4.conf -d {etc}")
        if run.returncode != 0:
            raise CheckFailedError(f"update-exim4.conf -d {etc} failed: "
                                   f"{_first_line(run.stderr + run.stdout)}")
        macros = etc / _LOCALMACROS
        if (etc.resolve() != DEFAULT_ETC and macros.exists()
                and not (DEFAULT_ETC / _LOCALMACROS).exists()):
            out.write_bytes(macros.read_bytes() + out.read_bytes())
        run = _tool_run([exim, "-C", str(out), "-bV"], "exim4 -bV")
        if run.returncode != 0:
            raise CheckFailedError(f"exim4 -bV refuses the configuration generated from {etc}: "
                                   f"{_first_line(run.stderr + run.stdout)}")


def _tool_run(argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
    # A tool that hangs or cannot start is a failed check (rolled back), not a traceback that
    # leaves the new files in place.
    try:
        return subprocess.run(argv, capture_output=True, text=True,  # noqa: S603 -- fixed argv
                              timeout=120, check=False, errors="replace")
    except subprocess.TimeoutExpired:
        raise CheckFailedError(f"{what} did not finish within 120 s") from None
    except OSError as exc:
        raise CheckFailedError(f"{what} could not run: {exc.strerror}") from None


def _first_line(text: str) -> str:
    """What the tool said, on one line: Exim puts "configuration error in line N of F:" on one
    line and the reason on the next, so the first two lines, without Exim's timestamp."""
    lines = [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", "", line.strip())
             for line in text.splitlines() if line.strip()]
    # A configuration line quoted back may hold escape sequences meant for the terminal.
    lines = [re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", "?", line) for line in lines]
    return " ".join(lines[:2])[:400] if lines else "no output"
