"""``eximauthd lint-exim-config``: the seed's config, Debian's stock, and the shipped snippets."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eximauthd.exim.configfile import ConfigLine, EximConfigError, read_config
from eximauthd.exim.lint import lint, logs_protocol_errors

from .. import eximkit
from ..support import in_ci

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _rules(*paths: Path) -> list[str]:
    return [f.rule for f in lint(read_config(list(paths)))]


def _require_debian_exim() -> None:
    if Path("/etc/exim4/exim4.conf.template").exists() and shutil.which("update-exim4.conf"):
        return
    if in_ci():
        pytest.fail("Debian's exim4-config is not installed (CI=true: must not skip)")
    pytest.skip("Debian's exim4-config is not installed")


def test_seed_config_produces_every_finding() -> None:
    """The seed's config: the lookup compared with eq, plaintext, empty id, no TLS, senders."""
    findings = lint(read_config([FIXTURES / "seed-exim.conf"]))
    assert [(f.rule, f.severity, f.where.rsplit(":", 1)[1]) for f in findings] == [
        ("lookup-compared-with-password", "critical", "167"),
        ("plaintext-password-lookup", "warning", "167"),
        ("set-id-may-be-empty", "critical", "168"),
        ("auth-without-tls", "warning", "166"),
        ("untrusted-set-sender", "warning", "156"),
        ("auth-line-logged-on-protocol-error", "warning", "75"),
        ("no-local-from-check", "warning", "70"),
    ]
    assert all(f.fix for f in findings)


@pytest.mark.parametrize(("selector", "logged"), [
    ("", False),
    ("+smtp_protocol_error +smtp_syntax_error +tls_certificate_verified +tls_peerdn", True),
    ("+all -subject -arguments", True),
    ("+all -smtp_protocol_error", False),
    ("-smtp_protocol_error +all", True),
    ("+smtp_protocol_error-smtp_protocol_error", False),
    ("+smtp_syntax_error +tls_peerdn", False),
])
def test_log_selector_logs_protocol_errors(selector: str, logged: bool) -> None:
    """Items apply left to right from Exim's default, which leaves protocol errors out."""
    assert logs_protocol_errors(selector) is logged


def test_protocol_error_logging_flagged_only_with_server_authenticators(tmp_path: Path) -> None:
    """The selector is a finding where this server takes passwords, and not elsewhere."""
    conf = tmp_path / "exim.conf"
    head = "log_selector = +smtp_protocol_error\nbegin authenticators\n"
    client = "out:\n  driver = plaintext\n  public_name = PLAIN\n  client_send = ^u^p\n"
    conf.write_text(head + client)
    assert _rules(conf) == []
    conf.write_text(head + "eximauthd_plain:\n  driver = plaintext\n  public_name = PLAIN\n"
                    "  server_advertise_condition = ${if def:tls_in_cipher}\n"
                    "  server_condition = ${readsocket{/run/x.sock}{AUTH\\n}}\n")
    findings = lint(read_config([conf]))
    assert [(f.rule, f.where) for f in findings] == [
        ("auth-line-logged-on-protocol-error", f"{conf}:1")]
    assert "-smtp_protocol_error" in findings[0].fix


_DOVECOT_AUTH = ("begin authenticators\neximauthd_plain:\n  driver = dovecot\n"
                 "  public_name = PLAIN\n  server_socket = /run/eximauthd/dovecot-auth.sock\n"
                 "  server_advertise_condition = ${if def:tls_in_cipher}\n")


@pytest.mark.parametrize(("set_id", "rules"), [
    ("", ["set-id-may-be-empty"]),
    ("  server_set_id =\n", ["set-id-may-be-empty"]),
    ("  server_set_id = $auth1\n", []),
], ids=["no-server_set_id", "empty-server_set_id", "server_set_id-auth1"])
def test_dovecot_authenticator_without_server_set_id_is_critical(tmp_path: Path, set_id: str,
                                                                 rules: list[str]) -> None:
    """Exim's dovecot driver leaves $authenticated_id empty unless server_set_id sets it."""
    conf = tmp_path / "exim.conf"
    conf.write_text(_DOVECOT_AUTH + set_id)
    findings = lint(read_config([conf]))
    assert [f.rule for f in findings] == rules
    assert all(f.severity == "critical" and "server_set_id = $auth1" in f.fix
               and f.where.startswith(f"{conf}:") for f in findings)


