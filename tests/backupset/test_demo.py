"""The restore story of `certsrv demo` (pycertsrv.backupset.demo.run_demo) runs end to end and checks itself."""

from __future__ import annotations

from pathlib import Path

from pycertsrv.backupset.demo import run_demo


def test_run_demo(tmp_path: Path) -> None:
    import tempfile

    lines: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="csd", dir="/tmp"))  # short: the socket path must fit
    r = run_demo(lines.append, work / "w", load_threads=2, before=5, between=5)
    assert r["ok"], lines
    assert r["verified"] == r["issued_before_incremental"] >= 10
    assert r["late_absent"] and r["incremental_refused_after_restore"]
    assert any("openssl verify" in line for line in lines)
