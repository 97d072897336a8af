"""Exim configuration files read the way Exim reads them, into logical lines.

:func:`read_config` drops comments, joins continuation lines, follows
``.include``/``.include_if_exists``, defines and substitutes macros and applies
``.ifdef``/``.ifndef``/``.elifdef``/``.elifndef``/``.else``/``.endif`` with Exim's own state
table (readconf.c): one branch kept, nesting up to 10 deep, the condition being "a macro was
substituted in the directive's line".  Macros work on physical lines, as substrings, in
definition order; ``-D`` definitions come first and override the files'.  Each line keeps the
file and line number it came from.  What the lines mean is :mod:`.lint`'s business.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ConfigLine", "EximConfigError", "read_config"]

_MACRO_DEF = re.compile(r"([A-Z][A-Za-z0-9_]*)\s*(==?)\s*(.*)", re.DOTALL)
_DEF_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*\s*=")
_MAX_INCLUDE_DEPTH = 20
_MAX_NESTING = 10  # Exim's CSTATE_STACK_SIZE

# Exim's readconf.c, kept as it is there.  A state: 0 reading, 1 skipping to .else/.elifdef,
# 2 skipping to .endif.  A directive picks one of four transitions from the current state:
# ".ifdef true", ".ifdef false", ".elifdef true or .else", ".elifdef false".
_NEXT_STATE = ((0, 1, 2, 2), (2, 2, 0, 1), (2, 2, 2, 2))
# directive: (transition if a macro was substituted in its line, if not, stack: +1 push -1 pop)
_DIRECTIVES = {"ifdef": (0, 1, 1), "ifndef": (1, 0, 1), "elifdef": (2, 3, 0),
               "elifndef": (3, 2, 0), "else": (2, 2, 0), "endif": (0, 0, -1)}


class EximConfigError(ValueError):
    """A configuration Exim itself would refuse to read; the message names file:line."""


@dataclass(frozen=True, slots=True)
class ConfigLine:
    """One logical line of configuration with its origin."""

    path: str
    lineno: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.lineno}"


@dataclass
class _Reader:
    # In definition order, which is the order Exim substitutes them in.
    macros: dict[str, str] = field(default_factory=dict)
    command_line: frozenset[str] = frozenset()
    lines: list[ConfigLine] = field(default_factory=list)
    state: int = 0
    stack: list[int] = field(default_factory=list)

    def read(self, path: Path) -> None:
        files: list[tuple[Path, Iterator[tuple[int, str]]]] = [(path, self._open(path))]
        pending: list[str] = []  # the logical line so far, continuation backslashes removed
        start = (path, 0)
        while files:
            current, physical = files[-1]
            try:
                lineno, raw = next(physical)
            except StopIteration:
                files.pop()
                continue
            where = f"{current}:{lineno}"
            text, found = self._expand(raw.strip(), at_start=not pending)
            if text.startswith("#"):
                continue
            if text.startswith(".") and self._directive(text, found, where):
                continue
            if self.state != 0:
                continue
            if self._include(text, files, where):
                continue
            if not pending:
                if text.startswith("."):
                    continue  # a directive eximauthd does not know: nothing a rule reads
                start = (current, lineno)
            logical = ("".join(pending) + text).rstrip()
            if logical.endswith("\\"):
                pending = [logical[:-1]]
                continue
            pending = []
            if logical:
                self._logical(logical, *start)
        if pending and "".join(pending).strip():
            self._logical("".join(pending).strip(), *start)
        if self.stack:
            raise EximConfigError(f"{path}: unexpected end of configuration file: .endif "
                                  "missing")

    @staticmethod
    def _open(path: Path) -> Iterator[tuple[int, str]]:
        return enumerate(path.read_text("utf-8", "replace").splitlines(), 1)

    def _expand(self, text: str, *, at_start: bool) -> tuple[str, bool]:
        """Exim's substitution of a physical line, and whether any macro was substituted.

        Names are found anywhere, as substrings (Exim's ``.ifdef AAA`` is true when ``A`` is
        defined), each macro in definition order over the whole line; a macro's own name at
        the start of its definition is left alone.
        """
        head = ""
        if at_start and (definition := _DEF_NAME.match(text)) is not None:
            head, text = text[:definition.end() - 1], text[definition.end() - 1:]
        found = False
        for name, value in self.macros.items():
            if name in text:
                found = True
                text = text.replace(name, value)
        return (head + text).lstrip(), found

    def _directive(self, text: str, found: bool, where: str) -> bool:
        """Apply a conditional directive; whether *text* was one (then Exim skips the line)."""
        for name, (if_found, if_not, push) in _DIRECTIVES.items():
            if not text.startswith(name, 1):
                continue
            if text[1 + len(name):2 + len(name)] not in {"", " "}:
                return True  # ".ifdefX": Exim skips such a line and changes nothing
            transition = if_found if found else if_not
            if push > 0:
                if len(self.stack) >= _MAX_NESTING:
                    raise EximConfigError(f"{where}: .{name} nested too deeply")
                self.stack.append(self.state)
                self.state = _NEXT_STATE[self.state][transition]
            elif not self.stack:
                raise EximConfigError(f"{where}: .{name} without matching .ifdef")
            elif push < 0:
                self.state = self.stack.pop()
            else:
                self.state = _NEXT_STATE[self.state][transition]
            return True
        return False

    def _include(self, text: str, files: list[tuple[Path, Iterator[tuple[int, str]]]],
                 where: str) -> bool:
        """Follow an ``.include`` line onto *files*; whether *text* was one."""
        for word in (".include", ".include_if_exists"):
            if not (text.startswith(word) and text[len(word):len(word) + 1].isspace()):
                continue
            arg = text[len(word):].strip()
            if len(arg) > 1 and arg[0] == arg[-1] == '"':
                arg = arg[1:-1]
            target = Path(arg)
            if not target.is_absolute():
                target = files[-1][0].parent / target
            if not target.exists():
                if word == ".include":
                    raise OSError(f"{where}: included file {target} does not exist")
                return True
            if len(files) > _MAX_INCLUDE_DEPTH:
                raise OSError(f"{target}: .include nested too deeply")
            files.append((target, self._open(target)))
            return True
        return False

    def _logical(self, text: str, path: Path, lineno: int) -> None:
        where = f"{path}:{lineno}"
        if text.lower() == "begin":
            raise EximConfigError(
                f"{where}: 'begin' without a section name (a macro that expands to nothing?); "
                "Exim refuses this configuration")
        definition = _MACRO_DEF.fullmatch(text)
        if definition is not None and text[:6].lower() != "begin ":
            name, op, value = definition.groups()
            # A -D definition wins over every definition and redefinition in the files.
            if name not in self.command_line and (op == "==" or name not in self.macros):
                self.macros[name] = value
            return
        self.lines.append(ConfigLine(str(path), lineno, text))


def read_config(paths: Iterable[Path], defines: Mapping[str, str] | None = None
                ) -> list[ConfigLine]:
    """Read configuration files as Exim would, into logical lines.

    *defines*: macros given on Exim's command line (``-DNAME=value``); they come first and
    override the files' definitions.

    :raises OSError: a file or a non-optional ``.include`` cannot be read.
    :raises EximConfigError: Exim would refuse the configuration (an unbalanced ``.ifdef``,
        ``begin`` without a section name).
    """
    reader = _Reader(macros=dict(defines or {}), command_line=frozenset(defines or {}))
    for path in paths:
        reader.read(path)
    return reader.lines
