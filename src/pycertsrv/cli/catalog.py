"""``certsrv catalog`` and ``certsrv prune``: thin shells over :mod:`pycertsrv.backupset.catalog` and
:mod:`pycertsrv.backupset.retention` (issue 16: the recovery window, retention)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..errors import E_INVALIDARG, ERROR_INVALID_PASSWORD, InvalidArgument
from .common import echo_json, json_option, read_secret_file
from .root import cli


@cli.command("catalog")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--at", "at", default=None, metavar="TIME",
              help="A moment (ISO 8601, UTC when no zone): print the certsrv restore command that reaches it.")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the recovery window as one self-contained HTML page to this file.")
@click.option("--max-full-age", default="8d", show_default=True, metavar="AGE",
              help="Warn when the newest full set is older (s, m, h, d or w suffix).")
@click.option("--max-incremental-age", default="26h", show_default=True, metavar="AGE",
              help="Warn when the newest incremental set is older.")
@click.option("--restore-home", default="NEW_HOME", show_default=True, metavar="HOME",
              help="The --home of the printed restore command (a new, stopped home).")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The sets' password (first line): every set's authenticator is checked, and the printed "
                   "restore command names this file. Without it, the structure only (and PASSWORD_FILE).")
@click.option("--archive", "archive", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DEST", help="The continuous log archive ([archive] dest): chains reach on through the "
                                   "archived generations that continue them.")
@click.option("--max-archive-age", default="15m", show_default=True, metavar="AGE",
              help="With --archive: warn when the newest archived record is older.")
@click.option("--strict", is_flag=True, help="Exit 2 when there is any warning (for monitoring).")
@json_option
def catalog_cmd(directory: Path, at: str | None, html_out: Path | None, max_full_age: str,
                max_incremental_age: str, restore_home: str, password_file: Path | None, archive: Path | None,
                max_archive_age: str, strict: bool, as_json: bool) -> None:
    """The recovery window of the backup sets under DIRECTORY: chains, gaps, ages, and the restore command
    for a moment (--at)."""
    from ..backupset.catalog import build_catalog, parse_duration
    from ..backupset.catalog_html import render_html
    from ..fsutil import atomic_write

    if as_json and html_out is not None:
        raise InvalidArgument(E_INVALIDARG, "catalog", "--json and --html exclude each other; give one")
    password = read_secret_file(password_file, "password", empty_hresult=ERROR_INVALID_PASSWORD) \
        if password_file is not None else None
    cat = build_catalog(directory, max_full_age=parse_duration(max_full_age, "--max-full-age"),
                        max_incremental_age=parse_duration(max_incremental_age, "--max-incremental-age"),
                        password=password, archive=archive,
                        max_archive_age=parse_duration(max_archive_age, "--max-archive-age"))
    cmd = {"restore_home": restore_home,
           "password_file": str(password_file.absolute()) if password_file is not None else "PASSWORD_FILE"}
    if html_out is not None:
        atomic_write(html_out, render_html(cat, **cmd).encode(), mode=0o644)
        click.echo(f"Wrote the recovery window of {cat.root} to {html_out}.")
    elif as_json:
        echo_json(cat.to_json(at, **cmd))
    else:
        for line in cat.describe():
            click.echo(line)
        if at is not None:
            click.echo(f"restore to {at}:")
            click.echo("  " + shlex.join(cat.restore_command(at, **cmd)))
    if html_out is not None and at is not None:
        click.echo(shlex.join(cat.restore_command(at, **cmd)))
    if strict and cat.warnings:
        raise SystemExit(2)


@cli.command("prune")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--keep-full", type=int, required=True, metavar="N",
              help="Keep the newest N chains (full set and its incrementals); older chains are removed whole.")
@click.option("--archive", "archive", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DEST", help="Also remove the archived generations the oldest kept full set no longer needs "
                                   "(as certsrv archive prune DEST --before FULLSET).")
@click.option("--dry-run", is_flag=True, help="List what would be deleted, delete nothing.")
@json_option
def prune_cmd(directory: Path, keep_full: int, archive: Path | None, dry_run: bool, as_json: bool) -> None:
    """Remove old backup chains under DIRECTORY, never the newest chain nor an incremental whose full set stays."""
    from ..backupset.retention import describe, plan_prune, run_prune

    plan = plan_prune(directory, keep_full, archive=archive)
    if not dry_run:
        run_prune(plan)
    if as_json:
        echo_json(plan.to_json(dry_run))
        return
    for line in describe(plan, dry_run):
        click.echo(line)
