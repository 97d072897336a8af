"""docs/cli.md, the man pages and shell completion stay true to the command itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from eximauthd.cli import app, cli

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "cli.md").read_text()
EXIMAUTHD = Path(sys.executable).with_name("eximauthd")


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path + " ")


COMMANDS = list(_commands(cli))
LEAVES = [(p, c) for p, c in COMMANDS if not isinstance(c, click.Group)]


def _options(command: click.Command) -> list[str]:
    """Each option by its longest name (``--json``, ``-D``), the help option left out."""
    return [max(p.opts, key=len) for p in command.params
            if isinstance(p, click.Option) and p.name != "help"]


def _rows_of(path: str) -> list[str]:
    """The lines of docs/cli.md that name the command in code: `user show ADDRESS ...`."""
    pattern = re.compile(rf"`(?:eximauthd )?{re.escape(path)}(?:[ `])")
    return [line for line in DOC.splitlines() if pattern.search(line)]


def test_the_tree_has_the_commands_this_test_knows_of() -> None:
    """The walk is real: it finds nested commands, not only the root's."""
    assert {"user show", "user list", "grant add", "db upgrade", "serve"} <= dict(LEAVES).keys()


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[p for p, _ in LEAVES])
def test_every_command_and_its_options_are_in_docs_cli_md(path: str,
                                                          command: click.Command) -> None:
    rows = _rows_of(path)
    assert rows, f"docs/cli.md does not document `{path}`"
    for option in _options(command):
        assert any(option in row for row in rows), \
            f"docs/cli.md: no line naming `{path}` mentions {option}"


def test_the_global_options_are_in_docs_cli_md() -> None:
    for option in _options(cli):
        assert option in DOC, option


def test_the_exit_codes_of_app_and_of_docs_cli_md_are_the_same() -> None:
    assert app.__doc__ is not None
    in_code = {int(m) for m in re.findall(r"^(\d{1,3})\s{2,}", app.__doc__, re.MULTILINE)}
    in_doc = {int(m) for m in re.findall(r"^\| (\d{1,3}) \|", DOC, re.MULTILINE)}
    assert in_code == in_doc
    assert {app.EXIT_OK, app.EXIT_NO, app.EXIT_USAGE, app.EXIT_DB, app.EXIT_INTERRUPTED,
            app.EXIT_PIPE} <= in_code


@pytest.mark.parametrize(("shell", "marker"), [
    ("bash", "complete -o nosort -F _eximauthd_completion eximauthd"),
    ("zsh", "#compdef eximauthd"),
    ("fish", "complete --no-files --command eximauthd"),
])
def test_the_command_prints_its_completion_script(shell: str, marker: str) -> None:
    """What docs/cli.md tells to put in the shell's start-up files."""
    done = subprocess.run([str(EXIMAUTHD)], capture_output=True, text=True, timeout=60,
                          env=os.environ | {"_EXIMAUTHD_COMPLETE": f"{shell}_source"},
                          check=False)
    assert done.returncode == 0, done.stderr
    assert marker in done.stdout
    assert f"eximauthd {shell}_source" in DOC or f"{shell}_source eximauthd" in DOC


def test_bash_completion_completes_subcommands_and_options() -> None:
    """The script's request, as bash makes it: `eximauthd user sh<TAB>`, `user list --<TAB>`."""
    def complete(words: str) -> list[str]:
        done = subprocess.run(
            [str(EXIMAUTHD)], capture_output=True, text=True, timeout=60, check=True,
            env=os.environ | {"_EXIMAUTHD_COMPLETE": "bash_complete", "COMP_WORDS": words,
                              "COMP_CWORD": str(len(words.split(" ")) - 1)})
        return [line.split(",", 1)[1] for line in done.stdout.splitlines()]

    assert complete("eximauthd user sh") == ["show"]
    assert {"--json", "--domain"} <= set(complete("eximauthd user list --"))


def test_the_shipped_man_pages_are_the_commands_help() -> None:
    """man/ is what scripts/manpages writes from the help now (run it after a change)."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "manpages"), "--check"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert {f"eximauthd-{p.replace(' ', '-')}.1" for p, _ in COMMANDS} | {"eximauthd.1"} == \
        {p.name for p in (ROOT / "man").glob("*.1")}
