"""Issue 10 finding 5: ``certsrv view`` pages transparently and alike directly on the home and through the
service — every row unless ``--limit``; with ``--limit``, a ``more rows: use --offset N`` line when more exist —
and one paging rule per call (1..1000 rows) holds for ``Authority.view`` and ``GET /ca/requests`` alike."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from pycertsrv.ca import Authority
from pycertsrv.ca.paging import PAGE_MAX
from pycertsrv.client import Client
from pycertsrv.errors import E_INVALIDARG, InvalidArgument
from pycertsrv.home import Home
from support import Service, certsrv, make_csr, mounts

N = PAGE_MAX + 50  # more than one page of the rule, and far more than the old silent cut at 100


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    tmp = tmp_path_factory.mktemp("paging")
    # tmpfs (as root, as in CI) keeps the 1,050 durable submits quick; elsewhere a plain directory.
    with mounts() as m:
        root = m.tmpfs(tmp / "disk", "256m") / "ca" if os.geteuid() == 0 else tmp / "ca"
        csr = make_csr("page.example.com")
        with Authority.init(root, "Paging CA") as a:
            for _ in range(N):
                a.submit(csr, requester="paging")
        yield Home.at(root)


def _scenarios(run: Any) -> dict[str, Any]:
    """Every paging case through ``run(*args) -> CompletedProcess``; results as plain data to compare."""
    out: dict[str, Any] = {}

    def view(*args: str) -> subprocess.CompletedProcess[str]:
        r: subprocess.CompletedProcess[str] = run("view", *args)
        return r

    r = view("--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    out["all"] = [x["request_id"] for x in json.loads(r.stdout)]
    r = view()
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    out["all_text"] = (len(lines), [ln for ln in lines if ln.startswith("more rows")])
    r = view("--limit", "100")
    lines = r.stdout.splitlines()
    out["limit100"] = (len(lines), lines[-1])
    r = view("--limit", str(PAGE_MAX + 1), "--json")
    out["limit1001"] = ([x["request_id"] for x in json.loads(r.stdout)], r.stderr.strip())
    r = view("--limit", "50", "--offset", str(PAGE_MAX), "--json")
    out["last_page"] = ([x["request_id"] for x in json.loads(r.stdout)], r.stderr)
    r = view("--limit", "49", "--offset", str(PAGE_MAX))
    out["one_short"] = r.stdout.splitlines()[-1]
    out["past_end"] = view("--offset", str(N)).stdout.strip()
    for bad in (("--limit", "0"), ("--limit", "-5"), ("--offset", "-1")):
        r = view(*bad)
        out[f"bad{bad}"] = (r.returncode, r.stderr)
    return out


def _check(out: dict[str, Any]) -> None:
    assert out["all"] == list(range(1, N + 1))
    assert out["all_text"] == (N + 1, [])  # header + every row, no "more rows" line
    assert out["limit100"] == (102, "more rows: use --offset 100")  # header, 100 rows, the hint
    assert out["limit1001"] == (list(range(1, PAGE_MAX + 2)), f"more rows: use --offset {PAGE_MAX + 1}")
    assert out["last_page"] == (list(range(PAGE_MAX + 1, N + 1)), "")  # exactly the end: no "more rows"
    assert out["one_short"] == f"more rows: use --offset {PAGE_MAX + 49}"
    assert out["past_end"] == "no matching requests"
    for key in ("bad('--limit', '0')", "bad('--limit', '-5')", "bad('--offset', '-1')"):
        code, err = out[key]
        assert code == 2 and "Invalid value for '--" in err and "Traceback" not in err


def _api_limits(view: Any) -> list[str]:
    """One call's rule: 1..PAGE_MAX accepted, 0 and PAGE_MAX + 1 refused with E_INVALIDARG (the messages)."""
    assert len(view(limit=PAGE_MAX, offset=0)) == PAGE_MAX
    assert len(view(limit=1, offset=N - 1)) == 1
    messages = []
    for bad in (0, PAGE_MAX + 1):
        with pytest.raises(InvalidArgument) as ei:
            view(limit=bad, offset=0)
        assert ei.value.hresult == E_INVALIDARG
        messages.append(ei.value.message)
    return messages


def test_view_pages_alike_directly_and_through_the_service(home: Home) -> None:
    root = str(home.root)
    # Directly on the home (no service runs on it).
    direct = _scenarios(lambda *a: certsrv(*a, "--home", root))
    _check(direct)
    with Authority.open(home.root) as a:
        direct_api = _api_limits(a.view)
    # Through the service (named explicitly, so no direct fallback can happen).
    svc = Service(home).start()
    try:
        remote = _scenarios(lambda *a: certsrv(*a, "--home", root, "--server", f"unix:{svc.socket}"))
        with Client(f"unix:{svc.socket}") as c:
            remote_api = _api_limits(c.view)
    finally:
        assert svc.stop() == 0
    _check(remote)
    assert remote == direct  # the same rows, lines and refusals in both modes
    assert remote_api == direct_api  # one rule, one message
    assert "limit must be an integer in 1..1000" in direct_api[0]


def test_view_help_tells_the_truth() -> None:
    r = certsrv("view", "--help")
    text = " ".join(r.stdout.split())
    assert r.returncode == 0
    assert "--limit INTEGER RANGE" in text and "x>=1" in text
    assert f"default: all rows, fetched {PAGE_MAX} per call" in text
    assert "x>=0" not in text.split("--offset")[0]  # --limit no longer claims to take 0
