"""The restore registration and the hard recovery Store.open runs (in-process, real SQLite and logs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pycertsrv.errors import (
    ERROR_DIRECTORY,
    JET_ERR_MISSING_RESTORE_LOG_FILES,
    JET_ERR_RESTORE_IN_PROGRESS,
    CertSrvError,
    Conflict,
    SequenceError,
)
from pycertsrv.fsutil import sha256_file
from pycertsrv.store import Store, logfile
from pycertsrv.store import registration as regmod
from pycertsrv.store.sqlite.restore import recover_into_temp
from support import OPTS, add_requests, full_set, incremental_set, make_source, manifest, revoke, rows, tick

CTX = "ctx-1"


def place(set_dir: Path, home: Path) -> tuple[str, str]:
    """Copy a set's database to HOME/db and its logs to HOME/restore/logs; returns (db target, log path)."""
    m = manifest(set_dir)
    (home / "db").mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    logs = home / "restore" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    target = ""
    if m["database"]:
        target = str(home / "db" / Path(m["database"]).name)
        shutil.copyfile(set_dir / m["database"], target)
    for f in m["files"]:
        if f["role"] == "log":
            shutil.copyfile(set_dir / f["path"], logs / Path(f["path"]).name)
    return target, str(logs)


def register_full(set_dir: Path, home: Path, ctx: str = CTX, **kw: object) -> regmod.Registration:
    m = manifest(set_dir)
    target, logs = place(set_dir, home)
    return regmod.register(home, context=ctx, checkpoint_path=str(home / "system"), log_path=str(home / "logs"),
                           restore_map=[(m["locations"][0][1:], target)], backup_log_path=logs,
                           gen_low=m["gen_low"], gen_high=m["gen_high"], identity=m["identity"], **kw)  # type: ignore[arg-type]


def register_incr(set_dir: Path, home: Path, ctx: str = CTX) -> regmod.Registration:
    m = manifest(set_dir)
    _, logs = place(set_dir, home)
    return regmod.register(home, context=ctx, checkpoint_path=None, log_path=None, restore_map=None,
                           backup_log_path=logs, gen_low=m["gen_low"], gen_high=m["gen_high"], identity=m["identity"])


@pytest.fixture
def source(tmp_path: Path) -> Store:
    s = make_source(tmp_path / "src")
    yield s
    s.close()


def test_full_round_trip_and_after(source: Store, tmp_path: Path) -> None:
    ids = add_requests(source, 120)
    revoke(source, ids[3])
    _, want = full_set(source, tmp_path / "full")
    add_requests(source, 5, tag="after")  # past the set: must not appear
    home = tmp_path / "new"
    register_full(tmp_path / "full", home)
    with pytest.raises(Conflict) as ei:
        Store.open(home, OPTS)  # registered, not completed
    assert ei.value.hresult == JET_ERR_RESTORE_IN_PROGRESS
    regmod.complete(home, context=CTX)
    st = Store.open(home, OPTS)
    try:
        assert st.hard_recovery is not None
        assert rows(st) == want
        assert st.get("request", ids[3])["disposition"] == 21
        assert st.get("setting", "backup_requires_full")["value"] == "1"
        assert st.get("setting", "DBLastRecovery") is not None
        assert st.integrity_check() == "ok"
        assert not regmod.registration_path(home).exists()
        assert regmod.last_restore(home)["outcome"]["applied_lsn"] == st.applied_lsn
        assert not (home / "restore" / "logs").exists()
        more = add_requests(st, 3, tag="post")
        assert st.roll_log() >= st.hard_recovery.generation
    finally:
        st.close()
    st = Store.open(home, OPTS)  # an ordinary start after the restore: soft recovery only
    try:
        assert st.hard_recovery is None
        assert [r["request_id"] for r in st.select("request", [("requester", "=", "post")])] == more
        info = st.snapshot(tmp_path / "snap.db")
        assert info.lsn == st.applied_lsn
    finally:
        st.close()


