"""contrib/fail2ban and contrib/logrotate, run by the real fail2ban and logrotate on real lines."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from eximauthd.service.logs import configure_logging, decision_fields

from ..support import in_ci

ROOT = Path(__file__).resolve().parent.parent.parent
CONTRIB = ROOT / "contrib"
SYSTEMD = ROOT / "eximauthd" / "share" / "systemd"
FILTER = CONTRIB / "fail2ban" / "filter.d" / "eximauthd.conf"
JAIL = CONTRIB / "fail2ban" / "jail.d" / "eximauthd.local"
LOGROTATE = CONTRIB / "logrotate" / "eximauthd"
DROP_IN = SYSTEMD / "eximauthd.service.d" / "log-file.conf"
LOG_PATH = "/var/log/eximauthd/eximauthd.log"
INJECTED = "6.6.6.6"
# Exactly the clients of failed AUTHs below: bad password, IPv6 unknown user, the two injection
# attempts (banned by their real address), a throttled retry.
FAILING = ["192.0.2.7", "2001:db8::7", "192.0.2.10", "192.0.2.11", "192.0.2.12"]


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is not None:
        return found
    if in_ci():
        pytest.fail(f"{name} is not installed (Debian package {package}; CI=true: must not "
                    "skip)")
    pytest.skip(f"{name} is not installed")


def _log_decisions() -> None:
    """The lines eximauthd's server writes, through the configured handler and formatter."""
    log = logging.getLogger("eximauthd.decision")

    def auth(user: str, client: str, result: str, reason: str) -> None:
        log.info("decision", extra=decision_fields(
            verb="AUTH", user=user, mech="PLAIN", client=client, result=result, reason=reason,
            ms=31.2, via="socket"))

    auth("alice@example.test", "192.0.2.7", "no", "bad-password")
    auth("alice@example.test", "192.0.2.8", "yes", "ok")
    log.info("decision", extra=decision_fields(
        verb="RELAY", user="alice@example.test", sender="spam@elsewhere.test",
        rcpt="x@remote.test", client="192.0.2.9", result="no", reason="sender-mismatch",
        ms=1.3, via="socket"))
    auth("bob@example.test", "2001:db8::7", "no", "unknown-user")
    auth(f'x" mech=PLAIN client={INJECTED} result=no reason=bad-password', "192.0.2.10", "no",
         "unknown-user")
    auth(f"client={INJECTED}", "192.0.2.11", "no", "unknown-user")
    auth("carol@example.test", "192.0.2.12", "no", "throttled-ip")
    auth("dave@example.test", "192.0.2.13", "defer", "database-unavailable")
    log.warning("bad request", extra=decision_fields(
        verb="BAD", result="defer", reason="malformed", bytes=42, via="socket"))
    logging.getLogger("eximauthd.service").warning(
        "over a limit: user=%s client=%s result=no", "x", INJECTED)


@pytest.fixture
def filter_dir(tmp_path: Path) -> Path:
    """filter.d as installed: the contrib filter next to fail2ban's own common.conf."""
    _tool("fail2ban-regex", "fail2ban")
    directory = tmp_path / "filter.d"
    directory.mkdir()
    shutil.copy(FILTER, directory)
    shutil.copy("/etc/fail2ban/filter.d/common.conf", directory)
    return directory


