"""Hostile targets for the CLI tests: tmpfs mounts made read-only or full, a second uid, the real ``certsrv``
command run as root or as that uid, and its services.

Needs root (mount, useradd, setpriv): the sandbox and CI run the suite as root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pycertsrv.client import Client, local_socket
from pycertsrv.errors import CertSrvError
from pycertsrv.home import Home
from service.helpers import Service

CERTSRV = str(Path(sys.executable).with_name("certsrv"))
# One refusal line (the standard): subject, the Win32 HRESULT in hex with its symbolic name, a message.
ONE_LINE = re.compile(r"^certsrv: .+: 0x8007[0-9A-F]{4} [A-Z_]+: .+$")


class Mounts:
    """tmpfs mounts made by a test, all unmounted at teardown (also when the test failed)."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, path: Path, size: str, mode: str = "0777") -> Path:
        """Mount a tmpfs of ``size`` at ``path`` (created) with root directory ``mode``."""
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(path)], check=True)
        self.points.append(path)
        return path

    @staticmethod
    def read_only(path: Path) -> None:
        """Remount ``path`` read-only."""
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)

    @staticmethod
    def fill(path: Path) -> Path:
        """Write a filler file into ``path`` until its file system refuses with ENOSPC."""
        filler = path / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for size in (1 << 20, 64 << 10, 4 << 10, 1):  # down to the last byte of the last page
                block = b"\0" * size
                try:
                    while True:
                        os.write(fd, block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
        finally:
            os.close(fd)
        return filler

    def unmount_all(self) -> None:
        """Teardown: unmount in reverse order (lazily if something still holds one)."""
        for p in reversed(self.points):
            r = subprocess.run(["umount", str(p)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(p)], capture_output=True)
        self.points.clear()


@contextlib.contextmanager
def mounts() -> Iterator[Mounts]:
    """A :class:`Mounts` that is always unmounted."""
    m = Mounts()
    try:
        yield m
    finally:
        m.unmount_all()


@dataclass(frozen=True)
class User:
    """A second, unprivileged uid created for the test."""

    name: str
    uid: int
    gid: int

    def prefix(self) -> list[str]:
        """Run a command as this uid (setpriv(1)). The interpreter may live under a 0700 home (pyenv in
        /root): CAP_DAC_READ_SEARCH lets the uid read and traverse it; it grants no write permission, which
        is what the tests refuse."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]

    def chown(self, path: Path) -> None:
        """Give ``path`` and everything below it to this uid."""
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(path)], check=True)


@contextlib.contextmanager
def second_user() -> Iterator[User]:
    """Create a system user for the test; removed at teardown."""
    name = f"certsrv-t{os.getpid()}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        yield User(name, pw.pw_uid, pw.pw_gid)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


def certsrv(*args: str, user: User | None = None, stdin: bytes | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``certsrv`` (as ``user`` when given); output decoded."""
    env = {k: v for k, v in os.environ.items() if k not in ("CERTSRV_HOME", "CERTSRV_KEY_PASSPHRASE",
                                                           "CERTSRV_TRACEBACK")}
    cmd = [*(user.prefix() if user else []), CERTSRV, *args]
    p = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout, input=stdin)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(errors="replace"),
                                       p.stderr.decode(errors="replace"))


def start_service(home: Home, user: User | None = None, timeout: float = 60.0) -> Service:
    """The real service on ``home`` (as ``user`` when given), once it answers IsServerOnline."""
    svc = Service(home)
    env = {k: v for k, v in os.environ.items() if k != "CERTSRV_HOME"}
    log = open(svc.log_path, "ab")  # noqa: SIM115 (the child keeps it)
    svc.proc = subprocess.Popen([*(user.prefix() if user else []), sys.executable, "-m", "pycertsrv.cli", "serve",
                                 "--home", str(home.root)], stdout=log, stderr=log, env=env)
    log.close()
    deadline = time.monotonic() + timeout
    sock = local_socket(home)
    while True:
        assert svc.proc.poll() is None, f"service exited {svc.proc.returncode}:\n{svc.log()}"
        try:
            with Client(f"unix:{sock}", timeout=5) as c:
                if c.is_server_online():  # no role needed: the caller may not be the home's owner
                    return svc
        except CertSrvError:
            pass
        assert time.monotonic() < deadline, f"service did not come up:\n{svc.log()}"
        time.sleep(0.05)


def copy_tree_into(src: Path, dest: Path) -> None:
    """Copy the contents of ``src`` into the existing directory ``dest``."""
    for p in src.iterdir():
        if p.is_dir():
            shutil.copytree(p, dest / p.name)
        else:
            shutil.copy2(p, dest / p.name)


def leftovers(d: Path) -> list[str]:
    """Temp files a failed write could leave in ``d`` (atomic_write's ``.X.tmp-*``, a restore's ``.X.restoring``)."""
    return sorted(p.name for p in d.rglob("*") if ".tmp-" in p.name or p.name.endswith(".restoring"))
