"""``GET /v1/health`` and ``certsrv status``: role, store state, last backups and CRL nextUpdate, re-read from a
real service after real backups (``certsrv backup``), the CRL date checked with openssl."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest

from pycertsrv.client.backup import BackupSession
from pycertsrv.errors import ERROR_IO_DEVICE, CertSrvError
from support import Service, compile_shim, make_csr, make_home

from .test_metrics import _with_metrics, certsrv, scrape, value
from .test_store_faults import SHIM_C


def _openssl_next_update(crl_pem: Path) -> dt.datetime:
    o = subprocess.run(["openssl", "crl", "-in", str(crl_pem), "-noout", "-nextupdate"], capture_output=True,
                       text=True, check=True)
    return dt.datetime.strptime(o.stdout.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)


def test_health_fields_re_read_from_the_service(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    _with_metrics(home.root, "127.0.0.1:0")
    svc = Service(home).start()
    try:
        with svc.client() as c:
            h0 = c.call("GET", "/v1/health")
            murl = c.status()["metrics"]
        assert h0["role"] == "writer" and h0["status"] == "ok" and h0["store"] == "ok" and h0["reason"] is None
        assert h0["online"] is True and h0["errors"] == []
        assert h0["last_backup"] == {"full": None, "incremental": None}
        assert h0["backup_sessions_open"] == 0
        nu = _openssl_next_update(home.root / "publish" / "ca.crl.pem")
        assert dt.datetime.fromisoformat(h0["crl"]["next_update"]) == nu

        # a full set, then an incremental, with the real CLI
        pw = tmp_path / "pw"
        pw.write_text("set password\n")
        r = certsrv("backup", str(tmp_path / "full"), "--database-only", "--quiet", "--password-file", str(pw),
                    "--home", str(home.root))
        assert r.returncode == 0, r.stderr
        r = certsrv("backup", str(tmp_path / "inc"), "--incremental", "--database-only", "--quiet", "--json",
                    "--password-file", str(pw), "--home", str(home.root))
        assert r.returncode == 0, r.stderr
        inc_manifest = json.loads(r.stdout)["manifest"]
        with svc.client() as c:
            crl = c.publish_crl()  # a newer CRL: health follows it
            h = c.call("GET", "/v1/health")
        full, inc = h["last_backup"]["full"], h["last_backup"]["incremental"]
        assert full["type"] == "full" and inc["type"] == "incremental" and inc["backup_id"] > full["backup_id"]
        assert inc["generations"] == [inc_manifest["gen_low"], inc_manifest["gen_high"]]
        assert full["generations"][1] + 1 == inc["generations"][0]
        assert dt.datetime.fromisoformat(full["time"]) <= dt.datetime.fromisoformat(inc["time"])
        assert full["size_bytes"] > 0 and inc["size_bytes"] > 0
        assert h["crl"]["number"] == crl["number"] == h0["crl"]["number"] + 1
        assert dt.datetime.fromisoformat(h["crl"]["next_update"]) == _openssl_next_update(
            home.root / "publish" / "ca.crl.pem")

        # an open backup session is seen by health and metrics alike
        with svc.client() as c, BackupSession.prepare(c, "full"):
            with svc.client() as c2:
                assert c2.call("GET", "/v1/health")["backup_sessions_open"] == 1
            assert value(scrape(murl), "certsrv_backup_sessions_open") == 1
        with svc.client() as c:
            assert c.call("GET", "/v1/health")["backup_sessions_open"] == 0

        # certsrv status says the same in words, and --json carries the same document
        r = certsrv("status", "--home", str(home.root))
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert "role: writer" in out and "store: ok" in out
        assert f"last full backup: #{full['backup_id']} ended {full['time']}" in out
        assert f"last incremental backup: #{inc['backup_id']} ended {inc['time']}" in out
        assert f"CRL #{crl['number']}: next update {h['crl']['next_update']} (in " in out
        assert f"metrics on {murl}" in out
        r = certsrv("status", "--json", "--home", str(home.root))
        doc = json.loads(r.stdout)["health"]
        assert doc["last_backup"] == h["last_backup"] and doc["crl"] == h["crl"] and doc["store"] == "ok"
    finally:
        svc.ensure_stopped()


def test_status_before_any_backup_says_what_to_do(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    svc = Service(home).start()
    try:
        r = certsrv("status", "--home", str(home.root))
        assert r.returncode == 0, r.stderr
        assert "last full backup: none recorded (certsrv backup --into DIR)" in r.stdout
        assert "last incremental backup: none recorded" in r.stdout
    finally:
        svc.ensure_stopped()


@pytest.fixture(scope="module")
def eio_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The storefail tests' LD_PRELOAD fault injector: the log's fdatasync fails with EIO on demand."""
    return compile_shim(tmp_path_factory.mktemp("shim"), SHIM_C)


def test_failed_store_in_health_metrics_and_status(eio_shim: Path, tmp_path: Path) -> None:
    home = make_home(tmp_path / "H", "Failing CA")
    _with_metrics(home.root, "127.0.0.1:0")
    trigger = tmp_path / "fail-fsync"
    svc = Service(home, env={"LD_PRELOAD": str(eio_shim), "PYCERTSRV_FAIL_FSYNC": str(trigger)}).start()
    try:
        with svc.client(timeout=60) as c:
            c.submit(make_csr("ok.example"))
            murl = c.status()["metrics"]
            assert value(scrape(murl), "certsrv_store_degraded", state="ok", reason="") == 0
            trigger.touch()  # the log's fdatasync fails with EIO from now on: the store stops taking writes
            with pytest.raises(CertSrvError) as ei:
                c.submit(make_csr("eio.example"))
            assert ei.value.hresult == ERROR_IO_DEVICE
            trigger.unlink()
            h = c.call("GET", "/v1/health")
            assert h["status"] == "failed" and h["reason"] == "log sync error, restart required"
            assert h["store"] == c.health()["store"]  # the older /health says the same
            assert h["role"] == "writer" and h["crl"] is not None  # the rest is still read
            s = scrape(murl)
            assert value(s, "certsrv_store_degraded", state="failed", reason="log sync error, restart required") == 1
            assert value(s, "certsrv_store_degraded", state="ok", reason="") is None
        r = certsrv("status", "--home", str(home.root))
        assert r.returncode == 0, r.stderr
        assert "store: failed: log sync error, restart required" in r.stdout
    finally:
        svc.ensure_stopped()
