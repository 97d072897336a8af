"""The shipped Exim files say the same thing in every variant, so they cannot drift apart."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .. import eximkit
from ..support import in_ci

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = ROOT / "eximauthd" / "share" / "exim-snippets"


def _statements(text: str) -> list[str]:
    """Non-comment lines, whitespace-normalised."""
    return [" ".join(line.split()) for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def _block(text: str, start: str) -> list[str]:
    lines = _statements(text)
    first = lines.index(start)
    end = next((i for i in range(first + 1, len(lines)) if lines[i].endswith(":")
                and " " not in lines[i]), len(lines))
    return lines[first:end]


def test_debian_authenticators_match_the_generic_ones() -> None:
    """conf.d/auth/20_eximauthd defines the same two authenticators as eximauthd-auth.conf."""
    generic = (SNIPPETS / "eximauthd-auth.conf").read_text()
    debian = (SNIPPETS / "debian/conf.d/auth/20_eximauthd").read_text()
    for name in ("eximauthd_plain:", "eximauthd_login:"):
        assert _block(generic, name) == _block(debian, name)


def test_acl_statements_match_in_every_variant() -> None:
    """The hand-written, split and monolithic ACLs run the same three statements."""
    generic = _statements((SNIPPETS / "eximauthd-rcpt-acl.conf").read_text())
    split = _statements((SNIPPETS / "debian/conf.d/acl/35_eximauthd_rcpt").read_text())
    mono = _statements((SNIPPETS / "debian/monolithic/eximauthd-rcpt-acl").read_text())
    assert split == ["acl_eximauthd_rcpt:", *generic, "require acl = acl_check_rcpt", "accept"]
    literal = [line.replace("EXIMAUTHD_SOCKET", "/run/eximauthd/eximauthd.sock")
               .replace("{EXIMAUTHD_TIMEOUT}", "{5s}") for line in generic]
    assert mono == [*literal, "require acl = acl_check_rcpt", "accept"]


def test_every_client_value_is_base64_encoded() -> None:
    """No $auth, $sender_address, $local_part or $domain reaches a request line raw."""
    seen = 0
    for path in SNIPPETS.rglob("*"):
        if not path.is_file() or path.suffix == ".patch":
            continue
        for request in re.findall(r"readsocket\{[^}]*\}\{((?:AUTH|RELAY)[^\n]*?)\\n\}",
                                  path.read_text()):
            seen += 1
            bare = re.sub(r"\$\{str2b64:[^}]*\}", "", request)
            assert not re.search(r"\$(auth\d|sender_address|local_part|domain|authenticated_id)",
                                 bare), (path, request)
    # 2 AUTH + 1 RELAY in each of the generic and split files, 1 RELAY in the monolithic ACL
    assert seen == 7


def test_debian_file_names_are_ones_update_exim4_conf_reads() -> None:
    """update-exim4.conf silently ignores names outside [[:alnum:]_-]+."""
    for path in (SNIPPETS / "debian/conf.d").rglob("*"):
        if path.is_file():
            assert re.fullmatch(r"[A-Za-z0-9_-]+", path.name), path


def _reply_regexes() -> dict[str, list[Path]]:
    """Every regex a snippet matches eximauthd's reply with, and the files using it."""
    found: dict[str, list[Path]] = {}
    for path in sorted(SNIPPETS.rglob("*")):
        if path.is_file() and path.suffix != ".patch":
            for regex in re.findall(r"\{(\\N\^(?:\(yes\|no\)|no)\\n.*?\\N)\}", path.read_text()):
                found.setdefault(regex, []).append(path)
    return found


def test_reply_matches_end_at_the_end_of_the_string() -> None:
    """No snippet (nor doc quoting one) matches a reply with `$`, which passes "yes\\n\\n"."""
    for path in [*SNIPPETS.rglob("*"), *(ROOT / "docs").glob("*.md")]:
        if path.is_file():
            assert "\\n?$" not in path.read_text(), path
    found = _reply_regexes()
    assert sorted(found) == ["\\N^(yes|no)\\n\\z\\N", "\\N^no\\n\\z\\N"]
    # 2 in each auth file (generic, split), 2 in each rcpt ACL (generic, split, monolithic)
    assert sum(len(paths) for paths in found.values()) == 10


# subject (as an Exim string: \n is a newline) -> what each reply regex captures, "-" for no match
_REPLIES = {
    "yes\\n": ("yes", "-"), "no\\n": ("no", "no"),
    "yes\\n\\n": ("-", "-"), "no\\n\\n": ("-", "-"), "yes\\nyes\\n": ("-", "-"),
    "yes": ("-", "-"), "yes\\r\\n": ("-", "-"), "\\nyes\\n": ("-", "-"),
    "yes \\n": ("-", "-"), "no\\nyes\\n": ("-", "-"), "defer timeout\\n": ("-", "-"),
    "": ("-", "-"),
}


def test_reply_regexes_accept_only_the_exact_reply_lines_in_real_exim(tmp_path: Path) -> None:
    """Exim 4.96's own ${if match} (PCRE2) takes "yes\\n"/"no\\n" and nothing longer or shorter."""
    if not eximkit.exim_available():
        if in_ci():
            pytest.fail("exim4 is not installed (CI=true: must not skip)")
        pytest.skip("exim4 is not installed")
    config = tmp_path / "be.conf"
    config.write_text(f"spool_directory = {tmp_path}/spool\nlog_file_path = {tmp_path}/%slog\n")
    both, only_no = "\\N^(yes|no)\\n\\z\\N", "\\N^no\\n\\z\\N"
    lines = [f"${{if match{{{subject}}}{{{both}}}{{$1}}{{-}}}} "
             f"${{if match{{{subject}}}{{{only_no}}}{{no}}{{-}}}}" for subject in _REPLIES]
    run = subprocess.run([eximkit.EXIM, "-C", str(config), "-be"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    got = [tuple(line.removeprefix("> ").split(" ")) for line in run.stdout.splitlines()
           if line.startswith("> ") and line.strip() != ">"]
    assert got == list(_REPLIES.values())


def test_dovecot_authenticators_match_in_every_variant() -> None:
    """The `dovecot` driver variant: the same two authenticators, hand-written and Debian,
    each with server_set_id = $auth1 and a condition refusing an empty id."""
    generic = (SNIPPETS / "eximauthd-dovecot-auth.conf").read_text()
    debian = (SNIPPETS / "debian/dovecot/conf.d/auth/20_eximauthd").read_text()
    for name in ("eximauthd_plain:", "eximauthd_login:"):
        block = _block(generic, name)
        assert block == _block(debian, name)
        assert "driver = dovecot" in block
        assert "server_set_id = $auth1" in block
        assert "server_condition = ${if !eq{$auth1}{}}" in block
    for path in (SNIPPETS / "debian/dovecot/conf.d").rglob("*"):
        if path.is_file():
            assert re.fullmatch(r"[A-Za-z0-9_-]+", path.name), path
            # It replaces the readsocket drop-in of the same name.
            assert (SNIPPETS / "debian/conf.d" / path.relative_to(
                SNIPPETS / "debian/dovecot/conf.d")).is_file(), path
