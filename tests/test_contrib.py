"""What ships in contrib/ and the generated man pages: Prometheus rules checked and unit-tested with promtool,
every rule on a series we export, systemd units accepted by ``systemd-analyze verify`` (where it exists), and a
man page per command that renders."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from pycertsrv.archive.settings import ArchiveSection
from pycertsrv.archive.shipper import shipper_for
from pycertsrv.ca import Authority
from pycertsrv.cli import cli, manpages
from pycertsrv.service.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "contrib" / "prometheus"
UNITS = ROOT / "contrib" / "systemd"
IN_CI = os.environ.get("CI", "").lower() == "true"
# Rules on series that no service exports yet (none since log archiving, issue 13, landed).
FUTURE_SERIES: set[str] = set()


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        if IN_CI:
            pytest.fail(f"{binary} is required under CI (Debian package {package}; .ci/run installs it)")
        pytest.skip(f"{binary} not installed (Debian package {package})")
    return path


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _need("promtool", "prometheus")
    r = subprocess.run([promtool, "check", "rules", str(PROM / "alerts.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    # the alerts fire when they should, and not before (series fed to the rules in alerts_test.yml)
    r = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], capture_output=True, text=True, cwd=PROM)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_rule_uses_a_series_we_export(tmp_path: Path) -> None:
    """Without promtool too: a rule on a misspelt series would never fire, silently."""
    Authority.init(tmp_path / "H", "Rules CA").close()
    with Authority.open(tmp_path / "H") as a:
        a.publish_crl()
        # archiving on (its series exist only then), shipping to a real directory
        cfg = a.config.model_copy(update={"archive": ArchiveSection(dest=str(tmp_path / "archive"))})
        shipper = shipper_for(a, cfg, tmp_path / "H")
        assert shipper is not None
        m = ServiceMetrics(a, archiver=lambda: shipper)
        m.request_resolved("issued", "server", 0.01)
        text = m.exposition().decode()
    # samples, and the families declared without one yet (no backup recorded: the series is absent, not 0)
    exported = set(re.findall(r"^(?:# TYPE )?(certsrv_[a-z0-9_]+)", text, re.M))
    rules = (PROM / "alerts.yml").read_text()
    used = set(re.findall(r"\b(certsrv_[a-z0-9_]+)", rules))
    assert used, "no certsrv_ series in the rules"
    assert used - exported == FUTURE_SERIES, f"rules on series nobody exports: {used - exported - FUTURE_SERIES}"
    # each series named in the module's table is exported (the docs and the code agree)
    for name in ("certsrv_requests_total", "certsrv_issuance_seconds_bucket", "certsrv_commit_batch_size_count",
                 "certsrv_log_generations", "certsrv_log_bytes_since_backup", "certsrv_backup_sessions_open",
                 "certsrv_crl_next_update_timestamp_seconds", "certsrv_store_degraded", "certsrv_role",
                 "certsrv_archive_lag_seconds", "certsrv_archive_lag_bytes", "certsrv_archive_state"):
        assert name in exported, name


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # Issue 16: "systemd-analyze verify accepts the units, where it is available".
        pytest.skip("systemd-analyze not installed")
    exe = Path(sys.executable).parent / "certsrv"
    assert exe.is_file(), exe
    units = tmp_path / "units"
    units.mkdir()
    for p in sorted(UNITS.glob("*")):
        # the installed path of the command is the one thing that differs from an installed system
        (units / p.name).write_text(p.read_text().replace("/usr/local/bin/certsrv", str(exe)))
    man = tmp_path / "man" / "man1"
    manpages.generate(man)
    env = dict(os.environ, MANPATH=str(tmp_path / "man"), SYSTEMD_LOG_LEVEL="notice")
    # Documentation=man:... pages are looked up too when man is there: the generated pages must exist.
    docs = "--man=yes" if shutil.which("man") else "--man=no"
    names = sorted(str(p) for p in units.iterdir())
    assert {Path(n).name for n in names} >= {"certsrv.service", "certsrv-backup-full.service",
                                             "certsrv-backup-full.timer", "certsrv-backup-incremental.service",
                                             "certsrv-backup-incremental.timer"}
    r = subprocess.run([analyze, "verify", docs, *names], capture_output=True, text=True, env=env, cwd=units)
    assert r.returncode == 0 and not r.stderr.strip(), r.stdout + r.stderr
    # what the units promise: readiness and watchdog through sd_notify, the backup command lines
    svc = (UNITS / "certsrv.service").read_text()
    assert "Type=notify" in svc and "WatchdogSec=" in svc
    full = (UNITS / "certsrv-backup-full.service").read_text()
    assert "certsrv backup --home /var/lib/certsrv --into /var/backups/certsrv --quiet --password-file" in full
    assert "certsrv prune /var/backups/certsrv --keep-full" in full
    inc = (UNITS / "certsrv-backup-incremental.service").read_text()
    assert "--incremental --database-only --quiet --password-file" in inc


def test_man_pages_cover_every_command_and_option(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pycertsrv.cli.manpages", str(tmp_path)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    commands = list(manpages.walk())
    assert len(commands) > 15
    for path, cmd in commands:
        page = tmp_path / f"{'-'.join(path)}.1"
        text = page.read_text()
        assert text.startswith(f'.TH "{"-".join(path).upper()}" "1"'), page
        ctx = click.Context(cmd, info_name=" ".join(path))
        for p in cmd.get_params(ctx):
            for opt in p.opts if isinstance(p, click.Option) and not p.hidden else ():  # hidden: not in --help
                assert manpages.roff_escape(opt) in text, (page.name, opt)
        if isinstance(cmd, click.Group):
            for sub in cmd.commands:
                assert f"\\fB{manpages.roff_escape('-'.join((*path, sub)))}\\fR(1)" in text
    assert {"certsrv-serve.1", "certsrv-status.1", "certsrv-backup.1", "certsrv-crl-publish.1"} <= {
        p.name for p in tmp_path.iterdir()}
    assert set(cli.commands) <= {p.name.removeprefix("certsrv-").removesuffix(".1") for p in tmp_path.iterdir()}
    # roff that renders without a warning (groff -ww), and man's own reading of a page
    groff = _need("groff", "groff-base")
    r = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", *sorted(str(p) for p in tmp_path.glob("*.1"))],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    if shutil.which("man"):
        r = subprocess.run(["man", "-l", "-P", "cat", str(tmp_path / "certsrv-serve.1")], capture_output=True,
                           text=True, env=dict(os.environ, MANWIDTH="100"))
        assert r.returncode == 0 and "--socket" in r.stdout and "NAME" in r.stdout, r.stderr


def test_shell_completion_as_documented() -> None:
    """docs/operations.md: ``_CERTSRV_COMPLETE=bash_source certsrv`` prints the script; completion works."""
    exe = str(Path(sys.executable).parent / "certsrv")
    r = subprocess.run([exe], env=dict(os.environ, _CERTSRV_COMPLETE="bash_source"), capture_output=True,
                       text=True)
    assert r.returncode == 0 and "_certsrv_completion" in r.stdout and "complete " in r.stdout, r.stderr
    r = subprocess.run([exe], env=dict(os.environ, _CERTSRV_COMPLETE="bash_complete", COMP_WORDS="certsrv ba",
                                       COMP_CWORD="1"), capture_output=True, text=True)
    assert r.returncode == 0 and "plain,backup" in r.stdout.splitlines(), r.stdout
    assert "_CERTSRV_COMPLETE=bash_source certsrv" in (ROOT / "docs" / "operations.md").read_text()
    assert "(docs/operations.md)" in (ROOT / "README.md").read_text()
