"""``eximauthd audit-log``: the seed's log and synthetic mainlogs."""

from __future__ import annotations

import gzip
import io
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


def _with_prefix(line: str, extra: str) -> str:
    """*line* with *extra* (" +0100", " [12345]", ".123"...) after its timestamp, as Exim's
    log selectors put it."""
    return line[:19] + extra + line[19:]


def _relay(n: int, login: str, *, minute: int = 0, done: bool = True) -> list[str]:
    """One message from *login*, relayed to a remote host, then completed."""
    mid = f"1xX{n:03d}-0006th-1s"
    lines = [
        f"2026-11-28 10:{minute:02d}:00 {mid} <= {login} H=(l) [198.51.100.7] P=esmtpsa "
        f"A=eximauthd_plain:{login} S=1",
        f"2026-11-28 10:{minute:02d}:01 {mid} => x{n}@remote.test R=dnslookup T=remote_smtp "
        "H=mx.remote.test [203.0.113.5]",
    ]
    if done:
        lines.append(f"2026-11-28 10:{minute:02d}:01 {mid} Completed")
    return lines


def _findings(lines: list[str], **kwargs: object) -> list[tuple[str, str, str, int, str | None]]:
    auditor = Auditor(**kwargs)  # type: ignore[arg-type]
    auditor.feed(lines)
    return [(f.kind, f.severity, f.subject, f.count, f.login)
            for f in auditor.report().findings]


BURST = [line for n in range(12) for line in _relay(n, "alice@example.test", minute=n)]
ALL_KINDS = SEED_LINES + CLEAN + BURST + [
    CLEAN[0].replace("<= alice@example.test", "<= ceo@other.test")]
PREFIXES = {"pid": " [12345]", "timezone": " +0100", "timezone-and-pid": " -0530 [99]",
            "millisec-timezone-pid": ".123 +0000 [1]"}


class TestLogSelectors:
    """+pid, log_timezone and +millisec move the message id; the auditor finds it anyway."""

    @pytest.mark.parametrize("extra", PREFIXES.values(), ids=PREFIXES.keys())
    def test_findings_equal_those_of_the_plain_format(self, extra: str) -> None:
        """Every kind of finding, the same with the prefix as without."""
        plain = _findings(ALL_KINDS, burst_threshold=10)
        assert {kind for kind, *_ in plain} == {"empty-auth-id", "fake-local-helo",
                                                "relay-burst", "sender-outside-login"}
        assert _findings([_with_prefix(line, extra) for line in ALL_KINDS],
                         burst_threshold=10) == plain

    @pytest.mark.parametrize("extra", PREFIXES.values(), ids=PREFIXES.keys())
    def test_parsed_fields_equal_those_of_the_plain_format(self, extra: str) -> None:
        """Arrival and delivery fields do not depend on the prefix."""
        for line in SEED_LINES + CLEAN:
            assert parse_line(_with_prefix(line, extra)) == parse_line(line)

    @pytest.mark.parametrize("extra", ["", *PREFIXES.values()], ids=["plain", *PREFIXES])
    def test_completed_messages_are_forgotten(self, extra: str) -> None:
        """After each message's Completed line nothing of it stays in memory."""
        auditor = Auditor()
        for n in range(500):
            auditor.feed(_with_prefix(line, extra) for line in _relay(n, "a@example.test"))
        assert auditor.open_messages == 0
        auditor.feed(_with_prefix(line, extra) for line in _relay(999, "a@example.test",
                                                                  done=False))
        assert auditor.open_messages == 1

    def test_completed_with_queue_time_is_a_completion(self) -> None:
        """+queue_time_overall appends QT= to Completed: the message is still closed."""
        auditor = Auditor()
        lines = _relay(1, "a@example.test", done=False)
        auditor.feed([*lines, lines[1][:20] + "1xX001-0006th-1s Completed QT=2s"])
        assert auditor.open_messages == 0