def test_full_plus_two_incrementals_out_of_order(source: Store, tmp_path: Path) -> None:
    add_requests(source, 40)
    h0, _ = full_set(source, tmp_path / "full")
    add_requests(source, 30, tag="i1")
    h1, _ = incremental_set(source, tmp_path / "i1", h0)
    ids = add_requests(source, 30, tag="i2")
    revoke(source, ids[0])
    _, want = incremental_set(source, tmp_path / "i2", h1)
    home = tmp_path / "new"
    register_full(tmp_path / "full", home)
    register_incr(tmp_path / "i2", home)
    reg = register_incr(tmp_path / "i1", home)
    low, high = manifest(tmp_path / "full")["gen_low"], manifest(tmp_path / "i2")["gen_high"]
    assert (reg.gen_low, reg.gen_high) == (low, high)
    assert [s.kind for s in reg.sets] == ["full", "incremental", "incremental"]
    regmod.complete(home, context=CTX)
    with Store.open(home, OPTS) as st:
        assert rows(st) == want


def test_incremental_before_full_refused(source: Store, tmp_path: Path) -> None:
    add_requests(source, 5)
    h0, _ = full_set(source, tmp_path / "full")
    add_requests(source, 5)
    incremental_set(source, tmp_path / "i1", h0)
    home = tmp_path / "new"
    with pytest.raises(SequenceError) as ei:
        register_incr(tmp_path / "i1", home)
    assert ei.value.hresult == ERROR_DIRECTORY
    assert "full" in ei.value.message
    assert not regmod.registration_path(home).exists()


def test_interlock_and_force(source: Store, tmp_path: Path) -> None:
    add_requests(source, 5)
    full_set(source, tmp_path / "full")
    home = tmp_path / "new"
    register_full(tmp_path / "full", home, ctx="a")
    before = regmod.registration_path(home).read_bytes()
    with pytest.raises(Conflict) as ei:
        register_full(tmp_path / "full", home, ctx="b")
    assert ei.value.hresult == JET_ERR_RESTORE_IN_PROGRESS
    assert regmod.registration_path(home).read_bytes() == before
    reg = register_full(tmp_path / "full", home, ctx="b", force=True)
    assert reg.context == "b" and reg.state == regmod.STATE_REGISTERED
    with pytest.raises(SequenceError):
        regmod.complete(home, context="a")  # not the registering context
    regmod.complete(home, context="b")
    Store.open(home, OPTS).close()


def test_failed_completion_refuses_start(source: Store, tmp_path: Path) -> None:
    add_requests(source, 5)
    full_set(source, tmp_path / "full")
    home = tmp_path / "new"
    register_full(tmp_path / "full", home)
    regmod.complete(home, context=CTX, hr=0x80070070)
    for _ in range(2):  # refuses every time, and leaves the registration as it is
        with pytest.raises(CertSrvError) as ei:
            Store.open(home, OPTS)
        assert ei.value.hresult == 0x80070070
    assert json.loads(regmod.registration_path(home).read_bytes())["state"] == "failed"
    with pytest.raises(SequenceError):
        register_incr(tmp_path / "full", home)  # an incremental cannot build on a failed restore


def test_missing_generation_named_and_nothing_served(source: Store, tmp_path: Path) -> None:
    add_requests(source, 10)
    h0, _ = full_set(source, tmp_path / "full")
    add_requests(source, 400)  # several generations (64 KiB log size)
    incremental_set(source, tmp_path / "i1", h0)
    home = tmp_path / "new"
    m = manifest(tmp_path / "i1")
    assert m["gen_high"] - m["gen_low"] >= 2
    register_full(tmp_path / "full", home)
    register_incr(tmp_path / "i1", home)
    missing = logfile.log_name(m["gen_low"] + 1)
    (home / "restore" / "logs" / missing).unlink()
    regmod.complete(home, context=CTX)
    target = next((home / "db").glob("*.db"))
    digest = sha256_file(target)
    with pytest.raises(CertSrvError) as ei:
        Store.open(home, OPTS)
    assert ei.value.hresult == JET_ERR_MISSING_RESTORE_LOG_FILES
    assert missing in str(ei.value)
    assert sha256_file(target) == digest  # the placed database was not touched
    assert not list((home / "db").glob(".*recovering*"))
    with pytest.raises(CertSrvError) as ei:
        Store.open(home, OPTS)  # marked failed: refuses with the recorded hr
    assert ei.value.hresult == JET_ERR_MISSING_RESTORE_LOG_FILES


