"""Test helpers for the restore tests: a source CA database, hand-built backup sets, row comparison.

Sets are built the way the backup writer builds them (Store.snapshot, roll, copy the generations,
certbkxp.dat written last per CONTRACTS.md), so restore tests do not depend on the service. The
manifest is written and authenticated by the writer's own functions (``write_manifest`` with
SET_PASSWORD; an incremental is chained to the set beside it by ``chain.find_base``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pycertsrv.backupset.chain import find_base
from pycertsrv.backupset.manifest import FileEntry, Manifest, write_manifest
from pycertsrv.fsutil import sha256_file
from pycertsrv.store import Store, StoreOptions, archivemark, logfile
from pycertsrv.store.registration import SETTING_LAST_RECOVERY, SETTING_REQUIRES_FULL
from pycertsrv.store.schema import TABLES

OPTS = StoreOptions(log_size=64 << 10, checkpoint_records=50)
# Written by every restore's recovery by design: its time, "next backup full", and a new archive lineage (issue 13).
IGNORED_SETTINGS = {SETTING_LAST_RECOVERY, SETTING_REQUIRES_FULL, archivemark.SETTING_LINEAGE,
                    archivemark.SETTING_LINEAGE_START}
SET_PASSWORD = b"restore-setlib password"  # every set is authenticated with a key derived from it


def make_source(home: Path, name: str = "Test CA") -> Store:
    """A fresh store in ``home``."""
    return Store.create(home, name, OPTS)


def add_requests(store: Store, n: int, *, tag: str = "r") -> list[int]:
    """Insert ``n`` issued-looking request rows (one transaction each) with an attribute and extension."""
    ids = []
    for _ in range(n):
        with store.transaction() as tx:
            rid = tx.next_id("request")
            tx.put("request", {
                "request_id": rid, "disposition": 20, "status_code": 0, "submitted_at": datetime.now(UTC).isoformat(),
                "requester": tag, "raw_request": os.urandom(64), "serial": f"{rid:032x}", "raw_cert": os.urandom(200),
                "subject": f"CN={tag}-{rid}", "not_after": "2035-01-01T00:00:00+00:00",
            })
            tx.put("attribute", {"request_id": rid, "name": "tag", "value": tag})
            tx.put("extension", {"request_id": rid, "oid": "2.5.29.17", "flags": 0, "value": os.urandom(16)})
        ids.append(rid)
    return ids


def revoke(store: Store, rid: int) -> None:
    """Change an existing row (so replay must apply updates, not only inserts)."""
    row = store.get("request", rid)
    assert row is not None
    row.update(disposition=21, revoked_at=datetime.now(UTC).isoformat(), revocation_reason=1)
    with store.transaction() as tx:
        tx.put("request", row)


def rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every table's rows, ordered by key, settings written by a restore left out."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, t in TABLES.items():
        rs = store.select(name, order_by=list(t.key))
        if name == "setting":
            rs = [r for r in rs if r["name"] not in IGNORED_SETTINGS]
        out[name] = rs
    return out


def _manifest(store: Store, d: Path, kind: str, gen_low: int, gen_high: int, snapshot_lsn: int | None,
              db_rel: str | None) -> None:
    files = []
    for p in sorted((d / "DataBase").iterdir()):
        if p.name == "certbkxp.dat":
            continue
        role = "database" if p.suffix == ".db" else "log"
        files.append(FileEntry(f"DataBase/{p.name}", p.stat().st_size, sha256_file(p), role))
    locations = [chr(0x44) + str(store.db_path), chr(0x82) + str(store.log_dir), chr(0x83) + str(store.system_dir)]
    base = None
    if kind == "incremental":
        (_, b), = find_base(d, store.identity, gen_low, SET_PASSWORD, None)
        base = {"set_id": b.set_id, "mac": b.mac, "kind": b.kind, "gen_high": b.gen_high}
    m = Manifest(kind=kind, ca_name=store.name, identity=store.identity, created=datetime.now(UTC).isoformat(),
                 gen_low=gen_low, gen_high=gen_high, snapshot_lsn=snapshot_lsn, database=db_rel,
                 locations=locations, files=files, set_id=secrets.token_hex(16), base=base)
    write_manifest(d, m, SET_PASSWORD)


def full_set(store: Store, d: Path) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """Write a full set to ``d``; returns (gen_high, the source's rows at the moment of the roll)."""
    (d / "DataBase").mkdir(parents=True)
    snap = store.snapshot(d / "DataBase" / store.db_path.name)
    high = store.roll_log()
    moment = rows(store)
    for g in range(snap.generation, high + 1):
        shutil.copyfile(store.log_dir / logfile.log_name(g), d / "DataBase" / logfile.log_name(g))
    _manifest(store, d, "full", snap.generation, high, snap.lsn, f"DataBase/{store.db_path.name}")
    return high, moment


def incremental_set(store: Store, d: Path, after: int) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """Write an incremental set with generations after ``after``; returns (gen_high, rows at the roll)."""
    (d / "DataBase").mkdir(parents=True)
    high = store.roll_log()
    moment = rows(store)
    for g in range(after + 1, high + 1):
        shutil.copyfile(store.log_dir / logfile.log_name(g), d / "DataBase" / logfile.log_name(g))
    _manifest(store, d, "incremental", after + 1, high, None, None)
    return high, moment


def manifest(d: Path) -> dict[str, Any]:
    """A set's certbkxp.dat."""
    data: dict[str, Any] = json.loads((d / "DataBase" / "certbkxp.dat").read_bytes())
    return data


def tick() -> None:
    """Let the clock move on so record times differ (the --until tests need distinct instants)."""
    time.sleep(0.002)


def make_csr(cn: str) -> bytes:
    """A PEM CSR for ``cn`` with a fresh P-256 key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{cn}.example.test")]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def issue(ca: Any, n: int, prefix: str = "host") -> list[str]:
    """Submit and issue ``n`` requests; returns serials."""
    out = []
    for i in range(n):
        info = ca.submit(make_csr(f"{prefix}{i}"), requester="test")
        assert info.serial
        out.append(info.serial)
    return out


def ca_rows(store: Store) -> dict[str, list[dict[str, Any]]]:
    """The rows a restore must bring back (backup bookkeeping rows written at End are left out)."""
    r = rows(store)
    r.pop("backup_history")
    r["setting"] = [x for x in r["setting"] if not x["name"].startswith("DBLast")]
    return r


def openssl_verify(ca_cert: Path, cert_der: bytes, work: Path) -> None:
    """``openssl verify`` a DER certificate against the CA certificate (PEM)."""
    import subprocess

    leaf = work / "leaf.der"
    leaf.write_bytes(cert_der)
    pem = work / "leaf.pem"
    subprocess.run(["openssl", "x509", "-inform", "DER", "-in", str(leaf), "-out", str(pem)], check=True,
                   capture_output=True)
    out = subprocess.run(["openssl", "verify", "-CAfile", str(ca_cert), str(pem)], capture_output=True, text=True)
    assert out.returncode == 0 and ": OK" in out.stdout, out.stdout + out.stderr


def short_home(prefix: str = "crs") -> Path:
    """A home with a short path (Unix socket paths are limited to 107 bytes)."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")) / "ca"