@pytest.mark.parametrize("snippet", ["eximauthd-dovecot-auth.conf",
                                     "debian/dovecot/conf.d/auth/20_eximauthd"])
def test_shipped_dovecot_snippets_lint_clean(tmp_path: Path, snippet: str) -> None:
    conf = tmp_path / "exim.conf"
    conf.write_text("EXIMAUTHD_ADVERTISE = ${if def:tls_in_cipher}\nbegin authenticators\n"
                    f".include {eximkit.SNIPPETS / snippet}\n")
    assert _rules(conf) == []
    edited = tmp_path / "edited.conf"
    edited.write_text("".join(line + "\n" for line in
                              (eximkit.SNIPPETS / snippet).read_text().splitlines()
                              if "server_set_id" not in line))
    conf.write_text(conf.read_text().replace(str(eximkit.SNIPPETS / snippet), str(edited)))
    assert _rules(conf) == ["set-id-may-be-empty", "set-id-may-be-empty"]


class TestReader:
    """Exim syntax: continuations, comments, macros, conditionals, includes."""

    def test_syntax(self, tmp_path: Path) -> None:
        """A rule fires through a macro, a continuation line and an include."""
        (tmp_path / "auth.conf").write_text(
            "seed:\n  driver = plaintext\n  server_condition = ${if eq{$auth3}\\\n"
            "     {${lookup mysql{SELECT password FROM u WHERE n='${quote_mysql:$auth2}'}}}}\n"
            "  server_set_id = $auth2\n  server_advertise_condition = ADV\n")
        main = tmp_path / "exim.conf"
        main.write_text(
            "# comment\nADV = ${if def:tls_in_cipher}\n.ifdef NOPE\nuntrusted_set_sender = *\n"
            ".else\nuntrusted_set_sender = *@example.test\n.endif\n"
            f"begin authenticators\n.include {tmp_path}/auth.conf\n")
        findings = lint(read_config([main]))
        assert [f.rule for f in findings] == [
            "lookup-compared-with-password", "plaintext-password-lookup", "set-id-may-be-empty"]
        assert findings[0].where == f"{tmp_path}/auth.conf:3"

    def test_missing_include_is_an_error(self, tmp_path: Path) -> None:
        """.include of a missing file raises; .include_if_exists does not."""
        conf = tmp_path / "x.conf"
        conf.write_text(".include_if_exists /nonexistent/a\n")
        assert read_config([conf]) == []
        conf.write_text(".include /nonexistent/a\n")
        with pytest.raises(OSError, match="does not exist"):
            read_config([conf])


