"""``certsrv catalog DIR --archive DEST`` and ``certsrv prune DIR --archive DEST`` (issue 16 on top of issue 13).

One real service with ``[archive] dest`` and a small ``timeout``; real ``certsrv backup --into`` sets:
full1, incr1, then revocation/issuance A, a cut moment, revocation/issuance B, full2, issuance C, all
shipped to the archive. Every command is the real ``certsrv``; every check re-reads disk.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from archive_lib import (
    PW,
    archived_files,
    archived_home,
    certsrv,
    db_rows,
    last_archived_record,
    norm_serial,
    short_dir,
    wait_for,
)

from pycertsrv import config as config_mod
from pycertsrv.backupset.catalog import build_catalog, iso
from pycertsrv.home import Home
from pycertsrv.store import logfile
from pycertsrv.store.schema import DISP_REVOKED
from support import Service, make_csr


def _us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


@dataclass
class Made:
    work: Path
    sets: Path
    arch: Path
    pw: Path
    names: list[str] = field(default_factory=list)
    serials: dict[str, str] = field(default_factory=dict)
    cut_us: int = 0
    page: str = ""  # the service's /ui/backups once everything is archived


def _backup(m: Made, home: Path, *extra: str) -> None:
    before = set(m.sets.iterdir()) if m.sets.exists() else set()
    certsrv("backup", "--into", str(m.sets), "--home", str(home), "--password-file", str(m.pw), "--quiet", *extra)
    (new,) = set(m.sets.iterdir()) - before
    m.names.append(new.name)


@pytest.fixture(scope="module")
def made() -> Iterator[Made]:
    work = short_dir("cata")
    m = Made(work, work / "sets", work / "arch", work / "pw")
    m.pw.write_text(PW + "\n")
    home = archived_home(work / "ca", dest=str(m.arch), timeout=0.3)
    cfg = config_mod.load(home.root)
    cfg.backup.dir = str(m.sets)  # the service's page catalogues the sets, with its own [archive] dest
    config_mod.save(home.root, cfg)
    svc = Service(home).start()
    try:
        with svc.client() as c:
            base = [c.submit(make_csr(f"base{i}.example.com"))["serial"] for i in range(2)]
            _backup(m, home.root)
            c.submit(make_csr("i1.example.com"))
            _backup(m, home.root, "--incremental", "--database-only")
            c.revoke(base[0], "keyCompromise")
            m.serials["a"] = c.submit(make_csr("a.example.com"))["serial"]
            time.sleep(0.02)
            m.cut_us = _us()  # no write near it: A before, B after
            time.sleep(0.02)
            c.revoke(base[1], "keyCompromise")
            m.serials["b"] = c.submit(make_csr("b.example.com"))["serial"]
            m.serials.update(base0=base[0], base1=base[1])
            _backup(m, home.root)  # full2: chain 1 (full1, incr1 + archive) is the one prune removes
            last_begin = _us()
            m.serials["c"] = c.submit(make_csr("c.example.com"))["serial"]
        # Records get their time in LSN order: one at or after last_begin means C's record is archived.
        wait_for(lambda: m.arch.exists() and archived_files(m.arch) and last_archived_record(m.arch).ts_us
                 >= last_begin, "issuance C shipped to the archive", svc=svc)
        transport = httpx.HTTPTransport(uds=str(home.root / "certsrv.sock"))
        with httpx.Client(transport=transport, base_url="http://certsrv") as hc:
            r = hc.get("/ui/backups")
        assert r.status_code == 200, r.text
        m.page = r.text
    finally:
        svc.stop()
    yield m
    shutil.rmtree(work, ignore_errors=True)


def _catalog_json(sets: Path, arch: Path, *extra: str) -> dict[str, object]:
    out = certsrv("catalog", str(sets), "--archive", str(arch), "--json", *extra)
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def test_window_reaches_the_last_archived_record(made: Made) -> None:
    last = last_archived_record(made.arch)
    cat = build_catalog(made.sets, archive=made.arch, password=PW.encode())
    c1, c2 = sorted(cat.chains, key=lambda c: c.start_us)
    # Past the last set (full2's last record) to the archive's last record, for both chains.
    assert c2.sets_end_us < last.ts_us and c2.end_us == last.ts_us and c1.end_us == last.ts_us
    assert cat.window[-1][1] == last.ts_us and not [g for c in cat.chains for g in (c.gap, c.archive_gap) if g]
    doc = _catalog_json(made.sets, made.arch)
    a = doc["archive"]
    assert isinstance(a, dict) and a["newest_record_us"] == last.ts_us and a["generations"] >= 2
    assert a["max_age_seconds"] == 15 * 60 and a["stale"] is False and a["gaps"] == []
    # A stale archive is a warning (and --strict turns it into exit 2).
    stale = certsrv("catalog", str(made.sets), "--archive", str(made.arch), "--max-archive-age", "0.001s",
                    "--strict", "--password-file", str(made.pw), check=False)
    assert stale.returncode == 2 and "WARNING: the newest archived record is" in stale.stdout
    page = made.work / "w.html"
    certsrv("catalog", str(made.sets), "--archive", str(made.arch), "--html", str(page))
    for text in (page.read_text(), made.page):  # the service's page uses its own [archive] dest
        data = json.loads(text.split('id="catalog-data">', 1)[1].split("</script>", 1)[0])
        assert data["archive"]["newest_record_us"] == last.ts_us and data["window"][-1]["to_us"] == last.ts_us


def test_at_in_the_archive_only_part_restores_to_that_moment(made: Made) -> None:
    cat = build_catalog(made.sets, archive=made.arch)
    chain = cat.chain_for(made.cut_us)
    assert chain is not None and chain.needs_archive(made.cut_us)  # past chain 1's sets: archive only
    new = made.work / "pit"
    doc = _catalog_json(made.sets, made.arch, "--at", iso(made.cut_us) or "", "--restore-home", str(new),
                        "--password-file", str(made.pw))
    at = doc["at"]
    assert isinstance(at, dict)
    argv = at["argv"]
    assert argv[:2] == ["certsrv", "restore"] and argv[argv.index("--archive") + 1] == str(made.arch)
    assert shlex.split(at["command"]) == argv
    certsrv(*argv[1:])
    Service(Home.at(new)).start().stop()  # the start replays the sets, then the archive, up to the cut
    rows = {r["serial"]: r for r in db_rows(new, "request") if r["serial"]}
    s = {k: norm_serial(v) for k, v in made.serials.items()}
    assert rows[s["base0"]]["disposition"] == DISP_REVOKED and s["a"] in rows  # before the cut: in
    assert rows[s["base1"]]["disposition"] != DISP_REVOKED  # after the cut: out
    assert s["b"] not in rows and s["c"] not in rows


def test_a_deleted_archived_generation_is_a_gap(made: Made, tmp_path: Path) -> None:
    arch = tmp_path / "arch"
    shutil.copytree(made.arch, arch)
    files = archived_files(arch)
    cat = build_catalog(made.sets, archive=arch)
    c1 = min(cat.chains, key=lambda c: c.start_us)
    assert c1.archive is not None and len(c1.archive.generations) >= 2
    victim = c1.archive.generations[1].generation
    files[victim].unlink()
    doc = _catalog_json(made.sets, arch)
    name = logfile.log_name(victim)
    gaps = [g for g in doc["gaps"] if g["in_archive"]]  # type: ignore[attr-defined, index]
    assert gaps and name in gaps[0]["text"] and gaps[0]["gen_low"] == victim
    assert any(name in w and "archive gap" in w for w in doc["warnings"])  # type: ignore[attr-defined]
    cat = build_catalog(made.sets, archive=arch)
    c1 = min(cat.chains, key=lambda c: c.start_us)
    assert c1.archive_gap is not None and c1.archive is not None
    assert [g.generation for g in c1.archive.generations] == [victim - 1]  # coverage stops before the gap
    assert c1.end_us == c1.archive.end_us


def test_prune_with_archive_removes_exactly_the_dry_run(made: Made, tmp_path: Path) -> None:
    sets, arch = tmp_path / "sets", tmp_path / "arch"
    shutil.copytree(made.sets, sets)
    shutil.copytree(made.arch, arch)

    def listing() -> set[str]:
        return {str(p) for p in sets.iterdir()} | {str(p) for p in archived_files(arch).values()}

    before = listing()
    dry = json.loads(certsrv("prune", str(sets), "--keep-full", "1", "--archive", str(arch), "--dry-run",
                             "--json").stdout)
    assert listing() == before
    gone = set(dry["delete"]) | set(dry["archive"]["files"])
    assert sorted(dry["delete"]) == sorted(str(sets / n) for n in made.names[:2]) and dry["archive"]["files"]
    full2_low = json.loads((sets / made.names[2] / "DataBase" / "certbkxp.dat").read_text())["gen_low"]
    assert all(int(Path(f).name[3:11], 16) < full2_low for f in dry["archive"]["files"])
    text = certsrv("prune", str(sets), "--keep-full", "1", "--archive", str(arch), "--dry-run").stdout
    assert all(f"would delete archived {f}" in text for f in dry["archive"]["files"])
    certsrv("prune", str(sets), "--keep-full", "1", "--archive", str(arch))
    assert before - listing() == gone and listing() == before - gone
    # What is left still reaches the last archived record, and the pruned prefix is not called a gap.
    doc = _catalog_json(sets, arch)
    assert doc["gaps"] == [] and doc["archive"]["newest_record_us"] == last_archived_record(arch).ts_us  # type: ignore[index]
