"""Fixtures that give tests real databases: a SQLite file, or a fresh MariaDB database.

Each MariaDB test database is created for the test and dropped afterwards.  Without a MariaDB
server the MariaDB cases are skipped locally but *fail* under CI=true, so a broken CI machine
cannot pass by testing nothing.
"""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings

from eximauthd.core.hashing import Hasher
from eximauthd.db import upgrade
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig

from .support import (
    FAST_HASHING,
    MARIADB_ADMIN_URL,
    MARIADB_HOST,
    MARIADB_PORT,
    InstalledWheel,
    create_mariadb_database,
    drop_mariadb_database,
    require_mariadb,
)

# scripts/mutation runs pytest with --hypothesis-profile=mutation: the same examples on every
# run (a mutant is killed or not, never by luck), and no timing checks, which every test fails
# now and then under mutmut's instrumentation on a busy machine, nor the check that a
# test runs on one class instance (mutmut runs the same tests several times in one process).
settings.register_profile("mutation", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.differing_executors])

def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs MariaDB ``mariadb``, so ``-m "not mariadb"`` deselects exactly
    those: the ``mariadb`` cases of ``db_url`` and the tests that take a MariaDB fixture.  (A
    ``-k`` expression matches names too, and dropped tests that only mention MariaDB.)"""
    for item in items:
        params = getattr(item, "callspec", None)
        # A parameter set whose id names MariaDB ("mariadb", "mariadb:address:utf8mb4_bin"):
        # the test reaches the server through request.getfixturevalue.
        case = re.split(r"[-:\[\]]", params.id) if params is not None else []
        if {"mariadb_url", "mariadb_admin"} & set(getattr(item, "fixturenames", ())) \
                or "mariadb" in case:
            item.add_marker(pytest.mark.mariadb)


@pytest.fixture(scope="session")
def mariadb_admin() -> Iterator[sa.Engine]:
    require_mariadb()
    engine = sa.create_engine(MARIADB_ADMIN_URL, hide_parameters=True)
    yield engine
    engine.dispose()


@pytest.fixture
def mariadb_url(mariadb_admin: sa.Engine) -> Iterator[str]:
    """The URL of a new, empty MariaDB database, dropped after the test."""
    name = create_mariadb_database(mariadb_admin)
    yield f"mysql+pymysql://root@{MARIADB_HOST}:{MARIADB_PORT}/{name}"
    drop_mariadb_database(mariadb_admin, name)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'eximauthd.sqlite3'}"


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest) -> str:
    """An empty database URL on each backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "mariadb_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """A Database at the current schema revision."""
    db = Database(DatabaseConfig(url=db_url))
    upgrade.upgrade(db)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def hasher() -> Hasher:
    return Hasher(FAST_HASHING)


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """The wheel, built once per session (offline, no build isolation) and installed with
    --no-deps into a venv that takes its dependencies from the test venv: eximauthd itself
    comes only from the wheel, never from the checkout."""
    root = Path(__file__).resolve().parent.parent
    base = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(base / "dist"), str(root)], check=True, timeout=300,
                   capture_output=True)
    (wheel,) = (base / "dist").glob("eximauthd-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    deps = Path(sysconfig.get_path("purelib"))
    (site / "zz_test_deps.pth").write_text(str(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=300, capture_output=True)
    return InstalledWheel(wheel, venv)