class TestCraftedFields:
    """Text a client chose (sender, HELO, subject, login) cannot pose as Exim's fields."""

    @pytest.mark.parametrize("decoy", ["U=x A=plain:bob", "U=x S=1", "U=x A=plain:bob S=1"])
    def test_a_decoy_field_cannot_hide_an_empty_id(self, decoy: str) -> None:
        """Client-chosen text with blanks (an ident value) ahead of Exim's own A=plain: with
        an empty id, posing as another A= or as S=: the empty id is still found."""
        line = ("2026-11-30 10:00:00 1abcde-000000-AB <= a@b.test H=(x) [198.51.100.4] "
                f"{decoy} P=esmtpa A=plain: S=1")
        event = parse_line(line)
        assert isinstance(event, Arrival)
        assert (event.auth_id, event.authenticator) == ("", "plain")
        assert [kind for kind, *_ in _findings([line])] == ["empty-auth-id"]

    def test_quoted_sender_with_an_auth_field_is_not_authenticated(self) -> None:
        """<= "x A=plain:"@evil.test from an unauthenticated client: no empty-auth-id."""
        line = ('2026-11-28 10:00:00 1xXNzB-0006th-1s <= "x A=plain: y"@evil.test '
                "H=mx.evil.test [203.0.113.9] P=esmtp S=900")
        event = parse_line(line)
        assert isinstance(event, Arrival)
        assert (event.auth_id, event.sender, event.client_ip) == (
            None, '"x A=plain: y"@evil.test', "203.0.113.9")
        assert _findings([line]) == []

    def test_helo_and_subject_with_auth_fields_are_not_authenticated(self) -> None:
        """A=plain: inside (HELO) or in T="subject" after S= is not an A= field."""
        line = ("2026-11-28 10:00:00 1xXNzB-0006th-1s <= a@evil.test H=(x A=plain: y) "
                '[203.0.113.9] P=esmtp S=900 T="A=plain: H=(localhost) [1.2.3.4]"')
        event = parse_line(line)
        assert isinstance(event, Arrival)
        assert (event.auth_id, event.helo, event.client_ip) == (
            None, "x A=plain: y", "203.0.113.9")

    def test_sender_cannot_pose_as_another_login(self) -> None:
        """bob's message with a sender quoting A=...:alice@ is still bob's."""
        line = ("2026-11-28 10:00:00 1xXNzB-0006th-1s <= "
                '"z A=eximauthd_plain:alice@example.test"@example.test H=(l) [198.51.100.7] '
                "P=esmtpsa A=eximauthd_plain:bob@example.test S=1")
        event = parse_line(line)
        assert isinstance(event, Arrival)
        assert (event.authenticator, event.auth_id) == ("eximauthd_plain", "bob@example.test")

    def test_login_with_spaces_is_kept_whole(self) -> None:
        """An id with a space (a lax server_set_id) is one login, not a login and a field."""
        line = ("2026-11-28 10:00:00 1xXNzB-0006th-1s <= a@example.test H=(l) [198.51.100.7] "
                "P=esmtpsa A=plain:john smith@example.test S=1")
        event = parse_line(line)
        assert isinstance(event, Arrival)
        assert event.auth_id == "john smith@example.test"

    def test_quoted_recipient_naming_a_host_is_a_local_delivery(self) -> None:
        """=> "x H=mx [1.2.3.4]"@example.test by a local transport is not remote."""
        line = ('2026-11-28 10:00:02 1xXNzC-0006ti-2a => "x H=mx [203.0.113.5]"@example.test '
                'R=local_user T=mail_spool C="250 H=mx"')
        event = parse_line(line)
        assert isinstance(event, Delivery)
        assert not event.remote

    def test_overlong_line_is_cut_and_its_tail_is_no_line(self) -> None:
        """A line over MAX_LINE is cut; what follows in it cannot pose as the next line."""
        from eximauthd.cli.audit import MAX_LINE, _read_lines  # noqa: PLC0415

        tail = SEED_LINES[0].encode()
        data = b"A" * (2 * MAX_LINE + 7) + b" " + tail + b"\n" + tail + b"\n"
        lines = list(_read_lines(io.BytesIO(data)))
        assert lines == ["A" * MAX_LINE, SEED_LINES[0] + "\n"]


