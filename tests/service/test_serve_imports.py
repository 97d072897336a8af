"""``eximauthd serve`` loads only the libraries of the parts that are on.

Every library imported stays in the service's memory for its whole life, and the memory a
2-worker service may take is bounded (bench/bench_rss.py).  A real ``serve`` subprocess on a
SQLite database already at the current schema answers an AUTH, stops on SIGTERM and, at exit,
writes the names of the modules it imported (a ``sitecustomize`` that registers an ``atexit``
hook: nothing of eximauthd is replaced).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .. import servicekit as kit
from ..support import PASSWORD, populate

# Alembic (with Mako and Pygments): only to create or migrate the schema, or to explain a
# schema it does not know.  Falcon, uvicorn and h11: only for the HTTP API.
SCHEMA_ONLY = ("alembic", "mako", "pygments")
HTTP_ONLY = ("falcon", "uvicorn", "h11")

SITECUSTOMIZE = """\
import atexit, json, os, sys

def _dump():
    with open(os.environ["EAD_TEST_MODULES"], "w") as out:
        json.dump(sorted(sys.modules), out)

atexit.register(_dump)
"""


def _modules_of_serve(sqlite_url: str, tmp_path: Path, env: dict[str, str]) -> set[str]:
    """The top-level packages a served AUTH and a clean stop left imported."""
    populate(sqlite_url)  # the schema at HEAD, as any start after the first finds it
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    dump = tmp_path / "modules.json"
    served = kit.start_service(sqlite_url, extra_env=env | {
        "PYTHONPATH": str(hook), "EAD_TEST_MODULES": str(dump)})
    try:
        assert served.ask(kit.auth_line("alice@example.test", PASSWORD)) == b"yes\n"
        assert served.stop() == 0, served.log()
    finally:
        served.stop()
        shutil.rmtree(Path(served.socket_path).parent, ignore_errors=True)
    return {name.split(".")[0] for name in json.loads(dump.read_text())}


def test_with_http_off_neither_http_nor_schema_libraries_are_imported(
        sqlite_url: str, tmp_path: Path) -> None:
    loaded = _modules_of_serve(sqlite_url, tmp_path, {
        "EXIMAUTHD_HTTP_ENABLED": "false",
        "EXIMAUTHD_DOVECOT_AUTH_ENABLED": "true",
        "EXIMAUTHD_DOVECOT_AUTH_PATH": str(tmp_path / "dovecot.sock")})
    assert "eximauthd" in loaded  # the dump is of the service
    assert "sqlalchemy" in loaded
    assert loaded.isdisjoint(SCHEMA_ONLY + HTTP_ONLY), sorted(
        loaded & set(SCHEMA_ONLY + HTTP_ONLY))


def test_with_http_on_its_libraries_are_imported_and_alembic_is_not(
        sqlite_url: str, tmp_path: Path) -> None:
    loaded = _modules_of_serve(sqlite_url, tmp_path, {
        "EXIMAUTHD_HTTP_ENABLED": "true",
        "EXIMAUTHD_HTTP_TOKEN_FILE": str(tmp_path / "token")})
    assert set(HTTP_ONLY) <= loaded
    assert loaded.isdisjoint(SCHEMA_ONLY), sorted(loaded & set(SCHEMA_ONLY))