class Service:
    """``certsrv serve`` for a home, in a subprocess."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: Any = None
        self.log = home.parent / f"service-{home.name}.log"

    def start(self, timeout: float = 60.0) -> Service:
        import subprocess
        import sys

        from pycertsrv.client import Client
        from pycertsrv.errors import CertSrvError

        cmd = [sys.executable, "-m", "pycertsrv.cli", "serve", "--home", str(self.home), "--log-level", "warning"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with Client(f"unix:{self.home / 'certsrv.sock'}") as c:
                    if c.is_server_online():
                        return self
            except CertSrvError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("service did not come up: " + self.log.read_text()[-2000:])
            time.sleep(0.05)

    def client(self) -> Any:
        from pycertsrv.client import Client

        return Client(f"unix:{self.home / 'certsrv.sock'}")

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)
        self.proc = None


def db_rows_readonly(home: Path) -> dict[str, list[dict[str, Any]]]:
    """The rows of a running CA's database, read through a read-only SQLite connection (WAL allows it)."""
    import sqlite3

    db = next((home / "db").glob("*.db"))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        out: dict[str, list[dict[str, Any]]] = {}
        for name, t in TABLES.items():
            order = ", ".join(t.key)
            out[name] = [dict(r) for r in conn.execute(f"SELECT * FROM {name} ORDER BY {order}")]
    finally:
        conn.close()
    out.pop("backup_history")
    out["setting"] = [x for x in out["setting"]
                      if x["name"] not in IGNORED_SETTINGS and not x["name"].startswith("DBLast")]
    return out
