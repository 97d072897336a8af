"""``eximauthd exim install`` / ``uninstall`` on copies of /etc/exim4: the plan, the files it
writes, the real update-exim4.conf and Exim that check them, and a real login through them."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from eximauthd.exim.install import (
    Action,
    Auth,
    HostMismatchError,
    Layout,
    check_host,
    plan_install,
    plan_uninstall,
    shipped_files,
)

from .. import eximkit
from .. import servicekit as kit
from ..support import PASSWORD, in_ci, populate

ETC = Path("/etc/exim4")
LAYOUTS = ["debian-split", "debian-monolithic"]
needs_exim = pytest.mark.exim
NEW_FILES = {
    "debian-split": ["conf.d/acl/35_eximauthd_rcpt", "conf.d/auth/20_eximauthd",
                     "conf.d/main/000_eximauthd"],
    "debian-monolithic": ["exim4.conf.localmacros", "exim4.conf.template.eximauthd-bak",
                          "eximauthd-auth.conf", "eximauthd-rcpt-acl"],
}


def _require_debian_exim() -> None:
    if (eximkit.exim_available() and shutil.which("update-exim4.conf") and shutil.which("patch")
            and ETC.is_dir()):
        return
    if in_ci():
        pytest.fail("exim4, update-exim4.conf or patch is missing (CI=true: must not skip)")
    pytest.skip("Debian's exim4 is not installed")


def _files(root: Path) -> dict[Path, bytes | None]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _state(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under *root*: its content hash and mode (what `uninstall` must give back)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                       p.stat().st_mode)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _copy(tmp_path: Path, *, split: bool) -> Path:
    etc = tmp_path / "etc-exim4"
    shutil.copytree(ETC, etc)
    settings = etc / "update-exim4.conf.conf"
    value = "true" if split else "false"
    settings.write_text("\n".join(f"dc_use_split_config='{value}'"
                                  if line.startswith("dc_use_split_config=") else line
                                  for line in settings.read_text().splitlines()) + "\n")
    return etc


# --- the plan (pure) ----------------------------------------------------------------------------

_STOCK_TEMPLATE = b"begin acl\n\nacl_check_rcpt:\n  accept\n\nbegin authenticators\n\nplain:\n"


@pytest.mark.parametrize(("layout", "before"), [
    (Layout.DEBIAN_SPLIT, {}),
    (Layout.DEBIAN_MONOLITHIC, {"exim4.conf.template": _STOCK_TEMPLATE}),
    (Layout.DEBIAN_MONOLITHIC, {"exim4.conf.template": _STOCK_TEMPLATE,
                                "exim4.conf.localmacros": b"MAIN_TLS_ENABLE = yes\n"}),
    (Layout.DEBIAN_SPLIT, {"conf.d/auth/20_eximauthd": b"# an earlier hand copy\n"}),
], ids=["split", "monolithic", "monolithic-own-localmacros", "split-over-a-hand-copy"])
def test_plan_installs_then_is_idempotent_then_uninstalls_to_the_original(
        layout: Layout, before: dict[str, bytes]) -> None:
    etc = Path("/x/exim4")
    shipped = shipped_files()
    original: dict[Path, bytes | None] = {etc / name: data for name, data in before.items()}
    plan = plan_install(layout, etc, original, shipped)
    assert plan.changes
    after = dict(original)
    for act in plan.actions:
        if act.action is Action.REPLACE and act.backup is not None:
            after[act.backup] = original[act.path]
        after[act.path] = act.content
    again = plan_install(layout, etc, after, shipped)
    assert [a.action for a in again.actions] == [Action.UNCHANGED] * len(again.actions)
    undo = plan_uninstall(layout, etc, after, shipped)
    restored = dict(after)
    for act in undo.actions:
        if act.action is Action.RESTORE and act.backup is not None:
            restored[act.backup] = None
        if act.action is not Action.ABSENT:
            restored[act.path] = act.content
    assert {p: c for p, c in restored.items() if c is not None} == {
        p: c for p, c in original.items() if c is not None}
    assert not plan_uninstall(layout, etc, restored, shipped).changes


@pytest.mark.parametrize("layout", [Layout.DEBIAN_SPLIT, Layout.DEBIAN_MONOLITHIC])
def test_uninstall_keeps_a_file_of_eximauthds_name_that_holds_something_else(
        layout: Layout) -> None:
    """Edited after install, or from an older version: the admin's to remove, not deleted."""
    etc = Path("/x/exim4")
    name = "conf.d/auth/20_eximauthd" if layout is Layout.DEBIAN_SPLIT else "eximauthd-auth.conf"
    files: dict[Path, bytes | None] = {etc / name: b"# edited\n"}
    plan = plan_uninstall(layout, etc, files, shipped_files())
    (act,) = [a for a in plan.actions if a.path == etc / name]
    assert act.action is Action.KEEP
    assert "yours to remove by hand" in act.describe()
    assert not plan.changes


