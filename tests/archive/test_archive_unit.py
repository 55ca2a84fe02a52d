"""Archive pieces in process over a real store, real files and the real backup writer (issue 13):
shipping order, watermark in the database, the deletion rule, immutable files, verify-archive and
the restore's refusal of a damaged archive."""

from __future__ import annotations

import json
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from archive_lib import certsrv

from pycertsrv import config as config_mod
from pycertsrv.archive.destination import ArchiveConflict, store_file
from pycertsrv.archive.settings import ArchiveSection
from pycertsrv.archive.shipper import Shipper
from pycertsrv.archive.verify import verify_archive
from pycertsrv.backup.local import LocalSession
from pycertsrv.backup.session import BackupManager
from pycertsrv.backupset.restore_plan import plan_restore
from pycertsrv.backupset.restore_run import run_restore
from pycertsrv.backupset.writer import run_backup
from pycertsrv.ca import Authority
from pycertsrv.errors import CorruptData, InvalidArgument
from pycertsrv.store import Store, StoreOptions, archivemark, logfile
from support import commit_requests, make_csr, ship_generations

PW = b"unit pw"


def test_ships_in_order_watermark_in_database_and_deletion_rule(tmp_path: Path) -> None:
    home, dest = tmp_path / "h", tmp_path / "arch"
    store = Store.create(home, "Unit CA", StoreOptions(archiving=True))
    sh, ldir = ship_generations(store, home, dest)
    for g, p in logfile.list_generations(ldir).items():
        assert p.read_bytes() == (home / "logs" / logfile.log_name(g)).read_bytes()
        assert stat.S_IMODE(p.stat().st_mode) == 0o400
    # A closed generation not yet archived survives truncation; archived ones below the checkpoint go.
    commit_requests(store, 1)
    store.roll_log()  # generation 4: closed, not shipped
    store.checkpoint()
    deleted = store.truncate_logs(store.last_checkpoint.generation)  # type: ignore[union-attr]
    assert deleted == [1, 2, 3]
    assert (home / "logs" / logfile.log_name(4)).exists()
    store.close()
    # The watermark is a logged row: it survives the restart (and a restore, with its lineage).
    store = Store.open(home, StoreOptions(archiving=True))
    try:
        again = archivemark.read_marks(store)
        assert (again.lineage, again.watermark) == (ldir.name, 3)  # ldir is DEST/identity/lineage
        sh = Shipper(store, ArchiveSection(dest=str(dest), timeout=3600), home)
        sh.step()
        assert archivemark.read_marks(store).watermark == 4
        assert verify_archive(dest).first_error is None
    finally:
        store.close()


def test_circular_logging_keeps_unarchived_generations(tmp_path: Path) -> None:
    home, dest = tmp_path / "h", tmp_path / "arch"
    store = Store.create(home, "Circular CA", StoreOptions(circular_logging=True, archiving=True))
    try:
        for _ in range(3):
            commit_requests(store, 2)
            store.roll_log()
        store.checkpoint()  # circular logging: would delete 1..3 at once without archiving
        assert sorted(logfile.list_generations(home / "logs")) == [1, 2, 3, 4]
        Shipper(store, ArchiveSection(dest=str(dest), timeout=3600), home).step()
        store.checkpoint()
        assert sorted(logfile.list_generations(home / "logs")) == [4]  # archived and not needed: gone
        assert verify_archive(dest).first_error is None
    finally:
        store.close()


def test_identical_bytes_accepted_different_bytes_stop_archiving(tmp_path: Path) -> None:
    src = tmp_path / "edb00000001.log"
    src.write_bytes(b"generation bytes")
    dest = tmp_path / "a" / "id" / "lin" / src.name
    assert store_file(src, dest) == "stored"
    ino = dest.stat().st_ino
    assert store_file(src, dest) == "identical" and dest.stat().st_ino == ino
    src.write_bytes(b"other bytes")
    with pytest.raises(ArchiveConflict) as e:
        store_file(src, dest)
    assert "different bytes" in str(e.value) and "0x80070050" in str(e.value)
    assert dest.read_bytes() == b"generation bytes"  # never overwritten
    # The shipper stops on it and says so in its status.
    home = tmp_path / "h"
    store = Store.create(home, "Conflict CA", StoreOptions(archiving=True))
    try:
        commit_requests(store, 1)
        store.roll_log()
        lineage = archivemark.read_marks(store).lineage
        assert lineage is not None
        clash = tmp_path / "arch" / store.identity / lineage / logfile.log_name(1)
        clash.parent.mkdir(parents=True)
        clash.write_bytes(b"not this CA's generation")
        sh = Shipper(store, ArchiveSection(dest=str(tmp_path / "arch"), timeout=3600), home).start()
        deadline = time.monotonic() + 30
        while sh.status()["state"] != "stopped" and time.monotonic() < deadline:
            time.sleep(0.05)
        st = sh.status()
        sh.stop()
        assert st["state"] == "stopped" and "different bytes" in st["stopped"] and st["watermark"] == 0
        assert archivemark.read_marks(store).watermark == 0
    finally:
        store.close()


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A CA with a full set and four archived generations after it; another CA's archive beside it."""
    home, dest = tmp_path / "ca", tmp_path / "arch"
    Authority.init(home, "Damage CA").close()
    cfg = config_mod.load(home)
    config_mod.save(home, cfg.model_copy(update={"archive": ArchiveSection(dest=str(dest), timeout=3600)}))
    a = Authority.open(home)
    m = BackupManager(a, a.home, 600)
    try:
        a.submit(make_csr("before.example.com"))
        run_backup(lambda k: LocalSession(m, k), tmp_path / "full", password=PW, home=a.home, keep_log=True)
        serials = []
        for i in range(4):
            serials.append(a.submit(make_csr(f"after{i}.example.com")).serial)
            a.store.roll_log()
        sh = Shipper(a.store, a.config.archive, home)
        sh.step()
        other_home, other_dest = tmp_path / "other", tmp_path / "other-arch"
        with Authority.init(other_home, "Other CA") as o:
            o.submit(make_csr("x.example.com"))
            for _ in range(6):
                o.store.roll_log()
            Shipper(o.store, ArchiveSection(dest=str(other_dest), timeout=3600), other_home).step()
        yield {"home": home, "dest": dest, "full": tmp_path / "full", "serials": serials, "tmp": tmp_path,
               "other": other_dest, "ca": a}
    finally:
        m.close()
        a.close()


