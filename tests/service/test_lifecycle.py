"""Service lifecycle with real processes: clean stop (signals, ServerControl, CLI), the home lock, crash
(SIGKILL) and restart, periodic CRLs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pycertsrv import config as config_mod
from pycertsrv.errors import (
    ERROR_SHARING_VIOLATION,
    RPC_S_SERVER_UNAVAILABLE,
    CertSrvError,
    OutcomeUnknown,
    Unavailable,
)
from support import Service, make_csr, make_home


def _hammer(svc: Service, answered: list[tuple[str, bytes]], errors: list[BaseException], stop: threading.Event,
            tag: str) -> None:
    """Submit (issue-on-submit policy) until stopped or the service goes away; record every answered issuance."""
    try:
        # failover_timeout=0: a submit cut off by the kill is not sent again (issue 14 would, for 30 s, with its
        # request key): its outcome is unknown (OutcomeUnknown); the restart check below needs the answered ones.
        with svc.client(timeout=30, failover_timeout=0) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.submit(make_csr(f"{tag}-{i}.example.com"))
                except (Unavailable, OutcomeUnknown):
                    return
                cert = x509.load_pem_x509_certificate(r["certificate_pem"].encode())
                answered.append((r["serial"], cert.public_bytes(Encoding.DER)))
                i += 1
    except BaseException as e:
        errors.append(e)


def _run_load(svc: Service, n_threads: int, until: int, action: Any) -> tuple[list[tuple[str, bytes]],
                                                                               list[BaseException]]:
    answered: list[tuple[str, bytes]] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_hammer, args=(svc, answered, errors, stop, f"t{k}")) for k in range(n_threads)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(answered) < until and time.monotonic() < deadline and not errors:
        time.sleep(0.01)
    action()
    for t in threads:
        t.join(60)
    stop.set()
    return answered, errors


def test_sigterm_finishes_inflight_checkpoints_and_next_start_replays_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    svc = Service(home).start()
    try:
        answered, errors = _run_load(svc, 4, 30, lambda: svc.proc.send_signal(signal.SIGTERM))  # type: ignore[union-attr]
        assert svc.proc.wait(60) == 0  # type: ignore[union-attr]
        assert not errors, errors
        assert len(answered) >= 30
        assert not svc.socket.exists()
        log = svc.log()
        assert "stopping: signal SIGTERM" in log and "checkpoint written" in log
        svc2 = Service(home).start()
        try:
            with svc2.client() as c:
                st = c.status()
                assert st["recovery"]["replayed"] == 0  # clean stop: nothing to replay
                assert "nothing to replay" in svc2.log().split("stopped; checkpoint written")[-1]
                for serial, der in answered:
                    assert c.get_certificate(serial) == der
            assert svc2.stop(signal.SIGINT) == 0
            assert not svc2.socket.exists()
        finally:
            svc2.ensure_stopped()
    finally:
        svc.ensure_stopped()


def test_sigkill_restart_serves_every_answered_certificate(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    svc = Service(home).start()
    answered, errors = _run_load(svc, 4, 40, svc.kill)
    assert not errors, errors
    assert len(answered) >= 40
    assert svc.socket.exists()  # a crash leaves the socket file behind
    svc2 = Service(home).start()
    try:
        with svc2.client() as c:
            st = c.status()
            # Soft recovery ran (how much it replays depends on what SQLite had applied before the kill).
            assert st["recovery"]["kind"] == "soft"
            for serial, der in answered:
                assert c.get_certificate(serial) == der
                assert c.view(serial=serial)[0]["disposition_name"] == "issued"
        assert svc2.log().count("soft recovery") == 2
    finally:
        svc2.ensure_stopped()


def test_second_service_on_same_home_fails_naming_the_holder(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    svc = Service(home).start()
    try:
        r = subprocess.run([sys.executable, "-m", "pycertsrv.cli", "serve", "--home", str(home.root)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1
        assert f"pid {svc.proc.pid}" in r.stderr, r.stderr  # type: ignore[union-attr]
        assert f"0x{ERROR_SHARING_VIOLATION:08X}" in r.stderr
        with svc.client() as c:
            assert c.is_server_online()  # the first one is unharmed, socket untouched
    finally:
        svc.ensure_stopped()


def test_cli_shutdown_and_status(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    svc = Service(home).start()
    try:
        cli = [sys.executable, "-m", "pycertsrv.cli"]
        env = {**os.environ, "CERTSRV_HOME": str(home.root)}
        r = subprocess.run([*cli, "status"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0 and "Service Test CA" in r.stdout and "Administrator" in r.stdout, r.stderr
        r = subprocess.run([*cli, "status", "--json", "--server", f"unix:{svc.socket}"], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and '"online": true' in r.stdout
        r = subprocess.run([*cli, "shutdown"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0 and "stopped" in r.stdout, r.stderr
        assert svc.proc.wait(30) == 0  # type: ignore[union-attr]
        assert not svc.socket.exists()
        assert "ServerControl(CSCONTROL_SHUTDOWN)" in svc.log()
        r = subprocess.run([*cli, "status"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 1 and f"0x{RPC_S_SERVER_UNAVAILABLE:08X} RPC_S_SERVER_UNAVAILABLE" in r.stderr
        with pytest.raises(Unavailable) as ei:
            svc.client().is_server_online()
        assert ei.value.hresult == RPC_S_SERVER_UNAVAILABLE
        # The next start replays nothing.
        svc2 = Service(home).start()
        with svc2.client() as c:
            assert c.status()["recovery"]["replayed"] == 0
            c.shutdown(wait=30)
        assert svc2.proc.wait(30) == 0  # type: ignore[union-attr]
    finally:
        svc.ensure_stopped()


def test_periodic_crl_is_published_when_due(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    cfg = config_mod.load(home.root)
    # ~1.1 s period: the service must publish again by itself, with no call.
    config_mod.save(home.root, cfg.model_copy(update={"crl": cfg.crl.model_copy(update={"period_hours": 0.0003})}))
    svc = Service(home).start()
    crl_path = home.publish_dir / "ca.crl"

    def number() -> int:
        crl = x509.load_der_x509_crl(crl_path.read_bytes())
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)

    try:
        first = number()
        deadline = time.monotonic() + 60
        while number() < first + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert number() >= first + 2, svc.log()
    finally:
        svc.ensure_stopped()


def test_tcp_without_tls_files_refuses_to_start(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H", tcp_port=0, tcp_host="127.0.0.1")
    svc = Service(home).start(wait=False)
    rc = svc.proc.wait(60)  # type: ignore[union-attr]
    assert rc == 1
    assert "tls_cert, tls_key, client_ca" in svc.log()
    assert not svc.socket.exists()  # nothing left listening
    # ...and the home is free again (lock released, checkpoint written).
    svc2 = Service(home)
    cfg = config_mod.load(home.root)
    config_mod.save(home.root, cfg.model_copy(update={"service": cfg.service.model_copy(update={"tcp_port": None})}))
    svc2.start()
    try:
        with svc2.client() as c:
            assert c.is_server_online()
    except CertSrvError:
        raise
    finally:
        svc2.ensure_stopped()


def test_socket_path_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H", socket="not-a-socket")
    precious = home.root / "not-a-socket"
    precious.write_text("keep me")
    svc = Service(home).start(wait=False)
    assert svc.proc.wait(60) == 1  # type: ignore[union-attr]
    assert "exists and is not a socket" in svc.log()
    assert precious.read_text() == "keep me"
