"""``eximauthd doctor --smtp`` against real Exim 4.96: passes the protected rig, fails the seed's.

One service (SQLite, alice and bob) and, in turn, two private Exim daemons asking it: the rig
with the eximauthd snippets, and the seed's vulnerable authenticator (a lookup compared with
``eq``) without the sender check.  The doctor runs as an admin would, as a subprocess.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .. import eximkit
from .. import servicekit as kit
from ..support import ALICE, PASSWORD, in_ci, populate

pytestmark = pytest.mark.exim

LINE = re.compile(r"(ok  |warn|FAIL) \S.*")


@pytest.fixture(scope="module")
def service() -> Iterator[kit.Served]:
    if not (eximkit.exim_available() and shutil.which("openssl")):
        if in_ci():
            pytest.fail("exim4 (exim4-daemon-heavy) is not installed (CI=true: must not skip)")
        pytest.skip("exim4 is not installed")
    base = Path(tempfile.mkdtemp(prefix="eadd-", dir="/tmp"))
    base.chmod(0o755)  # Exim, as Debian-exim, reaches the socket through it
    url = f"sqlite:///{base}/accounts.sqlite3"
    populate(url)
    served = kit.start_service(url, extra_env={
        "EXIMAUTHD_SOCKET_PATH": str(base / "eximauthd.sock"),
        "EXIMAUTHD_SOCKET_GROUP": "Debian-exim",
    })
    try:
        yield served
    finally:
        served.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(Path(served.log_path).parent, ignore_errors=True)


def _protected(tmp: Path, port: int, sink_port: int, socket_path: str) -> Path:
    """The rig with the eximauthd snippets, SMTPUTF8 offered: a homoglyph sender then reaches
    eximauthd's policy instead of being refused by Exim's syntax check."""
    config = eximkit.build_handwritten(tmp, port, sink_port, socket_path)
    config.write_text("smtputf8_advertise_hosts = *\n" + config.read_text())
    return config


def _seed_vulnerable(tmp: Path, port: int, sink_port: int, socket_path: str) -> Path:
    """The seed's authenticator on the rig (passwords in an lsearch file, compared with eq)
    and no eximauthd sender check: the classic open relay."""
    config = eximkit.build_handwritten(tmp, port, sink_port, socket_path)
    (tmp / "passwd").write_text(f"{ALICE}: {PASSWORD}\n")
    text = config.read_text()
    text = text[:text.index("begin authenticators")] + (
        "begin authenticators\n"
        "seed_plain:\n"
        "  driver = plaintext\n  public_name = PLAIN\n  server_prompts = :\n"
        "  server_advertise_condition = yes\n"
        f"  server_condition = ${{if eq{{$auth3}}{{${{lookup{{$auth2}}lsearch{{{tmp}/passwd}}}}}}"
        "{yes}{no}}\n"
        "  server_set_id = $auth2\n"
        "seed_login:\n"
        "  driver = plaintext\n  public_name = LOGIN\n"
        "  server_prompts = Username:: : Password::\n"
        "  server_advertise_condition = yes\n"
        f"  server_condition = ${{if eq{{$auth2}}{{${{lookup{{$auth1}}lsearch{{{tmp}/passwd}}}}}}"
        "{yes}{no}}\n"
        "  server_set_id = $auth1\n")
    text = text.replace(f"  .include {eximkit.SNIPPETS}/eximauthd-rcpt-acl.conf\n", "")
    config.write_text(text)
    return config


def _doctor(service: kit.Served, exim: eximkit.Exim,
            *extra: str) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    argv = ["eximauthd", "doctor", "--exim-config", str(exim.config),
            "--smtp", f"127.0.0.1:{exim.port}", "--user", ALICE, *extra]
    run = subprocess.run([sys.executable, "-m", *argv], input=PASSWORD + "\n",
                         env=service.env, capture_output=True, text=True, timeout=180,
                         check=False)
    lines = run.stdout.splitlines()
    assert run.stderr == ""
    assert lines
    assert all(LINE.fullmatch(line) for line in lines), run.stdout
    return lines, run


def _status(lines: list[str], fragment: str) -> set[str]:
    found = {line[:4].strip() for line in lines if fragment in line}
    assert found, f"no line with {fragment!r}"
    return found


def test_doctor_passes_the_rig_with_the_eximauthd_snippets(service: kit.Served) -> None:
    with eximkit.running_exim(service.socket_path, _protected) as exim:
        lines, run = _doctor(service, exim, "--smtp-source", "127.0.0.2")
        assert run.returncode == 0, run.stdout
        assert [line for line in lines if not line.startswith("ok ")] == []
        assert _status(lines, "AUTH PLAIN with empty user and password") == {"ok"}
        assert _status(lines, "sending as itself to a remote domain: accepted") == {"ok"}
        assert _status(lines, "the null sender <>: refused at RCPT (550)") == {"ok"}
        assert _status(lines, "homoglyph of its domain <alice@\u0435xample.test>: refused at "
                              "RCPT (550)") == {"ok"}
        assert exim.sink.envelopes == []  # RCPT was accepted once, and nothing was sent
        assert any("[127.0.0.2]" in line and "F=<postmaster@example.org> A=eximauthd_plain:"
                   f"{ALICE} rejected RCPT" in line for line in exim.mainlog().splitlines())


def test_doctor_fails_the_seed_config_on_empty_logins_and_foreign_senders(
        service: kit.Served) -> None:
    with eximkit.running_exim(service.socket_path, _seed_vulnerable) as exim:
        lines, run = _doctor(service, exim)
        assert run.returncode == 1
        for label in ("AUTH PLAIN with empty user and password",
                      "AUTH PLAIN with an unknown user and an empty password",
                      "AUTH LOGIN with empty user and password",
                      "authenticated relay as a foreign sender",
                      "authenticated relay as the same local part at another domain",
                      "AUTH offered before STARTTLS",
                      "lookup-compared-with-password"):
            assert _status(lines, label) == {"FAIL"}, label
        # Refused here too, by Exim's own unauthenticated rule: the doctor tells them apart.
        assert _status(lines, "unauthenticated relay") == {"ok"}
        assert exim.sink.envelopes == []


def _without_tls(tmp: Path, port: int, sink_port: int, socket_path: str) -> Path:
    config = eximkit.build_handwritten(tmp, port, sink_port, socket_path)
    config.write_text(config.read_text().replace("tls_advertise_hosts = *",
                                                 "tls_advertise_hosts ="))
    return config


def test_doctor_without_starttls_fails_and_never_sends_the_password_in_clear(
        service: kit.Served) -> None:
    with eximkit.running_exim(service.socket_path, _without_tls) as exim:
        lines, run = _doctor(service, exim)
        assert run.returncode == 1
        assert _status(lines, "smtp: STARTTLS: not offered in EHLO") == {"FAIL"}
        assert _status(lines, "the password would cross in clear") == {"warn"}
        # The snippets offer AUTH only inside TLS: the empty logins get 503, refused.
        assert _status(lines, "AUTH PLAIN with empty user and password: refused at AUTH "
                              "(503)") == {"ok"}
        assert ALICE not in exim.mainlog()
