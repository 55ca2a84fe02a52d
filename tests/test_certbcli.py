"""pycertsrv.certbcli: constants, multi-string helpers, and a model-checked state machine against a live service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from pycertsrv import certbcli as cb
from pycertsrv.client import Client
from pycertsrv.errors import (
    E_INVALIDARG,
    E_UNEXPECTED,
    ERROR_FILE_NOT_FOUND,
    ERROR_INVALID_HANDLE,
    JET_ERR_INVALID_BACKUP_SEQUENCE,
    RPC_S_SERVER_UNAVAILABLE,
    CertSrvError,
)
from support import Service, live_service, short_home

# ---------------------------------------------------------------------------- constants and helpers


def test_constants_match_spec_1_3() -> None:
    assert (cb.CSBACKUP_TYPE_FULL, cb.CSBACKUP_TYPE_LOGS_ONLY, cb.CSBACKUP_TYPE_MASK) == (1, 2, 3)
    assert cb.CSBACKUP_DISABLE_INCREMENTAL == 0xFFFFFFFF
    assert (cb.CSRESTORE_TYPE_FULL, cb.CSRESTORE_TYPE_ONLINE, cb.CSRESTORE_TYPE_CATCHUP, cb.CSRESTORE_TYPE_MASK) == (
        1, 2, 4, 5)
    assert (cb.CSBFT_DIRECTORY, cb.CSBFT_DATABASE_DIRECTORY, cb.CSBFT_LOG_DIRECTORY) == (0x80, 0x40, 0x20)
    assert cb.CSBFT_LOG == 0x21 == ord("!") == 0x01 | cb.CSBFT_LOG_DIRECTORY
    assert cb.CSBFT_LOG_DIR == 0x82 == 0x02 | cb.CSBFT_DIRECTORY
    assert cb.CSBFT_CHECKPOINT_DIR == 0x83 == 0x03 | cb.CSBFT_DIRECTORY
    assert cb.CSBFT_CERTSERVER_DATABASE == 0x44 == ord("D") == 0x04 | cb.CSBFT_DATABASE_DIRECTORY
    assert cb.CSBFT_PATCH_FILE == 0x25 == ord("%")
    assert cb.CSBFT_UNKNOWN == 0x0F
    assert (cb.CSCONTROL_SHUTDOWN, cb.CSCONTROL_SUSPEND, cb.CSCONTROL_RESTART) == (1, 2, 3)
    assert (cb.JET_bitBackupIncremental, cb.JET_bitBackupAtomic, cb.JET_bitBackupSnapshot) == (1, 4, 0x10)
    assert (cb.wszDBBACKUPSUBDIR, cb.wszDBBACKUPCERTBACKDAT) == ("DataBase", "certbkxp.dat")
    assert (cb.wszPFXFILENAMEEXT, cb.wszDBFILENAMEEXT, cb.wszLOGFILENAMEEXT, cb.wszDATFILENAMEEXT) == (
        ".p12", ".edb", ".log", ".dat")
    assert cb.wszREGDBLASTFULLBACKUP == "DBLastFullBackup" and cb.wszREGKEYRESTOREINPROGRESS == "RestoreInProgress"
    assert (cb.wszREGLOWLOGNUMBER, cb.wszREGHIGHLOGNUMBER, cb.wszREGRESTOREMAP) == (
        "LowLogNumber", "HighLogNumber", "RestoreMap")
    assert cb.DBFLAGS_CIRCULARLOGGING == 4
    assert (cb.IF_NOREMOTEICERTADMINBACKUP, cb.IF_NOLOCALICERTADMINBACKUP, cb.IF_NOSNAPSHOTBACKUP,
            cb.IF_NOREMOTEICERTADMIN) == (0x40, 0x80, 0x100, 0x10)
    assert cb.szBACKUPANNOTATION == "Cert Server Backup Interface"


EIGHTEEN = ["CertSrvIsServerOnline", "CertSrvBackupPrepare", "CertSrvBackupGetDatabaseNames",
            "CertSrvBackupGetBackupLogs", "CertSrvBackupGetDynamicFileList", "CertSrvBackupOpenFile",
            "CertSrvBackupRead", "CertSrvBackupClose", "CertSrvBackupTruncateLogs", "CertSrvBackupEnd",
            "CertSrvBackupFree", "CertSrvRestoreGetDatabaseLocations", "CertSrvRestorePrepare",
            "CertSrvRestoreRegister", "CertSrvRestoreRegisterThroughFile", "CertSrvRestoreRegisterComplete",
            "CertSrvRestoreEnd", "CertSrvServerControl"]


def test_all_eighteen_functions() -> None:
    assert len(set(EIGHTEEN)) == 18
    for name in EIGHTEEN:
        assert callable(getattr(cb, name)), name
    assert cb.CertSrvRestorePrepareW is cb.CertSrvRestorePrepare
    assert cb.CertSrvRestoreRegisterW is cb.CertSrvRestoreRegister
    with pytest.raises(CertSrvError) as e:
        cb.CertSrvRestoreGetDatabaseLocations(object())
    assert e.value.hresult == ERROR_INVALID_HANDLE


def test_w_aliases_and_free() -> None:
    assert cb.CertSrvBackupPrepareW is cb.CertSrvBackupPrepare
    assert cb.CertSrvBackupGetDatabaseNamesW is cb.CertSrvBackupGetDatabaseNames
    assert cb.CertSrvBackupGetBackupLogsW is cb.CertSrvBackupGetBackupLogs
    assert cb.CertSrvBackupGetDynamicFileListW is cb.CertSrvBackupGetDynamicFileList
    assert cb.CertSrvBackupOpenFileW is cb.CertSrvBackupOpenFile
    assert cb.CertSrvIsServerOnlineW is cb.CertSrvIsServerOnline
    assert cb.CertSrvServerControlW is cb.CertSrvServerControl
    assert cb.CertSrvRestoreGetDatabaseLocationsW is cb.CertSrvRestoreGetDatabaseLocations
    assert cb.CertSrvBackupFree(["x"]) is None


def test_multisz_reference_examples() -> None:
    entries = ["D/srv/ca/db/Root CA.db", "\x82/srv/ca/logs", "\x83/srv/ca/system"]
    buf = cb.encode_multisz(entries)
    assert buf.endswith(b"\0\0\0\0") and len(buf) == 2 * (sum(len(e) + 1 for e in entries) + 1)
    assert cb.decode_multisz(buf) == entries
    assert cb.encode_multisz([]) == b"\0\0"
    assert cb.decode_multisz(b"\0\0") == [] and cb.decode_multisz(b"") == []
    assert cb.split_tag(entries[1]) == (cb.CSBFT_LOG_DIR, "/srv/ca/logs")
    with pytest.raises(CertSrvError) as e:
        cb.encode_multisz(["a\0b"])
    assert e.value.hresult == E_INVALIDARG
    with pytest.raises(CertSrvError):
        cb.decode_multisz(b"\0")
    with pytest.raises(CertSrvError):
        cb.split_tag("")


# No per-example deadline: hypothesis's default 200 ms fails (DeadlineExceeded / Flaky) when the machine is
# loaded, which says nothing about the encoding under test.
@settings(deadline=None)
@given(st.lists(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), min_size=1),
                max_size=8))
def test_multisz_round_trip(entries: list[str]) -> None:
    assert cb.decode_multisz(cb.encode_multisz(entries)) == entries


def test_not_a_context_and_dead_server(tmp_path: Path) -> None:
    with pytest.raises(CertSrvError) as e:
        cb.CertSrvBackupGetBackupLogs("nope")  # type: ignore[arg-type]
    assert e.value.hresult == ERROR_INVALID_HANDLE and e.value.function == "CertSrvBackupGetBackupLogs"
    with pytest.raises(CertSrvError) as e:
        cb.CertSrvIsServerOnline(f"unix:{tmp_path / 'none.sock'}")
    assert e.value.hresult == RPC_S_SERVER_UNAVAILABLE and e.value.function == "CertSrvIsServerOnline"
    with pytest.raises(CertSrvError) as e:
        cb.CertSrvBackupPrepare(f"unix:{tmp_path / 'none.sock'}", 0, 1)
    assert e.value.hresult == RPC_S_SERVER_UNAVAILABLE


# ---------------------------------------------------------------------------- live service

@pytest.fixture(scope="module")
def live() -> Iterator[Service]:
    svc = live_service(short_home("cbcli"))
    yield svc
    svc.cleanup()


def _drain_file(hbc: Any, name: str) -> bytes:
    cb.CertSrvBackupOpenFile(hbc, name, 0)
    data = b""
    while chunk := cb.CertSrvBackupRead(hbc, 65536):
        data += chunk
    cb.CertSrvBackupClose(hbc)
    return data


def test_spec_3_1_flow_and_3_2(live: Service) -> None:
    assert cb.CertSrvIsServerOnline(live.address) is True
    hbc = cb.CertSrvBackupPrepare(live.address, 0, cb.CSBACKUP_TYPE_FULL)
    try:
        locs = cb.CertSrvRestoreGetDatabaseLocations(hbc)
        assert [cb.split_tag(x)[0] for x in locs] == [cb.CSBFT_CERTSERVER_DATABASE, cb.CSBFT_LOG_DIR,
                                                       cb.CSBFT_CHECKPOINT_DIR]
        dbs = cb.CertSrvBackupGetDatabaseNames(hbc)
        assert [cb.split_tag(x)[0] for x in dbs] == [cb.CSBFT_CERTSERVER_DATABASE]
        size = cb.CertSrvBackupOpenFile(hbc, dbs[0][1:], 524288)
        first = cb.CertSrvBackupRead(hbc, 123456)  # MS-CSRA's example size; short only at the end
        assert len(first) == min(123456, size)
        rest = b""
        while chunk := cb.CertSrvBackupRead(hbc, 524288):
            rest += chunk
        assert len(first) + len(rest) == size and first.startswith(b"SQLite format 3\0")
        cb.CertSrvBackupClose(hbc)
        logs = cb.CertSrvBackupGetBackupLogs(hbc)
        assert logs and all(cb.split_tag(x)[0] == cb.CSBFT_LOG for x in logs)
        for x in logs:
            assert _drain_file(hbc, x[1:]).startswith(b"PCSLOG01")
        cb.CertSrvBackupTruncateLogs(hbc)
        dyn = cb.CertSrvBackupGetDynamicFileList(hbc)
        assert dyn and all(x.startswith("/") for x in dyn)
    finally:
        cb.CertSrvBackupEnd(hbc)
    with pytest.raises(CertSrvError) as e:
        cb.CertSrvBackupEnd(hbc)
    assert e.value.hresult == E_UNEXPECTED and e.value.function == "CertSrvBackupEnd"
    # spec §3.2: an incremental after the full one
    hbc = cb.CertSrvBackupPrepareW(live.address, 0, cb.CSBACKUP_TYPE_LOGS_ONLY)
    try:
        with pytest.raises(CertSrvError) as e:
            cb.CertSrvBackupGetDatabaseNames(hbc)
        assert e.value.hresult == JET_ERR_INVALID_BACKUP_SEQUENCE
        for x in cb.CertSrvBackupGetBackupLogs(hbc):
            _drain_file(hbc, x[1:])
    finally:
        cb.CertSrvBackupEnd(hbc)


# ---------------------------------------------------------------------------- the spec §2.20 model

# valid encodings weighted up so sessions happen often; the invalid ones still come up
FLAG_CHOICES = [(0, 0), (0, 1), (0, 1), (0, 1), (0, 2), (1, 0), (1, 2), (1, 1), (0, 3), (2, 0), (0, 4)]


def model_kind(grbit: int, flags: int) -> str | None:
    """spec §2.2 [INF] decoding, written independently of the server's."""
    if grbit == 0:
        return {0: "full", 1: "full", 2: "incremental"}.get(flags)
    if grbit == 1 and flags in (0, 2):
        return "incremental"
    return None


