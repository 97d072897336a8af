"""Log lines: timestamped text unless journald or syslog stamps them, a private log file, syslog."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eximauthd.cli.app import cli
from eximauthd.errors import ConfigError
from eximauthd.service.logs import (
    DecisionFormatter,
    clean,
    configure_logging,
    decision_fields,
)

STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d")
FIELDS = {"verb": "AUTH", "user": "alice@example.test", "mech": "PLAIN",
          "client": "192.0.2.7", "result": "no", "reason": "bad-password", "ms": 31.2,
          "via": "socket"}
LINE = ("verb=AUTH user=alice@example.test mech=PLAIN client=192.0.2.7 result=no "
        "reason=bad-password ms=31.2 via=socket")
# The child logs one decision and one ordinary line through configure_logging's stderr.
CHILD = f"""
import logging
from eximauthd.service.logs import configure_logging, decision_fields
configure_logging("text")
logging.getLogger("eximauthd.decision").info("decision", extra=decision_fields(**{FIELDS!r}))
logging.getLogger("eximauthd.serve").info("stopped")
"""


def _record(created: float, level: int = logging.INFO) -> logging.LogRecord:
    record = logging.LogRecord("eximauthd.decision", level, __file__, 1, "decision", None, None)
    record.created = created
    record.decision = dict(FIELDS)
    return record


def test_text_line_starts_with_the_iso_timestamp_of_its_record() -> None:
    """A timestamped line is '<ISO 8601, ms, offset> <fields>' naming the record's own instant."""
    created = 1796062801.123456
    line = DecisionFormatter("text", timestamps=True).format(_record(created))
    stamp, _, rest = line.partition(" ")
    assert STAMP.fullmatch(stamp), stamp
    assert rest == LINE
    assert datetime.fromisoformat(stamp).timestamp() == 1796062801.123


def test_timestamp_carries_the_local_offset() -> None:
    """Under TZ=EET-2 the stamp ends in +02:00 and shows the local wall-clock time."""
    code = ("from eximauthd.service.logs import DecisionFormatter\n"
            "import logging\n"
            "r = logging.LogRecord('x', logging.INFO, '', 1, 'stopped', None, None)\n"
            "r.created = 0.5\n"
            "print(DecisionFormatter(timestamps=True).format(r))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TZ": "EET-2"}, check=True, timeout=60)
    assert run.stdout == "1970-01-01T02:00:00.500+02:00 info x: stopped\n"


def test_formatter_without_timestamps_writes_the_bare_line() -> None:
    """Without timestamps (journald, syslog) the line is the fields alone."""
    assert DecisionFormatter("text").format(_record(1.0)) == LINE


_VALUE = st.one_of(
    st.text(max_size=140),
    st.sampled_from(["", " ", '"', "a b", "x" * 128, "x" * 129, "\n", "é", "\u2028", "-"]),
    st.integers(), st.floats(allow_nan=False))


@given(st.dictionaries(st.sampled_from(["verb", "user", "sender", "rcpt", "ms", "via"]),
                       _VALUE, min_size=1))
def test_every_field_is_cleaned_as_clean_alone_would(fields: dict[str, object]) -> None:
    """The all-at-once fast path writes exactly the line that cleaning each field gives."""
    record = logging.LogRecord("eximauthd.decision", logging.INFO, "", 0, "decision", None,
                               None)
    record.decision = fields
    expected = " ".join(f"{k}={clean(v if isinstance(v, str) else str(v))}"
                        for k, v in fields.items())
    assert DecisionFormatter("text").format(record) == expected


def test_json_lines_keep_their_ts_field_and_no_text_stamp() -> None:
    """JSON stays one object per line with 'ts', whatever the timestamps setting."""
    line = DecisionFormatter("json", timestamps=True).format(_record(1796062801.5))
    assert line.startswith('{"ts": 1796062801.5, "level": "INFO"')


def _stderr_of_child(journal_stream: str | None) -> tuple[str, str]:
    """Run CHILD with stderr a real pipe; JOURNAL_STREAM 'match'es it, names 'other', or given."""
    read_end, write_end = os.pipe()
    other_read, other_write = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal_stream is not None:
        status = os.fstat(write_end if journal_stream == "match" else other_write)
        env["JOURNAL_STREAM"] = (f"{status.st_dev}:{status.st_ino}"
                                 if journal_stream in {"match", "other"} else journal_stream)
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD], stderr=write_end, env=env)
        os.close(write_end)
        with os.fdopen(read_end, encoding="utf-8") as stderr:
            out = stderr.read()
        assert child.wait(timeout=60) == 0, out
    finally:
        os.close(other_read)
        os.close(other_write)
    decision, stopped = out.splitlines()
    return decision, stopped


def test_stderr_that_is_the_journal_stream_gets_no_timestamp() -> None:
    """JOURNAL_STREAM naming stderr's own device:inode: journald stamps, so the line does not."""
    assert _stderr_of_child("match") == (LINE, "info eximauthd.serve: stopped")