def test_an_existing_backup_is_kept_not_overwritten() -> None:
    """The backup is the file before eximauthd first changed it; a later install keeps it."""
    etc = Path("/x/exim4")
    path = etc / "conf.d/auth/20_eximauthd"
    files: dict[Path, bytes | None] = {path: b"edited since\n",
                                       path.with_name("20_eximauthd.eximauthd-bak"): b"first\n"}
    (act, *_) = [a for a in plan_install(Layout.DEBIAN_SPLIT, etc, files, shipped_files()).actions
                 if a.path == path]
    assert (act.action, act.backup) == (Action.REPLACE, None)


def _apply(plan_actions: tuple[object, ...], files: dict[Path, bytes | None],
           ) -> dict[Path, bytes | None]:
    """What the files hold after an install or uninstall plan (as apply_plan writes them)."""
    after = dict(files)
    for act in plan_actions:
        assert hasattr(act, "action")
        if act.action is Action.REPLACE and act.backup is not None:
            after[act.backup] = files[act.path]
        if act.action is Action.RESTORE and act.backup is not None:
            after[act.backup] = None
        if act.action is not Action.ABSENT:
            after[act.path] = act.content
    return after


_AUTH_NAME = {Layout.DEBIAN_SPLIT: "conf.d/auth/20_eximauthd",
              Layout.DEBIAN_MONOLITHIC: "eximauthd-auth.conf"}


@pytest.mark.parametrize("layout", [Layout.DEBIAN_SPLIT, Layout.DEBIAN_MONOLITHIC])
@pytest.mark.parametrize("hand_copy", [False, True], ids=["fresh", "over-a-hand-copy"])
def test_switching_auth_replaces_the_auth_file_and_uninstall_gives_the_original_back(
        layout: Layout, hand_copy: bool) -> None:
    """readsocket -> dovecot -> readsocket -> dovecot: only the auth file changes, a backup is
    only ever of the file from before eximauthd, and uninstall restores exactly that."""
    etc = Path("/x/exim4")
    shipped = shipped_files()
    auth_path = etc / _AUTH_NAME[layout]
    backup = auth_path.with_name(auth_path.name + ".eximauthd-bak")
    original: dict[Path, bytes | None] = (
        {etc / "exim4.conf.template": _STOCK_TEMPLATE} if layout is Layout.DEBIAN_MONOLITHIC
        else {})
    if hand_copy:
        original[auth_path] = b"# an earlier hand copy\n"
    files = _apply(plan_install(layout, etc, original, shipped).actions, original)
    assert files[auth_path] == shipped["debian/conf.d/auth/20_eximauthd"]
    for auth, snippet in [(Auth.DOVECOT, "debian/dovecot/conf.d/auth/20_eximauthd"),
                          (Auth.READSOCKET, "debian/conf.d/auth/20_eximauthd"),
                          (Auth.DOVECOT, "debian/dovecot/conf.d/auth/20_eximauthd")]:
        plan = plan_install(layout, etc, files, shipped, auth)
        changed = [a for a in plan.actions if a.action is not Action.UNCHANGED]
        assert [a.path for a in changed] == [auth_path]
        assert changed[0].action is (Action.REPLACE if hand_copy else Action.SWITCH)
        assert changed[0].backup is None  # never a backup of eximauthd's own variant
        files = _apply(plan.actions, files)
        assert files[auth_path] == shipped[snippet]
        assert files.get(backup) == (b"# an earlier hand copy\n" if hand_copy else None)
        assert not plan_install(layout, etc, files, shipped, auth).changes
    restored = _apply(plan_uninstall(layout, etc, files, shipped).actions, files)
    assert {p: c for p, c in restored.items() if c is not None} == original


