"""``eximauthd audit-log``: the seed's log and synthetic mainlogs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from eximauthd.exim.audit import Arrival, Auditor, Delivery, parse_line

SEED = Path(__file__).resolve().parent.parent / "fixtures" / "seed-mainlog.txt"
SEED_LINES = [
    "2016-03-09 07:53:12 1adXzZ-0007sb-Pz <= [email protected] H=([127.0.0.1]) "
    "[129.137.152.170] P=esmtpa A=plain: S=1298 [email protected]",
    "2016-03-09 07:53:12 1adXzZ-0007sb-Pz no immediate delivery: more than 10 messages received "
    "in one connection",
    "2016-03-09 08:16:57 1adXzZ-0007sb-Pz => kamikaze_****@hotmail.co.uk R=dnslookup "
    "T=remote_smtp H=mx3.hotmail.com [207.46.8.167] X=TLS1.2:ECDHE_RSA_AES_256_CBC_SHA384:256 "
    'CV=no DN="CN=*.hotmail.com" C="250 <[email protected]> Queued mail for delivery"',
    "2016-03-09 08:16:57 1adXzZ-0007sb-Pz Completed",
]
CLEAN = [
    "2026-11-28 10:00:00 1xXNzB-0006th-1s <= alice@example.test H=(laptop) [198.51.100.7] "
    "P=esmtpsa X=TLS1.3:x:256 CV=no A=eximauthd_plain:alice@example.test S=495",
    "2026-11-28 10:00:01 1xXNzB-0006th-1s => someone@remote.test R=dnslookup T=remote_smtp "
    'H=mx.remote.test [203.0.113.5] C="250 OK"',
    "2026-11-28 10:00:01 1xXNzB-0006th-1s Completed",
    "2026-11-28 10:00:02 1xXNzC-0006ti-2a <= news@outside.test H=mx.outside.test [203.0.113.9] "
    "P=esmtps S=900",
    "2026-11-28 10:00:02 1xXNzC-0006ti-2a => bob <bob@example.test> R=local_user "
    "T=mail_spool",
    "2026-11-28 10:00:03 H=(x) [192.0.2.5] F=<a@b.test> rejected RCPT <c@d.test>: relay not "
    "permitted",
]


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eximauthd", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


class TestParse:
    """Mainlog lines become arrivals and deliveries."""

    def test_seed_arrival(self) -> None:
        """The seed's line: authenticated (A=plain:) with an empty id, HELO [127.0.0.1]."""
        event = parse_line(SEED_LINES[0])
        assert isinstance(event, Arrival)
        assert (event.auth_id, event.authenticator, event.client_ip, event.helo,
                event.protocol) == ("", "plain", "129.137.152.170", "[127.0.0.1]", "esmtpa")

    def test_remote_and_local_deliveries(self) -> None:
        """A delivery with H= went to another host; a local transport did not."""
        remote, local = parse_line(SEED_LINES[2]), parse_line(CLEAN[4])
        assert isinstance(remote, Delivery)
        assert remote.remote
        assert isinstance(local, Delivery)
        assert not local.remote

    def test_unauthenticated_arrival_has_no_id(self) -> None:
        """No A= field: auth_id is None, not empty."""
        event = parse_line(CLEAN[3])
        assert isinstance(event, Arrival)
        assert event.auth_id is None

    @pytest.mark.parametrize("line", ["", "garbage", "2026-11-28 10:00:00 Start queue run",
                                      SEED_LINES[1]])
    def test_other_lines_are_ignored(self, line: str) -> None:
        """Lines that are not arrivals or deliveries parse to None."""
        assert parse_line(line) is None


