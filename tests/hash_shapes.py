"""Bare stored values shaped like hashes that ``auto`` must refuse, and plaintexts it must not.

Every hash here is made for real: hashlib/base64, passlib (Django, phpass, BSDi), and MariaDB
10.11's own function, run on this project's test server:
    mariadb -e "SELECT OLD_PASSWORD('secret'), OLD_PASSWORD('correct horse')"
    -> 428567f408994404   5fd896f92cfc6fca
"""

from __future__ import annotations

import base64
import hashlib
import re

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
    ("django", django_pbkdf2_sha256.using(rounds=1000, salt="AbCdEfGhIjKl").hash("secret")),
    ("django", django_salted_sha1.using(salt="AbCdE").hash("secret")),
    ("django", django_salted_md5.using(salt="AbCdE").hash("secret")),
    ("django", django_bcrypt.using(rounds=4, salt="AbCdEfGhIjKlMnOpQrStUu").hash("secret")),
    ("django", django_argon2.using(memory_cost=32, rounds=1,
                                   salt=b"AbCdEfGhIjKlMnOp").hash("secret")),
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
    ("crypt-or-prefixed (padded)", " " + phpass.using(rounds=7, salt="AbCdEfGh").hash("secret")),
    ("bsdi-crypt", bsdi_crypt.using(rounds=5001, salt="AbCd").hash("secret")),
    ("bsdi-crypt", bsdi_crypt.using(rounds=725, salt="J9..").hash("hunter2")),
]
_S256 = hashlib.sha256(b"secret")
_S512 = hashlib.sha512(b"secret")
_B64_SSHA512 = _b64(_S512.digest() + b"S" * 16)
# Encodings of the same bytes that an exact format list missed (an attacker review found each
# taken as plaintext): separators, prefixes, other base64 alphabets, wrapping, stray blanks,
# salted and framework formats, crypt strings that lost their "$".
SHAPED += [
    ("base64-encoded", base64.urlsafe_b64encode(_S256.digest()).decode().rstrip("=")),
    ("base64-encoded", base64.b64encode(_h("md5", b"secret").digest()).decode().rstrip("=")),
    ("base64-encoded", base64.urlsafe_b64encode(_S512.digest()).decode()),
    ("base64-encoded", _b64(_S512.digest() + b"S" * 32)),            # {SSHA512}, long salt
    ("base64-encoded", _b64(_S256.digest() + b"S" * 24)),
    ("base64-encoded", _B64_SSHA512[:76] + "\n" + _B64_SSHA512[76:]),  # wrapped at 76
    ("hex-encoded", ":".join(_MD5[i:i + 2] for i in range(0, 32, 2))),
    ("hex-encoded", "-".join(_h("sha1", b"secret").hexdigest()[i:i + 8] for i in range(0, 40, 8))),
    ("hex-encoded", " ".join(_MD5[i:i + 2] for i in range(0, 32, 2))),
    ("hex-encoded", "\\x" + _S256.hexdigest()),                    # PostgreSQL bytea
    ("hex-encoded", _MD5[:16] + "\r\n" + _MD5[16:]),
    ("hex-encoded", "* " + _h("sha1", b"secret").hexdigest()),
    ("salted-or-framework", _S256.hexdigest() + ":abcdefgh:1"),      # Magento 2
    ("salted-or-framework", "abcdefgh:" + _MD5),
    ("salted-or-framework", _MD5 + "$abcd"),
    ("salted-or-framework", "md5:" + _MD5),
    ("md5-hex (padded)", _MD5 + "\x00"),
    ("md5-hex (padded)", _MD5 + "\x0b"),
    ("md5-hex (padded)", _MD5 + "\xa0"),
    ("md5-hex (padded)", "\ufeff" + _MD5),
    ("crypt-without-dollar", "argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$" + "A" * 43),
    ("crypt-without-dollar", "2y$10$" + "a" * 53),
    # "0x"/"0X" and separators together; 8 bytes (OLD_PASSWORD()), the fewest hex-encoded takes.
    ("hex-encoded", "0x" + "-".join(_MD5[i:i + 8] for i in range(0, 32, 8))),
    ("hex-encoded", "0X" + " ".join(_h("sha1", b"secret").hexdigest().upper()[i:i + 8]
                                    for i in range(0, 40, 8))),
    ("hex-encoded", ":".join("428567f408994404"[i:i + 2] for i in range(0, 16, 2))),
    # RFC 4648 base32 of an MD5 digest, as some LDAP and TOTP-era tools write bytes.
    ("base32-encoded", base64.b32encode(_h("md5", b"secret").digest()).decode()),
    ("base32-encoded", base64.b32encode(_h("md5", b"secret").digest()).decode().rstrip("=")),
]

# phpass's "$P$"/"$H$" are "$id$" strings of no supported id: refused as unknown schemes.
PHPASS = [phpass.using(rounds=7, salt="AbCdEfGh").hash("secret"),
          phpass.using(rounds=7, ident="H", salt="AbCdEfGh").hash("secret")]


def shaped_ids(case: tuple[str, str]) -> str:
    # Printable ASCII and no backslash: pytest escapes the id a callable returns every time the
    # module is collected, so a tab or a backslash would name another test in a second
    # collection in one process (scripts/mutation: mutmut collects twice, selects tests by id).
    return re.sub(r"[^!-~]|\\", "_", f"{case[0].replace(' ', '')}-{case[1][:5]}")


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
    "CorrectHorseBatteryStaple",    # a long passphrase: letters only, no digit
    "correcthorsebatterystaple1",   # lower case and a digit, no upper case
    "Summer2024Summer2024",         # 20 base64 characters: 15 bytes, shorter than any digest
    "user:correcthorsebatterystaple",  # ":" and a long run, but a typed one
    "my:Passw0rd:here",
    "1234-5678-9012-345",           # 15 digits with dashes
    "XmasTreeCorrectHorseBattery",  # upper and lower case, an "X", but no digit or symbol
    "correct horse battery staple 1",  # a digit, blanks, no upper case (not even once joined)
]