class TestDebian:
    """No false positives on Debian's stock configuration or with the shipped snippets."""

    def test_stock_template_and_autogenerated(self) -> None:
        """The installed template and config have nothing to flag."""
        _require_debian_exim()
        assert _rules(Path("/etc/exim4/exim4.conf.template")) == []
        generated = Path("/var/lib/exim4/config.autogenerated")
        if generated.exists():
            assert _rules(generated) == []

    @pytest.mark.parametrize("build", [eximkit.build_handwritten, eximkit.build_debian_split,
                                       eximkit.build_debian_monolithic,
                                       eximkit.build_handwritten_dovecot,
                                       eximkit.build_debian_split_dovecot,
                                       eximkit.build_installed("debian-monolithic", "dovecot")],
                             ids=["handwritten", "debian-split", "debian-monolithic",
                                  "handwritten-dovecot", "debian-split-dovecot",
                                  "debian-monolithic-dovecot"])
    def test_configs_with_the_snippets_are_clean(self, tmp_path: Path, build: eximkit.Builder
                                                 ) -> None:
        """Every config the end-to-end tests run is clean."""
        _require_debian_exim()
        tmp_path.chmod(0o755)
        for sub in ("spool", "log", "mail"):
            (tmp_path / sub).mkdir()
        config = build(tmp_path, 2525, 2526, "/run/eximauthd/eximauthd.sock")
        assert _rules(config) == []

    def test_stock_split_with_an_enabled_seed_authenticator(self, tmp_path: Path) -> None:
        """Debian's ACL accepts authenticated = *: with a server authenticator that is flagged."""
        _require_debian_exim()
        etc = tmp_path / "etc"
        shutil.copytree("/etc/exim4", etc)
        (etc / "conf.d/auth/10_seed").write_text(
            "plain_server:\n  driver = plaintext\n  public_name = PLAIN\n"
            "  server_condition = ${if eq{$auth3}{${lookup mysql{SELECT password FROM users "
            "WHERE user='${quote_mysql:$auth2}'}}}}\n  server_set_id = $auth2\n")
        text = (etc / "update-exim4.conf.conf").read_text().replace(
            "dc_use_split_config='false'", "dc_use_split_config='true'")
        (etc / "update-exim4.conf.conf").write_text(text)
        out = tmp_path / "exim4.conf"
        subprocess.run(["update-exim4.conf", "-d", str(etc), "-o", str(out)], check=True,
                       capture_output=True, timeout=60)
        rules = _rules(out)
        assert "lookup-compared-with-password" in rules
        assert "authenticated-relay-without-sender-check" in rules
        assert "untrusted-set-sender" in rules
        # Debian's MAIN_LOG_SELECTOR logs an unadvertised AUTH line, password included.
        assert "auth-line-logged-on-protocol-error" in rules


