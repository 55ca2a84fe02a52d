"""``/metrics`` of a real service (issue 16): scraped over real HTTP while requests are issued, parsed with
Prometheus' own text parser, and checked against the work done and the state re-read from the service."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pycertsrv import config as config_mod
from pycertsrv.config import MetricsSection
from pycertsrv.store import list_generations
from support import Service, certsrv, make_csr, make_home

TEMPLATES = {"server": (3, 2, 1), "client": (2, 1, 2)}  # template: (issued, left pending, denied)


def _with_metrics(home_root: Path, listen: str) -> None:
    cfg = config_mod.load(home_root)
    config_mod.save(home_root, cfg.model_copy(update={"metrics": MetricsSection(listen=listen)}))


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape, parsed by prometheus_client's parser: {(sample name, sorted labels): value}."""
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture(scope="module")
def msvc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A pending-policy CA with metrics on a free loopback port."""
    home = make_home(tmp_path_factory.mktemp("met") / "H", pending=True)
    _with_metrics(home.root, "127.0.0.1:0")
    svc = Service(home).start()
    yield svc
    svc.ensure_stopped()


def metrics_url(svc: Service) -> str:
    with svc.client() as c:
        where = c.status()["metrics"]
    assert where and where.startswith("http://127.0.0.1:"), where
    return str(where)


def test_scrape_during_issuance_counts_the_work(msvc: Service) -> None:
    url = metrics_url(msvc)
    before = scrape(url)
    assert value(before, "certsrv_role", role="writer") == 1
    assert value(before, "certsrv_service_online") == 1
    assert value(before, "certsrv_store_degraded", state="ok", reason="") == 0
    batches_before = value(before, "certsrv_commit_batch_size_count") or 0.0
    batch_sum_before = value(before, "certsrv_commit_batch_size_sum") or 0.0

    # Scrapes run all along, while submissions and officer decisions go through the service.
    stop = threading.Event()
    seen: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []

    def scraper() -> None:
        while not stop.is_set():
            seen.append(scrape(url))

    t = threading.Thread(target=scraper)
    t.start()
    try:
        jobs = [tmpl for tmpl, counts in TEMPLATES.items() for _ in range(sum(counts))]
        with ThreadPoolExecutor(8) as pool:
            def submit(i_tmpl: tuple[int, str]) -> tuple[str, int]:
                i, tmpl = i_tmpl
                with msvc.client() as c:
                    return tmpl, int(c.submit(make_csr(f"m{i}.example.com"), template=tmpl)["request_id"])
            ids = list(pool.map(submit, enumerate(jobs)))
        with msvc.client() as c:
            for tmpl, (issued, _pending, denied) in TEMPLATES.items():
                mine = [rid for t_, rid in ids if t_ == tmpl]
                for rid in mine[:issued]:
                    c.issue(rid)
                for rid in mine[issued:issued + denied]:
                    c.deny(rid)
    finally:
        stop.set()
        t.join(60)
    assert seen, "no scrape completed during the work"
    after = scrape(url)

    for tmpl, (issued, pending, denied) in TEMPLATES.items():
        total = issued + pending + denied
        # every submission reached "pending" (pending policy), then the officer's decisions
        assert value(after, "certsrv_requests_total", disposition="pending", template=tmpl) == total
        assert value(after, "certsrv_requests_total", disposition="issued", template=tmpl) == issued
        assert value(after, "certsrv_requests_total", disposition="denied", template=tmpl) == denied
        assert value(after, "certsrv_issuance_seconds_count", template=tmpl) == issued
        assert value(after, "certsrv_issuance_seconds_bucket", template=tmpl, le="+Inf") == issued
    # counters never went backwards between the scrapes taken during the work
    key = ("certsrv_requests_total", (("disposition", "pending"), ("template", "server")))
    series = [s.get(key, 0.0) for s in [before, *seen, after]]
    assert series == sorted(series)
    # Every state change was one item of a group commit: submits + issues + denies (+ nothing else here).
    writes = sum(sum(c) + c[0] + c[2] for c in TEMPLATES.values())
    assert (value(after, "certsrv_commit_batch_size_sum") or 0) - batch_sum_before == writes
    n_batches = (value(after, "certsrv_commit_batch_size_count") or 0) - batches_before
    assert 1 <= n_batches <= writes

    # The counters agree with the database, re-read through the service.
    with msvc.client() as c:
        for disp in ("issued", "pending", "denied"):
            rows = c.view(disposition=disp, limit=1000)
            want = sum(TEMPLATES[t][{"issued": 0, "pending": 1, "denied": 2}[disp]] for t in TEMPLATES)
            assert len(rows) == want, (disp, rows)


def test_gauges_match_the_state_re_read(msvc: Service, tmp_path: Path) -> None:
    url = metrics_url(msvc)
    s0 = scrape(url)
    # no backup yet: the backup series are absent (never is not 1970)
    assert value(s0, "certsrv_backup_last_timestamp_seconds", type="full") is None
    assert value(s0, "certsrv_backup_sessions_open") == 0
    logdir = msvc.home.root / "logs"
    gens = list_generations(logdir) if logdir.is_dir() else {}
    assert gens, f"no log generations found in {logdir}"
    assert value(s0, "certsrv_log_generations") == len(gens)

    out = tmp_path / "full"
    pw = tmp_path / "pw"
    pw.write_text("set password\n")
    r = certsrv("backup", str(out), "--database-only", "--keep-log", "--quiet", "--password-file", str(pw),
                "--home", str(msvc.home.root))
    assert r.returncode == 0, r.stderr
    s1 = scrape(url)
    with msvc.client() as c:
        h = c.call("GET", "/v1/health")
    full = h["last_backup"]["full"]
    assert full is not None and full["type"] == "full"
    ended = dt.datetime.fromisoformat(full["time"]).timestamp()
    assert abs(value(s1, "certsrv_backup_last_timestamp_seconds", type="full") - ended) < 1.0
    # the set's size: every byte the session sent is a file of the set's DataBase/ and Dynamic/ directories
    sent = value(s1, "certsrv_backup_last_size_bytes", type="full")
    on_disk = sum(p.stat().st_size for d in ("DataBase", "Dynamic") if (out / d).is_dir()
                  for p in (out / d).rglob("*") if p.is_file() and p.name != "certbkxp.dat")
    assert sent == full["size_bytes"] == on_disk, (sent, full, on_disk)
    assert value(s1, "certsrv_backup_last_duration_seconds", type="full") is not None
    # bytes of log since the backup: the generations above the set's newest, as on disk now
    high = full["generations"][1]
    since = sum(p.stat().st_size for g, p in list_generations(logdir).items() if g > high)
    assert value(s1, "certsrv_log_bytes_since_backup") == since == h["log"]["bytes_since_backup"]
    assert value(s1, "certsrv_log_generations") == len(list_generations(logdir))

    # CRL nextUpdate as openssl reads it from the published file
    o = subprocess.run(["openssl", "crl", "-in", str(msvc.home.root / "publish" / "ca.crl.pem"), "-noout",
                        "-nextupdate"], capture_output=True, text=True, check=True)
    nu = dt.datetime.strptime(o.stdout.strip().split("=", 1)[1], "%b %d %H:%M:%S %Y %Z").replace(tzinfo=dt.UTC)
    assert value(s1, "certsrv_crl_next_update_timestamp_seconds") == nu.timestamp()


def test_metrics_off_by_default_and_unix_socket(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    assert config_mod.load(home.root).metrics.listen is None
    svc = Service(home).start()
    try:
        with svc.client() as c:
            assert c.status()["metrics"] is None
        # the API socket does not serve /metrics either (nothing is exported unless configured)
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(svc.socket))) as h:
            assert h.get("http://certsrv/metrics").status_code == 404
    finally:
        svc.ensure_stopped()
    sock = tmp_path / "m.sock"
    _with_metrics(home.root, str(sock))
    svc = Service(home).start()
    try:
        st = os.stat(sock)
        assert oct(st.st_mode & 0o777) == oct(0o600)  # owner only unless [metrics] socket_mode widens it
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as h:
            r = h.get("http://certsrv/metrics")
        assert r.status_code == 200
        names = {f.name for f in text_string_to_metric_families(r.text)}
        assert {"certsrv_requests", "certsrv_log_generations", "certsrv_store_degraded"} <= names
    finally:
        svc.ensure_stopped()
    assert not sock.exists()  # removed at a clean stop


def test_bad_listen_is_one_line(tmp_path: Path) -> None:
    home = make_home(tmp_path / "H")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        _with_metrics(home.root, f"127.0.0.1:{busy.getsockname()[1]}")
        r = certsrv("serve", "--home", str(home.root))
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert lines[-1].startswith("certsrv: ") and "0x80070057 E_INVALIDARG" in lines[-1], r.stderr
        assert "metrics.listen" in lines[-1] and "Traceback" not in r.stderr
    finally:
        busy.close()
    cfg = config_mod.load(home.root)  # written by hand: the model refuses it, as the loader must
    config_mod.save(home.root, cfg.model_copy(update={"metrics": MetricsSection.model_construct(listen="nonsense")}))
    r = certsrv("serve", "--home", str(home.root))
    assert r.returncode == 1 and "metrics.listen" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_archive_series_with_archiving_on(tmp_path: Path) -> None:
    from pycertsrv.archive.settings import ArchiveSection

    home = make_home(tmp_path / "H")
    cfg = config_mod.load(home.root)
    config_mod.save(home.root, cfg.model_copy(update={
        "metrics": MetricsSection(listen="127.0.0.1:0"),
        "archive": ArchiveSection(dest=str(tmp_path / "archive"))}))
    svc = Service(home).start()
    try:
        with svc.client() as c:
            c.submit(make_csr("arch.example.com"))
            url = c.status()["metrics"]
            h = c.call("GET", "/v1/health")
            old = c.health()["archive"]  # the archive's own view, through GET /health
        s = scrape(url)
        assert h["archive"] is not None and h["archive"]["state"] == old["state"]
        assert value(s, "certsrv_archive_state", state=old["state"]) == 1
        for key in ("lag_seconds", "lag_bytes", "lag_generations"):
            assert value(s, f"certsrv_archive_{key}") is not None, key
        assert value(s, "certsrv_archive_lag_bytes") >= 0
    finally:
        svc.ensure_stopped()
    # archiving off: no archive series at all (absent, not zero)
    home2 = make_home(tmp_path / "H2")
    _with_metrics(home2.root, "127.0.0.1:0")
    svc = Service(home2).start()
    try:
        s = scrape(metrics_url(svc))
        assert not [k for k in s if k[0].startswith("certsrv_archive_")]
        with svc.client() as c:
            assert c.call("GET", "/v1/health")["archive"] is None
    finally:
        svc.ensure_stopped()
