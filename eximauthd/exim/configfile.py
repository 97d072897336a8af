"""Exim configuration files read the way Exim reads them, into logical lines.

:func:`read_config` drops comments, joins continuation lines, follows
``.include``/``.include_if_exists``, defines and substitutes macros and applies
``.ifdef``/``.ifndef``/``.elifdef``/``.elifndef``/``.else``/``.endif``.  Each line keeps the
file and line number it came from.  What the lines mean is :mod:`.lint`'s business.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ConfigLine", "read_config"]

_MACRO_DEF = re.compile(r"([A-Z][A-Za-z0-9_]*)\s*(==?)\s*(.*)")
_MACRO_NAME = re.compile(r"[A-Z][A-Za-z0-9_]*")
_MAX_INCLUDE_DEPTH = 20


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
    macros: dict[str, str] = field(default_factory=dict)
    lines: list[ConfigLine] = field(default_factory=list)

    def read(self, path: Path, depth: int = 0) -> None:
        if depth > _MAX_INCLUDE_DEPTH:
            raise OSError(f"{path}: .include nested too deeply")
        stack: list[bool] = []  # for each open .if: is this branch active?
        physical = path.read_text("utf-8", "replace").splitlines()
        index = 0
        while index < len(physical):
            start = index + 1
            text = physical[index].strip()
            index += 1
            if text.startswith("#"):
                continue
            while text.endswith("\\") and index < len(physical):
                text = text[:-1] + physical[index].strip()
                index += 1
            if not text:
                continue
            if text.startswith("."):
                self._directive(text, stack, path, start, depth)
                continue
            if not all(stack):
                continue
            self._logical(text, path, start)

    def _directive(self, text: str, stack: list[bool], path: Path, lineno: int,
                   depth: int) -> None:
        word, _, arg = text.partition(" ")
        arg = arg.strip()
        match word:
            case ".ifdef" | ".ifndef":
                defined = arg in self.macros
                stack.append(defined if word == ".ifdef" else not defined)
            case ".elifdef" | ".elifndef":
                if stack:
                    defined = arg in self.macros
                    stack[-1] = (not stack[-1]) and (defined if word == ".elifdef"
                                                     else not defined)
            case ".else":
                if stack:
                    stack[-1] = not stack[-1]
            case ".endif":
                if stack:
                    stack.pop()
            case ".include" | ".include_if_exists":
                if all(stack):
                    self._include(word, arg, path, lineno, depth)
            case _:
                pass

    def _include(self, word: str, arg: str, path: Path, lineno: int, depth: int) -> None:
        target = Path(self._expand(arg))
        if not target.is_absolute():
            target = path.parent / target
        if target.exists():
            self.read(target, depth + 1)
        elif word == ".include":
            raise OSError(f"{path}:{lineno}: included file {target} does not exist")

    def _logical(self, text: str, path: Path, lineno: int) -> None:
        definition = _MACRO_DEF.fullmatch(text)
        if definition is not None and not text.startswith("begin "):
            name, op, value = definition.groups()
            if op == "==" or name not in self.macros:
                self.macros[name] = self._expand(value)
            return
        self.lines.append(ConfigLine(str(path), lineno, self._expand(text)))

    def _expand(self, text: str) -> str:
        if not self.macros:
            return text
        for _ in range(10):  # macros may use macros
            new = _MACRO_NAME.sub(lambda m: self.macros.get(m.group(0), m.group(0)), text)
            if new == text:
                break
            text = new
        return text


def read_config(paths: Iterable[Path]) -> list[ConfigLine]:
    """Read configuration files as Exim would, into logical lines.

    :raises OSError: a file or a non-optional ``.include`` cannot be read.
    """
    reader = _Reader()
    for path in paths:
        reader.read(path)
    return reader.lines