def _files(dest: Path) -> dict[int, Path]:
    (chain,) = verify_archive(dest).chains
    return logfile.list_generations(chain.directory)


def test_sound_archive_restores_past_the_set(shipped: dict[str, Any]) -> None:
    tmp = shipped["tmp"]
    rep = verify_archive(shipped["dest"])
    assert rep.first_error is None and rep.to_json()["ok"]
    # Freshness: the newest archived record's age; older than --max-age is a problem naming the newest file.
    (chain,) = rep.to_json()["chains"]
    assert chain["age_seconds"] is not None and chain["newest_record"]
    time.sleep(0.05)
    stale = verify_archive(shipped["dest"], max_age=0.01).first_error
    assert stale is not None and stale.function == str(_files(shipped["dest"])[max(_files(shipped["dest"]))])
    assert "--max-age" in str(stale)
    plan = plan_restore([shipped["full"]], home=tmp / "new", password=PW, archive=shipped["dest"])
    assert plan.archive is not None and plan.archive["generations"] >= 4
    run_restore(plan, password=PW)
    with Authority.open(tmp / "new") as r:
        for s in shipped["serials"]:
            assert r.get_certificate(s)  # issued after the set: only the archive had them


@pytest.mark.parametrize("damage", ["flip", "missing", "foreign"])
def test_damaged_archive_named_and_restore_refuses(shipped: dict[str, Any], damage: str) -> None:
    dest, tmp = shipped["dest"], shipped["tmp"]
    files = _files(dest)
    g = sorted(files)[-2]  # a generation after the full set's
    bad = files[g]
    if damage == "flip":
        bad.chmod(0o600)
        data = bytearray(bad.read_bytes())
        data[logfile.HEADER_SIZE + 30] ^= 0x40
        bad.write_bytes(bytes(data))
    elif damage == "missing":
        bad.unlink()
    else:
        other = logfile.list_generations(verify_archive(shipped["other"]).chains[0].directory)
        bad.unlink()
        shutil.copyfile(other[g], bad)
    err = verify_archive(dest).first_error
    assert err is not None and err.function == str(bad), (err, bad)
    with pytest.raises((CorruptData, InvalidArgument)) as e:
        plan_restore([shipped["full"]], home=tmp / "new", password=PW, archive=dest)
    assert bad.name in str(e.value)
    assert not (tmp / "new").exists()
    out = certsrv("verify-archive", str(dest), check=False)
    line = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and line.startswith("certsrv: ") and bad.name in line and "0xC8" in line, out.stderr
    (tmp / "pw").write_bytes(PW + b"\n")
    out = certsrv("restore", str(shipped["full"]), "--archive", str(dest), "--home", str(tmp / "new2"),
                  "--password-file", str(tmp / "pw"), "--dry-run", "--json", check=False)
    assert out.returncode == 1 and bad.name in out.stderr and "Traceback" not in out.stderr


def test_prune_before_a_full_set(shipped: dict[str, Any]) -> None:
    dest, tmp, a = shipped["dest"], shipped["tmp"], shipped["ca"]
    m = BackupManager(a, a.home, 600)
    try:
        run_backup(lambda k: LocalSession(m, k), tmp / "full2", password=PW, home=a.home, keep_log=True)
    finally:
        m.close()
    low = json.loads((tmp / "full2" / "DataBase" / "certbkxp.dat").read_bytes())["gen_low"]
    before = _files(dest)
    dry = json.loads(certsrv("archive", "prune", str(dest), "--before", str(tmp / "full2"), "--dry-run",
                             "--json").stdout)
    assert dry["removed"] is False and sorted(Path(f).name for f in dry["files"]) == \
        [logfile.log_name(g) for g in sorted(before) if g < low]
    assert _files(dest) == before  # a dry run touches nothing
    out = certsrv("archive", "prune", str(dest), "--before", str(tmp / "full2"))
    assert f"removed {len(dry['files'])} generation(s)" in out.stdout
    assert sorted(_files(dest)) == [g for g in sorted(before) if g >= low]
    # What is left still restores the newer set plus the archive.
    plan = plan_restore([tmp / "full2"], home=tmp / "new", password=PW, archive=dest)
    assert plan.archive is not None
