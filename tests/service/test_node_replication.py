"""Issue 14: the replication state a node reports, on a real PostgreSQL primary + streaming standby. With
asynchronous replication ``/v1/health``, ``certsrv status`` and the service log warn that acknowledged writes can
be lost on failover; with a synchronous standby they say ``sync`` and warn of nothing."""

from __future__ import annotations

import pytest

from pg_support import pair_context, promote, stop_immediate
from pycertsrv import config as config_mod
from pycertsrv.errors import RPC_S_CALL_FAILED, RPC_S_CALL_FAILED_DNE, CertSrvError
from support import Service, certsrv, make_csr, short_home


@pytest.mark.parametrize("sync", [None, "remote_apply"], ids=["async", "sync"])
def test_replication_mode_in_health_status_and_log(sync: str | None) -> None:
    with pair_context(sync=sync) as pair:
        url = pair.new_database()
        home = short_home("nr")
        r = certsrv("init", "--name", "Replicated CA", "--home", str(home), "--database", url)
        assert r.returncode == 0, r.stderr
        svc = Service(home, env={"CERTSRV_WORKERS": "0"}).start()
        try:
            with svc.client() as c:
                h = c.call("GET", "/v1/health")
            rep = h["replication"]
            status = certsrv("status", "--home", str(home))
            assert status.returncode == 0, status.stderr
            if sync is None:
                assert rep["mode"] == "async" and rep["warning"]
                assert "lost" in rep["warning"] and h["warnings"] == [rep["warning"]]
                assert "replication: async" in status.stdout
                assert f"WARNING: {rep['warning']}" in status.stdout
                assert rep["warning"] in svc.log()
            else:
                assert rep["mode"] == "sync" and rep["warning"] is None and h["warnings"] == []
                assert [(s["name"], s["sync_state"]) for s in rep["standbys"]] == [
                    (n, "sync") for n, _, _ in pair.replication()]
                assert "replication: sync (" in status.stdout and "WARNING" not in status.stdout
                assert "lost" not in svc.log()
        finally:
            svc.cleanup()



def test_the_writer_node_rides_out_a_lost_primary() -> None:
    """The PostgreSQL primary stops (-m immediate): the node stays up, a write answers 503 with an HRESULT of the
    contract (may have run: RPC_S_CALL_FAILED; did not: RPC_S_CALL_FAILED_DNE), never a traceback; once the
    standby server is promoted the node writes again under a new epoch, the first request still there."""
    with pair_context(sync="remote_apply") as pair:
        home = short_home("nf")
        r = certsrv("init", "--name", "Failover CA", "--home", str(home), "--database", pair.new_database())
        assert r.returncode == 0, r.stderr
        cfg = config_mod.load(home)
        config_mod.save(home, cfg.model_copy(update={"store": cfg.store.model_copy(update={"lease_ttl": 2.0})}))
        svc = Service(home, env={"CERTSRV_WORKERS": "0"}).start()
        try:
            with svc.client(timeout=120) as c:
                first = c.submit(make_csr("before.example"))
                epoch = c.call("GET", "/v1/health")["node"]["epoch"]
                stop_immediate(pair.primary)
                with pytest.raises(CertSrvError) as ei:
                    c.submit(make_csr("during.example"))
                assert ei.value.hresult in (RPC_S_CALL_FAILED, RPC_S_CALL_FAILED_DNE), ei.value
                assert svc.proc is not None and svc.proc.poll() is None
                promote(pair.standby)
                after = c.submit(make_csr("after.example"))
                assert after["request_id"] > first["request_id"]
                assert c.get_request(first["request_id"])["serial"] == first["serial"]
                h = c.call("GET", "/v1/health")
                assert h["role"] == "writer" and h["node"]["epoch"] > epoch
            assert "Traceback" not in svc.log()
        finally:
            svc.cleanup()
