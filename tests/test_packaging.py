"""What an operator needs besides the code ships in the wheel: `pip install .` (not editable)
gives the Exim snippets, the systemd unit and the docs its Documentation= names."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .servicekit import free_port
from .support import InstalledWheel, in_ci, wait_for

ROOT = Path(__file__).resolve().parent.parent
SHARE = ROOT / "eximauthd" / "share"


def _run(installed: InstalledWheel, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    return subprocess.run([str(installed.eximauthd), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False, env=env | {"PYTHONPATH": ""})


def _relative_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_snippets_dir_of_the_installed_wheel_lists_every_snippet(
        installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    run = _run(installed_wheel, "exim", "snippets-dir", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    snippets = Path(run.stdout.strip())
    assert snippets.is_relative_to(installed_wheel.venv)
    assert _relative_files(snippets) == _relative_files(SHARE / "exim-snippets")
    assert "debian/conf.d/main/000_eximauthd" in _relative_files(snippets)


def test_postfix_snippets_dir_of_the_installed_wheel_has_both_fragments(
        installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    """docs/postfix.md names the fragments as "$PF/..." (PF=$(eximauthd postfix snippets-dir))."""
    run = _run(installed_wheel, "postfix", "snippets-dir", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    fragments = Path(run.stdout.strip())
    assert fragments.is_relative_to(installed_wheel.venv)
    assert _relative_files(fragments) == ["main.cf", "master.cf"]
    text = (ROOT / "docs" / "postfix.md").read_text()
    assert "PF=$(eximauthd postfix snippets-dir)" in text
    named = set(re.findall(r"\$PF/([\w.]+)", text))
    assert named == {"main.cf", "master.cf"}


def test_every_snippet_path_of_the_exim_docs_exists_in_the_installed_wheel(
        installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    """docs/exim.md names snippets as "$SNIPPETS/..." (SNIPPETS=$(eximauthd exim snippets-dir))
    and never by a path in the source tree."""
    text = (ROOT / "docs" / "exim.md").read_text()
    snippets = Path(_run(installed_wheel, "exim", "snippets-dir", cwd=tmp_path).stdout.strip())
    named = set(re.findall(r"\$SNIPPETS/([\w./-]+[\w-])", text))
    assert len(named) >= 6
    assert sorted(name for name in named if not (snippets / name).exists()) == []
    assert "SNIPPETS=$(eximauthd exim snippets-dir)" in text
    assert re.findall(r"(?<![\w/$])exim-snippets/", text) == []


def test_installed_wheel_installs_into_a_copy_of_etc_exim4(installed_wheel: InstalledWheel,
                                                          tmp_path: Path) -> None:
    """`exim install --dry-run` of the installed wheel plans from its own shipped files."""
    if not Path("/etc/exim4/update-exim4.conf.conf").is_file():
        if in_ci():
            pytest.fail("Debian's exim4-config is not installed (CI=true: must not skip)")
        pytest.skip("Debian's exim4-config is not installed")
    etc = tmp_path / "etc-exim4"
    shutil.copytree("/etc/exim4", etc)
    run = _run(installed_wheel, "exim", "install", "--layout", "debian-monolithic", "--etc",
               str(etc), "--dry-run", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"would: created {etc}/eximauthd-auth.conf" in run.stdout.splitlines()


def test_installed_wheel_ships_the_unit_its_drop_in_tmpfiles_and_docs(
        installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    snippets = Path(_run(installed_wheel, "exim", "snippets-dir", cwd=tmp_path).stdout.strip())
    share = snippets.parent
    assert _relative_files(share / "systemd") == _relative_files(SHARE / "systemd") == [
        "eximauthd.service", "eximauthd.service.d/log-file.conf", "eximauthd.tmpfiles.conf"]
    unit = (share / "systemd" / "eximauthd.service").read_text()
    (doc,) = re.findall(r"^Documentation=file:///usr/share/doc/eximauthd/(\S+)$", unit,
                        re.MULTILINE)
    # docs/service.md installs share/doc as /usr/share/doc/eximauthd: real files, not a link.
    installed_doc = share / "doc" / doc
    assert not installed_doc.is_symlink()
    assert installed_doc.read_bytes() == (ROOT / "docs" / doc).read_bytes()
    assert _relative_files(share / "doc") == _relative_files(ROOT / "docs")


def test_installed_wheel_serves_then_plans_an_exim_install_and_passes_doctor(
        installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    """The operator's first session from the wheel, outside the checkout: README's first
    command (`eximauthd serve` on the embedded default), an account, `exim install --layout
    debian-split --dry-run` on a copy of /etc/exim4, then `doctor` against what runs."""
    if not Path("/etc/exim4/update-exim4.conf.conf").is_file():
        if in_ci():
            pytest.fail("Debian's exim4-config is not installed (CI=true: must not skip)")
        pytest.skip("Debian's exim4-config is not installed")
    work = tmp_path / "run"
    work.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    # The default port may be taken on a shared test host; everything else is the default.
    env |= {"PYTHONPATH": "", "EXIMAUTHD_HTTP_LISTEN": f"127.0.0.1:{port}"}
    serve = subprocess.Popen([str(installed_wheel.eximauthd), "serve"], cwd=work, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for((work / "eximauthd.sock").exists, timeout=60), serve.poll()
        add = subprocess.run([str(installed_wheel.eximauthd), "user", "add",
                              "alice@example.test", "--password-stdin"], cwd=work, env=env,
                             input="correct horse\n", capture_output=True, text=True,
                             timeout=120, check=False)
        assert add.returncode == 0, add.stderr
        etc = tmp_path / "etc-exim4"
        shutil.copytree("/etc/exim4", etc)
        # A host on Debian's split configuration, as the operator has.
        conf = etc / "update-exim4.conf.conf"
        conf.write_text(re.sub(r"^dc_use_split_config=.*$", "dc_use_split_config='true'",
                               conf.read_text(), flags=re.MULTILINE))
        before = {p: p.read_bytes() for p in etc.rglob("*") if p.is_file()}
        plan = subprocess.run([str(installed_wheel.eximauthd), "exim", "install", "--layout",
                               "debian-split", "--etc", str(etc), "--dry-run"], cwd=work,
                              env=env, capture_output=True, text=True, timeout=120,
                              check=False)
        assert plan.returncode == 0, plan.stderr
        assert any(line.startswith("would: created ") and "conf.d" in line
                   for line in plan.stdout.splitlines()), plan.stdout
        assert {p: p.read_bytes() for p in etc.rglob("*") if p.is_file()} == before
        doctor = subprocess.run([str(installed_wheel.eximauthd), "doctor", "--user",
                                 "alice@example.test"], cwd=work, env=env,
                                input="correct horse\n", capture_output=True, text=True,
                                timeout=120, check=False)
        assert doctor.stderr == ""
        lines = doctor.stdout.splitlines()
        assert all(re.match(r"(ok  |warn|FAIL) ", line) for line in lines), lines
        for what in ("configuration loads", "reachable, schema at revision", "PING on ",
                     "AUTH PLAIN alice@example.test on the socket: yes",
                     f"HTTP API http://127.0.0.1:{port}"):
            assert [line for line in lines if what in line and line.startswith("ok ")], (
                what, lines)
        # This host's own Exim does not use eximauthd: doctor says so and exits 1.
        assert doctor.returncode in (0, 1)
        assert (doctor.returncode == 1) == any(line.startswith("FAIL") for line in lines)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
