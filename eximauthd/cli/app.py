"""The root of the ``eximauthd`` command: its group, its exit codes and what commands share.

Each command group lives in a module of its own that registers on :data:`cli` when imported;
the package imports them all, so :func:`main` always sees every command.

Exit codes (also in ``docs/cli.md``):

==  =====================================================================================
0   success; for ``check``: the credentials are accepted (yes)
1   ``check`` only: the credentials are refused (no)
2   bad usage or input: unknown option, invalid configuration, malformed address,
    duplicate or missing user, no password given or the one given refused (empty, longer
    than MAX_PASSWORD_BYTES, more than one line, not UTF-8)
3   the database could not answer (unreachable, locked, schema missing or not at the
    installed revision): nothing was changed; ``serve`` did not start
==  =====================================================================================
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NoReturn

import click

from ..config import DEFAULT_CONFIG_PATH, builtin_database_note, load_config
from ..core.credentials import MAX_PASSWORD_BYTES
from ..core.hashing import Hasher
from ..core.protocol import parse_client_ip
from ..db.accounts import AccountStore, make_account_store
from ..db.engine import Database
from ..errors import (
    AddressError,
    ConfigError,
    EximauthdError,
    HashingError,
    ProtocolError,
    StorageError,
    UserExistsError,
    UserNotFoundError,
)
from ..settings import Config

__all__ = ["EXIT_DB", "EXIT_NO", "EXIT_OK", "EXIT_USAGE", "cli", "main"]

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_DB = 3

_INPUT_ERRORS = (ConfigError, AddressError, UserExistsError, UserNotFoundError)


@dataclass
class State:
    """What a command needs, built on first use so ``--help`` never touches a database."""

    config_path: str | None
    # Set once the database is asked for, even if opening it then fails.
    db_wanted: bool = field(default=False, init=False)

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    @cached_property
    def db(self) -> Database:
        self.db_wanted = True
        return Database(self.config.database)

    @cached_property
    def hasher(self) -> Hasher:
        return Hasher(self.config.hashing, password_scheme=self.config.legacy.password_scheme)

    @cached_property
    def accounts(self) -> AccountStore:
        return make_account_store(self.config, self.db)

    def builtin_database_note(self) -> str | None:
        """What to tell the admin when the command used the built-in SQLite database."""
        return builtin_database_note(self.config) if self.db_wanted else None


class _Group(click.Group):
    """Turns eximauthd's errors into one line on stderr and a documented exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            result = super().invoke(ctx)
        except _INPUT_ERRORS as exc:
            _fail(ctx, str(exc), EXIT_USAGE)
        except (StorageError, HashingError) as exc:
            _fail(ctx, str(exc), EXIT_DB)
        except EximauthdError as exc:
            _fail(ctx, str(exc), EXIT_USAGE)
        except (SystemExit, click.exceptions.Exit):  # `check` exits 0 or 1 itself
            _notice(ctx)
            raise
        _notice(ctx)
        return result


def _note(ctx: click.Context) -> str | None:
    # `serve` names its database and configuration in its start line.
    if not isinstance(ctx.obj, State) or ctx.invoked_subcommand == "serve":
        return None
    return ctx.obj.builtin_database_note()


def _notice(ctx: click.Context) -> None:
    """One line when the command used the built-in SQLite default: `user add` run as root in
    /root wrote to /root/eximauthd.sqlite3, not to the production database."""
    if (note := _note(ctx)) is not None:
        click.echo(f"eximauthd: notice: {note}", err=True)


def _fail(ctx: click.Context, message: str, code: int) -> NoReturn:
    # "no such user" on the built-in default is most likely the wrong database: say which.
    note = _note(ctx)
    click.echo(f"eximauthd: error: {message}{f' ({note})' if note else ''}", err=True)
    sys.exit(code)


pass_state = click.make_pass_decorator(State)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
# No envvar= here: load_config reads EXIMAUTHD_CONFIG itself, and so tells the two apart.
@click.option("--config", "config_path", metavar="FILE", type=click.Path(dir_okay=False),
              help=f"TOML configuration (default: $EXIMAUTHD_CONFIG, else {DEFAULT_CONFIG_PATH} "
                   "if it exists, else built-in).")
@click.option("-v", "--verbose", is_flag=True, help="Log informational events to stderr.")
@click.version_option(package_name="eximauthd")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """SMTP AUTH and relay decisions for Exim, fail-closed."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="eximauthd: %(levelname)s %(name)s: %(message)s")
    ctx.obj = State(config_path)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="eximauthd")


# --- shared by the commands ----------------------------------------------------------------------

stdin_option = click.option("--password-stdin", is_flag=True,
                            help="Read the password as one line from standard input.")


def read_password(from_stdin: bool, *, confirm: bool, prompt: str = "Password",
                  checking: bool = False) -> str:
    """One password: a line of stdin (:func:`password_from_stdin`) or a hidden prompt on a
    terminal.

    :raises ConfigError: the input is refused; when *checking* (``check``) an empty password is
        passed on instead, so the command shows the ``no`` Exim would get.
    """
    if from_stdin:
        password = password_from_stdin()
    elif sys.stdin.isatty():
        password = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm,
                                default="", show_default=False)
    else:
        raise ConfigError("standard input is not a terminal: pass --password-stdin")
    if not password and not checking:
        # The empty password is the hole this project exists to close.
        raise ConfigError("empty password refused")
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        # Stored, it could never log in: verification refuses it unread.
        raise ConfigError(f"password refused: longer than {MAX_PASSWORD_BYTES} bytes")
    return password


# The longest line worth reading: a password at the limit, its CRLF and one byte to tell.
_STDIN_READ = MAX_PASSWORD_BYTES + 3


def password_from_stdin() -> str:
    """The password on standard input: one line of UTF-8 without its LF or CRLF.

    Read as bytes, to the end of the input (a second line is only seen there; on a terminal,
    one line), and at most a little over the longest password, so neither a binary file nor an
    endless pipe is taken in.  The bytes never appear in an error.

    :raises ConfigError: a second line (even an empty one), a CR left in the line, bytes that
        are not UTF-8, or more bytes than any password may have.
    """
    stream = sys.stdin.buffer
    data = stream.readline(_STDIN_READ) if stream.isatty() else stream.read(_STDIN_READ)
    line, newline, rest = data.partition(b"\n")
    if rest:
        raise ConfigError("--password-stdin: more than one line on standard input "
                          "(only one trailing newline is stripped)")
    if not newline and len(data) >= _STDIN_READ:
        raise ConfigError(f"password refused: longer than {MAX_PASSWORD_BYTES} bytes")
    if newline and line.endswith(b"\r"):
        line = line[:-1]
    if b"\r" in line:
        raise ConfigError("--password-stdin: a carriage return inside the line "
                          "(only one trailing LF or CRLF is stripped)")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("--password-stdin: the password is not UTF-8") from None


def client_ip_option(value: str, option: str = "--client-ip") -> str:
    """*value* if the socket protocol would accept it as a client address; else ConfigError."""
    try:
        return parse_client_ip(value)
    except ProtocolError:
        raise ConfigError(f"{option}: {value[:64]!r} is not an IPv4 or IPv6 address "
                          "(no scope id)") from None


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for row in [header, *rows]:
        click.echo("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