@pytest.mark.parametrize("journal_stream", [None, "other", "12:34", "garbage"])
def test_stderr_that_is_not_the_journal_stream_is_timestamped(journal_stream: str | None) -> None:
    """Unset, another file's device:inode, or unparsable JOURNAL_STREAM: lines are stamped."""
    decision, stopped = _stderr_of_child(journal_stream)
    assert STAMP.fullmatch(decision.partition(" ")[0]), decision
    assert decision.partition(" ")[2] == LINE
    assert STAMP.fullmatch(stopped.partition(" ")[0]), stopped
    assert stopped.partition(" ")[2] == "info eximauthd.serve: stopped"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o640), (0o000, 0o640), (0o077, 0o600)])
def test_log_file_is_created_readable_by_owner_and_group_only(
        tmp_path: Path, root_logging: None, umask: int, mode: int) -> None:
    """--log-file creates the file 0640 at most (it names users and clients), stamped lines."""
    path = tmp_path / "eximauthd.log"
    old = os.umask(umask)
    try:
        configure_logging("text", str(path))
    finally:
        os.umask(old)
    logging.getLogger("eximauthd.decision").info("decision", extra=decision_fields(**FIELDS))
    assert path.stat().st_mode & 0o777 == mode
    (line,) = path.read_text().splitlines()
    assert STAMP.fullmatch(line.partition(" ")[0])
    assert line.partition(" ")[2] == LINE


def test_existing_log_file_keeps_its_mode(tmp_path: Path, root_logging: None) -> None:
    """An admin's chosen mode on an existing file is left alone (reopen after logrotate)."""
    path = tmp_path / "eximauthd.log"
    path.write_text("")
    path.chmod(0o600)
    configure_logging("text", str(path))
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def syslog_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound Unix datagram socket standing in for /dev/log (short path: sun_path is 108)."""
    directory = tempfile.mkdtemp(prefix="eal-")
    address = os.path.join(directory, "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    try:
        yield sock, address
    finally:
        sock.close()
        shutil.rmtree(directory)


def test_syslog_gets_facility_mail_the_ident_and_the_bare_line(
        syslog_socket: tuple[socket.socket, str], root_logging: None) -> None:
    """Each record is one datagram '<22>eximauthd[PID]: fields' (mail.info), no stamp, no NUL."""
    sock, address = syslog_socket
    configure_logging("text", syslog=address)
    logging.getLogger("eximauthd.decision").info("decision", extra=decision_fields(**FIELDS))
    logging.getLogger("eximauthd.decision").warning("bad request", extra=decision_fields(
        verb="BAD", result="defer", reason="too-long", bytes=9000, via="socket"))
    ident = f"eximauthd[{os.getpid()}]: "
    assert sock.recv(4096) == f"<22>{ident}{LINE}".encode()
    assert sock.recv(4096) == (f"<20>{ident}verb=BAD result=defer reason=too-long bytes=9000 "
                               "via=socket").encode()


def test_stream_syslog_separates_messages_with_nul(root_logging: None) -> None:
    """On a stream /dev/log (some syslog-ng set-ups) each message ends in NUL, else they merge."""
    directory = tempfile.mkdtemp(prefix="eal-")
    address = os.path.join(directory, "log")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as daemon:
            daemon.bind(address)
            daemon.listen(1)
            daemon.settimeout(10)
            configure_logging("text", syslog=address)
            connection, _ = daemon.accept()
            with connection:
                connection.settimeout(10)
                for _ in range(2):
                    logging.getLogger("eximauthd.decision").info(
                        "decision", extra=decision_fields(**FIELDS))
                expected = f"<22>eximauthd[{os.getpid()}]: {LINE}\0".encode() * 2
                data = b""
                while len(data) < len(expected):
                    chunk = connection.recv(4096)
                    assert chunk, data
                    data += chunk
    finally:
        shutil.rmtree(directory)
    assert data == expected


def test_syslog_escapes_a_forged_user_name(
        syslog_socket: tuple[socket.socket, str], root_logging: None) -> None:
    """A user name with a newline and a fake field stays one escaped value in one datagram."""
    sock, address = syslog_socket
    configure_logging("text", syslog=address)
    logging.getLogger("eximauthd.decision").info("decision", extra=decision_fields(
        **(FIELDS | {"user": "x\n<22>eximauthd[1]: verb=AUTH client=6.6.6.6 result=yes"})))
    data = sock.recv(4096)
    assert b"\n" not in data
    assert b' user="x\\n<22>eximauthd[1]: verb=AUTH client=6.6.6.6 result=yes" ' in data


def test_unreachable_syslog_refuses_to_start(tmp_path: Path, root_logging: None) -> None:
    """No daemon on the socket: a ConfigError at start, not silently lost lines."""
    with pytest.raises(ConfigError, match="no syslog daemon listens on"):
        configure_logging("text", syslog=str(tmp_path / "nothing"))


def test_serve_refuses_syslog_together_with_a_log_file(tmp_path: Path) -> None:
    """--syslog and --log-file name two destinations: usage error, exit 2, nothing served."""
    from click.testing import CliRunner  # noqa: PLC0415

    result = CliRunner().invoke(cli, ["serve", "--syslog", "--log-file",
                                      str(tmp_path / "x.log")])
    assert result.exit_code == 2
    assert "--syslog and --log-file are exclusive" in result.output
    assert not (tmp_path / "x.log").exists()