def test_switch_is_described_as_eximauthds_own_file() -> None:
    etc = Path("/x/exim4")
    shipped = shipped_files()
    path = etc / "conf.d/auth/20_eximauthd"
    files: dict[Path, bytes | None] = {path: shipped["debian/conf.d/auth/20_eximauthd"]}
    plan = plan_install(Layout.DEBIAN_SPLIT, etc, files, shipped, Auth.DOVECOT)
    (act,) = [a for a in plan.actions if a.path == path]
    assert act.describe() == (f"replaced {path} (eximauthd's other --auth variant: no backup, "
                              "uninstall removes it)")


@needs_exim
def test_template_change_is_the_shipped_patch(tmp_path: Path) -> None:
    """On Debian's own template the install writes exactly what the shipped .patch does."""
    _require_debian_exim()
    patch = eximkit.SNIPPETS / "debian" / "monolithic" / "exim4.conf.template.patch"
    patched = tmp_path / "patched"
    shutil.copytree(ETC, patched)
    subprocess.run(["patch", "-s", "-p1", "-d", str(patched), "-i", str(patch)], check=True,
                   timeout=30)
    plan = plan_install(Layout.DEBIAN_MONOLITHIC, ETC, _files(ETC), shipped_files())
    (template,) = [a for a in plan.actions if a.path.name == "exim4.conf.template"]
    assert template.content == (patched / "exim4.conf.template").read_bytes()


@pytest.mark.parametrize(("layout", "settings", "fix"), [
    (Layout.DEBIAN_SPLIT, "dc_use_split_config='false'\n", "use --layout debian-monolithic"),
    (Layout.DEBIAN_SPLIT, "", "use --layout debian-monolithic"),
    (Layout.DEBIAN_MONOLITHIC, "dc_use_split_config='true'\n", "use --layout debian-split"),
    (Layout.DEBIAN_SPLIT, None, "or use --layout include"),
])
def test_a_host_of_the_other_layout_is_refused(layout: Layout, settings: str | None,
                                               fix: str) -> None:
    with pytest.raises(HostMismatchError, match=fix):
        check_host(layout, ETC, settings)


def test_a_template_without_the_anchor_is_refused() -> None:
    etc = Path("/x/exim4")
    files: dict[Path, bytes | None] = {etc / "exim4.conf.template": b"begin acl\n"}
    with pytest.raises(HostMismatchError, match="begin authenticators"):
        plan_install(Layout.DEBIAN_MONOLITHIC, etc, files, shipped_files())


# --- the command on copies of /etc/exim4 (real update-exim4.conf and exim -bV) -------------------

