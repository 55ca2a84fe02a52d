"""A writer node in a subprocess, for the several-nodes tests (issue 14): it opens the CA database and obeys
lines on stdin, answering one line each on stdout, so a test can SIGKILL or SIGSTOP it at a known point.

``python node_script.py URL LEASE_TTL``, then:

- ``issue N``: N transactions, each a request row with the next request id and a CRL row with the next CRL
  number; prints ``ack REQUEST_ID CRL_NUMBER`` as each one returns (the answer the CA would give);
- ``put NAME``: one setting row; prints ``ok LSN`` or ``refused CLASS 0xHRESULT MESSAGE``;
- ``hold``: leave the lease row locked in an open transaction of the writer connection (a commit frozen
  half-way); prints ``holding``;
- ``quit``.
"""

from __future__ import annotations

import sys

from pycertsrv.errors import CertSrvError
from pycertsrv.store.postgres import PgStore


def main() -> None:
    url, ttl = sys.argv[1], float(sys.argv[2])
    store = PgStore.open(url, lease_ttl=ttl)
    print(f"ready {store.epoch}", flush=True)
    for line in sys.stdin:
        cmd, _, arg = line.strip().partition(" ")
        if cmd == "issue":
            for _ in range(int(arg)):
                with store.transaction() as tx:
                    rid, crl = tx.next_id("request"), tx.next_id("crl")
                    tx.put("request", {"request_id": rid, "disposition": 20, "subject": f"CN=old-{rid}"})
                    tx.put("crl", {"number": crl, "entries": 0})
                print(f"ack {rid} {crl}", flush=True)
        elif cmd == "put":
            try:
                with store.transaction() as tx:
                    tx.put("setting", {"name": arg, "value": "from the subprocess"})
                print(f"ok {tx.lsn}", flush=True)
            except CertSrvError as e:
                print(f"refused {type(e).__name__} 0x{e.hresult:08X} {e.message}", flush=True)
        elif cmd == "hold":
            # Freeze "inside a commit": the lease row updated in an open transaction on the writer's own
            # connection, as a commit is between its lease renewal and its COMMIT (the test then SIGSTOPs us).
            w = store._writer
            w.execute("BEGIN")
            w.execute("UPDATE writer_lease SET renewed_us = renewed_us WHERE id = 1")
            print("holding", flush=True)
        elif cmd == "quit":
            break
    store.close()


if __name__ == "__main__":
    main()
