"""``eximauthd exim``: where the Exim snippets are, and wiring them into Debian's Exim.

Exit codes of ``exim install`` / ``exim uninstall`` (also in ``docs/cli.md``): 0 done or
nothing to do, 2 bad usage, 4 the host does not fit (no Exim tree, the other layout, a file
not writable or a template that cannot take the change): nothing changed, 5 the regenerated
configuration failed ``update-exim4.conf`` or ``exim4 -bV``: every file put back.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from ..exim.install import (
    DEFAULT_ETC,
    SNIPPETS_DIR,
    Auth,
    CheckFailedError,
    HostMismatchError,
    Layout,
    Plan,
    apply_plan,
    check_config,
    check_host,
    include_lines,
    plan_install,
    plan_uninstall,
    read_tree,
    require_tools,
    shipped_files,
    unapply,
)
from .app import EXIT_OK, cli

__all__ = ["EXIT_CHECK_FAILED", "EXIT_HOST", "exim"]

EXIT_HOST = 4
EXIT_CHECK_FAILED = 5


@cli.group()
def exim() -> None:
    """The shipped Exim snippets, and wiring them into Debian's Exim configuration."""


@exim.command("snippets-dir")
def snippets_dir() -> None:
    """Print the directory of the installed Exim snippets."""
    click.echo(str(SNIPPETS_DIR))


_layout_option = click.option(
    "--layout", required=True, type=click.Choice([layout.value for layout in Layout]),
    help="debian-split (conf.d drop-ins), debian-monolithic (the template) or include "
         "(print the .include lines for a hand-written configuration).")
_etc_option = click.option(
    "--etc", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_ETC,
    show_default=True, help="The Exim configuration tree (a copy, to try it out).")
_dry_run_option = click.option("--dry-run", is_flag=True,
                               help="Print what would change; change nothing.")


@exim.command("install")
@_layout_option
@click.option("--auth", "auth", type=click.Choice([a.value for a in Auth]),
              default=Auth.READSOCKET.value, show_default=True,
              help="How Exim asks eximauthd for AUTH: ${readsocket} on [socket], or Exim's "
                   "dovecot driver on [dovecot_auth] (enable it in eximauthd's configuration). "
                   "Installing the other one over an installed layout switches it.")
@_etc_option
@_dry_run_option
def install(layout: str, auth: str, etc: Path, dry_run: bool) -> None:
    """Install the snippets into Debian's Exim configuration, checked, with backups.

    Exit 0: installed or already installed; 4: the host does not fit, nothing changed; 5: the
    result failed update-exim4.conf or exim4 -bV, every file put back.
    """
    chosen, how = Layout(layout), Auth(auth)
    if chosen is Layout.INCLUDE:
        click.echo(include_lines(auth=how), nl=False)
        sys.exit(EXIT_OK)
    etc = etc.absolute()
    try:
        files, settings = read_tree(chosen, etc)
        check_host(chosen, etc, settings)
        plan = plan_install(chosen, etc, files, shipped_files(), how)
    except HostMismatchError as exc:
        _fail(str(exc), EXIT_HOST)
    _carry_out(plan, files, dry_run, done="already installed")
    if how is Auth.DOVECOT and plan.changes and not dry_run:
        click.echo("next: eximauthd needs [dovecot_auth] enabled = true, its path = "
                   "EXIMAUTHD_DOVECOT_SOCKET (default /run/eximauthd/dovecot-auth.sock), a group "
                   "Exim is in (like socket.group); eximauthd doctor checks both ends")


@exim.command("uninstall")
@_layout_option
@_etc_option
@_dry_run_option
def uninstall(layout: str, etc: Path, dry_run: bool) -> None:
    """Undo `exim install`: put the backups back and remove the files it added.

    Either --auth variant is recognised as eximauthd's.  Exit codes as for install.
    """
    chosen = Layout(layout)
    if chosen is Layout.INCLUDE:
        click.echo("--layout include changed nothing: delete the .include lines of "
                   f"{SNIPPETS_DIR} from your configuration by hand")
        sys.exit(EXIT_OK)
    etc = etc.absolute()
    try:
        files, _settings = read_tree(chosen, etc)
        plan = plan_uninstall(chosen, etc, files, shipped_files())
    except HostMismatchError as exc:
        _fail(str(exc), EXIT_HOST)
    _carry_out(plan, files, dry_run, done="not installed")


def _carry_out(plan: Plan, files: dict[Path, bytes | None], dry_run: bool, done: str) -> None:
    if not plan.changes:
        for act in plan.actions:
            click.echo(act.describe())
        click.echo(f"{done}: nothing changed")
        return
    if dry_run:
        for act in plan.actions:
            click.echo(f"would: {act.describe()}")
        click.echo("dry run: nothing changed")
        return
    try:
        require_tools()
        apply_plan(plan, files)
    except HostMismatchError as exc:
        _fail(str(exc), EXIT_HOST)
    try:
        check_config(plan.etc)
    except (CheckFailedError, HostMismatchError) as exc:
        unapply(list(plan.actions), files)
        code = EXIT_CHECK_FAILED if isinstance(exc, CheckFailedError) else EXIT_HOST
        _fail(f"{exc} (rolled back: every file is as it was)", code)
    except BaseException:
        # Ctrl-C during the check: the files must not stay installed unchecked.
        unapply(list(plan.actions), files)
        raise
    for act in plan.actions:
        click.echo(act.describe())
    click.echo(f"checked: update-exim4.conf -d {plan.etc} and exim4 -bV accept the result")
    click.echo("next: invoke-rc.d exim4 restart (it runs update-exim4.conf)")


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"eximauthd: error: {message}", err=True)
    sys.exit(code)
