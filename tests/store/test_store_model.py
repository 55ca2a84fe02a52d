"""Property test: any sequence of transactions, rolls, checkpoints and reopens matches a dict model.

"Unclean" reopens abandon the Store without close() (no checkpoint, handles dropped, lock released),
optionally leave a torn record at the end of the log, or put an older snapshot of SQLite in place so
that recovery must replay the log from there.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from store_helpers import abandon, write_at_end

from pycertsrv.store import Store, StoreOptions, list_generations, logfile
from pycertsrv.store.logfile import encode_payload

OPTS = StoreOptions(log_size=1024, checkpoint_records=0)
IDS = st.integers(1, 6)
NAMES = st.sampled_from(["a", "b", "c"])
VALUES = st.text("xyz", max_size=3)

Key = tuple[str, tuple[Any, ...]]

OP = st.one_of(
    st.tuples(st.just("put-request"), IDS, VALUES),
    st.tuples(st.just("put-attribute"), IDS, NAMES, VALUES),
    st.tuples(st.just("del-request"), IDS),
    st.tuples(st.just("del-attribute"), IDS, NAMES),
)


class StoreModel(RuleBasedStateMachine):
    """The engine against ``{(table, key): row}``."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="store-model-"))
        self.home = self.tmp / "home"
        self.store = Store.create(self.home, "model", OPTS)
        self.model: dict[Key, dict[str, Any]] = {}
        # Snapshots that can still be brought forward: (path, generation holding their next LSN).
        self.snapshots: list[tuple[Path, int]] = []

    def teardown(self) -> None:
        try:
            self.store.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ---------------------------------------------------------------- writes

    @rule(ops=st.lists(OP, min_size=1, max_size=5))
    def transaction(self, ops: list[tuple[Any, ...]]) -> None:
        new = dict(self.model)
        with self.store.transaction() as tx:
            for op in ops:
                if op[0] == "put-request":
                    row = {"request_id": op[1], "disposition": 9, "disposition_message": op[2],
                           "raw_request": op[2].encode() or None}
                    tx.put("request", row)
                    new[("request", (op[1],))] = row
                elif op[0] == "put-attribute":
                    row = {"request_id": op[1], "name": op[2], "value": op[3]}
                    tx.put("attribute", row)
                    new[("attribute", (op[1], op[2]))] = row
                elif op[0] == "del-request":
                    tx.delete("request", op[1])
                    new.pop(("request", (op[1],)), None)
                else:
                    tx.delete("attribute", (op[1], op[2]))
                    new.pop(("attribute", (op[1], op[2])), None)
        self.model = new

    @rule(rid=IDS, value=VALUES)
    def failed_transaction(self, rid: int, value: str) -> None:
        """A body that raises writes nothing."""
        try:
            with self.store.transaction() as tx:
                tx.put("request", {"request_id": rid, "disposition_message": value})
                raise RuntimeError("abandoned body")
        except RuntimeError:
            pass

    # ---------------------------------------------------------------- log management

    @rule()
    def roll(self) -> None:
        before = self.store.current_generation
        assert self.store.roll_log() == before
        assert self.store.current_generation == before + 1

    @rule()
    def checkpoint(self) -> None:
        cp = self.store.checkpoint()
        assert cp.lsn == self.store.applied_lsn

    @rule()
    def truncate(self) -> None:
        cp = self.store.last_checkpoint
        assert cp is not None
        self.store.truncate_logs(cp.generation)
        first = min(list_generations(self.store.log_dir))
        # Snapshots needing a deleted generation can no longer be brought forward.
        self.snapshots = [s for s in self.snapshots if s[1] >= first]

    @rule()
    def snapshot(self) -> None:
        path = self.tmp / f"snap{len(self.snapshots)}.db"
        info = self.store.snapshot(path)
        self.snapshots.append((path, info.generation))

    # ---------------------------------------------------------------- reopen

    @rule()
    def clean_reopen(self) -> None:
        self.store.close()
        self.store = Store.open(self.home, OPTS)
        assert self.store.recovery.replayed == 0 and self.store.recovery.torn_tail is None

    @rule(torn=st.booleans())
    def unclean_reopen(self, torn: bool) -> None:
        path = self.store.log_dir / logfile.log_name(self.store.current_generation)
        lsn = self.store.applied_lsn
        abandon(self.store)
        if torn:
            # A record whose write was cut short: never committed, must not appear.
            frame = logfile.encode_record(lsn + 1, logfile.now_us(),
                                          encode_payload([["setting", "p", ["torn", "x"]]]))
            write_at_end(path, frame[: len(frame) // 2])
        self.store = Store.open(self.home, OPTS)
        assert (self.store.recovery.torn_tail is not None) == torn

    @precondition(lambda self: bool(self.snapshots))
    @rule(data=st.data())
    def reopen_from_older_sqlite(self, data: st.DataObject) -> None:
        """SQLite loses everything after a snapshot; the log brings it back."""
        path, _ = data.draw(st.sampled_from(self.snapshots))
        lsn = self.store.applied_lsn
        db = self.store.db_path
        abandon(self.store)
        for suffix in ("-wal", "-shm"):
            db.with_name(db.name + suffix).unlink(missing_ok=True)
        shutil.copyfile(path, db)
        self.store = Store.open(self.home, OPTS)
        assert self.store.recovery.to_lsn == lsn

    # ---------------------------------------------------------------- the property

    @invariant()
    def matches_model(self) -> None:
        got: dict[Key, dict[str, Any]] = {}
        for r in self.store.select("request"):
            got[("request", (r["request_id"],))] = {
                "request_id": r["request_id"], "disposition": r["disposition"],
                "disposition_message": r["disposition_message"], "raw_request": r["raw_request"],
            }
            assert r["raw_request"] is None or isinstance(r["raw_request"], bytes)
        for a in self.store.select("attribute"):
            got[("attribute", (a["request_id"], a["name"]))] = dict(a)
        assert got == self.model
        assert self.store.get("setting", "torn") is None


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