@needs_exim
@pytest.mark.parametrize("layout", LAYOUTS)
def test_install_is_idempotent_and_uninstall_restores_every_byte(tmp_path: Path,
                                                                 layout: str) -> None:
    """--dry-run changes nothing; install twice changes once; uninstall gives every byte and
    mode back; uninstall twice changes nothing the second time."""
    _require_debian_exim()
    etc = _copy(tmp_path, split=layout == "debian-split")
    original = _state(etc)
    dry = eximkit.eximauthd_cli("exim", "install", "--layout", layout, "--etc", str(etc),
                                "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1] == "dry run: nothing changed"
    assert len([line for line in dry.stdout.splitlines() if line.startswith("would: ")]) == 4 - (
        layout == "debian-split")
    assert _state(etc) == original
    first = eximkit.eximauthd_cli("exim", "install", "--layout", layout, "--etc", str(etc))
    assert first.returncode == 0, first.stderr
    assert "checked: update-exim4.conf" in first.stdout
    installed = _state(etc)
    assert installed != original
    assert sorted(installed.keys() - original.keys()) == NEW_FILES[layout]
    changed = {n for n in original if installed[n] != original[n]}
    assert changed == ({"exim4.conf.template"} if layout == "debian-monolithic" else set())
    second = eximkit.eximauthd_cli("exim", "install", "--layout", layout, "--etc", str(etc))
    assert (second.returncode, second.stdout.splitlines()[-1]) == (
        0, "already installed: nothing changed")
    assert _state(etc) == installed
    dry = eximkit.eximauthd_cli("exim", "uninstall", "--layout", layout, "--etc", str(etc),
                                "--dry-run")
    assert (dry.returncode, dry.stdout.splitlines()[-1]) == (0, "dry run: nothing changed")
    assert _state(etc) == installed
    undo = eximkit.eximauthd_cli("exim", "uninstall", "--layout", layout, "--etc", str(etc))
    assert undo.returncode == 0, undo.stderr
    assert _state(etc) == original
    again = eximkit.eximauthd_cli("exim", "uninstall", "--layout", layout, "--etc", str(etc))
    assert (again.returncode, again.stdout.splitlines()[-1]) == (
        0, "not installed: nothing changed")


@needs_exim
@pytest.mark.parametrize("layout", LAYOUTS)
def test_install_auth_dovecot_switches_an_installed_layout_and_back(tmp_path: Path,
                                                                    layout: str) -> None:
    """readsocket installed, then --auth dovecot (dry run first), then readsocket again: each
    switch rewrites only the auth file, checked by the real tools; uninstall gives every byte
    back from either variant."""
    _require_debian_exim()
    etc = _copy(tmp_path, split=layout == "debian-split")
    auth_file = etc / ("conf.d/auth/20_eximauthd" if layout == "debian-split"
                       else "eximauthd-auth.conf")
    original = _state(etc)

    def install(*extra: str) -> subprocess.CompletedProcess[str]:
        return eximkit.eximauthd_cli("exim", "install", "--layout", layout, "--etc", str(etc),
                                     *extra)

    assert install().returncode == 0
    readsocket = _state(etc)
    dry = install("--auth", "dovecot", "--dry-run")
    assert (dry.returncode, dry.stdout.splitlines()[-1]) == (0, "dry run: nothing changed")
    assert [line for line in dry.stdout.splitlines() if not line.startswith(
        ("would: unchanged", "dry run"))] == [
        f"would: replaced {auth_file} (eximauthd's other --auth variant: no backup, uninstall "
        "removes it)"]
    assert _state(etc) == readsocket
    switched = install("--auth", "dovecot")
    assert switched.returncode == 0, switched.stderr
    assert "checked: update-exim4.conf" in switched.stdout
    assert "next: eximauthd needs [dovecot_auth] enabled = true" in switched.stdout
    dovecot = _state(etc)
    assert {n for n in dovecot if dovecot[n] != readsocket.get(n)} == {
        str(auth_file.relative_to(etc))}
    assert b"driver = dovecot" in auth_file.read_bytes()
    again = install("--auth", "dovecot")
    assert again.stdout.splitlines()[-1] == "already installed: nothing changed"
    assert _state(etc) == dovecot
    assert install("--auth", "readsocket").returncode == 0
    assert _state(etc) == readsocket
    assert install("--auth", "dovecot").returncode == 0
    undo = eximkit.eximauthd_cli("exim", "uninstall", "--layout", layout, "--etc", str(etc))
    assert undo.returncode == 0, undo.stderr
    assert _state(etc) == original


@needs_exim
@pytest.mark.parametrize(("layout", "break_it", "said"), [
    ("debian-split", "conf.d/main/00_broken", 'exim4 -bV refuses the configuration generated '
     'from {etc}: Exim configuration error in line '),
    ("debian-monolithic", "exim4.conf.localmacros", "exim4 -bV refuses the configuration "
     "generated from {etc}: Exim configuration error in line "),
    ("debian-monolithic", "update-exim4.conf.conf", "update-exim4.conf -d {etc} failed: "
     'Invalid value for dc_use_split_config: "yes", exiting.'),
    ("debian-monolithic+dovecot", "exim4.conf.localmacros", "exim4 -bV refuses the "
     "configuration generated from {etc}: Exim configuration error in line "),
], ids=["split-exim-refuses", "monolithic-exim-refuses", "update-exim4.conf-fails",
        "dovecot-switch-exim-refuses"])
def test_a_result_the_tools_refuse_is_rolled_back(tmp_path: Path, layout: str, break_it: str,
                                                   said: str) -> None:
    """A broken site file makes exim -bV or update-exim4.conf fail: exit 5, one line, every
    file as before (also when switching an installed layout to --auth dovecot)."""
    _require_debian_exim()
    layout, _, auth = layout.partition("+")
    etc = _copy(tmp_path, split=layout == "debian-split")
    if auth:
        assert eximkit.eximauthd_cli("exim", "install", "--layout", layout, "--etc",
                                     str(etc)).returncode == 0
    if break_it == "update-exim4.conf.conf":
        settings = etc / break_it
        settings.write_text(settings.read_text().replace("dc_use_split_config='false'",
                                                         "dc_use_split_config='yes'"))
    else:
        (etc / break_it).write_text("no_such_exim_option = 1\n")
    original = _state(etc)
    run = eximkit.eximauthd_cli("exim", "install", "--layout", layout, "--etc", str(etc),
                                *(["--auth", auth] if auth else []))
    assert run.returncode == 5, run.stderr
    assert run.stderr.startswith("eximauthd: error: " + said.format(etc=etc)), run.stderr
    if "exim4 -bV" in said:
        assert 'main option "no_such_exim_option" unknown' in run.stderr
    assert run.stderr.endswith("(rolled back: every file is as it was)\n")
    assert run.stderr.count("\n") == 1
    assert _state(etc) == original


@needs_exim
def test_operator_mistakes_are_one_line_with_exit_4(tmp_path: Path) -> None:
    _require_debian_exim()
    split = _copy(tmp_path, split=True)
    cases = [
        (["--layout", "debian-split", "--etc", str(tmp_path / "none")], "no such directory"),
        (["--layout", "debian-monolithic", "--etc", str(split)], "use --layout debian-split"),
        (["--layout", "debian-split", "--etc", str(tmp_path)], "not Debian's exim4-config"),
    ]
    for args, text in cases:
        run = eximkit.eximauthd_cli("exim", "install", *args)
        assert run.returncode == 4, (args, run.stderr)
        assert run.stderr.startswith("eximauthd: error: "), run.stderr
        assert text in run.stderr, run.stderr
        assert run.stderr.count("\n") == 1


@needs_exim
def test_an_unwritable_tree_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """Run as nobody (root writes anything): exit 4, one line, nothing changed."""
    _require_debian_exim()
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as another user")
    # pytest's tmp_path is under a 0700 directory: nobody could not even read the copy.
    base = Path(tempfile.mkdtemp(prefix="eximauthd-install-", dir="/tmp"))
    base.chmod(0o755)
    etc = _copy(base, split=True)
    original = _state(etc)
    run = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                          *eximkit.eximauthd_argv(), "exim", "install", "--layout",
                          "debian-split", "--etc", str(etc)],
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "HOME": "/nonexistent"})
    assert run.returncode == 4, run.stderr
    assert run.stderr.startswith("eximauthd: error: ")
    assert f"{etc}/conf.d/main/000_eximauthd: cannot write: Permission denied" in run.stderr
    assert run.stderr.count("\n") == 1
    assert _state(etc) == original
    shutil.rmtree(base)


