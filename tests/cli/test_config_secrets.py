"""A database password written in an unusual place of the URL never reaches ``config show``,
an error line or a repr: a hostile reading of what the operator may type."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eximauthd.config import load_config
from eximauthd.errors import ConfigError
from eximauthd.settings import DatabaseConfig

from ..support import FAST_HASHING_ENV

SECRET = "Zq9sekritXy"
# Each URL holds SECRET (or its last part) somewhere a password may hide.
URLS = {
    "userinfo": f"mysql+pymysql://ex:{SECRET}@127.0.0.1/mail",
    "percent-encoded": f"mysql+pymysql://ex:{SECRET}%40%2F%3A@127.0.0.1/mail",
    "unencoded-at": f"mysql+pymysql://ex:Zq9@{SECRET}@127.0.0.1/mail",
    "two-unencoded-at": f"mysql+pymysql://ex:a@b@{SECRET}@127.0.0.1/mail",
    "query-password": f"mysql+pymysql://ex@127.0.0.1/mail?password={SECRET}",
    "query-passwd-caps": f"mysql+pymysql://ex@127.0.0.1/mail?PASSWD={SECRET}&charset=utf8mb4",
    "query-key-percent-encoded": f"mysql+pymysql://ex@127.0.0.1/mail?pa%73sword={SECRET}",
    "unix-socket": f"mysql+pymysql://ex:{SECRET}@/mail?unix_socket=/run/mysqld/mysqld.sock",
    "bad-port": f"mysql+pymysql://ex:{SECRET}@127.0.0.1:x{SECRET}/mail",
}


def _show(tmp_path: Path, url: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "eximauthd.toml"
    config.write_text(f"[database]\nurl = '{url}'\nreplica_url = '{url}'\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    return subprocess.run([sys.executable, "-m", "eximauthd", "--config", str(config),
                           "config", "show"], capture_output=True, text=True, timeout=60,
                          check=False, cwd=tmp_path, env=env | FAST_HASHING_ENV)


@pytest.mark.parametrize("url", URLS.values(), ids=URLS.keys())
def test_config_show_never_prints_the_password(tmp_path: Path, url: str) -> None:
    shown = _show(tmp_path, url)
    assert "sekrit" not in shown.stdout + shown.stderr
    assert "Traceback" not in shown.stderr
    if shown.returncode:
        assert shown.stderr.startswith("eximauthd: error: database.url: "), shown.stderr
        assert shown.stderr.count("\n") == 1


@pytest.mark.parametrize("url", URLS.values(), ids=URLS.keys())
def test_the_repr_never_holds_the_password(url: str) -> None:
    db = DatabaseConfig(url=url, replica_url=url)
    assert "sekrit" not in repr(db)
    assert "sekrit" not in str(db)


@pytest.mark.parametrize("url", [URLS["unencoded-at"], URLS["two-unencoded-at"]])
def test_an_unencoded_at_in_the_password_is_one_error_naming_the_fix(tmp_path: Path,
                                                                     url: str) -> None:
    path = tmp_path / "eximauthd.toml"
    path.write_text(f"[database]\nurl = '{url}'\n")
    with pytest.raises(ConfigError, match=r"^database\.url: an '@' in the user or password "
                                          r"must be written %40") as info:
        load_config(path, environ={}, default_path=None)
    assert "sekrit" not in str(info.value)
