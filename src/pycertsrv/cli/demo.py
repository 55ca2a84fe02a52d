"""``certsrv demo``: the whole story on throw-away homes (the library's demo functions, rendered)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .common import echo_json
from .root import cli


@cli.command("demo")
@click.option("--part", type=click.Choice(["all", "engine", "ca", "backup"]), default="all", show_default=True,
              help="engine: crash and recovery; ca: issue, revoke, CRL; backup: online backup and restore.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the homes in this new directory instead of a temporary one.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON at the end.")
def demo_cmd(part: str, workdir: Path | None, as_json: bool) -> None:
    """Run the demo: engine crash recovery, the CA, then backup under load and restore on a new home."""
    results: dict[str, Any] = {}
    if part in ("all", "engine"):
        from ..store.demo import run_engine_demo

        click.secho("== the database engine: SIGKILL a committing process, reopen, recover", bold=True)
        results["engine"] = run_engine_demo(echo=click.echo)
    if part in ("all", "ca"):
        from ..ca.demo import run_ca_demo

        click.secho("\n== the certificate authority: issue, revoke, publish a CRL, check with openssl", bold=True)
        results["ca"] = run_ca_demo(echo=click.echo, home=workdir / "ca-demo" if workdir else None)
    if part in ("all", "backup"):
        from ..backupset.demo import run_demo

        click.secho("\n== online backup while issuing, incremental, restore onto a new machine", bold=True)
        results["backup"] = run_demo(echo=click.echo, workdir=workdir / "backup-demo" if workdir else None)
    if as_json:
        echo_json(results)
    ok = all(bool(r.get("ok", True)) for r in results.values())
    click.secho("\ndemo: all checks passed" if ok else "\ndemo: a check FAILED", bold=True, fg="green" if ok else "red")
    if not ok:
        sys.exit(1)
