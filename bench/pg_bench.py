"""The PostgreSQL engine (issue 12), each figure against its baseline measured in the same run, on a
throw-away cluster this bench starts itself (``initdb`` + ``postgres``, as the tests do):

- ``issuance``: durable issuance through ``Authority.submit`` (8 threads) on PostgreSQL vs on SQLite
  (target: PostgreSQL >= 0.5 x SQLite);
- ``group_commit``: records/s through ``PgStore`` (16 committers sharing PostgreSQL transactions) vs one
  record per PostgreSQL transaction (the same log row + row upsert, one writer), on the same server;
- ``full_backup``: ``PgStore.snapshot`` (one REPEATABLE READ transaction copied into the set's SQLite file)
  vs ``pg_dump -Fc`` of the same database (target: no slower).

Run alone: ``python -m bench.pg_bench [--quick]``; ``make bench`` calls :func:`run`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .common import work_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ISSUANCE_TARGET = 0.5
BACKUP_TARGET = 1.0


def _csrs(n: int) -> list[bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(8)]
    out = []
    for i in range(n):
        name = f"host{i}.example.com"
        b = (x509.CertificateSigningRequestBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False))
        out.append(b.sign(keys[i % 8], hashes.SHA256()).public_bytes(Encoding.DER))
    return out


def _issue_rate(a: Any, csrs: list[bytes], threads: int = 8) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(lambda c: a.submit(c, requester="bench"), csrs))
    return len(csrs) / (time.perf_counter() - t0)


def bench_issuance(cluster: Any, d: Path, n: int) -> dict[str, Any]:
    """Durable issuances/s on SQLite and on PostgreSQL, same CA key, same requests."""
    import shutil

    from pycertsrv.ca.authority import Authority
    from pycertsrv.store.postgres import PgStore

    csrs = _csrs(n)
    a = Authority.init(d / "lite", "Bench CA", key_type="ec-p256")
    ident = a.store.identity
    a.close()
    shutil.copytree(d / "lite", d / "pg", ignore=shutil.ignore_patterns("db", "logs", "system", ".lock"))
    url = cluster.new_database("bench")
    PgStore.create(url, "Bench CA", identity=ident, home=d / "pg").close()
    from pycertsrv import config as config_mod

    cfg = config_mod.load(d / "pg")
    config_mod.save(d / "pg", cfg.model_copy(update={"store": cfg.store.model_copy(update={"url": url})}))
    with Authority.open(d / "lite") as a:
        _issue_rate(a, csrs[: n // 10])  # warm-up
        lite = _issue_rate(a, csrs)
    with Authority.open(d / "pg") as b:
        _issue_rate(b, csrs[: n // 10])
        pg = _issue_rate(b, csrs)
    cluster.drop_database(url)
    ratio = pg / lite
    return {"sqlite_per_s": round(lite, 1), "postgresql_per_s": round(pg, 1), "ratio": round(ratio, 3),
            "target": ISSUANCE_TARGET, "pass": ratio >= ISSUANCE_TARGET}


def bench_group_commit(cluster: Any, n: int) -> dict[str, Any]:
    """Records/s: PgStore's group commit vs one record per transaction, same server, 1 KiB rows."""
    import psycopg

    from pycertsrv.store import logfile
    from pycertsrv.store.postgres import PgStore

    blob = os.urandom(1024)
    url = cluster.new_database("bench")
    store = PgStore.create(url, "Bench CA")
    per = max(1, n // 16)
    counter = iter(range(1, 10**9))
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(per):
            with lock:
                i = next(counter)
            with store.transaction() as tx:
                tx.put("request", {"request_id": i, "disposition": 20, "raw_cert": blob})

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    group = per * 16 / (time.perf_counter() - t0)
    store.close()
    # Baseline: the same two statements, one record per PostgreSQL transaction.
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE one_log (lsn bigint PRIMARY KEY, payload bytea)")
        c.execute("CREATE TABLE one_row (id bigint PRIMARY KEY, raw bytea)")
        t0 = time.perf_counter()
        for i in range(1, n + 1):
            with c.transaction():
                c.execute("INSERT INTO one_log VALUES (%s, %s)", (i, logfile.encode_payload(
                    [("request", "p", [i, 20] + [None] * 17)])))
                c.execute("INSERT INTO one_row VALUES (%s, %s) ON CONFLICT (id) DO UPDATE SET raw = EXCLUDED.raw",
                          (i, blob))
        single = n / (time.perf_counter() - t0)
    cluster.drop_database(url)
    return {"group_commit_per_s": round(group, 1), "one_per_txn_per_s": round(single, 1),
            "ratio": round(group / single, 3)}


def bench_full_backup(cluster: Any, d: Path, n: int) -> dict[str, Any]:
    """Seconds for a full backup: PgStore.snapshot (SQLite file) vs pg_dump -Fc, same database."""
    from pycertsrv.store.postgres import PgStore

    url = cluster.new_database("bench")
    store = PgStore.create(url, "Bench CA")
    blob = os.urandom(1024)
    i = 0
    while i < n:
        with store.transaction() as tx:
            for _ in range(min(500, n - i)):
                i += 1
                tx.put("request", {"request_id": i, "disposition": 20, "serial": f"{i:040X}", "raw_cert": blob,
                                   "subject": f"CN=host{i}.example.com", "not_after": "2027-11-29T00:00:00Z"})
    dbname = url.split("?")[0].rsplit("/", 1)[1]
    t0 = time.perf_counter()
    snap = store.snapshot(d / "full.db")
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    cluster.tool("pg_dump", "-Fc", "-f", str(d / "dump.fc"), dbname)
    dump = time.perf_counter() - t0
    store.close()
    cluster.drop_database(url)
    ratio = dump / ours
    return {"rows": n, "snapshot_s": round(ours, 3), "snapshot_bytes": snap.size, "pg_dump_fc_s": round(dump, 3),
            "pg_dump_bytes": (d / "dump.fc").stat().st_size, "pg_dump_over_snapshot": round(ratio, 3),
            "target": BACKUP_TARGET, "pass": ratio >= BACKUP_TARGET}


def run(quick: bool = False) -> dict[str, Any]:
    """All three, on one throw-away cluster."""
    from pg_support import cluster_context, pg_bindir

    if pg_bindir() is None:
        raise RuntimeError("PostgreSQL server binaries not found: install Debian's postgresql package")
    with cluster_context() as cluster, work_dir("pg") as d:
        os.chmod(d, 0o755)
        issuance = bench_issuance(cluster, d, 40 if quick else 400)
        group = bench_group_commit(cluster, 160 if quick else 3200)
        backup = bench_full_backup(cluster, d, 2000 if quick else 20000)
    return {"issuance": issuance, "group_commit": group, "full_backup": backup,
            "pass": bool(issuance["pass"] and backup["pass"])}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