class TestRecognition:
    """A file in which no line is Exim's is an error, never CLEAN."""

    def test_impossible_date_is_no_event(self) -> None:
        """A line shaped like Exim's with month 13 parses to None instead of raising."""
        assert parse_line("2026-13-45 99:00:00" + SEED_LINES[0][19:]) is None

    @pytest.mark.parametrize("text", [
        "", "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n",
        '{"verdict": "CLEAN", "lines": 3}\n',
        "2026-11-30 12:00:00 0 [Note] Starting MariaDB 10.11\n",
        "2026-11-30 12:00:00 UTC [123] LOG:  connection received: host=[local]\n",
        "2026-11-30 12:00:00,123 INFO something happened\n",
    ], ids=["empty", "passwd", "json", "mariadb", "postgresql", "python-logging"])
    def test_not_a_mainlog_exits_2(self, tmp_path: Path, text: str) -> None:
        """No Exim line: exit 2, one error line naming the file, nothing on stdout."""
        path = tmp_path / "log"
        path.write_text(text)
        run = _cli("audit-log", str(path))
        assert (run.returncode, run.stdout, run.stderr) == (
            2, "", f"eximauthd: error: {path}: not an Exim mainlog (no line recognised)\n")

    def test_one_foreign_file_among_mainlogs_exits_2(self, tmp_path: Path) -> None:
        """Each file must be a mainlog: a mistyped glob is not silently audited as clean."""
        log, other = tmp_path / "mainlog", tmp_path / "passwd"
        log.write_text("\n".join(CLEAN) + "\n")
        other.write_text("root:x:0:0:root:/root:/bin/bash\n")
        run = _cli("audit-log", str(log), str(other))
        assert run.returncode == 2
        assert run.stderr == (f"eximauthd: error: {other}: not an Exim mainlog "
                              "(no line recognised)\n")

    def test_stdin_without_exim_lines_exits_2(self) -> None:
        """- is named <stdin> in the error."""
        run = _cli("audit-log", "-", stdin="hello\n")
        assert (run.returncode, run.stderr) == (
            2, "eximauthd: error: <stdin>: not an Exim mainlog (no line recognised)\n")

    @pytest.mark.parametrize("line", [
        "2026-11-30 06:25:01 Start queue run: pid=4242",
        "2026-11-30 06:25:01 [77] exim 4.96 daemon started: pid=77, -q30m, listening for SMTP",
        "2026-11-30 06:25:01 +0100 H=(x) [192.0.2.5] F=<a@b.test> rejected RCPT <c@d.test>: "
        "relay not permitted",
        "2026-11-30 06:25:01 eximauthd_plain authenticator failed for (x) [192.0.2.5]: 535 "
        "Incorrect authentication data",
        "2026-11-30 06:25:01 SMTP connection from [192.0.2.5] lost",
    ])
    def test_quiet_mainlog_is_a_mainlog(self, tmp_path: Path, line: str) -> None:
        """A log of only connections, rejections or queue runs is recognised: exit 0."""
        path = tmp_path / "mainlog"
        path.write_text(line + "\n")
        run = _cli("audit-log", str(path))
        assert (run.returncode, run.stderr) == (0, "")

    @pytest.mark.parametrize("damage", ["truncated", "garbage"])
    def test_damaged_gz_is_one_error_line(self, tmp_path: Path, damage: str) -> None:
        """A cut or corrupted .gz: exit 2 and one error line, no traceback."""
        body = "\n".join(BURST * 50).encode()
        whole = gzip.compress(body)
        data = whole[:100] if damage == "truncated" else whole[:20] + bytes(range(256)) * 8
        path = tmp_path / "mainlog.2.gz"
        path.write_bytes(data)
        run = _cli("audit-log", str(path))
        assert (run.returncode, run.stdout) == (2, "")
        assert run.stderr == (f"eximauthd: error: {path}: cannot read: damaged or truncated "
                              "gzip data\n")

    def test_plain_text_named_gz_is_one_error_line(self, tmp_path: Path) -> None:
        """A .gz that is not gzip at all: exit 2, one error line."""
        path = tmp_path / "mainlog.1.gz"
        path.write_text("\n".join(CLEAN) + "\n")
        run = _cli("audit-log", str(path))
        assert run.returncode == 2
        assert run.stderr.count("\n") == 1
        assert run.stderr.startswith("eximauthd: error: ")


def _per_login_log() -> list[str]:
    """Logins relaying 9, 10 and 100 messages, each also sending outside its domain once."""
    lines: list[str] = []
    n = 0
    for login, count in [("nine@a.test", 9), ("hundred@c.test", 100), ("ten@b.test", 10)]:
        for _ in range(count):
            lines += _relay(n, login, minute=n % 60)
            n += 1
        lines.append(CLEAN[0].replace("alice@example.test", login)
                     .replace("<= " + login, "<= boss@elsewhere.test"))
    # A fake local HELO from an unauthenticated client: a finding of no login.
    lines.append("2026-11-28 11:00:00 1xXZZZ-0006th-1s <= x@y.test H=(localhost) "
                 "[203.0.113.66] P=esmtp S=5")
    return lines