def _matched_ips(log: Path, regex: str) -> list[str]:
    run = subprocess.run([_tool("fail2ban-regex", "fail2ban"), "--out", "ip", str(log), regex],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.split()


def test_fail2ban_filter_matches_exactly_the_failed_auth_clients_of_a_log_file(
        tmp_path: Path, filter_dir: Path, root_logging: None) -> None:
    """--log-file lines: failed AUTHs' clients match; success, RELAY, defer, BAD and 6.6.6.6 not."""
    log = tmp_path / "eximauthd.log"
    configure_logging("text", str(log))
    _log_decisions()
    assert _matched_ips(log, str(filter_dir / "eximauthd.conf")) == FAILING


def test_fail2ban_filter_matches_syslog_lines_with_host_and_ident(
        tmp_path: Path, filter_dir: Path, root_logging: None) -> None:
    """mail.log lines ('date host eximauthd[PID]: ...', as --syslog gives them) match the same."""
    directory = tempfile.mkdtemp(prefix="eal-")
    try:
        address = os.path.join(directory, "log")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as daemon:
            daemon.bind(address)
            daemon.settimeout(10)
            configure_logging("text", syslog=address)
            _log_decisions()
            datagrams = [daemon.recv(4096) for _ in range(10)]
    finally:
        shutil.rmtree(directory)
    # What rsyslog writes for each: its own timestamp and host name, then the message.
    lines = [f"Nov 30 18:20:01 mx1 {d.decode().partition('>')[2]}" for d in datagrams]
    log = tmp_path / "mail.log"
    log.write_text("\n".join(lines) + "\n")
    assert _matched_ips(log, str(filter_dir / "eximauthd.conf")) == FAILING


def test_log_holds_the_injected_address_a_naive_filter_would_ban(
        tmp_path: Path, filter_dir: Path, root_logging: None) -> None:
    """Control: 'client=<ADDR> result=no' alone does yield 6.6.6.6 from the same lines."""
    log = tmp_path / "eximauthd.log"
    configure_logging("text", str(log))
    _log_decisions()
    assert INJECTED in _matched_ips(log, "client=<ADDR> result=no")


def _fail2ban_config(tmp_path: Path, enabled: bool) -> Path:
    """/etc/fail2ban with only the contrib jail (its logpath a real file) and filter."""
    config = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", config)
    for other in (config / "jail.d").iterdir():
        other.unlink()
    shutil.copy(FILTER, config / "filter.d")
    log = tmp_path / "eximauthd.log"
    log.touch()
    text = JAIL.read_text()
    assert "\nenabled  = false\n" in text
    assert f"\nlogpath  = {LOG_PATH}\n" in text
    text = text.replace(f"\nlogpath  = {LOG_PATH}\n", f"\nlogpath  = {log}\n")
    if enabled:
        text = text.replace("\nenabled  = false\n", "\nenabled  = true\n")
    (config / "jail.d" / "eximauthd.local").write_text(text)
    return config


@pytest.mark.parametrize("enabled", [False, True])
def test_fail2ban_reads_the_jail_disabled_as_shipped(tmp_path: Path, enabled: bool) -> None:
    """fail2ban-client -d: as shipped the jail is off; enabled, it watches the log, Exim's ports."""
    client = _tool("fail2ban-client", "fail2ban")
    run = subprocess.run([client, "-c", str(_fail2ban_config(tmp_path, enabled)), "-d"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert ("['add', 'eximauthd', 'auto']" in run.stdout) is enabled
    if enabled:
        assert f"['set', 'eximauthd', 'addlogpath', '{tmp_path / 'eximauthd.log'}', 'head']" \
            in run.stdout
        assert "--dports smtp,465,submission" in run.stdout
        assert "client=<ADDR> result=no reason=" in run.stdout


def test_logrotate_accepts_the_config_and_would_signal_the_service(tmp_path: Path) -> None:
    """logrotate --debug --force parses it: weekly, compressed, postrotate reloads the unit."""
    logrotate = _tool("logrotate", "logrotate")
    log = tmp_path / "eximauthd.log"
    log.write_text("x\n")
    config = tmp_path / "eximauthd"
    config.write_text(LOGROTATE.read_text().replace(LOG_PATH, str(log)))
    run = subprocess.run([logrotate, "--debug", "--force", "--state", str(tmp_path / "state"),
                          str(config)], capture_output=True, text=True, timeout=120, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "error" not in out.lower(), out
    assert f"rotating pattern: {log}  forced from command line (8 rotations)" in out
    assert "systemctl reload eximauthd.service" in out
    assert log.read_text() == "x\n"


def test_logrotate_leaves_creating_the_new_file_to_eximauthd() -> None:
    """nocreate: the new file gets eximauthd's private mode, not one logrotate guessed."""
    lines = [line.strip() for line in LOGROTATE.read_text().splitlines()]
    assert "nocreate" in lines
    assert not [line for line in lines if line.startswith("create")]


def test_log_file_drop_in_logs_where_fail2ban_and_logrotate_look(tmp_path: Path) -> None:
    """The drop-in's ExecStart is the unit's plus --log-file, at the path the others use."""
    unit = (SYSTEMD / "eximauthd.service").read_text()
    (start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    lines = DROP_IN.read_text().splitlines()
    assert lines[lines.index("ExecStart=") + 1] == f"{start} --log-file {LOG_PATH}"
    assert "LogsDirectory=eximauthd" in lines
    assert f"\nlogpath  = {LOG_PATH}\n" in JAIL.read_text()
    assert LOGROTATE.read_text().splitlines()[4] == LOG_PATH + " {"


@pytest.mark.parametrize("broken", [False, True])
def test_log_file_drop_in_passes_systemd_analyze_verify(tmp_path: Path, broken: bool) -> None:
    """systemd-analyze verify reads the drop-in with the unit: no finding (control: a bad key)."""
    analyze = _tool("systemd-analyze", "systemd")
    script = f"{Path(sys.executable).parent / 'eximauthd'} "
    for source, target in [(SYSTEMD / "eximauthd.service", tmp_path / "eximauthd.service"),
                           (DROP_IN, tmp_path / "eximauthd.service.d" / "log-file.conf")]:
        target.parent.mkdir(exist_ok=True)
        target.write_text(source.read_text().replace("/opt/eximauthd/bin/eximauthd ", script)
                          + ("NoSuchKey=1\n" if broken and source == DROP_IN else ""))
    run = subprocess.run([analyze, "verify", str(tmp_path / "eximauthd.service")],
                         capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})
    out = run.stdout + run.stderr
    assert (run.returncode, bool(out)) == (0, broken), out
    assert ("log-file.conf:" in out) is broken
