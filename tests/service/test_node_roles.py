"""Issue 14: two real ``certsrv serve`` nodes on one real PostgreSQL database, a 2 s writer lease.

The second node's home is made with the documented command (``certsrv restore KEYSET --key-only --home NODE2
--database URL``). The standby serves reads and refuses writes naming the writer; the load balancer probes say
who is who; SIGKILL of the writer hands the lease to the standby, which then answers writes with ids that go on;
one backup at a time across the nodes, and a dead node's claim expires; sets taken through both writers carry a
rising epoch lineage that verify-backup accepts.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pycertsrv import config as config_mod
from pycertsrv.backupset.manifest import read_manifest
from pycertsrv.client.backup import BackupSession
from pycertsrv.errors import (
    CERTSRV_E_INVALID_CA_CERTIFICATE,
    ERROR_BUSY,
    ERROR_HOST_NODE_NOT_RESOURCE_OWNER,
    CertSrvError,
    NotWriter,
)
from support import Service, certsrv, make_csr, short_home

LEASE_TTL = 2.0
SESSION_TIMEOUT = 4.0  # backup_session_timeout: the cluster-wide claim's time to live
ONE_LINE = re.compile(r"^certsrv: [^\n]+: 0x[0-9A-F]{8} [A-Za-z_]+: [^\n]+\n$")


def _configure(home: Path) -> None:
    cfg = config_mod.load(home)
    cfg = cfg.model_copy(update={
        "store": cfg.store.model_copy(update={"lease_ttl": LEASE_TTL}),
        "service": cfg.service.model_copy(update={"backup_session_timeout": SESSION_TIMEOUT,
                                                  "backup_idle_timeout": SESSION_TIMEOUT})})
    config_mod.save(home, cfg)


def _until(what: str, cond: Callable[[], Any], limit: float = 60.0) -> Any:
    """Poll ``cond`` until it returns something true (the bound only stops a hung test; nothing is timed)."""
    end = time.monotonic() + limit
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not reached")
        time.sleep(0.1)


def _probe(svc: Service, path: str) -> int:
    try:
        with svc.client(timeout=5) as c:
            return int(c._http.get(path).status_code)
    except (CertSrvError, OSError):
        return 0


@dataclass
class Nodes:
    a: Service
    b: Service
    url: str
    pw: Path
    keyset: Path
    work: Path

    def writer_of(self) -> tuple[Service, Service]:
        """(writer, standby) as the probes say."""
        if _probe(self.a, "/v1/health/writer") == 200:
            return self.a, self.b
        return self.b, self.a


@pytest.fixture
def nodes(pg_url: str, tmp_path: Path) -> Iterator[Nodes]:
    a_home, b_home = short_home("na"), short_home("nb")
    r = certsrv("init", "--name", "Node CA", "--home", str(a_home), "--database", pg_url)
    assert r.returncode == 0, r.stderr
    _configure(a_home)
    pw = tmp_path / "pw"
    pw.write_text("node set password\n")
    keyset = tmp_path / "keyset"
    env = {"CERTSRV_WORKERS": "1"}
    a = Service(a_home, env=env).start()
    b: Service | None = None
    try:
        r = certsrv("backup", str(keyset), "--key-only", "--quiet", "--password-file", str(pw), "--home", str(a_home))
        assert r.returncode == 0, r.stderr
        # the documented way to make a second node's home (issue 14)
        r = certsrv("restore", str(keyset), "--key-only", "--home", str(b_home), "--database", pg_url,
                    "--password-file", str(pw))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "holds the CA of this key" in r.stdout and "certsrv serve" in r.stdout
        assert config_mod.load(b_home).store.url == pg_url
        _configure(b_home)
        b = Service(b_home, env=env).start()
        yield Nodes(a, b, pg_url, pw, keyset, tmp_path)
    finally:
        for s in (b, a):
            if s is not None:
                s.cleanup()


def test_standby_serves_reads_and_refuses_writes_naming_the_writer(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    with a.client() as ca:
        issued = ca.submit(make_csr("one.example"))
        assert issued["disposition_name"] == "issued"
        crl = ca.publish_crl()
    with b.client(failover_timeout=0) as cb:  # the node's own answer (a client does not follow the writer)
        h = cb.call("GET", "/v1/health")
        assert h["role"] == "standby" and h["node"]["role"] == "standby"
        assert h["node"]["writer"]["holder"].endswith(f":{a.pid}")
        assert h["node"]["writer"]["endpoints"] == [a.address]
        assert h["replication"]["mode"] in ("none", "async", "sync")
        # reads: a request, its certificate, the CA certificate, the CRL, view
        assert cb.get_request(issued["request_id"])["serial"] == issued["serial"]
        assert cb.get_certificate(issued["serial"])
        assert cb.ca_info()["name"] == "Node CA"
        assert cb.call("GET", "/ca/crl")["number"] == crl["number"]
        assert [i["request_id"] for i in cb.view()] == [issued["request_id"]]
        # writes: refused before anything runs, naming the writer
        for write in (lambda: cb.submit(make_csr("two.example")), lambda: cb.revoke(issued["serial"]),
                      cb.publish_crl):
            with pytest.raises(NotWriter) as ei:
                write()
            assert ei.value.hresult == ERROR_HOST_NODE_NOT_RESOURCE_OWNER
            assert f":{a.pid}" in ei.value.message and a.address in ei.value.message
        with pytest.raises(NotWriter):
            BackupSession.prepare(cb, "full")  # no backup runs anywhere: not busy, but not the writer
        assert [i["request_id"] for i in cb.view()] == [issued["request_id"]]  # nothing was written
    with b.client() as follow:  # a client given the standby follows the writer its NotWriter names
        followed = follow.submit(make_csr("followed.example"))
        assert followed["disposition_name"] == "issued" and followed["request_id"] > issued["request_id"]
    assert (_probe(a, "/v1/health/writer"), _probe(b, "/v1/health/writer")) == (200, 503)
    assert (_probe(a, "/v1/health/standby"), _probe(b, "/v1/health/standby")) == (503, 200)
    r = certsrv("status", "--home", str(b.home.root))
    assert r.returncode == 0, r.stderr
    assert f"role: standby ({socket.gethostname()}:{b.pid}); writer " in r.stdout
    assert f":{a.pid} (epoch " in r.stdout and "replication: " in r.stdout


def test_writer_killed_standby_takes_over_and_the_old_writer_comes_back_as_standby(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    with a.client() as ca:
        first = [ca.submit(make_csr(f"a{i}.example")) for i in range(3)]
        crl_a = ca.publish_crl()
    a.kill()  # SIGKILL: no lease release, no cleanup
    _until("the standby takes the writer lease", lambda: _probe(b, "/v1/health/writer") == 200)
    with b.client() as cb:
        after = cb.submit(make_csr("b0.example"))
        assert after["disposition_name"] == "issued"
        assert after["request_id"] > max(x["request_id"] for x in first)  # ids go on
        revoked = cb.revoke(first[0]["serial"])
        assert revoked["disposition_name"] == "revoked"
        crl_b = cb.publish_crl()
        assert crl_b["number"] > crl_a["number"]  # CRL numbers go on
        h = cb.call("GET", "/v1/health")
        assert h["role"] == "writer" and h["node"]["promotions"] == 1
        # every answered write of the old writer is there
        assert {i["request_id"] for i in cb.view()} >= {x["request_id"] for x in first}
    assert "this node is now the WRITER" in b.log() and "Traceback" not in b.log()
    # the killed node starts again: a standby now, naming the new writer
    a.start()
    with a.client(failover_timeout=0) as ca:
        assert ca.call("GET", "/v1/health")["role"] == "standby"
        with pytest.raises(NotWriter) as ei:
            ca.submit(make_csr("a9.example"))
        assert f":{b.pid}" in ei.value.message
    assert (_probe(a, "/v1/health/writer"), _probe(b, "/v1/health/writer")) == (503, 200)


def test_one_backup_across_the_nodes_and_a_dead_nodes_claim_expires(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    with a.client() as ca:
        ca.submit(make_csr("x.example"))
    ca = a.client()
    session = BackupSession.prepare(ca, "full")  # held through node A
    try:
        with b.client() as cb:
            with pytest.raises(CertSrvError) as ei:
                BackupSession.prepare(cb, "full")
            assert ei.value.hresult == ERROR_BUSY and f":{a.pid}" in ei.value.message
        a.kill()  # the node dies with its session open: its claim is never released
    finally:
        ca.close()
        del session
    _until("the standby takes the writer lease", lambda: _probe(b, "/v1/health/writer") == 200)

    def prepared() -> bool:
        with b.client() as cb:
            try:
                s = BackupSession.prepare(cb, "full")
            except CertSrvError as e:
                assert e.hresult == ERROR_BUSY and f":{a.pid}" in e.message, e
                busy.append(e)
                return False
            s.end()
            return True

    busy: list[CertSrvError] = []
    _until("the dead node's claim expires", prepared)
    assert busy, "the dead node's claim was live for a while (renewed within its time to live)"


def test_incremental_after_a_change_of_writer_continues_the_lineage(nodes: Nodes) -> None:
    a, b, work = nodes.a, nodes.b, nodes.work
    with a.client() as ca:
        ca.submit(make_csr("f.example"))
    r = certsrv("backup", str(work / "full"), "--database-only", "--quiet", "--password-file", str(nodes.pw),
                "--home", str(a.home.root))
    assert r.returncode == 0, r.stderr
    a.kill()
    _until("the standby takes the writer lease", lambda: _probe(b, "/v1/health/writer") == 200)
    with b.client() as cb:
        cb.submit(make_csr("i.example"))
    r = certsrv("backup", str(work / "inc"), "--incremental", "--database-only", "--quiet", "--password-file",
                str(nodes.pw), "--home", str(b.home.root))
    assert r.returncode == 0, r.stderr
    full, inc = read_manifest(work / "full"), read_manifest(work / "inc")
    assert full.lineage and inc.lineage and inc.base is not None
    assert inc.base["epoch"] == full.lineage[-1].epoch
    assert inc.lineage[-1].epoch > full.lineage[-1].epoch  # the new writer's epoch
    for d in ("full", "inc"):
        r = certsrv("verify-backup", str(work / d), "--password-file", str(nodes.pw), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["lineage"] == [x.to_json() for x in read_manifest(work / d).lineage or []]


def test_a_node_home_for_another_cas_database_is_refused(nodes: Nodes, pg_cluster: Any, tmp_path: Path) -> None:
    other_url = pg_cluster.new_database()
    try:
        other = tmp_path / "other"
        assert certsrv("init", "--name", "Other CA", "--home", str(other), "--database", other_url).returncode == 0
        svc = Service(other).start()  # publishes its first CRL
        svc.ensure_stopped()
        target = tmp_path / "node3"
        r = certsrv("restore", str(nodes.keyset), "--key-only", "--home", str(target), "--database", other_url,
                    "--password-file", str(nodes.pw))
        assert r.returncode == 1 and ONE_LINE.match(r.stderr), r.stdout + r.stderr
        assert f"0x{CERTSRV_E_INVALID_CA_CERTIFICATE:08X}" in r.stderr and "another CA" in r.stderr
        assert not target.exists() or not any(target.iterdir())
    finally:
        pg_cluster.drop_database(other_url)


def test_a_fenced_writer_goes_back_to_standby(nodes: Nodes) -> None:
    a, b = nodes.a, nodes.b
    a.proc.send_signal(signal.SIGSTOP)  # past its lease: the standby takes over
    try:
        _until("the standby takes the writer lease", lambda: _probe(b, "/v1/health/writer") == 200)
        with b.client() as cb:
            done = cb.submit(make_csr("during.example"))
    finally:
        a.proc.send_signal(signal.SIGCONT)
    # Thawed, it is never the load balancer's writer again, even before its heartbeat finds it was fenced: its
    # lease is older than the lease time (lease_fresh).
    assert _probe(a, "/v1/health/writer") == 503
    _until("the old writer sees it was fenced", lambda: _probe(a, "/v1/health/standby") == 200)
    with a.client(failover_timeout=0) as ca:
        with pytest.raises(NotWriter) as ei:
            ca.submit(make_csr("stale.example"))
        assert f":{b.pid}" in ei.value.message
        assert ca.get_request(done["request_id"])["disposition_name"] == "issued"  # it reads the new writer's rows
        assert ca.call("GET", "/v1/health")["node"]["fencings"] == 1
    assert a.proc.poll() is None and "FENCED" in a.log() and "Traceback" not in a.log()
