"""``eximauthd postfix``: where the shipped Postfix fragments are (docs/postfix.md)."""

from __future__ import annotations

from pathlib import Path

import click

from .app import cli

__all__ = ["FRAGMENTS_DIR", "postfix"]

FRAGMENTS_DIR = Path(__file__).resolve().parent.parent / "share" / "postfix"


@cli.group()
def postfix() -> None:
    """Postfix: the submission service's main.cf and master.cf fragments."""


@postfix.command("snippets-dir")
def snippets_dir() -> None:
    """Print the directory of the installed Postfix fragments (main.cf, master.cf)."""
    click.echo(str(FRAGMENTS_DIR))
