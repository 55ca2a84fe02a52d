"""Issue 14: the replication state a node reports, on a real PostgreSQL primary + streaming standby. With
asynchronous replication ``/v1/health``, ``certsrv status`` and the service log warn that acknowledged writes can
be lost on failover; with a synchronous standby they say ``sync`` and warn of nothing."""

from __future__ import annotations

import pytest

from pg_support import pair_context
from support import Service, certsrv, short_home


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

