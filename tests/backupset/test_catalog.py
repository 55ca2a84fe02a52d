"""``certsrv catalog`` on sets made by the real ``certsrv backup --into`` (issue 16, Must show 1), and the
``/ui/backups`` page the service serves from its configured backup directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from catalog_sets import Built, build, certsrv
from setlib import ca_rows

from pycertsrv.backupset.catalog import build_catalog
from pycertsrv.ca import Authority
from support import Service, short_home


@pytest.fixture(scope="module")
def built() -> Iterator[Built]:
    home = short_home("cat")
    b = build(home.parent)
    yield b
    shutil.rmtree(home.parent, ignore_errors=True)


def _catalog_json(b: Built, *extra: str) -> dict[str, Any]:
    out = certsrv("catalog", str(b.sets_dir), "--json", "--restore-home", str(b.work / "restored"),
                  "--password-file", str(b.pwfile), *extra)
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_window_and_gap(built: Built) -> None:
    b, n, t = built, built.names, built.marks
    cat = _catalog_json(b)
    sets = {s["name"]: s for s in cat["sets"]}
    assert set(sets) == {n[k] for k in ("fullA", "i1", "i3", "fullB", "iB1", "iB2")}
    assert all(s["ok"] for s in sets.values())
    chains = {c["full"]: c for c in cat["chains"]}
    assert set(chains) == {n["fullA"], n["fullB"]}
    a, bb = chains[n["fullA"]], chains[n["fullB"]]
    assert a["incrementals"] == [n["i1"]] and a["cut_off"] == [n["i3"]]
    assert bb["incrementals"] == [n["iB1"], n["iB2"]] and bb["cut_off"] == [] and bb["gap"] is None
    # The gap is named: the deleted set's generations, between the sets around it.
    gap = a["gap"]
    assert (gap["after"], gap["before"]) == (n["i1"], n["i3"])
    assert (gap["gen_low"], gap["gen_high"]) == b.removed_gens
    assert cat["gaps"] == [gap] and any(n["i3"] in w and "missing" in w for w in cat["warnings"])
    # The window: two spans. Chain A starts at its snapshot (the last write before the full backup) and reaches
    # the last record i1 holds (batch a2's last request); the rows of batch a3 are
    # only in the deleted i2, so the span ends before them.
    w = cat["window"]
    assert len(w) == 2
    assert t["a0_begin"] <= w[0]["from_us"] <= t["fullA_done"]
    assert t["a2_begin"] <= w[0]["to_us"] <= t["i1_done"] < t["a3_begin"]
    assert t["b0_begin"] <= w[1]["from_us"] <= t["fullB_done"]
    assert t["b3_begin"] <= w[1]["to_us"] <= t["iB2_done"]
    assert cat["holes"][0]["from_us"] == w[0]["to_us"] and cat["holes"][0]["to_us"] == w[1]["from_us"]
    assert n["i3"] in cat["holes"][0]["why"]
    assert cat["newest_full"]["set"] == n["fullB"] and cat["newest_incremental"]["set"] == n["iB2"]
    # Ages against limits: a limit below the sets' age warns, naming the set.
    strict = certsrv("catalog", str(b.sets_dir), "--max-full-age", "1s", "--max-incremental-age", "1s",
                     "--strict", check=False)
    assert strict.returncode == 2
    assert f"the newest full set {n['fullB']}" in strict.stdout and f"incremental set {n['iB2']}" in strict.stdout


def _run_printed(argv: list[str]) -> None:
    assert argv[:2] == ["certsrv", "restore"]
    out = subprocess.run([sys.executable, "-m", "pycertsrv.cli", *argv[1:]], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("cut, chain", [("cut_a", ["fullA", "i1"]), ("cut_b", ["fullB", "iB1", "iB2"])])
def test_printed_command_restores_that_moment(built: Built, cut: str, chain: list[str], tmp_path: Path) -> None:
    b = built
    target = short_home("catr")
    try:
        cat = _catalog_json(b, "--at", _iso(b.marks[cut]))
        argv = cat["at"]["argv"]
        assert argv == build_catalog(b.sets_dir).restore_command(
            b.marks[cut], restore_home=str(b.work / "restored"), password_file=str(b.pwfile))
        # The sets it names: that chain's full set and the incrementals up to the moment, nothing after a gap.
        assert argv[2:2 + len(chain)] == [str(b.sets_dir / b.names[k]) for k in chain]
        argv[argv.index("--home") + 1] = str(target)
        _run_printed(argv)
        svc = Service(target).start()  # the service runs the recovery (replay up to --until) before serving
        svc.stop()
        with Authority.open(target) as r:
            got = ca_rows(r.store)
        want = b.rows[cut]
        assert got == want  # row by row, every table
        assert len(got["request"]) == {"cut_a": 4, "cut_b": 15}[cut]
    finally:
        shutil.rmtree(target.parent, ignore_errors=True)


def _iso(us: int) -> str:
    from pycertsrv.backupset.catalog import iso

    s = iso(us)
    assert s is not None
    return s


def test_moment_in_the_gap_is_refused(built: Built) -> None:
    cat = build_catalog(built.sets_dir)
    hole = cat.holes[0]
    mid = (hole["from_us"] + hole["to_us"]) // 2
    out = certsrv("catalog", str(built.sets_dir), "--at", _iso(mid), check=False)
    assert out.returncode == 1
    line = out.stderr.strip()
    assert "\n" not in line and "0x80070057 E_INVALIDARG" in line and "outside the recovery window" in line
    assert "Traceback" not in out.stderr
    out = certsrv("catalog", str(built.sets_dir), "--archive", str(built.work / "arch"), check=False)
    line = out.stderr.strip()  # an archive that does not exist: one line, nothing read
    assert out.returncode == 1 and "\n" not in line and "ERROR_FILE_NOT_FOUND" in line and "--archive" in line
    assert "Traceback" not in out.stderr


def test_service_serves_the_page(built: Built) -> None:
    svc = Service(built.home).start()
    try:
        transport = httpx.HTTPTransport(uds=str(built.home / "certsrv.sock"))
        with httpx.Client(transport=transport, base_url="http://certsrv") as c:
            r = c.get("/ui/backups")  # the home's owner holds Operator
    finally:
        svc.stop()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]  # nothing loads from elsewhere
    for k in ("fullA", "i1", "i3", "fullB", "iB1", "iB2"):
        assert f'data-set="{built.names[k]}"' in r.text
    assert "<link" not in r.text and "src=" not in r.text  # self-contained


def test_page_in_a_real_browser(built: Built, tmp_path: Path) -> None:
    """Issue 16 Must show 2: Chromium renders the page; every set is on the timeline; a click shows the command."""
    import asyncio
    import shlex

    from cdp_browser import Browser, chromium_path

    chromium_path()  # skip outside CI when missing; fail under CI=true
    b = built
    page = tmp_path / "window.html"
    certsrv("catalog", str(b.sets_dir), "--html", str(page), "--restore-home", str(b.work / "restored"),
            "--password-file", str(b.pwfile))
    cat = build_catalog(b.sets_dir)

    async def drive() -> dict[str, Any]:
        br = await Browser().start()
        try:
            await br.open(page.as_uri())
            seen: dict[str, Any] = {"sets": await br.eval(
                "[...document.querySelectorAll('#timeline [data-set]')].map(e => e.dataset.set)")}
            seen["gaps"] = await br.eval("[...document.querySelectorAll('#timeline .gap')].map(e => e.dataset.gap)")
            await br.screenshot(tmp_path / "window.png")
            seen["before"] = await br.eval("document.getElementById('command').textContent")
            clicks = {}
            for what, sel in (("chainB", f".row[data-chain='{b.names['fullB']}'] .span"), ("hole", ".hole")):
                rect = await br.eval(f"(() => {{ const r = document.querySelector(\"{sel}\").getBoundingClientRect();"
                                     " return [r.left, r.top, r.width, r.height]; })()")
                await br.click(rect[0] + rect[2] / 2, rect[1] + rect[3] / 2 if what == "chainB" else rect[1] + 20)
                clicks[what] = await br.eval("[document.getElementById('moment').textContent,"
                                             " document.getElementById('command').textContent]")
            seen["clicks"] = clicks
            return seen
        finally:
            await br.close()

    seen = asyncio.run(drive())
    png = (tmp_path / "window.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # Each set appears on the timeline (the cut-off one too), and the gap is drawn.
    assert sorted(seen["sets"]) == sorted(b.names[k] for k in ("fullA", "i1", "i3", "fullB", "iB1", "iB2"))
    assert seen["gaps"] == [b.names["i3"]]
    assert "restore" not in seen["before"]
    moment, command = seen["clicks"]["chainB"]
    chain_b = next(c for c in cat.chains if c.full.name == b.names["fullB"])
    from pycertsrv.backupset.restore_plan import parse_until

    at = parse_until(moment)
    assert chain_b.start_us <= at <= chain_b.end_us
    # The command the page shows is the library's command for the clicked moment, character for character.
    assert command == shlex.join(cat.restore_command(moment, restore_home=str(b.work / "restored"),
                                                     password_file=str(b.pwfile)))
    assert command.startswith("certsrv restore " + str(b.sets_dir / b.names["fullB"]))
    moment, command = seen["clicks"]["hole"]
    assert cat.holes[0]["from_us"] < parse_until(moment) < cat.holes[0]["to_us"]
    assert command.startswith("Not restorable")


def test_page_roles_over_tls(built: Built, tmp_path: Path) -> None:
    """/ui/backups answers Operators, Auditors (and Administrators); Officers, Enrollees and nobody get 403."""
    import ssl

    sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: the service tests' helpers
    from service.helpers import TLSMaterial
    from support import Service as TLSService
    from support import make_home

    tls = TLSMaterial(tmp_path / "tls")
    who = {"operator": ["Operator"], "auditor": ["Auditor"], "admin": ["Administrator"], "officer": ["Officer"],
           "enrollee": ["Enrollee"], "nobody": []}
    creds = {n: tls.client(n) for n in who}
    home = make_home(tmp_path / "H", roles=[(f"cert-subject:{creds[n].subject}", r) for n, r in who.items() if r],
                     tcp_host="127.0.0.1", tcp_port=0, **tls.service_config())
    from pycertsrv import config as config_mod

    cfg = config_mod.load(home.root)
    cfg.backup.dir = str(built.sets_dir)
    config_mod.save(home.root, cfg)
    svc = TLSService(home).start()
    status: dict[str, tuple[int, str]] = {}
    try:
        for n, c in creds.items():
            ctx = ssl.create_default_context(cafile=str(c.cafile))
            ctx.load_cert_chain(str(c.cert), str(c.key))
            with httpx.Client(verify=ctx) as h:
                r = h.get(f"https://{svc.tls_address}/ui/backups")
            status[n] = (r.status_code, r.text)
    finally:
        svc.ensure_stopped()
    for n in ("operator", "auditor", "admin"):
        assert status[n][0] == 200 and f'data-set="{built.names["iB2"]}"' in status[n][1], n
    for n in ("officer", "enrollee", "nobody"):
        code, text = status[n]
        assert code == 403 and "E_ACCESSDENIED" in text and "data-set" not in text, n
