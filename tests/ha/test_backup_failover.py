"""Backup across the failover (issue 14, Must show): a full set taken through node A before the failover and
an incremental taken through node B after it (after a change of writer and a PostgreSQL failover) restore
into one consistent CA: every write answered before the incremental began is in it, the rows are the
database's, the sets verify (``certsrv verify-backup``, which checks the epoch lineage), and openssl accepts
its certificates."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ha.harness import Load, check_answered, ha_context
from pg_support import pair_context, promote, stop_immediate
from pycertsrv.ca import Authority
from support import certsrv, db_rows_readonly, manifest, openssl_verify


def epochs(doc: dict[str, Any]) -> list[int]:
    """The lease epochs of a set's generations, in generation order (the manifest's ``lineage`` runs)."""
    return [int(r["epoch"]) for r in doc.get("lineage") or []]


def test_full_before_and_incremental_after_a_failover_restore_into_one_ca(work: Path) -> None:
    pw = work / "pw"
    pw.write_text("ha backup password\n")
    full, incr, restored = work / "full", work / "incr", work / "restored"
    with pair_context(sync="on") as pair, ha_context(pair, nodes=2) as ha:
        a, b = ha.nodes
        load = Load(ha, workers=2).start()
        try:
            load.wait(10, what="writes before the full backup")
            assert ha.wait_writer() is a
            certsrv("backup", str(full), "--home", str(a.service.home.root), "--password-file", str(pw), "--quiet",
                    check=True)  # through node A, the writer, under load
            load.wait(5, what="writes after the full backup")
            a.kill()  # a change of writer ...
            assert ha.wait_writer(other_than=a) is b
            load.wait(5, what="writes after B took over")
            stop_immediate(pair.primary)  # ... and a PostgreSQL failover
            promote(pair.standby)
            load.wait(10, what="writes after the promotion")
            cut = time.monotonic_ns()
            certsrv("backup", str(incr), "--incremental", "--base", str(full), "--home", str(b.service.home.root),
                    "--password-file", str(pw), "--quiet", check=True)  # through node B
        finally:
            load.stop()
        check_answered(ha, load)  # the database itself first: every answered write is there
        with ha.db() as c:
            live = {int(r[0]): (r[1], r[2]) for r in c.execute("SELECT request_id, serial, revoked_at FROM request")}
            gens = c.execute("SELECT g.gen, g.epoch, g.first_lsn, g.closed_us IS NOT NULL, min(r.lsn), max(r.lsn), "
                             "count(r.lsn) FROM log_generation g LEFT JOIN log_record r USING (gen) "
                             "GROUP BY g.gen ORDER BY g.gen").fetchall()
    for s in (full, incr):
        out = certsrv("verify-backup", str(s), "--password-file", str(pw), check=True)
        assert "OK" in out.stdout, out.stdout
    # Each generation's epoch is in its set: the incremental's continue the full set's, past the failovers.
    e_full, e_incr = epochs(manifest(full)), epochs(manifest(incr))
    assert e_full and e_incr and min(e_incr) >= max(e_full) and max(e_incr) > max(e_full), (e_full, e_incr)
    assert e_incr == sorted(set(e_incr)) and len(e_incr) >= 2  # new epochs: B took the lease, B re-took it
    certsrv("restore", str(full), str(incr), "--home", str(restored), "--password-file", str(pw), check=True)
    with Authority.open(restored) as ca:  # the restore completes here: hard recovery replays the generations
        assert ca.store.integrity_check() == "ok"
    rows = db_rows_readonly(restored, ["request", "crl"])
    got = {int(r["request_id"]): (r["serial"], r["revoked_at"], r["raw_cert"]) for r in rows["request"]}
    # One consistent CA: every restored request is the database's (same id, same serial) ...
    assert got and all(live[rid][0] == serial for rid, (serial, _, _) in got.items())
    # ... and everything answered before the incremental began is in it.
    lost = [x.request_id for x in load.issued if x.answered_ns < cut and got.get(x.request_id, (None,))[0] != x.serial]
    assert not lost, f"answered issuances missing from the restored CA: {lost}; generations in the database {gens}"
    unrevoked = {s for s, _, done in load.revoked if done < cut} - {s for s, r, _ in got.values() if r is not None}
    assert not unrevoked, f"answered revocations missing from the restored CA: {sorted(unrevoked)[:3]}"
    assert {n for n, _, done in load.crls if done < cut} <= {int(r["number"]) for r in rows["crl"]}
    before = [x for x in load.issued if x.answered_ns < cut]
    for x in (before[0], before[len(before) // 2], before[-1]):  # the first, one from the middle, the last
        openssl_verify(restored / "publish" / "ca.crt", bytes(got[x.request_id][2]), work)
