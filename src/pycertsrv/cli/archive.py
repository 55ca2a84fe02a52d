"""``certsrv archive status | prune`` and ``certsrv verify-archive`` (issue 13): thin shells over
:mod:`pycertsrv.archive`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import CertSrvError, Unavailable
from .backend import ServerSpec, server_options
from .common import echo_json, home_option, json_option
from .root import cli


@cli.group("archive")
def archive_group() -> None:
    """Continuous log archiving: status and pruning (see [archive] in certsrv.toml)."""


def _render_status(st: dict[str, Any]) -> None:
    if not st.get("enabled"):
        click.echo("archiving is off (no [archive] section in certsrv.toml)")
        return
    click.echo(f"archive: {st['state']} -> {st.get('destination')}")
    click.echo(f"  lineage {st.get('lineage')}  watermark {st.get('watermark_name') or 'none'}  "
               f"current generation {st.get('current_generation')}")
    lag_s = st.get("lag_seconds")
    click.echo(f"  lag {st.get('lag_generations')} generation(s), {st.get('lag_bytes')} bytes"
               + (f", {lag_s}s" if lag_s is not None else ""))
    if st.get("behind"):
        click.echo(f"  FAR BEHIND: more than max_lag_bytes ({st.get('max_lag_bytes')}) not archived", err=True)
    if st.get("last_error"):
        click.echo(f"  last error: {st['last_error']} at {st.get('last_error_at')}")


@archive_group.command("status")
@home_option
@server_options
@json_option
def status_cmd(home: Path | None, server: ServerSpec, as_json: bool) -> None:
    """Watermark, lag (generations, bytes, seconds) and last error; from the service, else the home's files."""
    st: dict[str, Any] | None
    try:
        with server.client(home) as c:
            st = c.status().get("archive") or {"enabled": False}
    except Unavailable:
        if server.server is not None:
            raise
        from ..archive.offline import offline_status
        from ..home import Home

        st = offline_status(Home.at(home).root)
    if as_json:
        echo_json(st)
    else:
        _render_status(st)


@archive_group.command("prune")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--before", "full_set", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A full set: archived generations it and every later set no longer need are removed.")
@click.option("--dry-run", is_flag=True, help="List what would be removed and stop.")
@json_option
def prune_cmd(dest: Path, full_set: Path, dry_run: bool, as_json: bool) -> None:
    """Remove archived generations older than FULLSET's first generation (its CA and lineage only)."""
    from ..archive.prune import prune
    from ..backupset.retention import plan_archive_prune

    plan = plan_archive_prune(dest, full_set)
    if not dry_run:
        prune(plan)
    if as_json:
        echo_json(plan.to_json())
        return
    verb = "removed" if plan.done else "would remove"
    for p in plan.files:
        click.echo(f"{verb} {p}")
    click.echo(f"{verb} {len(plan.files)} generation(s) of {plan.directory}")


@cli.command("verify-archive")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option("--max-age", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Also fail when the newest archived record is older than this (freshness).")
@json_option
def verify_archive_cmd(dest: Path, max_age: float | None, as_json: bool) -> None:
    """Check every archived generation (CRC, LSN continuity, identity, lineage, freshness)."""
    from ..archive.verify import verify_archive

    rep = verify_archive(dest, max_age=max_age)
    err = rep.first_error
    if as_json:
        echo_json(rep.to_json())
    else:
        for c in rep.to_json()["chains"]:
            click.echo(f"{c['identity']}/{c['lineage']}: {c['generations']} generation(s) {c['first']}..{c['last']}, "
                       f"LSN {c['first_lsn']}..{c['last_lsn']}, newest record {c['newest_record']} "
                       f"({c['age_seconds']}s ago){'' if c['ok'] else ' DAMAGED'}")
    if err is not None:
        raise CertSrvError(err.hresult, err.function, f"{err.message}; restore from this archive is refused "
                           "until the file is replaced from another copy")
    if not as_json:
        click.echo(f"certsrv: verify-archive: {dest} is sound ({len(rep.chains)} chain(s))")