class Model:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.phase = "DB"
        self.db_listed = False
        self.logs: list[str] | None = None
        self.dyn: list[str] = []
        self.open: str | None = None
        self.size = 0
        self.pos = 0
        self.done: set[str] = set()
        self.truncated = False


LIVE: Service | None = None


class BackupStateMachine(RuleBasedStateMachine):
    """Random certbcli sequences; every result is checked against a model of the spec §2.20 table."""

    def __init__(self) -> None:
        super().__init__()
        assert LIVE is not None
        self.svc = LIVE
        self.client = Client(LIVE.address)
        self.hbc: Any = None
        self.m: Model | None = None
        self.db = str(LIVE.home.db_dir / "Live Test CA.db")

    def expect_error(self, hr: int, fn: Any, *args: Any) -> None:
        with pytest.raises(CertSrvError) as e:
            fn(*args)
        assert e.value.hresult == hr, f"{fn.__name__}: got {e.value}, model says 0x{hr:08X}"

    def idle_error(self) -> int | None:
        return E_UNEXPECTED if self.m is None else None

    @rule(choice=st.sampled_from(FLAG_CHOICES))
    def prepare(self, choice: tuple[int, int]) -> None:
        grbit, flags = choice
        kind = model_kind(grbit, flags)
        if kind is None:
            self.expect_error(E_INVALIDARG, cb.CertSrvBackupPrepare, self.client, grbit, flags)
        elif self.m is not None:
            self.expect_error(E_UNEXPECTED, cb.CertSrvBackupPrepare, self.client, grbit, flags)
        else:
            self.hbc = cb.CertSrvBackupPrepare(self.client, grbit, flags)
            self.m = Model(kind)

    @precondition(lambda self: self.hbc is not None)
    @rule()
    def database_names(self) -> None:
        if self.hbc is None:
            return
        m = self.m
        if m is None or (m.kind == "full" and (m.open or m.phase != "DB")):
            self.expect_error(E_UNEXPECTED, cb.CertSrvBackupGetDatabaseNames, self.hbc)
        elif m.kind == "incremental":
            self.expect_error(JET_ERR_INVALID_BACKUP_SEQUENCE, cb.CertSrvBackupGetDatabaseNames, self.hbc)
        else:
            assert cb.CertSrvBackupGetDatabaseNames(self.hbc) == ["D" + self.db]
            m.db_listed = True

    @precondition(lambda self: self.hbc is not None)
    @rule()
    def backup_logs(self) -> None:
        if self.hbc is None:
            return
        m = self.m
        if m is None or m.open:
            self.expect_error(E_UNEXPECTED, cb.CertSrvBackupGetBackupLogs, self.hbc)
            return
        got = cb.CertSrvBackupGetBackupLogs(self.hbc)
        assert got and all(x[0] == "!" and Path(x[1:]).name.startswith("edb") for x in got)
        names = [x[1:] for x in got]
        if m.logs is not None:
            assert names == m.logs  # the list is fixed once given
        m.logs = names
        if m.phase == "DB":
            m.phase = "LOGS"

    @precondition(lambda self: self.hbc is not None)
    @rule()
    def dynamic_files(self) -> None:
        if self.hbc is None:
            return
        if self.m is None:
            self.expect_error(E_UNEXPECTED, cb.CertSrvBackupGetDynamicFileList, self.hbc)
            return
        got = cb.CertSrvBackupGetDynamicFileList(self.hbc)
        assert got and all(x.startswith(str(self.svc.home.root)) for x in got)
        self.m.dyn = sorted(set(self.m.dyn) | set(got))

    @precondition(lambda self: self.hbc is not None)
    @rule()
    def locations(self) -> None:
        if self.hbc is None:
            return
        if self.m is None:
            self.expect_error(E_UNEXPECTED, cb.CertSrvRestoreGetDatabaseLocations, self.hbc)
            return
        got = cb.CertSrvRestoreGetDatabaseLocations(self.hbc)
        assert [ord(x[0]) for x in got] == [0x44, 0x82, 0x83] and got[0][1:] == self.db

    def _name(self, which: str) -> str:
        m = self.m
        if which == "db":
            return self.db
        if which == "log":
            return m.logs[0] if m and m.logs else str(self.svc.home.log_dir / "edb00000001.log")
        if which == "log_last":
            return m.logs[-1] if m and m.logs else str(self.svc.home.log_dir / "edb00000002.log")
        if which == "dyn":
            return m.dyn[0] if m and m.dyn else str(self.svc.home.publish_dir / "ca.crt")
        return {"passwd": "/etc/passwd", "relative": "logs/edb00000001.log", "dotdot": self.db + "/../x.db",
                "tagged": "D" + self.db, "key": str(self.svc.home.root / "private" / "ca.key")}[which]

    @precondition(lambda self: self.hbc is not None)
    @rule(which=st.sampled_from(["db", "db", "log", "log", "log_last", "dyn", "passwd", "relative", "dotdot",
                                 "tagged", "key"]))
    def open_file(self, which: str) -> None:
        if self.hbc is None:
            return
        m = self.m
        name = self._name(which)
        if m is None or m.open:
            self.expect_error(E_UNEXPECTED, cb.CertSrvBackupOpenFile, self.hbc, name, 0)
            return
        if m.db_listed and name == self.db:
            if m.phase != "DB":
                self.expect_error(E_UNEXPECTED, cb.CertSrvBackupOpenFile, self.hbc, name, 0)
                return
        elif m.logs is not None and name in m.logs:
            if m.truncated:  # the generations this backup made redundant are gone
                self.expect_error(ERROR_FILE_NOT_FOUND, cb.CertSrvBackupOpenFile, self.hbc, name, 0)
                return
        elif name not in m.dyn:
            self.expect_error(ERROR_FILE_NOT_FOUND, cb.CertSrvBackupOpenFile, self.hbc, name, 0)
            return
        m.size = cb.CertSrvBackupOpenFile(self.hbc, name, 0)
        assert m.size > 0
        m.open, m.pos = name, 0

    @precondition(lambda self: self.hbc is not None)
    @rule(n=st.integers(1, 70000))
    def read(self, n: int) -> None:
        if self.hbc is None:
            return
        m = self.m
        if m is None or m.open is None:
            self.expect_error(E_UNEXPECTED, cb.CertSrvBackupRead, self.hbc, n)
            return
        got = cb.CertSrvBackupRead(self.hbc, n)
        assert len(got) == min(n, m.size - m.pos)
        m.pos += len(got)

    @precondition(lambda self: self.hbc is not None)
    @rule()
    def read_to_end(self) -> None:
        m = self.m
        if self.hbc is None or m is None or m.open is None:
            return
        while chunk := cb.CertSrvBackupRead(self.hbc, 1 << 20):
            m.pos += len(chunk)
        assert m.pos == m.size

    @precondition(lambda self: self.m is not None and self.m.open is None)
    @rule()
    def back_up_everything_listed(self) -> None:
        """Open, read to the end and close every listed file still to do (makes complete sessions likely)."""
        m = self.m
        assert m is not None
        todo = ([self.db] if m.db_listed and m.phase == "DB" else []) + (
            [] if m.truncated or m.logs is None else list(m.logs))
        for name in todo:
            if name in m.done:
                continue
            size = cb.CertSrvBackupOpenFile(self.hbc, name, 0)
            total = 0
            while chunk := cb.CertSrvBackupRead(self.hbc, 1 << 20):
                total += len(chunk)
            cb.CertSrvBackupClose(self.hbc)
            assert total == size
            m.done.add(name)

    @precondition(lambda self: self.m is not None and self.m.open is None)
    @rule()
    def drive_to_complete(self) -> None:
        """The §3.1/§3.2 order from wherever the session is: database (if still possible), then the logs."""
        m = self.m
        assert m is not None
        if m.kind == "full" and m.phase == "DB":
            self.database_names()
        self.back_up_everything_listed()
        self.backup_logs()
        self.back_up_everything_listed()

    @precondition(lambda self: self.hbc is not None)
    @rule()
    def close(self) -> None:
        if self.hbc is None:
            return
        m = self.m
        if m is None or m.open is None:
            self.expect_error(E_UNEXPECTED, cb.CertSrvBackupClose, self.hbc)
            return
        cb.CertSrvBackupClose(self.hbc)
        if m.pos >= m.size:
            m.done.add(m.open)
        m.open = None

    @precondition(lambda self: self.hbc is not None)
    @rule()
    def truncate(self) -> None:
        if self.hbc is None:
            return
        m = self.m
        if m is None or m.open or m.logs is None:
            self.expect_error(E_UNEXPECTED, cb.CertSrvBackupTruncateLogs, self.hbc)
            return
        required = set(m.logs) | ({self.db} if m.kind == "full" else set())
        if not required <= m.done:
            self.expect_error(E_UNEXPECTED, cb.CertSrvBackupTruncateLogs, self.hbc)
            return
        cb.CertSrvBackupTruncateLogs(self.hbc)
        m.truncated = True
        m.phase = "TRUNCATED"

    @precondition(lambda self: self.hbc is not None)
    @rule()
    def end(self) -> None:
        if self.hbc is None:
            return
        if self.m is None:
            self.expect_error(E_UNEXPECTED, cb.CertSrvBackupEnd, self.hbc)
            return
        cb.CertSrvBackupEnd(self.hbc)
        self.m = None

    @invariant()
    def service_agrees(self) -> None:
        st_ = self.client.call("GET", "/backup/status")["session"]
        if self.m is None:
            assert st_ is None
        else:
            assert st_ is not None and st_["kind"] == self.m.kind and st_["phase"] == self.m.phase
            assert st_["open_file"] == (Path(self.m.open).name if self.m.open else None)

    def teardown(self) -> None:
        if self.m is not None:
            cb.CertSrvBackupEnd(self.hbc)
        self.client.close()


def test_state_machine_against_live_service(live: Service) -> None:
    global LIVE
    LIVE = live
    # a full backup exists, so logs-only sessions are allowed (their refusal is tested in tests/backup)
    hbc = cb.CertSrvBackupPrepare(live.address, 0, 1)
    try:
        _drain_file(hbc, cb.CertSrvBackupGetDatabaseNames(hbc)[0][1:])
        for x in cb.CertSrvBackupGetBackupLogs(hbc):
            _drain_file(hbc, x[1:])
    finally:
        cb.CertSrvBackupEnd(hbc)
    run_state_machine_as_test(
        BackupStateMachine,
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
