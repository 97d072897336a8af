"""``eximauthd user show`` and ``user list --domain``, through the command, on both databases."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from eximauthd.db.counters import AttemptStore, RateStore, utcnow
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig

from ..support import Cli
from .test_cli import _base_env, _runner


@pytest.fixture
def cli(db_url: str, tmp_path: Path) -> Cli:
    run = _runner(_base_env() | {"EXIMAUTHD_DATABASE_URL": db_url}, tmp_path)
    assert run("db", "upgrade").code == 0
    for address in ("alice@example.test", "carol@other.test"):
        assert run("user", "add", address, "--password-stdin", stdin="S3cret\n").code == 0
    return run


def test_show_tells_scheme_state_limits_grants_and_counters_never_the_hash(
        cli: Cli, db_url: str) -> None:
    assert cli("grant", "add", "alice@example.test", "@example.org").code == 0
    assert cli("user", "limits", "alice@example.test", "--messages", "5/1h").code == 0
    assert cli("user", "disable", "alice@example.test").code == 0
    db = Database(DatabaseConfig(url=db_url))
    now = utcnow()
    AttemptStore(db).reserve([("user", "alice@example.test")], "digest-1", "n1", now, now)
    AttemptStore(db).reserve([("user", "alice@example.test")], "digest-2", "n2", now, now)
    epoch = int(time.time())
    RateStore(db).add_and_read({("alice@example.test", "messages", 3600, epoch // 3600): 2},
                               ["alice@example.test"], epoch)
    db.dispose()

    shown = cli("user", "show", "Alice@Example.TEST", "--json")
    assert shown.code == 0, shown.err
    data = json.loads(shown.out)
    assert data["address"] == "alice@example.test"
    assert data["enabled"] is False
    assert data["scheme"] == "argon2id"
    assert data["limits"]["messages"] == {"limits": ["5/1h"], "default": False}
    assert data["limits"]["recipients"]["default"] is True
    assert data["grants"] == ["@example.org"]
    assert data["auth_failures"]["failures"] == 2
    assert data["auth_failures"]["locked"] is False
    assert {"kind": "messages", "window": "1h", "count": 2, "limit": 5} in data["rates"]
    text = cli("user", "show", "alice@example.test")
    assert text.code == 0
    assert "messages limit:   5/1h\n" in text.out
    assert "failed AUTHs:     2 of " in text.out
    for run in (shown, text):
        assert "$argon2" not in run.out + run.err
    missing = cli("user", "show", "alcie@example.test")
    assert missing.code == 2
    assert missing.err.startswith("eximauthd: error: no account alcie@example.test")


def test_list_of_a_domain_shows_only_its_accounts(cli: Cli) -> None:
    for domain, expected in (("example.test", ["alice@example.test"]),
                             ("Other.TEST", ["carol@other.test"]), ("nowhere.test", [])):
        run = cli("user", "list", "--domain", domain, "--json")
        assert run.code == 0, run.err
        assert [r["address"] for r in json.loads(run.out)] == expected, domain
