"""Backup sets portable between engines (issue 12 "Must show"), with the real service, the real
``certsrv backup`` / ``certsrv restore`` commands and a real PostgreSQL server, compared row by row:

- a PostgreSQL CA's full set plus two incrementals restored into a SQLite home;
- a SQLite CA's sets restored into PostgreSQL (``--database URL``), which then serves;
- ``--until`` on a set taken from PostgreSQL.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pg_support import PgCluster
from pycertsrv.ca import Authority
from pycertsrv.home import Home
from pycertsrv.store import logfile
from support import Service, make_csr

from .pg_dumps import Dump, pg_dump, sqlite_dump

PW = "cross-engine set password"
# What the CA wrote; the rest differs by design: backup_history gains the row of a backup after its set was
# taken, the restore's epilogue writes settings (DBLastRecovery, a new archive lineage), and _meta's LSN.
CA_TABLES = ("request", "attribute", "extension", "crl")


def certsrv(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "pycertsrv.cli", *args], capture_output=True, text=True,
                         timeout=180)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


@pytest.fixture
def work() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cpg", dir="/tmp"))  # short: Unix socket paths are limited
    (d / "pw").write_text(PW + "\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _db_file(home: Path) -> Path:
    files = sorted(Home.at(home).db_dir.glob("*.db"))
    assert len(files) == 1, files
    return files[0]


def _ca_part(d: Dump) -> Dump:
    return {t: d[t] for t in CA_TABLES}


def _backup(home: Path, dest: Path, *extra: str) -> None:
    certsrv("backup", str(dest), "--home", str(home), "--password-file", str(dest.parent / "pw"), "--quiet", *extra)


def _issue(c: Any, tag: str, n: int) -> list[str]:
    return [c.submit(make_csr(f"{tag}{i}.example.com"))["serial"] for i in range(n)]


def test_pg_full_set_and_two_incrementals_restore_onto_a_sqlite_home(pg_url: str, work: Path) -> None:
    home = work / "pg"
    Authority.init(home, "PG Set CA", database=pg_url).close()
    assert Home.at(home).db_dir.exists() is False or not any(Home.at(home).db_dir.glob("*.db"))
    svc = Service(Home.at(home)).start()
    try:
        with svc.client() as c:
            first = _issue(c, "a", 6)
            _backup(home, work / "full")
            c.revoke(first[0], "keyCompromise")
            _issue(c, "b", 4)
            _backup(home, work / "incr1", "--incremental", "--base", str(work / "full"))
            c.publish_crl()
            c.revoke(first[1], "superseded")
            _issue(c, "c", 3)
            _backup(home, work / "incr2", "--incremental", "--base", str(work / "incr1"))
    finally:
        svc.stop()
    want = pg_dump(pg_url)
    for s in ("full", "incr1", "incr2"):  # the sets a PostgreSQL CA writes are ordinary, verifiable sets
        certsrv("verify-backup", str(work / s), "--password-file", str(work / "pw"))
        assert (work / s / "DataBase" / "PG Set CA.db").exists() or s != "full"
    new = work / "lite"
    certsrv("restore", str(work / "full"), str(work / "incr1"), str(work / "incr2"), "--home", str(new),
            "--password-file", str(work / "pw"))
    with Authority.open(new) as a:  # the SQLite engine's hard recovery runs here
        assert a.store.integrity_check() == "ok"
    got = sqlite_dump(_db_file(new))
    assert _ca_part(got) == _ca_part(want)  # row by row: 13 requests, their attributes, extensions, the CRL
    assert len(got["request"]) == 13 and len(got["crl"]) >= 2  # the service's own CRL at start, and ours
    assert set(got["backup_history"]) <= set(want["backup_history"])
    # The generations in the sets are the ones PostgreSQL holds, byte for byte (payloads, LSNs, times).
    with psycopg.connect(pg_url) as conn:
        rows = {int(n): (int(t), bytes(p)) for n, t, p in conn.execute("SELECT lsn, ts_us, payload FROM log_record")}
    for s in ("incr1", "incr2"):
        for path in logfile.list_generations(work / s / "DataBase").values():
            for r in logfile.scan(path, None, keep=True)[1]:
                assert rows[r.lsn] == (r.ts_us, r.payload)


def test_sqlite_sets_restore_into_postgresql_which_then_serves(pg_cluster: PgCluster, work: Path) -> None:
    home = work / "lite"
    Authority.init(home, "Lite Set CA").close()
    svc = Service(Home.at(home)).start()
    try:
        with svc.client() as c:
            first = _issue(c, "a", 5)
            _backup(home, work / "full")
            c.revoke(first[2], "cessationOfOperation")
            c.publish_crl()
            _issue(c, "b", 3)
            _backup(home, work / "incr1", "--incremental", "--base", str(work / "full"))
    finally:
        svc.stop()
    want = sqlite_dump(_db_file(home))
    url = pg_cluster.new_database("restore")
    try:
        new = work / "pgnew"
        out = certsrv("restore", str(work / "full"), str(work / "incr1"), "--home", str(new), "--database", url,
                      "--password-file", str(work / "pw"))
        assert "Database restored into PostgreSQL" in out.stdout
        got = pg_dump(url)
        assert _ca_part(got) == _ca_part(want)
        assert len(got["request"]) == 8
        assert not any(Home.at(new).db_dir.glob("*.db"))  # the home holds no SQLite database: it is on PostgreSQL
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT value FROM setting WHERE name = 'backup_requires_full'").fetchone()[0] == "1"
        svc2 = Service(Home.at(new)).start()  # serves from PostgreSQL, and the log goes on without a gap
        try:
            with svc2.client() as c:
                c.submit(make_csr("after.example.com"))
        finally:
            svc2.stop()
        with psycopg.connect(url) as conn:
            lsns = [r[0] for r in conn.execute("SELECT lsn FROM log_record ORDER BY lsn")]
            assert lsns == list(range(lsns[0], lsns[0] + len(lsns)))
            assert conn.execute("SELECT count(*) FROM request").fetchone()[0] == 9
        # A second restore into the same database is refused without --force, and changes nothing.
        again = certsrv("restore", str(work / "full"), "--home", str(work / "pgnew2"), "--database", url,
                        "--password-file", str(work / "pw"), check=False)
        assert again.returncode == 1 and "holds a CA already" in again.stderr and "0x800700" in again.stderr
        assert pg_dump(url)["request"] == pg_dump(url)["request"] and len(pg_dump(url)["request"]) == 9
    finally:
        pg_cluster.drop_database(url)


def test_until_on_a_set_taken_from_postgresql(pg_url: str, work: Path) -> None:
    home = work / "pg"
    Authority.init(home, "PG Until CA", database=pg_url).close()
    svc = Service(Home.at(home)).start()
    try:
        with svc.client() as c:
            _issue(c, "a", 3)
            _backup(home, work / "full")
            early = _issue(c, "b", 4)
            with psycopg.connect(pg_url) as conn:  # the stop time is the log's own: the last record so far
                stop_us = int(conn.execute("SELECT max(ts_us) FROM log_record").fetchone()[0])
            while time.time_ns() // 1000 <= stop_us + 2000:
                time.sleep(0.01)  # the next records are stamped later than the stop time
            late = _issue(c, "c", 4)
            _backup(home, work / "incr1", "--incremental", "--base", str(work / "full"))
    finally:
        svc.stop()
    until = logfile.us_to_datetime(stop_us).isoformat()
    new = work / "lite"
    certsrv("restore", str(work / "full"), str(work / "incr1"), "--home", str(new), "--until", until,
            "--password-file", str(work / "pw"))
    Authority.open(new).close()
    conn = sqlite3.connect(_db_file(new))
    try:
        serials = {r[0] for r in conn.execute("SELECT serial FROM request")}
    finally:
        conn.close()
    assert set(early) <= serials and not (set(late) & serials) and len(serials) == 7
    # The same --until restored into PostgreSQL stops at the same record.
    url2 = pg_url.replace(pg_url.split("?")[0].rsplit("/", 1)[1], pg_url.split("?")[0].rsplit("/", 1)[1] + "_u")
    with psycopg.connect(pg_url.replace(pg_url.split("?")[0].rsplit("/", 1)[1], "postgres"),
                         autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{url2.split("?")[0].rsplit("/", 1)[1]}"')
    try:
        certsrv("restore", str(work / "full"), str(work / "incr1"), "--home", str(work / "pg2"), "--until", until,
                "--database", url2, "--password-file", str(work / "pw"))
        assert {r[10] for r in pg_dump(url2)["request"]} == serials
    finally:
        with psycopg.connect(pg_url.replace(pg_url.split("?")[0].rsplit("/", 1)[1], "postgres"),
                             autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{url2.split("?")[0].rsplit("/", 1)[1]}" WITH (FORCE)')


def test_full_backup_of_a_pg_ca_taken_while_it_issues(pg_url: str, work: Path) -> None:
    """Backup under load: the restored set holds every certificate answered before the backup started,
    and only whole requests (no request without its extensions, no issued row without its certificate)."""
    import threading

    home = work / "pg"
    Authority.init(home, "PG Load CA", database=pg_url).close()
    svc = Service(Home.at(home)).start()
    answered: list[tuple[float, str]] = []
    stop = threading.Event()

    def issue_on(n: int) -> None:
        with svc.client() as c:
            i = 0
            while not stop.is_set():
                answered.append((time.monotonic(), c.submit(make_csr(f"t{n}-{i}.example.com"))["serial"]))
                i += 1

    threads = [threading.Thread(target=issue_on, args=(n,)) for n in range(4)]
    try:
        for t in threads:
            t.start()
        while len(answered) < 40:
            time.sleep(0.05)
        started = time.monotonic()
        _backup(home, work / "full")
        stop.set()
        for t in threads:
            t.join()
    finally:
        stop.set()
        svc.stop()
    before = {s for t, s in answered if t < started}
    assert len(answered) > len(before)  # issuance went on while the backup ran
    new = work / "lite"
    certsrv("restore", str(work / "full"), "--home", str(new), "--password-file", str(work / "pw"))
    Authority.open(new).close()
    got = sqlite_dump(_db_file(new))
    serials = {r[10] for r in got["request"]}
    assert before <= serials
    with_ext = {r[0] for r in got["extension"]}
    for r in got["request"]:
        assert r[11] is not None and r[0] in with_ext  # whole records only
