"""Bare stored values shaped like hashes that ``auto`` must refuse, and plaintexts it must not.

Every hash here is made for real: hashlib/base64, passlib (Django, phpass, BSDi), and MariaDB
10.11's own function, run on this project's test server:
    mariadb -e "SELECT OLD_PASSWORD('secret'), OLD_PASSWORD('correct horse')"
    -> 428567f408994404   5fd896f92cfc6fca
"""

from __future__ import annotations

import base64
import hashlib

from passlib.hash import (
    bsdi_crypt,
    django_argon2,
    django_bcrypt,
    django_pbkdf2_sha256,
    django_salted_md5,
    django_salted_sha1,
    phpass,
)

__all__ = ["PHPASS", "PLAINTEXTS", "SHAPED", "shaped_ids"]


def _h(name: str, data: bytes) -> hashlib._Hash:
    # The legacy formats under test are made of MD5 and SHA-1: that is the point of them.
    return hashlib.new(name, data)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _ssha(name: str, password: bytes, salt: bytes) -> str:
    return _b64(hashlib.new(name, password + salt).digest() + salt)


_MD5 = _h("md5", b"secret").hexdigest()

# (kind hash_shape reports, stored value); the password each stands for is "secret" unless the
# comment says otherwise.  The value itself sent as the password must never log in.
SHAPED: list[tuple[str, str]] = [
    ("mysql323-hex", "428567f408994404"),                        # MariaDB OLD_PASSWORD()
    ("mysql323-hex", "5fd896f92cfc6fca"),                        # ... of 'correct horse'
    ("base64-digest", _b64(_h("md5", b"secret").digest())),     # {LDAP-MD5} body
    ("base64-digest", _b64(_h("sha1", b"secret").digest())),    # {SHA} body
    ("base64-digest", _b64(hashlib.sha256(b"secret").digest())),
    ("base64-digest", _b64(hashlib.sha512(b"secret").digest())),
    ("base64-salted-digest", _ssha("sha1", b"secret", b"salt")),         # {SSHA} body
    ("base64-salted-digest", _ssha("sha256", b"secret", b"saltsalt")),   # {SSHA256} body
    ("base64-salted-digest", _ssha("sha512", b"secret", b"s" * 16)),     # {SSHA512} body
    ("django", django_pbkdf2_sha256.using(rounds=1000).hash("secret")),
    ("django", django_salted_sha1.hash("secret")),
    ("django", django_salted_md5.hash("secret")),
    ("django", django_bcrypt.using(rounds=4).hash("secret")),
    ("django", django_argon2.using(memory_cost=32, rounds=1).hash("secret")),
    ("django", "unsalted_md5$$" + _MD5),
    ("werkzeug", "pbkdf2:sha256:600000$Ab3dEf9hIjk1mNo2$" + hashlib.sha256(b"x").hexdigest()),
    ("werkzeug", "scrypt:32768:8:1$Ab3dEf9hIjk1mNo2$" + hashlib.sha512(b"x").hexdigest()),
    ("salted-hex", _h("md5", b"secretAbCdEfGh").hexdigest() + ":AbCdEfGh"),  # Joomla 1.5
    ("salted-hex", _h("md5", b"absecret").hexdigest() + ":ab"),              # osCommerce
    ("0x-hex", "0x" + _MD5),                                     # UNHEX()/HEX() round trips
    ("0x-hex", "0X" + _h("sha1", b"secret").hexdigest().upper()),
    ("hex-digest", hashlib.sha256(b"secret").hexdigest()[:48]),  # truncated digest
    ("md5-hex (padded)", _MD5 + " "),                             # CHAR(33) / a trailing blank
    ("md5-hex (padded)", _MD5 + "\n"),
    ("sha1-hex (padded)", "\t" + _h("sha1", b"secret").hexdigest()),
    ("crypt-or-prefixed (padded)", " " + phpass.using(rounds=7).hash("secret")),
    ("bsdi-crypt", bsdi_crypt.using(rounds=5001).hash("secret")),
    ("bsdi-crypt", bsdi_crypt.using(rounds=725, salt="J9..").hash("hunter2")),
]
# phpass's "$P$"/"$H$" are "$id$" strings of no supported id: refused as unknown schemes.
PHPASS = [phpass.using(rounds=7).hash("secret"), phpass.using(rounds=7, ident="H").hash("secret")]


def shaped_ids(case: tuple[str, str]) -> str:
    return f"{case[0].replace(' ', '')}-{case[1][:5]}"


# Realistic plaintext passwords that "auto" must still take as plaintext: 15 hex digits, short
# base64-looking words, passphrases with "$" and ":", hex-looking but odd or short, etc.
PLAINTEXTS: list[str] = [
    "123456789abcdef",           # 15 hex digits
    "deadbeefcafe",              # 12 hex digits
    "0123456789abcdef0",         # 17 hex digits (odd)
    "hunter2",
    "Sommer2024!",
    "Passw0rd",                  # 8 base64 characters, decodes to 6 bytes
    "YWJjZGVmZ2g=",              # base64 of 8 bytes: no digest size
    "Tr0ub4dor&3",
    "correct horse battery staple",
    "pa$$word",
    "my$ecret$phrase",
    "user:pass",
    "time:is:money",
    "md5 is broken",
    "_underscore_",              # "_" but not BSDi's 20 characters
    "_J9..CCCCXBrJUJV154",       # 19: one short of BSDi
    "correct horse ✓ 'quote\" \\",
    "0xCAFE",                    # 0x-hex of 4 digits
    "abcdefghijklmnopqrstuvwxyz",
    "ssha256",
]
