"""``eximauthd config show``: the settings in force and where each one came from.

Like ``postconf -n`` or ``doveconf -n``: one line per setting, ``section.key = value  # origin``,
where the value is written as TOML (the output, secrets aside, can be read back as a
configuration file) and the origin is ``default``, ``file PATH`` or ``environment VARIABLE``.
A first comment line names the file and how it was found.  Secrets are never printed: a URL's
password and credential query values are masked as :func:`~eximauthd.settings.mask_url` does,
``http.token`` is ``********``; a file holding a secret (``database.password_file``,
``http.token_file``, ``throttle.secret_file``) is shown by its path, never read out.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import click

from ..config import DEFAULT_CONFIG_PATH
from ..settings import LOADED, SECRET, Config, ConfigSource, mask_url
from .app import State, cli, pass_state

__all__ = ["MASK", "setting_lines"]

MASK = "********"
# What a TOML basic string may not hold as itself: the quote, the backslash, control characters.
_TOML_ESCAPE_RE = re.compile(r'["\\\x00-\x1f\x7f]')


@cli.group("config")
def config_group() -> None:
    """Show the configuration in force."""


@config_group.command("show")
@click.option("-n", "--non-default", is_flag=True,
              help="Only the settings set by the file or the environment.")
@pass_state
def config_show(state: State, non_default: bool) -> None:
    """Print every setting as `section.key = value  # origin`, secrets masked."""
    config = state.config
    click.echo(f"# configuration file: {_file_line(config)}")
    for line in setting_lines(config, only_set=non_default):
        click.echo(line)


def _file_line(config: Config) -> str:
    if config.found is ConfigSource.BUILT_IN:
        return (f"none (no {DEFAULT_CONFIG_PATH}, no EXIMAUTHD_CONFIG, no --config): "
                "built-in defaults")
    return f"{config.source} ({config.found.value})"


def setting_lines(config: Config, *, only_set: bool = False) -> Iterator[str]:
    """``section.key = value  # origin`` for every setting of *config*, in the order of the
    documentation; with *only_set*, only those the file or the environment set."""
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        if not dataclasses.is_dataclass(values):
            continue  # source, found, origins: about the configuration, not settings
        for field in dataclasses.fields(values):
            if field.metadata.get(LOADED):
                continue  # not a key: password_file's line stands for it
            key = f"{section.name}.{field.name}"
            origin = config.origin(key)
            if only_set and origin == "default":
                continue
            shown = _shown(getattr(values, field.name), field.metadata.get(SECRET))
            yield f"{key} = {_toml(shown)}  # {origin}"


def _shown(value: Any, secret: str | None) -> Any:
    if secret is None or not value:
        return value  # that a secret is unset is no secret
    if secret == "url":  # noqa: S105 -- a kind of secret, not one
        return tuple(map(mask_url, value)) if isinstance(value, tuple) else mask_url(value)
    return MASK


def _toml(value: Any) -> str:
    """*value* (str, int, bool or a tuple of str) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    escaped = _TOML_ESCAPE_RE.sub(lambda m: f"\\u{ord(m.group()):04x}", str(value))
    return f'"{escaped}"'
