"""``certsrv prune``: old chains go whole, the newest N stay whole, --dry-run lists exactly what the real run
deletes (issue 16, Must show 3). Sets are written by the real backup writer (in process, through a backup
session on the CA) into names made by ``certsrv backup --into``'s naming."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from catalog_sets import certsrv

from pycertsrv.backup.local import LocalSession
from pycertsrv.backup.session import BackupManager
from pycertsrv.backupset.retention import new_set_dir, set_name
from pycertsrv.backupset.writer import run_backup
from pycertsrv.ca import Authority
from support import issue


def _make_chains(work: Path) -> tuple[Path, list[list[Path]]]:
    """Four chains (full + incrementals); in chain 2 the middle incremental is deleted (a gap)."""
    home, into = work / "ca", work / "sets"
    chains: list[list[Path]] = []
    with Authority.init(home, "Prune CA") as a:
        m = BackupManager(a, a.home, 60)
        try:
            for c in range(4):
                chain = []
                for k in range(3 if c == 1 else 2):
                    issue(a, 1, f"c{c}k{k}")
                    kind = "full" if k == 0 else "incremental"
                    d = new_set_dir(into, kind)
                    run_backup(lambda kd: LocalSession(m, kd), d, kind=kind, database_only=True, home=home,
                               password="prune password")
                    chain.append(d)
                chains.append(chain)
        finally:
            m.close()
    shutil.rmtree(chains[1][1])  # the missing middle incremental: chains[1][2] is cut off
    chains[1].pop(1)
    junk = into / "not-a-set"
    (junk / "DataBase").mkdir(parents=True)  # an incomplete set: left alone
    return into, chains


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_keep_two_of_four_chains(tmp_path: Path) -> None:
    into, chains = _make_chains(tmp_path)
    names = _listing(into)
    assert len(names) == 8 + 1 and len(set(names)) == len(names)  # unique names, even within one second
    before = _listing(into)
    dry = json.loads(certsrv("prune", str(into), "--keep-full", "2", "--dry-run", "--json").stdout)
    assert _listing(into) == before  # a dry run deletes nothing
    old = [str(p) for c in chains[:2] for p in c]
    kept = [str(p) for c in chains[2:] for p in c]
    assert sorted(dry["delete"]) == sorted(old) and sorted(dry["keep"]) == sorted(kept)
    assert [u["directory"] for u in dry["untouched"]] == [str(into / "not-a-set")]
    # Within a chain the full set goes last (an interrupted prune leaves a chain that still restores).
    for c in chains[:2]:
        assert dry["delete"].index(str(c[0])) > max(dry["delete"].index(str(p)) for p in c[1:])
    real = json.loads(certsrv("prune", str(into), "--keep-full", "2", "--json").stdout)
    assert real["deleted"] == dry["delete"]  # exactly what the dry run listed, in its order
    after = _listing(into)
    assert after == sorted([p.name for c in chains[2:] for p in c] + ["not-a-set"])
    # The two newest chains stay whole: the catalog still restores all of them.
    cat = json.loads(certsrv("catalog", str(into), "--json").stdout)
    assert [(c["full"], c["incrementals"], c["cut_off"]) for c in cat["chains"]] == [
        (c[0].name, [p.name for p in c[1:]], []) for c in chains[2:]]
    # Pruning again removes nothing; --keep-full 0 would remove the newest chain and is refused.
    again = json.loads(certsrv("prune", str(into), "--keep-full", "2", "--json").stdout)
    assert again["deleted"] == [] and _listing(into) == after
    out = certsrv("prune", str(into), "--keep-full", "0", check=False)
    assert out.returncode == 1 and "0x80070057 E_INVALIDARG" in out.stderr and "newest chain" in out.stderr
    assert _listing(into) == after


def test_into_names_by_time_and_type(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    t = datetime(2026, 11, 29, 6, 0, 12, tzinfo=UTC)
    assert set_name("full", t) == "2026-11-29T060012Z-full"
    assert set_name("incremental", t) == "2026-11-29T060012Z-incr"
    first = new_set_dir(tmp_path, "full", t)
    first.mkdir()
    second = new_set_dir(tmp_path, "full", t)
    second.mkdir()
    assert new_set_dir(tmp_path, "full", t).name == "2026-11-29T060012Z.3-full"
    assert first.name == "2026-11-29T060012Z-full" and second.name == "2026-11-29T060012Z.2-full"


def test_backup_needs_directory_or_into_not_both(tmp_path: Path) -> None:
    for args in (["backup", str(tmp_path / "a"), "--into", str(tmp_path / "b")], ["backup"]):
        out = certsrv(*args, "--home", str(tmp_path / "nohome"), "--database-only", check=False)
        line = out.stderr.strip()
        assert out.returncode == 1 and "\n" not in line and "0x80070057 E_INVALIDARG" in line and "--into" in line
        assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_into_inside_the_home_is_refused_and_makes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "ca"
    Authority.init(home, "Into CA").close()
    (tmp_path / "pw").write_text("into password\n")
    before = sorted(p.relative_to(home) for p in home.rglob("*"))
    out = certsrv("backup", "--into", str(home / "publish" / "sets"), "--home", str(home), "--password-file",
                  str(tmp_path / "pw"), check=False)
    line = out.stderr.strip()
    assert out.returncode == 1 and "\n" not in line and "0x80070005 E_ACCESSDENIED" in line and "-full" in line
    assert sorted(p.relative_to(home) for p in home.rglob("*")) == before  # not even the --into directory
