"""A real service subprocess for the backup tests (``python -m pycertsrv.cli serve``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pycertsrv import config as config_mod
from pycertsrv.ca import Authority
from pycertsrv.client import Client
from pycertsrv.errors import CertSrvError
from pycertsrv.home import Home


def short_home(prefix: str = "cbk") -> Path:
    """A home directory with a short path (Unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")) / "ca"


class LiveService:
    """Initialise a CA in ``home`` and run its service in a subprocess.

    :param home: where the CA lives (created).
    :param name: CA name.
    :param configure: called with the Config before the service starts (roles, TLS, timeouts).
    :param tcp: also listen on TLS at 127.0.0.1 (any port).
    """

    def __init__(self, home: Path, name: str = "Live Test CA", *, configure: Any = None, tcp: bool = False,
                 init: bool = True) -> None:
        self.home = Home.at(home)
        self.name = name
        if init:
            Authority.init(self.home.root, name).close()
        if configure is not None:
            cfg = config_mod.load(self.home.root)
            configure(cfg)
            config_mod.save(self.home.root, cfg)
        self.tcp = tcp
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.home.root.parent / "service.log"
        self.tcp_address: str | None = None

    @property
    def socket(self) -> str:
        return f"unix:{self.home.socket}"

    def start(self, timeout: float = 60.0) -> LiveService:
        cmd = [sys.executable, "-m", "pycertsrv.cli", "serve", "--home", str(self.home.root), "--log-level", "warning"]
        if self.tcp:
            cmd += ["--tcp", "127.0.0.1:0"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with Client(self.socket) as c:
                    if c.is_server_online():
                        st = c.status()
                        tcp = [x for x in st["listeners"] if not x.startswith("unix:")]
                        self.tcp_address = tcp[0] if tcp else None
                        return self
            except CertSrvError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("service did not come up: " + self.log.read_text()[-2000:])
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def client(self, **kw: Any) -> Client:
        return Client(self.socket, **kw)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.home.root.parent, ignore_errors=True)
