"""docs/library.md: the public names of ``eximauthd`` and the example a Python caller copies."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import eximauthd
from eximauthd import errors

from .support import FAST_HASHING_ENV

LIBRARY_MD = Path(__file__).resolve().parent.parent / "docs" / "library.md"

# What eximauthd exported before docs/library.md: a caller's imports must keep working.
EARLIER_NAMES = {
    "Address", "AddressError", "Authenticator", "ColumnTooNarrowError", "Config", "ConfigError",
    "Decision", "EximauthdError", "Hasher", "HashingError", "Result", "SchemaMissingError",
    "Scheme", "StorageError", "UserExistsError", "UserNotFoundError", "VerifyResult",
    "load_config", "parse_address",
}


def _block(language: str, after: str = "") -> str:
    """The first fenced block of *language* in docs/library.md (after the text *after*)."""
    text = LIBRARY_MD.read_text(encoding="utf-8")
    start = text.index(after) if after else 0
    match = re.compile(rf"^```{language}\n(.*?)^```$", re.MULTILINE | re.DOTALL).search(text, start)
    assert match is not None, f"no ```{language} block in {LIBRARY_MD.name}"
    return match.group(1)


def test_the_documented_example_prints_the_documented_answers(tmp_path: Path) -> None:
    """The first python block of docs/library.md, run in an empty directory on SQLite, prints
    exactly the output the page shows: the right password yes, the wrong, empty and unknown
    ones no, the own address and a granted domain may relay, a foreign and the null sender not."""
    script = tmp_path / "example.py"
    script.write_text(_block("python"), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXIMAUTHD_")}
    env.update(FAST_HASHING_ENV)  # the example reads [hashing] from the environment too
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "AUTH alice@example.test yes ok" in lines
    assert "AUTH alice@example.test no empty-password" in lines
    assert "AUTH mallory@example.test no unknown-user" in lines
    assert "RELAY spam@elsewhere.test no sender-mismatch False" in lines
    assert proc.stdout == _block("text", after="It prints:")
    assert (tmp_path / "eximauthd.sqlite3").is_file()


def test_the_example_imports_public_names_and_only_the_db_layer_besides() -> None:
    """Every name the example imports from ``eximauthd`` is in ``__all__``; the only other
    eximauthd imports are from the storage layer, as the page says."""
    tree = ast.parse(_block("python"))
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom | ast.Import)]
    assert imports
    for node in imports:
        assert isinstance(node, ast.ImportFrom), "the example uses from-imports only"
        if node.module == "eximauthd":
            assert {alias.name for alias in node.names} <= set(eximauthd.__all__)
        else:
            assert node.module is not None
            assert node.module.startswith("eximauthd.db."), node.module


def test_every_public_name_is_importable_and_has_a_line_in_the_docs() -> None:
    """Each name of ``eximauthd.__all__`` exists and has its row in docs/library.md's table,
    and the names exported before the page still are."""
    text = LIBRARY_MD.read_text(encoding="utf-8")
    for name in eximauthd.__all__:
        assert getattr(eximauthd, name) is not None
        assert f"| `{name}` |" in text, f"{name} has no line in docs/library.md"
    assert set(eximauthd.__all__) >= EARLIER_NAMES
    assert len(eximauthd.__all__) == len(set(eximauthd.__all__))


def test_the_whole_exception_hierarchy_is_public() -> None:
    """Every exception class of eximauthd.errors is exported, and every exported exception
    derives from EximauthdError, so ``except eximauthd.EximauthdError`` catches them all."""
    defined = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, Exception)
               and value.__module__ == errors.__name__}
    exported = {name for name in eximauthd.__all__
                if isinstance(getattr(eximauthd, name), type)
                and issubclass(getattr(eximauthd, name), BaseException)}
    assert defined == exported
    for name in exported:
        assert issubclass(getattr(eximauthd, name), eximauthd.EximauthdError)
