"""``eximauthd lint-exim-config``: find the configuration mistakes that make Exim an open relay.

:func:`lint` applies the rules to the logical lines that :func:`.configfile.read_config` reads
from Exim configuration files.  The rules are pure but for one read: an ACL file that
``acl_smtp_rcpt`` names by its path.

Rules (each finding names file:line and the fix):

``lookup-compared-with-password`` (critical)
    ``server_condition`` compares a lookup result with the client's password using ``eq``: an
    unknown user's lookup is empty, so an empty password matches (the seed's open relay).
``plaintext-password-lookup`` (warning)
    a lookup reads a password column and no ``crypteq`` is used: passwords stored in clear.
``set-id-may-be-empty`` (critical)
    ``server_set_id`` is a bare variable and nothing guarantees it is non-empty on success; or a
    ``driver = dovecot`` authenticator has no ``server_set_id`` (``$authenticated_id`` empty).
``auth-without-tls`` (warning)
    a password authenticator is advertised without requiring TLS.
``untrusted-set-sender`` (warning)
    ``untrusted_set_sender = *`` on a server with a critical authentication finding: any user may
    set any envelope sender.
``authenticated-relay-without-sender-check`` (critical)
    the rcpt ACL accepts ``authenticated = *`` with no check that the sender belongs to the login.
``no-local-from-check`` (warning)
    ``no_local_from_check`` together with one of the two previous findings.
``auth-line-logged-on-protocol-error`` (warning)
    ``log_selector`` turns on ``smtp_protocol_error`` (Debian's default does): an AUTH command
    sent where AUTH was not advertised (before STARTTLS) or naming an unknown mechanism is
    written to the mainlog whole, base64 password included.

The rules that concern authentication only apply when the config has *server* authenticators:
Debian's stock configuration (client authenticators only, server examples commented out) has
nothing to flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .configfile import ConfigLine, read_config

__all__ = ["DovecotAuthenticator", "LintFinding", "dovecot_authenticators", "lint",
           "logs_protocol_errors"]

_OPTION = re.compile(r"(?:no_|not_)?([a-z][a-z0-9_]*)(?:\s*=\s*(.*))?$")
_ACL_VERBS = frozenset({"accept", "deny", "defer", "require", "warn", "drop", "discard"})
_PASSWORD_VAR = re.compile(r"\$(?:auth[1-3]|[1-3])\b|\$\{auth[1-3]\}")
_EMPTY_CHECK = re.compile(r"eq\s*\{\s*\$\{?(auth[1-3]|[1-3])\}?\s*\}\s*\{\s*\}")


@dataclass(frozen=True, slots=True)
class LintFinding:
    """A rule that fired."""

    rule: str
    severity: str
    where: str
    message: str
    fix: str

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "severity": self.severity, "where": self.where,
                "message": self.message, "fix": self.fix}


# --- structure ---------------------------------------------------------------------------------

@dataclass
class _Block:
    name: str
    line: ConfigLine
    options: dict[str, ConfigLine] = field(default_factory=dict)


@dataclass
class _Statement:
    verb: str
    lines: list[ConfigLine]

    @property
    def text(self) -> str:
        return " ".join(line.text for line in self.lines)


@dataclass
class _Config:
    main: dict[str, ConfigLine] = field(default_factory=dict)
    authenticators: list[_Block] = field(default_factory=list)
    acls: dict[str, list[_Statement]] = field(default_factory=dict)


def _option(text: str) -> tuple[str, str] | None:
    match = _OPTION.match(text)
    if match is None:
        return None
    name = text.split("=", 1)[0].strip()
    return name, (match.group(2) or "").strip()


def _structure(lines: list[ConfigLine]) -> _Config:
    config = _Config()
    section = "main"
    block: _Block | None = None
    acl: list[_Statement] | None = None
    for line in lines:
        text = line.text
        if text[:6].lower() == "begin ":
            # Exim names sections case-blind; read_config refuses a "begin" naming none.
            section, block, acl = text[6:].strip().lower(), None, None
            continue
        if section == "main":
            parsed = _option(text)
            if parsed is not None:
                config.main[parsed[0]] = line
        elif section == "authenticators":
            if re.fullmatch(r"[A-Za-z0-9_-]+:", text):
                block = _Block(text[:-1], line)
                config.authenticators.append(block)
            elif block is not None and (parsed := _option(text)) is not None:
                block.options[parsed[0]] = line
        elif section == "acl":
            if re.fullmatch(r"[A-Za-z0-9_-]+:", text):
                acl = config.acls.setdefault(text[:-1], [])
                continue
            if acl is None:
                continue
            _add_acl_line(acl, line)
    return config


def _add_acl_line(acl: list[_Statement], line: ConfigLine) -> None:
    word = line.text.split(None, 1)[0]
    if word in _ACL_VERBS:
        acl.append(_Statement(word, [line]))
    elif acl:
        acl[-1].lines.append(line)


def _acl_from_file(path: str) -> list[_Statement]:
    statements: list[_Statement] = []
    for line in read_config([Path(path)]):
        _add_acl_line(statements, line)
    return statements


def _value(line: ConfigLine | None) -> str:
    if line is None:
        return ""
    return line.text.split("=", 1)[1].strip() if "=" in line.text else ""


# --- rules -------------------------------------------------------------------------------------

def lint(lines: list[ConfigLine]) -> list[LintFinding]:
    """Apply every rule to the logical lines of one configuration."""
    config = _structure(lines)
    findings: list[LintFinding] = []
    servers = [b for b in config.authenticators
               if any(name.startswith("server_") for name in b.options)]
    for block in servers:
        findings += _authenticator_rules(block, config)
    if servers:
        findings += _rcpt_acl_rules(config)
    untrusted = config.main.get("untrusted_set_sender")
    # Debian ships untrusted_set_sender = * for its local users; it is part of the problem only
    # where authentication itself is broken, so it is flagged together with such a finding.
    if untrusted is not None and _value(untrusted) == "*" \
            and any(f.severity == "critical" for f in findings):
        findings.append(LintFinding(
            "untrusted-set-sender", "warning", untrusted.where,
            "untrusted_set_sender = * lets any user set any envelope sender, on a server whose "
            "authentication is broken (see the critical findings)",
            "remove it, or list only the patterns those users need"))
    selector = config.main.get("log_selector")
    if servers and selector is not None and logs_protocol_errors(_value(selector)):
        findings.append(LintFinding(
            "auth-line-logged-on-protocol-error", "warning", selector.where,
            "log_selector turns on smtp_protocol_error: an AUTH command the server did not "
            "advertise (e.g. before STARTTLS) or with an unknown mechanism is logged whole, "
            "base64 password included",
            "append -smtp_protocol_error to log_selector (Debian: set MAIN_LOG_SELECTOR in "
            "exim4.conf.localmacros without +smtp_protocol_error; the eximauthd drop-ins do "
            "so when it is unset)"))
    risky = {"untrusted-set-sender", "authenticated-relay-without-sender-check"}
    no_local = config.main.get("no_local_from_check")
    local_check = config.main.get("local_from_check")
    if local_check is not None and _value(local_check).lower() in {"false", "no"}:
        no_local = local_check
    if no_local is not None and any(f.rule in risky for f in findings):
        findings.append(LintFinding(
            "no-local-from-check", "warning", no_local.where,
            "no_local_from_check lets local submissions use any From: header, on top of the "
            "sender freedom flagged above",
            "remove no_local_from_check unless a specific program needs it"))
    return findings


@dataclass(frozen=True, slots=True)
class DovecotAuthenticator:
    """A server authenticator with ``driver = dovecot``: its name, the socket it asks (macros
    substituted) and where that is set."""

    name: str
    socket: str
    where: str


def dovecot_authenticators(lines: list[ConfigLine]) -> list[DovecotAuthenticator]:
    """The ``driver = dovecot`` server authenticators of one configuration.  Pure."""
    found = []
    for block in _structure(lines).authenticators:
        if _value(block.options.get("driver")) != "dovecot":
            continue
        socket = block.options.get("server_socket")
        found.append(DovecotAuthenticator(
            block.name, _value(socket), (socket or block.line).where))
    return found


def logs_protocol_errors(selector: str) -> bool:
    """Whether a ``log_selector`` value logs SMTP protocol errors.  Pure.

    Exim applies the items left to right from its default, which leaves them out (checked on
    Exim 4.96: an unadvertised AUTH is not logged without a log_selector).
    """
    on = False
    for sign, name in re.findall(r"([+-])\s*([A-Za-z0-9_]+)", selector):
        if name in {"all", "smtp_protocol_error"}:
            on = sign == "+"
    return on


def _authenticator_rules(block: _Block, config: _Config) -> list[LintFinding]:
    out: list[LintFinding] = []
    condition = block.options.get("server_condition")
    cond_text = _value(condition)
    driver = _value(block.options.get("driver"))
    seed_hole = bool(condition is not None and re.search(r"\beqi?\s*\{", cond_text)
                     and "lookup" in cond_text and _PASSWORD_VAR.search(cond_text))
    if seed_hole and condition is not None:
        out.append(LintFinding(
            "lookup-compared-with-password", "critical", condition.where,
            f"authenticator {block.name}: server_condition compares a lookup result with the "
            "client's password; for an unknown user the lookup is empty, so an empty password "
            "matches and the client is authenticated",
            "query eximauthd instead ($(eximauthd exim snippets-dir)/eximauthd-auth.conf); "
            "never compare a lookup result with eq"))
    if condition is not None and "lookup" in cond_text and "crypteq" not in cond_text \
            and re.search(r"(?i)select\s+[^}]*pass", cond_text):
        out.append(LintFinding(
            "plaintext-password-lookup", "warning", condition.where,
            f"authenticator {block.name}: the password is read from the database and compared "
            "in clear: passwords are stored in plaintext",
            "migrate the column to argon2id: eximauthd migrate-passwords"))
    set_id = block.options.get("server_set_id")
    bare = set_id is not None and re.fullmatch(r"\$\{?(auth[1-3]|[1-3])\}?", _value(set_id))
    guarded = "readsocket" in cond_text or _EMPTY_CHECK.search(cond_text)
    if set_id is not None and bare and driver == "plaintext" and (seed_hole or not guarded):
        out.append(LintFinding(
            "set-id-may-be-empty", "critical", set_id.where,
            f"authenticator {block.name}: server_set_id is {_value(set_id)}, which is empty when "
            "the client sends an empty user name that the condition accepts (A=plain: in the log)",
            "make server_condition refuse empty values (eximauthd does) and keep server_set_id "
            "the user name"))
    if driver == "dovecot" and not _value(set_id):
        # The dovecot driver sets $authenticated_id from server_set_id only: without it a
        # successful AUTH leaves the id empty, and a relay rule keyed on it has no login to ask.
        where = set_id.where if set_id is not None else block.line.where
        out.append(LintFinding(
            "set-id-may-be-empty", "critical", where,
            f"authenticator {block.name} (driver = dovecot) has no server_set_id: "
            "$authenticated_id is empty after a successful AUTH",
            "server_set_id = $auth1 (the user= of the OK line; eximauthd-dovecot-auth.conf "
            "does this)"))
    out += _tls_rule(block, config, driver)
    return out


def _tls_rule(block: _Block, config: _Config, driver: str) -> list[LintFinding]:
    if driver not in {"plaintext", "dovecot", "cyrus_sasl", "heimdal_gssapi"}:
        return []
    advertise = block.options.get("server_advertise_condition")
    hosts = _value(config.main.get("auth_advertise_hosts")) or "*"
    if "tls" in _value(advertise) or "tls" in hosts:
        return []
    where = advertise.where if advertise is not None else block.line.where
    return [LintFinding(
        "auth-without-tls", "warning", where,
        f"authenticator {block.name} is advertised without TLS: passwords cross the network in "
        "clear",
        "server_advertise_condition = ${if def:tls_in_cipher} (the eximauthd snippets do this)")]


def _is_sender_check(statement: _Statement) -> bool:
    text = statement.text
    return ("$sender_address" in text or "RELAY " in text) and (
        "authenticated" in text or "$authenticated_id" in text)


def _rcpt_acl_rules(config: _Config) -> list[LintFinding]:
    name = _value(config.main.get("acl_smtp_rcpt"))
    if not name:
        return []
    statements = _acl_from_file(name) if name.startswith("/") and Path(name).exists() \
        else config.acls.get(name)
    if statements is None:
        return []
    return _walk_acl(statements, config, checked=False, seen=set())


def _walk_acl(statements: list[_Statement], config: _Config, *, checked: bool,
              seen: set[str]) -> list[LintFinding]:
    out: list[LintFinding] = []
    for statement in statements:
        if _is_sender_check(statement):
            checked = True
        text = statement.text
        if statement.verb == "accept" and re.search(r"authenticated\s*=\s*\*", text) \
                and not checked:
            out.append(LintFinding(
                "authenticated-relay-without-sender-check", "critical",
                statement.lines[0].where,
                "the rcpt ACL accepts any authenticated client for any sender: one guessed or "
                "empty login relays anything",
                "put $(eximauthd exim snippets-dir)/eximauthd-rcpt-acl.conf at the top of the "
                "rcpt ACL (Debian: eximauthd exim install)"))
        for called in re.findall(r"\bacl\s*=\s*([A-Za-z0-9_-]+)", text):
            if called not in seen and called in config.acls:
                out += _walk_acl(config.acls[called], config, checked=checked,
                                 seen=seen | {called})
    return out
