"""Continuous archiving through the real service (issue 13): machine lost, point in time, destination
down, SIGKILL during a ship. Real `certsrv serve` subprocesses, real files, real `certsrv` commands."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from archive_lib import (
    PW,
    archive_status,
    archived_home,
    certsrv,
    db_rows,
    last_archived_record,
    norm_serial,
    setting,
    short_dir,
    wait_for,
)

from pycertsrv.archive.verify import verify_archive
from pycertsrv.errors import CertSrvError
from pycertsrv.home import Home
from pycertsrv.store import logfile
from pycertsrv.store.schema import DISP_REVOKED
from support import Service, make_csr, openssl_verify


@pytest.fixture
def work() -> Iterator[Path]:
    d = short_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _restore(work: Path, target: str, *extra: str) -> Path:
    new = work / target
    certsrv("restore", str(work / "full"), "--archive", str(work / "arch"), "--home", str(new),
            "--password-file", str(work / "pw"), *extra)
    svc = Service(Home.at(new)).start()  # the start runs the hard recovery: set first, then the archive
    svc.stop()
    return new


def test_machine_lost_and_point_in_time(work: Path) -> None:
    timeout = 0.5
    home = archived_home(work / "ca", dest=str(work / "arch"), timeout=timeout)
    (work / "pw").write_text(PW + "\n")
    svc = Service(home).start()
    answered: list[tuple[float, str, str]] = []  # (answer time, op, serial) in answer order
    lock = threading.Lock()
    stop = threading.Event()
    try:
        with svc.client() as c:
            base = [c.submit(make_csr(f"base{i}.example.com"))["serial"] for i in range(3)]
        # The last full set (it truncates the logs: archived ones only, see the deletion rule).
        certsrv("backup", str(work / "full"), "--home", str(home.root), "--password-file", str(work / "pw"),
                "--quiet")
        with svc.client() as c:
            c.revoke(base[0], "keyCompromise")
            time.sleep(0.01)
            cut = datetime.now(UTC).isoformat()  # between the two revocations
            time.sleep(0.01)
            c.revoke(base[1], "keyCompromise")

        def worker(i: int) -> None:
            try:
                # failover_timeout=0: a submit cut off by the kill is not sent again (issue 14 would, for 30 s,
                # with its request key, also to a service started later on this home).
                with svc.client(timeout=10, failover_timeout=0) as c:
                    n = 0
                    while not stop.is_set():
                        s = c.submit(make_csr(f"w{i}-{n}.example.com"))["serial"]
                        with lock:
                            answered.append((time.time(), "issue", s))
                        if n % 2 == 0:
                            c.revoke(s, "superseded")
                            with lock:
                                answered.append((time.time(), "revoke", s))
                        n += 1
            except CertSrvError:
                pass  # the machine is gone: unanswered calls are not counted

        w0 = archive_status(svc)["watermark"]
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        wait_for(lambda: archive_status(svc)["watermark"] >= w0 + 4, "four generations shipped under load", svc=svc)

        def answered_count() -> int:
            with lock:
                return len(answered)

        # Wait for progress, not for time: on a loaded machine four generations may ship before the workers
        # got many answers. Every operation answered by now was committed before generation ``after`` was
        # created, so once ``after`` is shipped the last shipped record is later than all of them.
        wait_for(lambda: answered_count() > 20, "more than 20 operations answered under load", svc=svc)
        after = max(logfile.list_generations(home.root / "logs")) + 1
        wait_for(lambda: archive_status(svc)["watermark"] >= after, f"generation {after} shipped", svc=svc)
        svc.kill()  # the machine is lost mid-load
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        svc.ensure_stopped()
    shutil.rmtree(home.root)
    last = last_archived_record(work / "arch")
    assert verify_archive(work / "arch").first_error is None

    (old_chain,) = verify_archive(work / "arch").chains
    new = _restore(work, "new")
    # The restored CA (its set's configuration archives to the same place) has a new lineage: never mixed.
    assert setting(new, "archive_lineage") not in (None, old_chain.lineage)
    rows = {r["serial"]: r for r in db_rows(new, "request") if r["serial"]}
    ok = {norm_serial(s) for s in base}
    assert ok <= set(rows)

    def present(op: str, serial: str) -> bool:
        r = rows.get(norm_serial(serial))
        return r is not None and (op == "issue" or r["disposition"] == DISP_REVOKED)

    lost = [(t, op, s) for t, op, s in answered if not present(op, s)]
    shipped_at = last.ts_us / 1e6
    print(f"\nmachine lost: {len(answered)} operations answered, {len(lost)} lost; last shipped LSN {last.lsn}; "
          f"every lost one was answered after the last shipped record (the final timeout={timeout}s window)")
    assert len(answered) > 20 and len(lost) < len(answered)
    # Records get their time under the write lock, in LSN order, before the answer: an operation answered before
    # the last shipped record was committed below its LSN, so it must be back; the lost ones all come after.
    for t, op, s in answered:
        if t < shipped_at:
            assert present(op, s), (op, s, "answered before the last shipped record but lost")
    assert all(t >= shipped_at for t, _, _ in lost)
    assert rows[norm_serial(base[0])]["disposition"] == DISP_REVOKED
    assert rows[norm_serial(base[1])]["disposition"] == DISP_REVOKED
    kept = [s for t, op, s in answered if op == "issue" and t < shipped_at]
    assert kept, "nothing issued under load came back from the archive"
    openssl_verify(new / "publish" / "ca.crt", rows[norm_serial(kept[-1])]["raw_cert"], work)

    # The plan shows the set first, then the archived generations, up to the point in time.
    dry = json.loads(certsrv("restore", str(work / "full"), "--archive", str(work / "arch"), "--until", cut,
                             "--home", str(work / "dry"), "--password-file", str(work / "pw"), "--dry-run",
                             "--json").stdout)["plan"]
    assert dry["archive"]["generations"] >= 4 and dry["archive"]["lineage"] == old_chain.lineage
    assert dry["until"] and dry["gen_high"] == int(dry["archive"]["gen_high"][3:11], 16)
    assert not (work / "dry").exists()
    # Point in time: the first revocation is in, the second not.
    pit = _restore(work, "pit", "--until", cut)
    prow = {r["serial"]: r for r in db_rows(pit, "request") if r["serial"]}
    assert prow[norm_serial(base[0])]["disposition"] == DISP_REVOKED
    assert prow[norm_serial(base[1])]["disposition"] != DISP_REVOKED
    assert not any(norm_serial(s) in prow for _, _, s in answered)  # the load came after the cut


def test_destination_down_then_back(work: Path) -> None:
    dest, flag, shiplog = work / "arch", work / "dest-up", work / "shipped.txt"
    command = (f"test -e {flag} && python3 -m pycertsrv.archive.destination %p {dest}/%f >/dev/null "
               f"&& echo %f >> {shiplog}")
    home = archived_home(work / "ca", command=command, timeout=0.3, max_lag_bytes=1)
    (work / "pw").write_text(PW + "\n")
    svc = Service(home, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}).start()
    try:
        with svc.client() as c:
            n = 0

            def accumulated() -> bool:
                nonlocal n
                c.submit(make_csr(f"d{n}.example.com"))
                n += 1
                time.sleep(0.1)
                return bool(archive_status(svc)["lag_generations"] >= 4)

            wait_for(accumulated, "generations to accumulate while the destination is down", svc=svc)
            # A full backup with truncation while the destination is down deletes nothing unarchived.
            before = set(logfile.list_generations(home.root / "logs"))
            certsrv("backup", str(work / "full"), "--home", str(home.root), "--password-file", str(work / "pw"),
                    "--quiet")
            after = set(logfile.list_generations(home.root / "logs"))
            assert before <= after, f"deleted while not archived: {sorted(before - after)}"
            st = archive_status(svc)
            assert st["watermark"] == 0 and st["state"] == "behind" and st["behind"] and st["last_error"]
            assert "exit status" in st["last_error"]
            health = c.health()
            assert health["status"] == "degraded" and health["archive"]["state"] == "behind"
            more = c.submit(make_csr("still-issuing.example.com"))  # issuance goes on
            assert more["serial"]
            flag.touch()  # the destination returns
            wait_for(lambda: archive_status(svc)["lag_generations"] == 0 and archive_status(svc)["watermark"] > 4,
                     "the backlog to ship", svc=svc)
            st = archive_status(svc)
            assert st["state"] == "ok"
    finally:
        svc.stop()
    assert "FAR BEHIND" in svc.log()
    names = shiplog.read_text().split()
    gens = [logfile.parse_log_name(Path(n).name) for n in names]
    assert gens == list(range(1, len(gens) + 1)), gens  # in order, none skipped
    rep = verify_archive(dest)
    assert rep.first_error is None and rep.chains[0].generations[-1].generation >= gens[-1]


def test_sigkill_during_ship_reships_identical(work: Path) -> None:
    dest, mark, pidfile = work / "arch", work / "stored-once", work / "sleeper.pid"
    # The first ship stores the file, then hangs (the service is killed while the command runs).
    command = (f"python3 -m pycertsrv.archive.destination %p {dest}/%f >/dev/null && "
               f"if [ ! -e {mark} ]; then echo %f > {mark}; echo $$ > {pidfile}; exec sleep 60; fi")
    home = archived_home(work / "ca", command=command, timeout=0.3)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    svc = Service(home, env=env).start()
    try:
        with svc.client() as c:
            c.submit(make_csr("k1.example.com"))
        wait_for(lambda: mark.exists() and pidfile.exists(), "the first ship to be stored and hang", svc=svc)
        svc.kill()
    finally:
        svc.ensure_stopped()
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), 9)
    first = dest / mark.read_text().strip()
    ino = first.stat().st_ino


    assert setting(home.root, "archive_watermark") is None  # killed before the watermark was written
    svc = Service(home, env=env).start()
    try:
        with svc.client() as c:
            c.submit(make_csr("k2.example.com"))
        wait_for(lambda: archive_status(svc)["watermark"] >= 2 and archive_status(svc)["lag_generations"] == 0,
                 "shipping to go on after the restart", svc=svc)
        # certsrv archive status and certsrv status --json show the same watermark, lag and state.
        st = json.loads(certsrv("archive", "status", "--json", "--home", str(home.root)).stdout)
        full = json.loads(certsrv("status", "--json", "--home", str(home.root)).stdout)["archive"]
        assert st["watermark"] >= 2 and st["shipped"] >= 2 and st["state"] == "ok" and st["last_error"] is None
        assert full["lineage"] == st["lineage"] and full["watermark"] >= st["watermark"]
        text = certsrv("archive", "status", "--home", str(home.root)).stdout
        assert "watermark edb" in text and "lag 0 generation(s)" in text
    finally:
        svc.stop()
    # Stopped: the same watermark read from the home's files.
    off = json.loads(certsrv("archive", "status", "--json", "--home", str(home.root)).stdout)
    assert off["service"] is False and off["watermark"] >= 2 and off["lag_generations"] == 0
    assert first.stat().st_ino == ino  # shipped again: identical bytes accepted, not rewritten
    rep = verify_archive(dest)
    assert rep.first_error is None
    gens = [g.generation for g in rep.chains[0].generations]
    assert gens == list(range(1, gens[-1] + 1)) and gens[-1] >= 2
    assert int(setting(home.root, "archive_watermark").split(":")[1]) >= 2  # type: ignore[union-attr]
