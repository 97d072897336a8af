"""Logging: one line per decision, text (journald-friendly) or JSON, never a secret.

Only the fields passed to :func:`decision_fields` are ever logged for a request: verb, user (or
authenticated id, sender, recipient), client ip, result, reason, duration.  Passwords are not
among them.  Client-supplied values are escaped so a crafted username cannot forge log lines.

Text lines start with an ISO 8601 timestamp (milliseconds, UTC offset) on stderr and in a log
file, but not where something else stamps them: stderr connected to journald, or syslog.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import math
import os
import socket
import sys
from datetime import datetime
from typing import Any, TextIO

from ..errors import ConfigError

__all__ = ["SYSLOG_ADDRESS", "DecisionFormatter", "clean", "configure_logging",
           "decision_fields", "log_decision", "stderr_is_journal"]

_MAX_VALUE = 128
# Logs carry user names and client addresses: readable by the service and its admins' group,
# never by everyone (the process umask may narrow it further).
_LOG_FILE_MODE = 0o640
SYSLOG_ADDRESS = "/dev/log"


def clean(value: str) -> str:
    """Printable, bounded, escaped: control characters and newlines become ``\\xNN``."""
    if len(value) > _MAX_VALUE:
        value = value[:_MAX_VALUE] + "..."
    if value.isprintable() and " " not in value and '"' not in value:
        return value or "-"
    escaped = value.encode("unicode_escape", "backslashreplace").decode("ascii")
    return '"' + escaped.replace('"', '\\"') + '"'


def decision_fields(**fields: Any) -> dict[str, Any]:
    """The ``extra`` for a decision log record."""
    return {"decision": fields}


def log_decision(logger: logging.Logger, level: int, fields: dict[str, Any]) -> None:
    """Log one decision line with *fields*: ``logger.log(level, ..., extra=...)``, cheaper.

    Once per request, so it skips what those lines never use: the caller's file and line
    (``findCaller`` walks the stack) and the message formatting.
    """
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(logger.name, level, "", 0, "decision", (), None,
                                        extra={"decision": fields}))


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """Whether *stream* (stderr) is the journald stream systemd set ``JOURNAL_STREAM`` for.

    systemd.exec(5): compare the variable's ``device:inode`` with ``fstat`` of the descriptor;
    the variable alone is inherited by children whose stderr was redirected elsewhere.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        status = os.fstat((stream if stream is not None else sys.stderr).fileno())
        return (int(device), int(inode)) == (status.st_dev, status.st_ino)
    except (OSError, ValueError, AttributeError):
        return False


class DecisionFormatter(logging.Formatter):
    """``key=value`` text (timestamp first when *timestamps*) or one JSON object per line."""

    def __init__(self, fmt: str = "text", *, timestamps: bool = False) -> None:
        super().__init__()
        self.json = fmt == "json"
        self.timestamps = timestamps
        # The stamp up to the seconds and the UTC offset, for the last second seen: building
        # them (localtime, isoformat) once a second instead of once a line.
        self._second: tuple[int, str, str] = (-1, "", "")

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, "decision", None)
        if self.json:
            data: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                                    "logger": record.name}
            data |= fields if fields is not None else {"message": record.getMessage()}
            return json.dumps(data, ensure_ascii=True)
        if fields is None:
            line = f"{record.levelname.lower()} {record.name}: {record.getMessage()}"
        else:
            texts = [v if type(v) is str else str(v) for v in fields.values()]
            # Every field at once in the common case (all printable, no space, no quote, none
            # empty or long: then clean() would give each back as it is); else field by field.
            joined = "".join(texts)
            if not (joined.isprintable() and " " not in joined and '"' not in joined
                    and all(texts) and max(map(len, texts), default=0) <= _MAX_VALUE):
                texts = [clean(text) for text in texts]
            line = " ".join([f"{key}={text}" for key, text in zip(fields, texts, strict=True)])
        if not self.timestamps:
            return line
        return f"{self._stamp(record.created)} {line}"

    def _stamp(self, created: float) -> str:
        """``datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")``."""
        # Rounded to the microsecond as fromtimestamp rounds (half to even), then cut.
        second = math.floor(created)
        micros = round((created - second) * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        cached, head, offset = self._second
        if second != cached:
            iso = datetime.fromtimestamp(second).astimezone().isoformat(timespec="seconds")
            head, offset = iso[:19], iso[19:]
            self._second = (second, head, offset)
        return f"{head}.{micros // 1000:03d}{offset}"


def _log_file(path: str) -> logging.FileHandler:
    # Created with a narrow mode before logging opens it (an existing file keeps its own).
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                         _LOG_FILE_MODE))
    except OSError as exc:
        raise ConfigError(f"--log-file: cannot open {path}: {exc.strerror} (create its "
                          "directory, writable by eximauthd's user, or log elsewhere)") from None
    return logging.FileHandler(path, encoding="utf-8")


def _syslog(address: str) -> logging.Handler:
    # Facility mail: mail admins read mail.log, where Exim's own lines are.  No timestamp and
    # no host in the message: the syslog daemon adds both.
    handler = logging.handlers.SysLogHandler(
        address, facility=logging.handlers.SysLogHandler.LOG_MAIL)
    # Set only once a connect worked (typeshed types it as never None).
    connected: socket.SocketKind | None = handler.socktype
    if connected is None:
        # SysLogHandler ignores an unreachable socket and would drop every line: refuse to
        # start instead (afterwards it reconnects by itself when the daemon comes back).
        handler.close()
        raise ConfigError(f"--syslog: no syslog daemon listens on {address}")
    handler.ident = f"eximauthd[{os.getpid()}]: "
    # A datagram is one message: no NUL terminator (RFC 3164 has none). On a stream socket
    # (some syslog-ng set-ups) the NUL Python appends is what separates the messages.
    handler.append_nul = connected != socket.SOCK_DGRAM
    return handler


def configure_logging(fmt: str = "text", path: str | None = None,
                      syslog: str | None = None) -> logging.Handler:
    """Send every eximauthd log record to stderr, *path* or the *syslog* socket in *fmt*.

    Returns the handler.  Text lines are timestamped except in syslog and on a journald stderr.
    """
    handler: logging.Handler
    if syslog is not None:
        handler, stamped = _syslog(syslog), False
    elif path:
        handler, stamped = _log_file(path), True
    else:
        handler, stamped = logging.StreamHandler(sys.stderr), not stderr_is_journal()
    handler.setFormatter(DecisionFormatter(fmt, timestamps=stamped))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Our own access log is the decision line; uvicorn's would only repeat it.
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic narrates every schema check at INFO; only its warnings matter to an operator.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return handler
