"""``--password-stdin``: one line of UTF-8, its LF or CRLF stripped, anything else refused.

Run as the real command on a temporary SQLite database; what was stored is then checked with
the library, so "stored" means "logs in with exactly the intended password".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eximauthd.auth.authn import Authenticator
from eximauthd.core.credentials import MAX_PASSWORD_BYTES
from eximauthd.core.hashing import Hasher
from eximauthd.db.accounts import OwnAccountStore
from eximauthd.db.engine import Database
from eximauthd.settings import DatabaseConfig

from ..support import FAST_HASHING, FAST_HASHING_ENV, Cli, Run

ADDRESS = "alice@example.test"




@pytest.fixture
def cli(sqlite_url: str, tmp_path: Path) -> Cli:
    """The command on a SQLite file with eximauthd's schema; stdin given as bytes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env |= FAST_HASHING_ENV | {"EXIMAUTHD_DATABASE_URL": sqlite_url}

    def run(*args: str, stdin: bytes = b"") -> Run:
        proc = subprocess.run([sys.executable, "-m", "eximauthd", *args], input=stdin,
                              capture_output=True, env=env, cwd=tmp_path, timeout=60,
                              check=False)
        return Run(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                   proc.stderr.decode("utf-8", "replace"))

    assert run("db", "upgrade").code == 0
    return run


@pytest.fixture
def logs_in(sqlite_url: str) -> Iterator[Callable[[str], bool]]:
    """Whether alice's stored password accepts exactly the given one (through the library)."""
    db = Database(DatabaseConfig(url=sqlite_url))
    authn = Authenticator(OwnAccountStore(db), Hasher(FAST_HASHING))
    yield lambda password: authn.verify(ADDRESS, password).allowed
    db.dispose()


def _add(cli: Cli, stdin: bytes) -> Run:
    return cli("user", "add", ADDRESS, "--password-stdin", stdin=stdin)


@pytest.mark.parametrize(("stdin", "stored", "near"), [
    (b"pw\n", "pw", "pw\n"),
    (b"pw\r\n", "pw", "pw\r"),
    (b"pw", "pw", "pw\n"),
    (b" pw \n", " pw ", "pw"),
    ("pässwörd\r\n".encode(), "pässwörd", "pässwörd\r"),
], ids=["lf", "crlf", "no-newline", "blanks-kept", "utf8-crlf"])
def test_user_add_stores_the_line_without_its_newline(cli: Cli, logs_in: Callable[[str], bool],
                                                      stdin: bytes, stored: str,
                                                      near: str) -> None:
    """One trailing LF or CRLF is stripped; the rest is the password, byte for byte."""
    run = _add(cli, stdin)
    assert (run.code, run.out.strip()) == (0, f"added {ADDRESS}")
    assert logs_in(stored)
    assert not logs_in(near)
    checked = cli("check", ADDRESS, "--password-stdin", stdin=stdin)
    assert (checked.code, checked.out.strip()) == (0, "yes ok")


REFUSED = [
    (b"pw\nsecond\n", "more than one line"),
    (b"pw\n\n", "more than one line"),
    (b"pw\r\n\r\n", "more than one line"),
    (b"pw\nsecond", "more than one line"),
    (b"pw\r", "carriage return"),
    (b"p\rw\n", "carriage return"),
    (b"pw\r\r\n", "carriage return"),
    (b"caf\xe9\n", "not UTF-8"),
    (b"\xed\xa0\x80\n", "not UTF-8"),
    (b"\n", "empty password refused"),
    (b"\r\n", "empty password refused"),
    (b"", "empty password refused"),
    (b"x" * (MAX_PASSWORD_BYTES + 1) + b"\n", f"longer than {MAX_PASSWORD_BYTES} bytes"),
    (b"x" * 10_000 + b"\n", f"longer than {MAX_PASSWORD_BYTES} bytes"),
    (b"x" * 10_000, f"longer than {MAX_PASSWORD_BYTES} bytes"),
    ("é".encode() * 513 + b"\n", f"longer than {MAX_PASSWORD_BYTES} bytes"),
]
REFUSED_IDS = ["second-line", "empty-second-line", "two-crlf", "second-line-no-newline",
               "lone-cr", "cr-inside", "cr-before-crlf", "latin1", "utf8-surrogate", "lf-only",
               "crlf-only", "nothing", "one-byte-over", "10kB", "10kB-no-newline",
               "2-byte-chars-over"]