class TestFindings:
    """What the auditor reports."""

    def test_seed_log_is_an_open_relay(self) -> None:
        """The seed's lines: empty id (critical) and a fake local HELO."""
        auditor = Auditor()
        auditor.feed(SEED_LINES)
        report = auditor.report()
        assert not report.clean
        assert [(f.kind, f.severity) for f in report.findings] == [
            ("empty-auth-id", "critical"), ("fake-local-helo", "warning")]
        assert report.verdict().startswith("OPEN RELAY")
        assert report.remote_by_id == {"(empty)": 1}

    def test_clean_log(self) -> None:
        """Own sender, local delivery, a refused relay: clean."""
        auditor = Auditor()
        auditor.feed(CLEAN)
        report = auditor.report()
        assert report.clean, report.findings
        assert (report.arrivals, report.authenticated, report.remote_deliveries,
                report.rejected_relays) == (2, 1, 1, 1)
        assert report.verdict().startswith("CLEAN")

    def test_sender_outside_login_domain(self) -> None:
        """alice@example.test sending as someone@other.test is flagged."""
        line = CLEAN[0].replace("<= alice@example.test", "<= ceo@other.test")
        auditor = Auditor()
        auditor.feed([line])
        assert [f.kind for f in auditor.report().findings] == ["sender-outside-login"]

    def test_burst_per_id_and_ip(self) -> None:
        """More than the threshold of remote deliveries in an hour is a burst, reported once."""
        lines = []
        for n in range(12):
            mid = f"1xXN{n:02d}-0006th-1s"
            lines.append(f"2026-11-28 10:{n:02d}:00 {mid} <= alice@example.test H=(l) "
                         "[198.51.100.7] P=esmtpsa A=eximauthd_plain:alice@example.test S=1")
            lines.append(f"2026-11-28 10:{n:02d}:01 {mid} => x{n}@remote.test R=dnslookup "
                         "T=remote_smtp H=mx.remote.test [203.0.113.5]")
        auditor = Auditor(burst_threshold=10)
        auditor.feed(lines)
        bursts = [f.subject for f in auditor.report().findings if f.kind == "relay-burst"]
        assert sorted(bursts) == ["id alice@example.test", "ip 198.51.100.7"]

    def test_since_skips_older_events(self) -> None:
        """--since drops what happened before."""
        from datetime import datetime  # noqa: PLC0415

        auditor = Auditor(since=datetime(2020, 1, 1))
        auditor.feed(SEED_LINES)
        assert auditor.report().clean


class TestCommand:
    """The command: files, .gz, stdin, --json, exit codes."""

    def test_seed_file_exits_1(self) -> None:
        """The original report's mainlog lines as a file: findings, exit 1, the verdict first."""
        run = _cli("audit-log", str(SEED))
        assert run.returncode == 1
        assert run.stdout.startswith("verdict: OPEN RELAY")
        assert "empty-auth-id" in run.stdout

    def test_gz_and_stdin_and_json(self, tmp_path: Path) -> None:
        """A .gz rotation and stdin are read; --json is machine-readable."""
        rotated = tmp_path / "mainlog.1.gz"
        with gzip.open(rotated, "wt") as handle:
            handle.write("\n".join(SEED_LINES) + "\n")
        run = _cli("audit-log", "--json", str(rotated), "-", stdin="\n".join(CLEAN) + "\n")
        assert run.returncode == 1
        data = json.loads(run.stdout)
        assert data["arrivals"] == 3
        assert [f["kind"] for f in data["findings"]] == ["empty-auth-id", "fake-local-helo"]

    def test_clean_exits_0(self, tmp_path: Path) -> None:
        """No findings: exit 0."""
        log = tmp_path / "mainlog"
        log.write_text("\n".join(CLEAN) + "\n")
        run = _cli("audit-log", str(log))
        assert (run.returncode, run.stdout.splitlines()[0]) == (
            0, "verdict: CLEAN: no sign of relaying for others")

    def test_missing_file_exits_2(self, tmp_path: Path) -> None:
        """An unreadable file is one error line, exit 2."""
        run = _cli("audit-log", str(tmp_path / "nope"))
        assert run.returncode == 2
        assert "cannot read" in run.stderr
