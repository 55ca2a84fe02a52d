"""The CA demo runs end to end and its openssl checks pass."""

from __future__ import annotations

from pathlib import Path

from pycertsrv.ca import Authority
from pycertsrv.ca.demo import run_ca_demo


def test_demo_story(tmp_path: Path) -> None:
    lines: list[str] = []
    home = tmp_path / "demo"
    result = run_ca_demo(lines.append, home=home)
    assert result["ok"] and result["openssl_crl_verify"] and result["revoked_rejected"]
    assert [i["kind"] for i in result["issued"]] == ["ecdsa", "rsa"]
    assert len(lines) == 6 and lines[0].startswith("1. made a CA")
    with Authority.open(home) as a:  # the story is in the database
        assert a.get_request(2).disposition_name == "revoked"
        assert a.latest_crl() is not None