# One case of each kind for the other commands: they share user add's reader.
_KINDS = ("empty-second-line", "cr-inside", "latin1", "10kB")
ONE_OF_EACH = [REFUSED[REFUSED_IDS.index(i)] for i in _KINDS]
WITH_EMPTY = [*ONE_OF_EACH, REFUSED[REFUSED_IDS.index("lf-only")]]


def _assert_one_line_refusal(run: Run, message: str) -> None:
    assert (run.code, run.out) == (2, "")
    assert run.err.count("\n") == 1
    assert run.err.startswith("eximauthd: error: ")
    assert message in run.err


@pytest.mark.parametrize(("stdin", "message"), REFUSED, ids=REFUSED_IDS)
def test_user_add_refuses_and_stores_nothing(cli: Cli, stdin: bytes, message: str) -> None:
    """Exit 2 with one line naming the problem; no account is created."""
    _assert_one_line_refusal(_add(cli, stdin), message)
    assert json.loads(cli("user", "list", "--json").out) == []


@pytest.mark.parametrize(("stdin", "message"), WITH_EMPTY, ids=[*_KINDS, "lf-only"])
def test_user_passwd_refuses_and_keeps_the_old_password(cli: Cli,
                                                        logs_in: Callable[[str], bool],
                                                        stdin: bytes, message: str) -> None:
    """Exit 2; the password stored before still logs in."""
    assert _add(cli, b"old-pw\n").code == 0
    _assert_one_line_refusal(cli("user", "passwd", ADDRESS, "--password-stdin", stdin=stdin),
                             message)
    assert logs_in("old-pw")


@pytest.mark.parametrize(("stdin", "message"), WITH_EMPTY, ids=[*_KINDS, "lf-only"])
def test_hash_refuses_and_prints_no_hash(cli: Cli, stdin: bytes, message: str) -> None:
    """Exit 2 and nothing on stdout."""
    _assert_one_line_refusal(cli("hash", "--password-stdin", stdin=stdin), message)


@pytest.mark.parametrize(("stdin", "message"), ONE_OF_EACH, ids=_KINDS)
def test_check_refuses_input_it_cannot_read_as_one_password(cli: Cli, stdin: bytes,
                                                            message: str) -> None:
    """Exit 2, no verdict: a second line or bad bytes are not a password to check."""
    assert _add(cli, b"pw\n").code == 0
    _assert_one_line_refusal(cli("check", ADDRESS, "--password-stdin", stdin=stdin), message)


@pytest.mark.parametrize("stdin", [b"\n", b"\r\n", b""], ids=["lf", "crlf", "nothing"])
def test_check_answers_an_empty_password_as_exim_would_be(cli: Cli, stdin: bytes) -> None:
    """`check` passes an empty password on: `no empty-password`, exit 1."""
    assert _add(cli, b"pw\n").code == 0
    run = cli("check", ADDRESS, "--password-stdin", stdin=stdin)
    assert (run.code, run.out.strip()) == (1, "no empty-password")


def test_the_longest_password_verification_accepts_is_stored(
        cli: Cli, logs_in: Callable[[str], bool]) -> None:
    """MAX_PASSWORD_BYTES bytes (two-byte characters), with CRLF: stored and logs in."""
    password = "é" * (MAX_PASSWORD_BYTES // 2)
    assert len(password.encode()) == MAX_PASSWORD_BYTES
    assert _add(cli, password.encode() + b"\r\n").code == 0
    assert logs_in(password)
    run = cli("check", ADDRESS, "--password-stdin", stdin=password.encode() + b"\n")
    assert (run.code, run.out.strip()) == (0, "yes ok")


def test_refusals_never_echo_the_input(cli: Cli) -> None:
    """Neither the password nor its undecodable bytes appear in the error."""
    for stdin in (b"s3cret-line\nsecond-s3cret\n", b"s3cret-\xff\xfe\n", b"s3cret\rmore\n"):
        run = _add(cli, stdin)
        assert run.code == 2
        assert "s3cret" not in run.err
        assert "\\xff" not in run.err
        assert "\ufffd" not in run.err


def test_on_a_terminal_one_line_is_enough(sqlite_url: str, tmp_path: Path) -> None:
    """A terminal is read line by line: the password is taken without waiting for an EOF."""
    import argon2  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env |= FAST_HASHING_ENV | {"EXIMAUTHD_DATABASE_URL": sqlite_url}
    controller, terminal = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "eximauthd", "hash", "--password-stdin"],
                                stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=tmp_path)
        os.write(controller, b"pty-pw\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)
    assert proc.returncode == 0, err
    assert argon2.PasswordHasher().verify(out.decode().strip(), "pty-pw")