def test_until_point_in_time(source: Store, tmp_path: Path) -> None:
    add_requests(source, 20, tag="early")
    h0, _ = full_set(source, tmp_path / "full")
    add_requests(source, 20, tag="before")
    tick()
    cut = logfile.now_us()
    want = rows(source)
    tick()
    add_requests(source, 20, tag="later")
    incremental_set(source, tmp_path / "i1", h0)
    home = tmp_path / "new"
    register_full(tmp_path / "full", home, until_us=cut)
    register_incr(tmp_path / "i1", home)
    regmod.complete(home, context=CTX)
    with Store.open(home, OPTS) as st:
        assert rows(st) == want
        assert st.count("request", [("requester", "=", "later")]) == 0
        assert st.hard_recovery is not None and st.hard_recovery.report.stopped_at is not None
        add_requests(st, 2, tag="new-history")
    with Store.open(home, OPTS) as st:
        assert st.count("request", [("requester", "=", "new-history")]) == 2


def test_in_place_roll_forward_through_live_logs(tmp_path: Path) -> None:
    home = tmp_path / "ca"
    st = make_source(home)
    add_requests(st, 30)
    full_set(st, tmp_path / "full")
    add_requests(st, 150, tag="after-backup")  # only in the live logs
    want = rows(st)
    st.close()
    # The database is lost; the live logs survive. Restore the full set in place.
    for p in (home / "db").iterdir():
        p.unlink()
    register_full(tmp_path / "full", home)
    regmod.complete(home, context=CTX)
    with Store.open(home, OPTS) as st:
        assert rows(st) == want
        assert st.hard_recovery is not None and not st.hard_recovery.superseded
        add_requests(st, 2, tag="x")
    with Store.open(home, OPTS) as st:
        assert st.count("request", [("requester", "=", "x")]) == 2


def test_in_place_until_moves_conflicting_generations_aside(tmp_path: Path) -> None:
    home = tmp_path / "ca"
    st = make_source(home)
    add_requests(st, 30)
    full_set(st, tmp_path / "full")
    add_requests(st, 60, tag="kept")
    tick()
    cut = logfile.now_us()
    want = rows(st)
    tick()
    add_requests(st, 100, tag="dropped")
    st.close()
    live_before = {p.name: sha256_file(p) for p in (home / "logs").glob("edb*.log")}
    old_db = next((home / "db").glob("*.db"))
    register_full(tmp_path / "full", home, until_us=cut)  # replaces the db file in place
    regmod.complete(home, context=CTX)
    with Store.open(home, OPTS) as st:
        assert rows(st) == want
        out = st.hard_recovery
        assert out is not None and out.superseded and out.superseded_dir
        aside = Path(out.superseded_dir)
        # Nothing lost: every live generation is either still in place, unchanged, or moved aside.
        for name, digest in live_before.items():
            here = home / "logs" / name
            assert (aside / name).exists() or (here.exists() and sha256_file(here) == digest)
        assert st.count("request", [("requester", "=", "dropped")]) == 0
        add_requests(st, 3, tag="after")
    with Store.open(home, OPTS) as st:
        assert st.count("request", [("requester", "=", "after")]) == 3
        assert st.count("request", [("requester", "=", "dropped")]) == 0
    assert old_db.name  # the old db file was overwritten by the placed copy in this in-process test


def test_interrupted_finish_is_completed_at_next_start(source: Store, tmp_path: Path) -> None:
    add_requests(source, 50)
    _, want = full_set(source, tmp_path / "full")
    home = tmp_path / "new"
    register_full(tmp_path / "full", home)
    regmod.complete(home, context=CTX)
    reg = regmod.read_registration(home)
    assert reg is not None
    # Stop right after the commit point (state "recovering" written, nothing finished yet).
    reg.recovery = recover_into_temp(home, reg).to_json()
    reg.state = regmod.STATE_RECOVERING
    regmod.write_registration(home, reg)
    with Store.open(home, OPTS) as st:
        assert rows(st) == want
        assert st.get("setting", "backup_requires_full")["value"] == "1"