class TestPerLogin:
    """Findings grouped per login, the most relaying first, counts compared as numbers."""

    def test_logins_ordered_by_relayed_count_as_numbers(self) -> None:
        """100 before 10 before 9 (not "9" > "100" as text); findings of no login last."""
        auditor = Auditor(burst_threshold=1000)
        auditor.feed(_per_login_log())
        groups, left_out = auditor.report().by_login()
        assert [(g.label, g.remote_deliveries) for g in groups] == [
            ("hundred@c.test", 100), ("ten@b.test", 10), ("nine@a.test", 9), ("-", 0)]
        assert left_out == 0
        assert [f.kind for f in groups[0].findings] == ["sender-outside-login"]
        assert [f.kind for f in groups[-1].findings] == ["fake-local-helo"]

    def test_top_keeps_the_most_relaying_logins(self) -> None:
        """--top 2: the two most relaying logins, the count of those left out, no-login kept."""
        auditor = Auditor(burst_threshold=1000)
        auditor.feed(_per_login_log())
        groups, left_out = auditor.report().by_login(2)
        assert [g.label for g in groups] == ["hundred@c.test", "ten@b.test", "-"]
        assert left_out == 1

    def test_each_finding_names_its_login(self) -> None:
        """empty-auth-id belongs to the empty login, an id's burst to that id, an IP's to none."""
        found = _findings(SEED_LINES + BURST, burst_threshold=10)
        assert {(kind, subject, login) for kind, _, subject, _, login in found} == {
            ("empty-auth-id", "A=plain: from 129.137.152.170", ""),
            ("fake-local-helo", "129.137.152.170 said HELO [127.0.0.1]", ""),
            ("relay-burst", "id alice@example.test", "alice@example.test"),
            ("relay-burst", "ip 198.51.100.7", None),
        }

    def test_command_top_and_json(self, tmp_path: Path) -> None:
        """The table has a LOGIN column in that order; --top 1 says what it left out."""
        log = tmp_path / "mainlog"
        log.write_text("\n".join(_per_login_log()) + "\n")
        run = _cli("audit-log", "--burst", "1000", str(log))
        assert run.returncode == 1
        table = run.stdout.split("\n\n")[1].splitlines()
        assert table[0].split() == ["LOGIN", "SEVERITY", "FINDING", "SUBJECT", "COUNT"]
        assert [row.split()[0] for row in table[1:]] == [
            "hundred@c.test", "ten@b.test", "nine@a.test", "-"]
        top = _cli("audit-log", "--burst", "1000", "--top", "1", str(log))
        assert "(2 more login(s) with findings; --top 1 shows the most relaying only)" \
            in top.stdout
        ids = top.stdout.split("remote deliveries by authenticated id:\n")[1].split("\n\n")[0]
        assert [row.split() for row in ids.splitlines()] == [
            ["ID", "DELIVERIES"], ["hundred@c.test", "100"]]
        data = json.loads(_cli("audit-log", "--json", "--burst", "1000", "--top", "1",
                               str(log)).stdout)
        assert [(g["login"], g["remote_deliveries"]) for g in data["by_login"]] == [
            ("hundred@c.test", 100), (None, 0)]
        assert data["logins_left_out"] == 2
        assert len(data["findings"]) == 4


class TestProgress:
    """A progress line only for a person at a terminal."""

    def test_nothing_on_stderr_when_not_a_tty(self, tmp_path: Path) -> None:
        """A log long enough for progress, read with stderr on a pipe: stderr stays empty."""
        log = tmp_path / "mainlog"
        lines = [line for n in range(9000) for line in _relay(n % 1000, "a@example.test",
                                                              minute=n % 60)]
        log.write_text("\n".join(lines) + "\n")
        run = _cli("audit-log", "--burst", "100000", str(log))
        assert (run.returncode, run.stderr) == (0, "")
        assert run.stdout.startswith("verdict: CLEAN")

    def test_at_most_one_update_per_interval_on_a_tty(self) -> None:
        """On a TTY: the first look starts the clock; then one line per interval; cleared at end."""
        from eximauthd.cli.audit import _Progress  # noqa: PLC0415

        class Tty(io.StringIO):
            def isatty(self) -> bool:
                return True

        now = [0.0]
        out = Tty()
        progress = _Progress(out, interval=0.25, clock=lambda: now[0])
        for step in range(20):  # 20 calls over 1 s of clock: 4 intervals
            now[0] = step * 0.05
            progress.update("mainlog", step, 50, 100)
        assert out.getvalue().count("\r") == 3
        assert "mainlog: 5 lines 50%" in out.getvalue()
        progress.clear()
        assert out.getvalue().endswith("\r\x1b[K")

    def test_no_update_on_a_non_tty_stream(self) -> None:
        """A stream that is no terminal gets nothing, however long the run."""
        from eximauthd.cli.audit import _Progress  # noqa: PLC0415

        out = io.StringIO()
        progress = _Progress(out, interval=0.0, clock=lambda: 1.0)
        for step in range(10):
            progress.update("mainlog", step, None, None)
        progress.clear()
        assert out.getvalue() == ""