def test_include_layout_prints_the_lines_and_changes_nothing() -> None:
    run = eximkit.eximauthd_cli("exim", "install", "--layout", "include")
    assert run.returncode == 0
    snippets = eximkit.eximauthd_cli("exim", "snippets-dir").stdout.strip()
    includes = [line.strip() for line in run.stdout.splitlines() if ".include" in line]
    assert includes == [f".include {snippets}/eximauthd-{name}.conf"
                        for name in ("main", "rcpt-acl", "auth")]
    assert all(Path(line.split()[1]).is_file() for line in includes)
    dovecot = eximkit.eximauthd_cli("exim", "install", "--layout", "include", "--auth", "dovecot")
    assert [line.strip() for line in dovecot.stdout.splitlines() if ".include" in line] == [
        *includes[:2], f".include {snippets}/eximauthd-dovecot-auth.conf"]


# --- end to end: the installed result, a real Exim, a real service -----------------------------

@pytest.fixture
def service(tmp_path: Path) -> Iterator[kit.Served]:
    url = f"sqlite:///{tmp_path / 'eximauthd.sqlite3'}"
    populate(url)
    with kit.running(url, extra_env={"EXIMAUTHD_SOCKET_GROUP": "Debian-exim"}) as served:
        yield served


@pytest.mark.exim
@pytest.mark.parametrize("layout", LAYOUTS)
def test_installed_layout_refuses_the_empty_login_and_relays_a_real_one(
        service: kit.Served, layout: str) -> None:
    _require_debian_exim()
    if not shutil.which("openssl") or not shutil.which("unshare"):
        if in_ci():
            pytest.fail("openssl or unshare is missing (CI=true: must not skip)")
        pytest.skip("openssl or unshare is missing")
    with eximkit.running_exim(service.socket_path, eximkit.build_installed(layout)) as exim:
        attack = eximkit.session(exim, plain=("", "", ""), sender="alice@example.test",
                                 rcpts=("kamikaze@remote.test",))
        assert attack.auth is not None
        assert attack.auth[0] == 535
        assert [code for code, _ in attack.rcpts] == [550]
        good = eximkit.session(exim, plain=("", "alice@example.test", PASSWORD),
                               sender="alice@example.test", rcpts=("someone@remote.test",))
        assert good.auth is not None
        assert good.auth[0] == 235
        assert [code for code, _ in good.rcpts] == [250]
        assert exim.wait_for_sink(1)
        assert exim.sink.recipients() == ["someone@remote.test"]
        assert "A=eximauthd_plain:alice@example.test" in exim.mainlog()


