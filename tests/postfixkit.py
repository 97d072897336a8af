"""A private Postfix 3.7 on a free loopback port, for end-to-end tests beside Exim.

Installing Debian's ``postfix`` package would remove exim4 (both are the mail transport
agent), so the rig downloads the .deb once into a cache directory (``apt-get download``),
unpacks it with ``dpkg-deb -x`` and runs it with its own configuration, queue and data
directories.  Its master.cf is the shipped submission service
(eximauthd/share/postfix/master.cf) on a loopback port and without chroot, its main.cf the
shipped fragment after a minimal base; eximauthd's sockets sit in the rig's queue directory
under the names the fragments use.  Mail that passes is discarded.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import smtplib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .eximkit import ROOT, _make_certificate
from .servicekit import free_port

SHARE = ROOT / "eximauthd" / "share" / "postfix"
# Where the .deb and its unpacked tree are kept between runs; scripts/test fills it.
CACHE = Path(os.environ.get("EXIMAUTHD_POSTFIX_CACHE",
                            Path.home() / ".cache" / "eximauthd-tests" / "postfix"))

MAIN_BASE = """\
# test rig only: a private Postfix on a free loopback port, everything in {tmp}
compatibility_level = 3.6
config_directory = {tmp}/conf
queue_directory = {tmp}/queue
data_directory = {tmp}/data
meta_directory = {root}/etc/postfix
shlib_directory = {root}/usr/lib/postfix
daemon_directory = {root}/usr/lib/postfix/sbin
command_directory = {root}/usr/sbin
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = mx.example.test
mydestination = example.test
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
maillog_file = {tmp}/maillog
maillog_file_prefixes = /tmp
import_environment = MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C
  LD_LIBRARY_PATH={root}/usr/lib/postfix
local_transport = discard
default_transport = discard
smtpd_tls_cert_file = {tmp}/cert.pem
smtpd_tls_key_file = {tmp}/key.pem
smtpd_policy_service_retry_delay = 1s
"""

SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
discard   unix  -       -       n       -       -       discard
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_root() -> Path:
    """The unpacked Debian postfix package: downloaded and unpacked once into :data:`CACHE`.

    :raises RuntimeError: the package cannot be downloaded or unpacked.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    debs = sorted(CACHE.glob("postfix_*.deb"))
    if not debs:
        download = subprocess.run(["apt-get", "download", "postfix"], cwd=CACHE,
                                  capture_output=True, text=True, timeout=300, check=False)
        debs = sorted(CACHE.glob("postfix_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download postfix failed ({download.returncode}): "
                               f"{download.stderr.strip()[-500:]}")
    deb = debs[-1]
    root = CACHE / deb.stem
    if not (root / "usr/sbin/postfix").exists():
        partial = Path(tempfile.mkdtemp(prefix="unpack-", dir=CACHE))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(partial)], check=True,
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)  # whole or not at all: a run killed mid-unpack leaves no half tree
    root.chmod(0o755)
    return root


def ensure_accounts() -> None:
    """The postfix user and the postdrop group the package's scripts would have made."""
    try:
        grp.getgrnam("postdrop")
    except KeyError:
        subprocess.run(["groupadd", "-r", "postdrop"], check=True, capture_output=True)
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        subprocess.run(["useradd", "-r", "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                        "-U", "postfix"], check=True, capture_output=True)


def master_cf(port: int) -> str:
    """The shipped submission service on 127.0.0.1:*port*, not chrooted, and the daemons."""
    shipped = (SHARE / "master.cf").read_text()
    service, count = re.subn(r"^submission inet n       -       y",
                             f"127.0.0.1:{port} inet n       -       n", shipped, flags=re.M)
    if count != 1:
        raise RuntimeError("the shipped master.cf has no submission line to run")
    return service + SERVICES


@dataclass
class Postfix:
    """A running private Postfix."""

    tmp: Path
    root: Path
    port: int

    @property
    def conf(self) -> Path:
        return self.tmp / "conf"

    @property
    def private(self) -> Path:
        """Where the shipped fragments look for eximauthd's sockets (queue_directory/private)."""
        return self.tmp / "queue" / "private"

    @property
    def auth_socket(self) -> str:
        return str(self.private / "eximauthd-auth")

    @property
    def policy_socket(self) -> str:
        return str(self.private / "eximauthd-policy")

    def maillog(self) -> str:
        path = self.tmp / "maillog"
        return path.read_text("utf-8", "replace") if path.exists() else ""

    def postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C",
               "LD_LIBRARY_PATH": str(self.root / "usr/lib/postfix")}
        return subprocess.run([str(self.root / "usr/sbin/postfix"), "-c", str(self.conf),
                               *args], env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)


def _configure(tmp: Path, root: Path, port: int) -> None:
    postfix_user = pwd.getpwnam("postfix")
    for sub in ("conf", "queue", "data", "queue/private"):
        (tmp / sub).mkdir()
    # private/ as postfix-script makes it, so eximauthd can bind there before Postfix starts
    # (an smtpd with SASL whose auth socket is missing refuses every client).
    for sub in ("data", "queue/private"):
        os.chown(tmp / sub, postfix_user.pw_uid, -1)
    (tmp / "queue" / "private").chmod(0o700)
    _make_certificate(tmp)
    (tmp / "conf" / "main.cf").write_text(MAIN_BASE.format(tmp=tmp, root=root) + "\n"
                                          + (SHARE / "main.cf").read_text())
    (tmp / "conf" / "master.cf").write_text(master_cf(port))


@contextlib.contextmanager
def prepared_postfix() -> Iterator[Postfix]:
    """A configured private Postfix with the shipped submission service on a free port, not
    started yet: start eximauthd on :attr:`Postfix.auth_socket` and
    :attr:`Postfix.policy_socket`, then :func:`start`.  Stopped and removed on exit.

    :raises RuntimeError: the package or the configuration failed (with the output).
    """
    root = postfix_root()
    ensure_accounts()
    tmp = Path(tempfile.mkdtemp(prefix="eadpf-", dir="/tmp"))
    tmp.chmod(0o755)
    postfix = Postfix(tmp, root, free_port())
    try:
        _configure(tmp, root, postfix.port)
        yield postfix
    finally:
        _stop(postfix)
        shutil.rmtree(tmp, ignore_errors=True)


def start(postfix: Postfix) -> None:
    """Start *postfix* and wait until it answers SMTP.

    :raises RuntimeError: the start failed (with Postfix's output and log).
    """
    started = postfix.postfix("start")
    if started.returncode != 0:
        raise RuntimeError(f"postfix start failed ({started.returncode}):\n"
                           f"{started.stdout}{started.stderr}\n{postfix.maillog()}")
    _wait_listening(postfix)


def _wait_listening(postfix: Postfix, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), smtplib.SMTP("127.0.0.1", postfix.port,
                                                        timeout=5) as smtp:
            smtp.noop()
            return
        time.sleep(0.1)
    raise RuntimeError("postfix did not start listening:\n" + postfix.maillog())


def _master_pid(postfix: Postfix) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((postfix.tmp / "queue" / "pid" / "master.pid").read_text().strip())
    return None


def _stop(postfix: Postfix) -> None:
    pid = _master_pid(postfix)
    postfix.postfix("stop", timeout=30)
    if pid is None:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # the master we started; its children follow it out
