"""Issue #10 finding 7 (last bullet): after a restore, the service log records the hard recovery it ran
(generations, records replayed, until when), not only "soft recovery: nothing to replay"."""

from __future__ import annotations

import re
import subprocess

import pytest

import support
from support import Service, make_csr, make_home


def certsrv(*args: str) -> subprocess.CompletedProcess[str]:
    return support.certsrv(*args, check=True)


def test_serve_logs_the_hard_recovery_of_a_registered_restore(tmp_path_factory: pytest.TempPathFactory) -> None:
    d = tmp_path_factory.mktemp("hr")
    home = make_home(d / "H", "Hard Recovery CA")
    pw = d / "pw"
    pw.write_text("recovery test password\n")
    svc = Service(home).start()
    try:
        with svc.client() as c:
            for i in range(3):
                c.submit(make_csr(f"a{i}.example.com"))
            certsrv("backup", str(d / "full"), "--home", str(home.root), "--database-only", "--keep-log", "--quiet",
                    "--password-file", str(pw))
            for i in range(4):
                c.submit(make_csr(f"b{i}.example.com"))
            certsrv("backup", str(d / "i1"), "--home", str(home.root), "--database-only", "--incremental", "--quiet",
                    "--password-file", str(pw))
            want = c.view(limit=1000)
    finally:
        svc.stop()
    assert len(want) == 7
    certsrv("restore", str(d / "full"), str(d / "i1"), "--home", str(home.root), "--database-only", "--force",
            "--password-file", str(pw))
    first_run = len(svc.log())
    svc.start()
    try:
        with svc.client() as c:
            assert c.view(limit=1000) == want  # re-read from the restored service
    finally:
        svc.stop()
    log = svc.log()[first_run:]
    m = re.search(r"INFO hard recovery of the registered restore: generations ([0-9A-F]{8})\.\.([0-9A-F]{8}), "
                  r"replayed (\d+) records \(LSN (\d+)\.\.(\d+)\) until the end of the restored logs", log)
    assert m is not None, log
    assert int(m.group(1), 16) <= int(m.group(2), 16) and int(m.group(3)) > 0 and int(m.group(4)) <= int(m.group(5))
    # The hard recovery comes before serving; the soft recovery line follows it.
    assert log.index("hard recovery of the registered restore") < log.index("soft recovery") < log.index("serving CA")
