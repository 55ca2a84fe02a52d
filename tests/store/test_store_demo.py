"""The engine demo runs end to end and reports what it re-read from disk."""

from __future__ import annotations

from pathlib import Path

from pycertsrv.store.demo import run_engine_demo


def test_engine_demo(tmp_path: Path) -> None:
    lines: list[str] = []
    out = run_engine_demo(echo=lines.append, workdir=tmp_path / "demo", min_commits=50, threads=2)
    assert out["ok"], "\n".join(lines)
    assert out["acknowledged"] >= 50 and out["present"] >= out["acknowledged"]
    assert out["missing"] == [] and out["half_applied"] == [] and out["integrity_check"] == "ok"
    assert out["clean_reopen_replayed"] == 0
    text = "\n".join(lines)
    assert "SIGKILL" in text and "recovery" in text and "nothing to replay" in text
    assert (tmp_path / "demo" / "home" / "db").is_dir()  # kept when a workdir is given
