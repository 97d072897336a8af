"""The pure helpers of eximauthd.auth.throttle: the digest of a wrong password and its key.
(The Throttle class is tested with its tables in test_abuse_units.py and
test_abuse_service.py.)"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest

from eximauthd.auth.throttle import load_secret, password_tag
from eximauthd.errors import ConfigError


def test_the_password_tag_is_a_keyed_digest_of_user_and_password() -> None:
    """The tag is 32 hex digits of HMAC-SHA256 over a versioned, NUL-separated message."""
    key = os.urandom(32)
    tag = password_tag(key, "alice@example.test", "pw")
    message = b"eximauthd-throttle-v1\0alice@example.test\0pw"
    assert tag == hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def test_the_password_tag_takes_undecodable_bytes() -> None:
    """Surrogate-escaped bytes from the socket are tagged, not an exception."""
    key = b"k" * 32
    tag = password_tag(key, "alice@example.test", "p\udcffw")
    assert tag != password_tag(key, "alice@example.test", "p\udcfew")
    assert len(tag) == 32
    user_tag = password_tag(key, "\udcffalice@example.test", "pw")
    assert user_tag != password_tag(key, "\udcfealice@example.test", "pw")


def test_user_and_password_cannot_trade_characters() -> None:
    """The separator keeps ("a", "bc") and ("ab", "c") apart."""
    key = b"k" * 32
    assert password_tag(key, "a", "bc") != password_tag(key, "ab", "c")


def test_no_secret_file_means_a_random_key_per_process() -> None:
    """An empty secret_file gives a fresh 32-byte random key each time."""
    first, second = load_secret(""), load_secret("")
    assert len(first) == 32
    assert first != second


def test_the_secret_file_is_read_without_surrounding_blanks(tmp_path: Path) -> None:
    """The key is the file's content, a trailing newline (echo > file) stripped."""
    path = tmp_path / "secret"
    path.write_bytes(b"  0123456789abcdef  \n")
    assert load_secret(str(path)) == b"0123456789abcdef"


def test_a_secret_of_exactly_16_bytes_is_accepted_and_15_refused(tmp_path: Path) -> None:
    """16 bytes is the minimum key; one fewer is a ConfigError naming the setting and file."""
    path = tmp_path / "secret"
    path.write_bytes(b"x" * 16)
    assert load_secret(str(path)) == b"x" * 16
    path.write_bytes(b"x" * 15 + b"\n")
    with pytest.raises(ConfigError) as refused:
        load_secret(str(path))
    assert str(refused.value) == f"throttle.secret_file: {path} holds fewer than 16 bytes"


def test_only_the_first_4096_bytes_of_the_secret_file_are_the_key(tmp_path: Path) -> None:
    """A huge file is not read whole: the key is its first 4 KiB."""
    path = tmp_path / "secret"
    path.write_bytes(b"a" * 4096 + b"b" * 100)
    assert load_secret(str(path)) == b"a" * 4096


def test_an_unreadable_secret_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file is one ConfigError line, with the reason and no traceback."""
    path = tmp_path / "missing"
    with pytest.raises(ConfigError) as refused:
        load_secret(str(path))
    assert str(refused.value) == (
        f"throttle.secret_file: cannot read {path}: No such file or directory")
