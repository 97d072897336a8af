"""Logging: one line per decision, text (journald-friendly) or JSON, never a secret.

Only the fields passed to :func:`decision_fields` are ever logged for a request: verb, user (or
authenticated id, sender, recipient), client ip, result, reason, duration.  Passwords are not
among them.  Client-supplied values are escaped so a crafted username cannot forge log lines.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

__all__ = ["DecisionFormatter", "clean", "configure_logging", "decision_fields"]

_MAX_VALUE = 128


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


class DecisionFormatter(logging.Formatter):
    """``key=value`` text or one JSON object per line."""

    def __init__(self, fmt: str = "text") -> None:
        super().__init__()
        self.json = fmt == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] | None = getattr(record, "decision", None)
        if self.json:
            data: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname,
                                    "logger": record.name}
            data |= fields if fields is not None else {"message": record.getMessage()}
            return json.dumps(data, ensure_ascii=True)
        if fields is None:
            return f"{record.levelname.lower()} {record.name}: {record.getMessage()}"
        parts = [f"{k}={clean(str(v))}" for k, v in fields.items()]
        return " ".join(parts)


def configure_logging(fmt: str = "text", path: str | None = None) -> logging.Handler:
    """Send every eximauthd log record to stderr (or *path*) in *fmt*; return the handler."""
    handler: logging.Handler = (
        logging.FileHandler(path, encoding="utf-8") if path
        else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(DecisionFormatter(fmt))
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
