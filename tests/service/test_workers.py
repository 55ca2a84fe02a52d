"""Issue 15: the service with worker processes (``certsrv serve --workers N``). Durability does not change with
workers: a worker SIGKILLed in the middle of a request leaves no partial row and the service goes on; the
whole service SIGKILLed loses no answered issuance. Real processes, real signals, state re-read from disk
and checked with openssl."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pycertsrv import config as config_mod
from pycertsrv.ca import Authority
from pycertsrv.ca.models import serial_hex
from pycertsrv.errors import CertSrvError
from support import Service, make_csr, make_home


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _workers(svc: Service) -> dict[str, Any]:
    with svc.client() as c:
        w: dict[str, Any] = c.status()["workers"]
    return w


def _until(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _rows_whole(home: Path) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Every request row and its extension count, re-read from disk (the service is stopped)."""
    a = Authority.open(home)
    try:
        rows = a.store.select("request", order_by=["request_id"])
        exts: dict[int, int] = {}
        for e in a.store.select("extension"):
            exts[e["request_id"]] = exts.get(e["request_id"], 0) + 1
        return rows, exts
    finally:
        a.close()


def test_default_service_runs_more_than_one_worker(tmp_path: Path) -> None:
    svc = Service(make_home(tmp_path / "H")).start()
    try:
        w = _workers(svc)
        assert len(w["pids"]) >= 2 and all(_alive(p) for p in w["pids"])
        assert os.getpid() not in w["pids"]
        with svc.client() as c:
            r = c.submit(make_csr("default.example.com"))
        assert r["disposition_name"] == "issued"
    finally:
        assert svc.stop() == 0
    assert not any(_alive(p) for p in w["pids"])  # a clean stop ends every worker


def test_sigkill_of_a_worker_mid_request_leaves_no_partial_row_and_the_service_goes_on(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    svc = Service(home, env={"CERTSRV_WORKERS": "2"}).start()
    try:
        before = _workers(svc)
        victim = before["pids"][0]
        os.kill(victim, signal.SIGSTOP)  # it takes requests and answers none: they are held mid-request
        with ThreadPoolExecutor(6) as pool:
            def one(i: int) -> dict[str, Any]:
                with svc.client(timeout=120) as c:
                    r: dict[str, Any] = c.submit(make_csr(f"w{i}.example.com"))
                    return r

            futures = [pool.submit(one, i) for i in range(12)]
            # The stopped worker holds at least one request (dispatch goes to the least busy worker).
            _until("the stopped worker to hold a request",
                   lambda: (w := _workers(svc))["pids"][0] == victim and w["busy"][0] >= 1)
            os.kill(victim, signal.SIGKILL)
            answers = [f.result(timeout=120) for f in futures]
        assert all(a["disposition_name"] == "issued" for a in answers)  # re-prepared by the other worker
        after = _until("a replacement worker", lambda: (w := _workers(svc))["restarts"] == 1 and len(w["pids"]) == 2
                       and w)
        assert victim not in after["pids"] and not _alive(victim)
        with svc.client() as c:  # the service goes on
            again = c.submit(make_csr("after.example.com"))
        assert again["disposition_name"] == "issued"
        assert f"worker process {victim} ended" in svc.log()
    finally:
        assert svc.stop() == 0
    rows, exts = _rows_whole(home)
    answered = {a["serial"] for a in answers} | {again["serial"]}
    assert len(rows) == 13 and {r["serial"] for r in rows} == answered  # one row per answer, nothing else
    for r in rows:  # no partial row: every issued row has its certificate and all its extension rows
        cert = x509.load_der_x509_certificate(bytes(r["raw_cert"]))
        assert serial_hex(cert.serial_number) == r["serial"]
        assert exts[r["request_id"]] == len(cert.extensions)


def test_sigkill_of_the_whole_service_with_workers_keeps_every_answered_issuance(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    svc = Service(home, env={"CERTSRV_WORKERS": "3"}).start()
    pids = _workers(svc)["pids"]
    assert len(pids) == 3
    answered: list[tuple[str, bytes]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer(tag: str) -> None:
        try:
            with svc.client(timeout=30) as c:
                i = 0
                while not stop.is_set():
                    r = c.submit(make_csr(f"{tag}-{i}.example.com"))
                    cert = x509.load_pem_x509_certificate(r["certificate_pem"].encode())
                    answered.append((r["serial"], cert.public_bytes(Encoding.DER)))
                    i += 1
        except CertSrvError:
            return  # the service went away mid-call: that answer never came
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=hammer, args=(f"k{k}",)) for k in range(6)]
    for t in threads:
        t.start()
    _until("60 answers", lambda: len(answered) >= 60, 120)
    assert svc.proc is not None
    for pid in [svc.proc.pid, *pids]:  # the whole service: the writer and every worker at once
        os.kill(pid, signal.SIGKILL)
    svc.proc.wait()
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, errors
    got = list(answered)
    _until("the workers to be gone", lambda: not any(_alive(p) for p in pids), 30)
    svc2 = Service(home, env={"CERTSRV_WORKERS": "2"}).start()
    try:
        with svc2.client() as c:
            assert c.status()["recovery"]["kind"] == "soft"
            for serial, der in got:
                assert c.get_certificate(serial) == der
    finally:
        assert svc2.stop() == 0
    # Every answered certificate verifies against the CA with openssl.
    ca_pem = home.root / config_mod.load(home.root).ca.cert_file
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(x509.load_der_x509_certificate(got[-1][1]).public_bytes(Encoding.PEM))
    out = subprocess.run(["openssl", "verify", "-CAfile", str(ca_pem), str(leaf)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_worker_refusal_is_the_same_one_line_error(tmp_path: Path) -> None:
    svc = Service(make_home(tmp_path / "H"), env={"CERTSRV_WORKERS": "2"}).start()
    try:
        with svc.client() as c:
            try:
                c.submit(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
            except CertSrvError as e:
                err = e
            else:
                raise AssertionError("a bad request was accepted")
            assert "0x8007000D ERROR_INVALID_DATA" in str(err) and "\n" not in str(err)
            assert c.view() == []  # nothing written
    finally:
        assert svc.stop() == 0