def test_command_exit_codes() -> None:
    """Findings: exit 1 and file:line on each; clean: exit 0."""
    run = subprocess.run([sys.executable, "-m", "eximauthd", "lint-exim-config",
                          str(FIXTURES / "seed-exim.conf")], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 1
    assert f"{FIXTURES / 'seed-exim.conf'}:167: critical: lookup-compared-with-password" \
        in run.stdout
    assert "7 finding(s)" in run.stdout
    clean = subprocess.run([sys.executable, "-m", "eximauthd", "lint-exim-config",
                            str(eximkit.SNIPPETS / "eximauthd-auth.conf")],
                           capture_output=True, text=True, timeout=60, check=False)
    assert clean.returncode == 0, clean.stdout


def _read(tmp_path: Path, text: str, defines: dict[str, str] | None = None) -> list[str]:
    """The logical lines Exim would read from *text*."""
    conf = tmp_path / "exim.conf"
    conf.write_text(text)
    return [line.text for line in read_config([conf], defines)]


# Config texts and what Exim 4.96 reads from them (checked with exim4 -C FILE -bP, and by
# test_conditionals_agree_with_exim below).
NESTED = """\
AAA = 1
.ifdef AAA
message_size_limit = 1M
.elifdef BBB
message_size_limit = 2M
.else
message_size_limit = 3M
.endif
.ifdef NOPE
.ifdef AAA
queue_only = true
.endif
.elifndef BBB
.ifdef NOPE2
smtp_banner = a
.elifdef AAA
smtp_banner = b
.else
smtp_banner = c
.endif
.endif
"""
CHAIN = """\
.ifdef AAA
message_size_limit = 1M
.elifdef BBB
message_size_limit = 2M
.elifdef CCC
message_size_limit = 3M
.else
message_size_limit = 4M
.endif
"""


class TestConditionals:
    """.ifdef/.ifndef/.elifdef/.elifndef/.else/.endif keep exactly the branch Exim keeps."""

    def test_if_taken_drops_elifdef_and_else(self, tmp_path: Path) -> None:
        """The first true branch only: a later .elifdef of a defined macro and .else are out."""
        assert _read(tmp_path, CHAIN, {"AAA": "", "BBB": "", "CCC": ""}) == [
            "message_size_limit = 1M"]

    def test_elifdef_taken(self, tmp_path: Path) -> None:
        """.ifdef false, .elifdef true: that branch alone, not the next .elifdef nor .else."""
        assert _read(tmp_path, CHAIN, {"BBB": "", "CCC": ""}) == ["message_size_limit = 2M"]
        assert _read(tmp_path, CHAIN, {"CCC": ""}) == ["message_size_limit = 3M"]

    def test_else_taken_when_no_macro_is_defined(self, tmp_path: Path) -> None:
        """Undefined macros everywhere: the .else branch alone."""
        assert _read(tmp_path, CHAIN) == ["message_size_limit = 4M"]

    def test_undefined_macro_and_ifndef(self, tmp_path: Path) -> None:
        """.ifdef of an undefined macro skips; .ifndef of it reads."""
        text = ".ifdef NOPE\na = 1\n.endif\n.ifndef NOPE\nb = 2\n.endif\n"
        assert _read(tmp_path, text) == ["b = 2"]

    @pytest.mark.parametrize(("defines", "expected"), [
        ({}, ["message_size_limit = 1M", "smtp_banner = b"]),
        ({"BBB": ""}, ["message_size_limit = 1M"]),
        ({"AAA": ""}, ["message_size_limit = 1M", "smtp_banner = b"]),
    ], ids=["no-D", "D-BBB", "D-AAA-empty"])
    def test_nested(self, tmp_path: Path, defines: dict[str, str], expected: list[str]
                    ) -> None:
        """Inner conditionals of a skipped branch stay skipped; of a kept one, are evaluated."""
        assert _read(tmp_path, NESTED, defines) == expected

    def test_macro_defined_in_the_file_counts_from_its_line_on(self, tmp_path: Path) -> None:
        """NAME = value defines NAME for the lines after it, not before."""
        text = ".ifdef LATER\na = 1\n.endif\nLATER = x\n.ifdef LATER\nb = LATER\n.endif\n"
        assert _read(tmp_path, text) == ["b = x"]

    def test_command_line_macro_overrides_the_file(self, tmp_path: Path) -> None:
        """-D wins over the file's = and == definitions, as exim -D does."""
        text = "MAC = file\nMAC == again\nopt = MAC\n"
        assert _read(tmp_path, text) == ["opt = again"]
        assert _read(tmp_path, text, {"MAC": "cmdline"}) == ["opt = cmdline"]

    def test_macro_name_is_matched_as_a_substring(self, tmp_path: Path) -> None:
        """Exim's rule: .ifdef AAA is true when A is defined (a substitution took place)."""
        assert _read(tmp_path, "A = 1\n.ifdef AAA\nx = 1\n.else\nx = 2\n.endif\n") == ["x = 1"]

    @pytest.mark.parametrize(("text", "message"), [
        (".ifdef A\nx = 1\n", ".endif missing"),
        (".else\nx = 1\n", ":1: .else without matching .ifdef"),
        (".endif\n", ":1: .endif without matching .ifdef"),
        (".elifdef A\n.endif\n", ":1: .elifdef without matching .ifdef"),
        (".ifdef A\n" * 11 + ".endif\n" * 11, ":11: .ifdef nested too deeply"),
    ], ids=["endif-missing", "else-alone", "endif-alone", "elifdef-alone", "too-deep"])
    def test_unbalanced_conditionals_are_errors(self, tmp_path: Path, text: str,
                                                message: str) -> None:
        """What Exim refuses to start with is an error naming the place, not a guess."""
        with pytest.raises(EximConfigError, match=re.escape(message)):
            _read(tmp_path, text)

    def test_begin_with_a_macro_expanding_to_nothing(self, tmp_path: Path) -> None:
        """begin SECTION with SECTION empty: an error naming the line, not an IndexError."""
        with pytest.raises(EximConfigError, match=r"exim\.conf:2: 'begin' without a section"):
            _read(tmp_path, "SECTION =\nbegin SECTION\nx:\n  driver = plaintext\n")

    def test_lint_of_lines_with_an_empty_begin_does_not_raise(self) -> None:
        """lint() given lines from elsewhere with "begin " alone reads no section, no IndexError."""
        assert lint([ConfigLine("x.conf", 1, "begin "), ConfigLine("x.conf", 2, "a = b")]) == []

    def test_kept_branch_is_linted_and_dropped_branch_is_not(self, tmp_path: Path) -> None:
        """The seed's authenticator in an .elifdef branch Exim skips is no finding; kept, it is."""
        seed = ("seed:\n  driver = plaintext\n  server_condition = ${if eq{$auth3}{${lookup "
                "mysql{SELECT password FROM u WHERE n='${quote_mysql:$auth2}'}}}}\n"
                "  server_set_id = $auth2\n")
        conf = tmp_path / "exim.conf"
        conf.write_text("begin authenticators\n.ifdef SAFE\n.elifdef SAFE2\n" + seed
                        + ".endif\n")
        assert _rules(conf) == []
        assert "lookup-compared-with-password" in [
            f.rule for f in lint(read_config([conf], {"SAFE2": ""}))]
        assert [f.rule for f in lint(read_config([conf], {"SAFE": "", "SAFE2": ""}))] == []


class TestCommandErrors:
    """lint-exim-config's -D and its errors."""

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "eximauthd", "lint-exim-config", *args],
                              capture_output=True, text=True, timeout=60, check=False)

    def test_begin_macro_empty_is_one_error_line(self, tmp_path: Path) -> None:
        """begin with an empty macro: exit 2, one error line, no traceback."""
        conf = tmp_path / "exim.conf"
        conf.write_text("SECTION =\nbegin SECTION\n")
        run = self._run(str(conf))
        assert (run.returncode, run.stdout) == (2, "")
        assert run.stderr == (f"eximauthd: error: {conf}:2: 'begin' without a section name (a "
                              "macro that expands to nothing?); Exim refuses this "
                              "configuration\n")

    def test_dash_d_selects_the_branch(self, tmp_path: Path) -> None:
        """-DNAME and -DNAME=value define macros for .ifdef, as exim -D does."""
        conf = tmp_path / "exim.conf"
        conf.write_text(".ifdef OPEN\nuntrusted_set_sender = OPEN\n.endif\n"
                        "begin authenticators\nseed:\n  driver = plaintext\n  server_condition"
                        " = ${if eq{$auth3}{${lookup mysql{SELECT password FROM u}}}}\n")
        assert "untrusted-set-sender" not in self._run(str(conf)).stdout
        run = self._run("-DOPEN=*", str(conf))
        assert run.returncode == 1
        assert "untrusted-set-sender" in run.stdout

    def test_bad_macro_name_is_exit_2(self, tmp_path: Path) -> None:
        """-D with a name Exim would not take: exit 2 before reading anything."""
        conf = tmp_path / "exim.conf"
        conf.write_text("x = 1\n")
        run = self._run("-Dlower=1", str(conf))
        assert run.returncode == 2
        assert run.stderr.startswith("eximauthd: error: -D 'lower=1': a macro name")