@pytest.fixture
def dovecot_service(tmp_path: Path) -> Iterator[kit.Served]:
    """The service with [dovecot_auth] enabled where the rig's EXIMAUTHD_DOVECOT_SOCKET is."""
    url = f"sqlite:///{tmp_path / 'eximauthd.sqlite3'}"
    populate(url)
    sock_dir = Path(tempfile.mkdtemp(prefix="eaidv-", dir="/tmp"))  # sun_path is short
    sock_dir.chmod(0o755)
    socket_path = str(sock_dir / "eximauthd.sock")
    group = "Debian-exim"
    with kit.running(url, extra_env={
            "EXIMAUTHD_SOCKET_PATH": socket_path, "EXIMAUTHD_SOCKET_GROUP": group,
            "EXIMAUTHD_DOVECOT_AUTH_GROUP": group,
    } | kit.dovecot_env(eximkit.dovecot_socket(socket_path))) as served:
        yield served


@pytest.mark.exim
@pytest.mark.parametrize("layout", LAYOUTS)
def test_installed_dovecot_layout_refuses_the_empty_login_and_relays_a_real_one(
        dovecot_service: kit.Served, layout: str) -> None:
    """`exim install --auth dovecot` on a stock tree: Exim's dovecot driver asks the service's
    Dovecot socket (the log says via=dovecot); the rcpt ACL still applies the relay rule."""
    _require_debian_exim()
    if not shutil.which("openssl") or not shutil.which("unshare"):
        if in_ci():
            pytest.fail("openssl or unshare is missing (CI=true: must not skip)")
        pytest.skip("openssl or unshare is missing")
    build = eximkit.build_installed(layout, auth="dovecot")
    with eximkit.running_exim(dovecot_service.socket_path, build) as exim:
        attack = eximkit.session(exim, plain=("", "", ""), sender="alice@example.test",
                                 rcpts=("kamikaze@remote.test",))
        assert attack.auth is not None
        assert attack.auth[0] == 535
        assert [code for code, _ in attack.rcpts] == [550]
        foreign = eximkit.session(exim, plain=("", "alice@example.test", PASSWORD),
                                  sender="spam@elsewhere.test", rcpts=("kamikaze@remote.test",))
        assert foreign.auth is not None
        assert foreign.auth[0] == 235
        assert [code for code, _ in foreign.rcpts] == [550]
        good = eximkit.session(exim, plain=("", "alice@example.test", PASSWORD),
                               sender="alice@example.test", rcpts=("someone@remote.test",))
        assert good.auth is not None
        assert good.auth[0] == 235
        assert [code for code, _ in good.rcpts] == [250]
        assert exim.wait_for_sink(1)
        assert exim.sink.recipients() == ["someone@remote.test"]
        assert "A=eximauthd_plain:alice@example.test" in exim.mainlog()
    assert any("mech=PLAIN" in line and "result=yes" in line and line.endswith("via=dovecot")
               for line in dovecot_service.log().splitlines())
    assert not any("result=yes" in line and "via=dovecot" not in line and "mech=" in line
                   for line in dovecot_service.log().splitlines())