@pytest.mark.exim
@pytest.mark.parametrize("defines", [{}, {"BBB": ""}, {"AAA": ""}, {"CCC": "1"}],
                         ids=["no-D", "D-BBB", "D-AAA", "D-CCC"])
@pytest.mark.parametrize("text", [NESTED, CHAIN], ids=["nested", "chain"])
def test_conditionals_agree_with_exim(tmp_path: Path, text: str, defines: dict[str, str]
                                      ) -> None:
    """What Exim 4.96 itself reads (exim4 -C FILE -D... -bP) is what read_config keeps."""
    if not eximkit.exim_available():
        if in_ci():
            pytest.fail("exim4 is not installed (CI=true: must not skip)")
        pytest.skip("exim4 is not installed")
    conf = tmp_path / "exim.conf"
    conf.write_text(text)
    options = ["message_size_limit", "smtp_banner", "queue_only"]
    argv = [eximkit.EXIM, "-C", str(conf), *[f"-D{k}={v}" for k, v in defines.items()],
            "-bP", *options]
    exim = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    ours = {line.text.split(" = ", 1)[0]: line.text for line in read_config([conf], defines)}
    for line in exim.stdout.splitlines():
        name = line.split(" = ", 1)[0].removeprefix("no_")
        if name == "queue_only":
            assert ("queue_only" in ours) is (line == "queue_only")
        elif name in ours:
            assert ours[name] == line
        else:  # Exim's default: no line of ours sets it
            assert name not in ours
