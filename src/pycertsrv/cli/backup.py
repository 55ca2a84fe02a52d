"""``certsrv backup`` and ``certsrv verify-backup``: thin shells over :func:`pycertsrv.backupset.writer.run_backup`
and :func:`pycertsrv.backupset.verify.verify_backup` (spec §5.2 certutil -backup, §5.3 Backup-CARoleService)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import (
    E_INVALIDARG,
    ERROR_INVALID_PASSWORD,
    RPC_S_SERVER_UNAVAILABLE,
    CorruptData,
    InvalidArgument,
    Unavailable,
    hresult_name,
)
from .backend import ServerSpec, server_options, service_running
from .common import echo_json, home_option, json_option, read_secret_file
from .root import cli


def _read_secret(path: Path, what: str) -> bytes:
    return read_secret_file(path, what, empty_hresult=ERROR_INVALID_PASSWORD)


_RATE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _parse_rate(text: str) -> float:
    """``--max-rate``: bytes per second, with an optional K, M or G suffix (powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("/S")
    unit = t[-1:] if t[-1:] in _RATE_UNITS else ""
    try:
        value = float(t[:len(t) - len(unit)]) * _RATE_UNITS[unit]
    except ValueError:
        value = 0.0
    if not value > 0 or value != value or value == float("inf"):
        raise InvalidArgument(E_INVALIDARG, "--max-rate", f"{text!r} is not a positive rate such as 200M")
    return value


class _Bars:
    """One click progress bar per phase (certutil: "Backing up Database files: 100%"), on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.phase: str | None = None
        self.bar: Any = None

    def __call__(self, ev: Any) -> None:
        if not self.enabled:
            return
        if ev.phase != self.phase:
            self.finish()
            self.phase = ev.phase
            label = f"Backing up {ev.phase}" if ev.phase != "Truncating logs" else ev.phase
            self.bar = click.progressbar(length=max(ev.size, 1), label=label, file=sys.stderr, show_pos=False,
                                         show_percent=True, show_eta=False)
            self.bar.__enter__()
        elif ev.done == 0 and ev.delta == 0:
            self.bar.length += ev.size  # next file of the same phase
        if ev.delta:
            self.bar.update(ev.delta)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@cli.command("backup")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--into", "into", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a new set under this directory, named by its time and type "
                   "(INTO/2026-11-29T060012Z-full/), instead of DIRECTORY.")
@click.option("--incremental", is_flag=True, help="Logs written since the previous backup only (needs a full one).")
@click.option("--keep-log", is_flag=True, help="Do not truncate the log generations after a full backup.")
@click.option("--database-only", is_flag=True, help="No key: database, logs, published files, configuration.")
@click.option("--key-only", is_flag=True, help="Only the CA key and certificates (PKCS#12).")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The set's password (first line): protects the PKCS#12 and authenticates every set, "
                   "--database-only ones too; prompted for when omitted on a terminal.")
@click.option("--base", "base", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="For --incremental: the set it continues (default: the one beside DIRECTORY).")
@click.option("--key-passphrase-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Passphrase of an encrypted CA key (default: the home's configured source).")
@click.option("--force", is_flag=True, help="Write into a non-empty directory, replacing an earlier set.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--nice", "niceness", type=int, default=0, show_default=True,
              help="Run this backup process N steps nicer (0-19, nice(2)), so issuance on the same machine keeps "
                   "more of the CPU; the service's own part of the backup is small and unchanged.")
@click.option("--max-rate", "max_rate", default=None, metavar="RATE",
              help="At most RATE bytes per second on average (suffix K, M or G: 200M), so the CA's own disk "
                   "writes keep their speed during the backup.")
@click.option("--status", "show_status", is_flag=True,
              help="Show the backup session running on the service (holder, start, type, progress) and exit.")
@click.option("--abort", "abort", is_flag=True,
              help="End the backup session running on the service at once (Operator; audited) and exit.")
@home_option
@server_options
@json_option
def backup_cmd(directory: Path | None, into: Path | None, incremental: bool, keep_log: bool, database_only: bool,
               key_only: bool, password_file: Path | None, base: Path | None, key_passphrase_file: Path | None,
               force: bool, quiet: bool, niceness: int, max_rate: str | None, show_status: bool, abort: bool,
               home: Path | None, server: ServerSpec, as_json: bool) -> None:
    """Back up the running CA into DIRECTORY: DIR/<CA>.p12 and DIR/DataBase/ (spec §5.4), plus Dynamic/ and
    Config/, or into a new set under --into DIR named by its time and type. Full backups truncate the logs
    unless --keep-log. --status / --abort: see or end the running backup session."""
    from ..backupset.retention import new_set_dir
    from ..backupset.writer import run_backup
    from ..home import Home

    if show_status or abort:
        _session_cmd(show_status, abort, directory, home, server, as_json)
        return
    if directory is not None and into is not None:
        raise InvalidArgument(E_INVALIDARG, "backup", "give either DIRECTORY or --into DIR, not both")
    if into is not None:
        directory = new_set_dir(into, "incremental" if incremental else "full")
    if directory is None:
        raise InvalidArgument(E_INVALIDARG, "backup", "no DIRECTORY given; run certsrv backup DIRECTORY or "
                              "--into DIR (or --status / --abort)")

    if database_only and key_only:
        raise InvalidArgument(E_INVALIDARG, "backup", "--database-only and --key-only exclude each other")
    if not 0 <= niceness <= 19:
        raise InvalidArgument(E_INVALIDARG, "--nice", f"{niceness} is not a niceness increment from 0 to 19")
    rate = _parse_rate(max_rate) if max_rate is not None else None
    if not key_only and into is None and server.server is None and not service_running(home):
        # Asked before any password prompt and before DIRECTORY is created (issue 10 finding 7).
        where = Home.at(home).root
        raise Unavailable(RPC_S_SERVER_UNAVAILABLE, str(where),
                          f"the CA service is not running: a database backup is taken from the running service; "
                          f"start it (certsrv serve --home {where}) and rerun the backup, or use --key-only for "
                          "the key alone")
    # Issue 9 finding 4: every set, --database-only too, is authenticated with a key derived from its password.
    if password_file is not None:
        password = _read_secret(password_file, "password")
    elif sys.stdin.isatty():
        password = click.prompt("Password for the backup set", hide_input=True, confirmation_prompt=True).encode()
    else:
        raise InvalidArgument(ERROR_INVALID_PASSWORD, "backup", "every backup set needs a password (it protects the "
                              "CA key and authenticates the set): give --password-file")
    passphrase = _read_secret(key_passphrase_file, "key passphrase") if key_passphrase_file else None
    bars = _Bars(not quiet and not as_json)
    if niceness:
        os.nice(niceness)  # this process only (receiving, hashing, writing the set)
    with server.client(home) as client:
        try:
            result = run_backup(client, directory, kind="incremental" if incremental else "full", keep_log=keep_log,
                                database_only=database_only, key_only=key_only, password=password, force=force,
                                progress=bars, home=Home.at(home), key_passphrase=passphrase, max_rate=rate,
                                base=base)
        finally:
            bars.finish()
    if as_json:
        echo_json(result.to_json())
        return
    m = result.manifest
    name = m.ca_name if m else None
    if result.p12 is not None:
        click.echo(f"Backed up keys and certificates to {result.p12}.")
    if m is not None:
        click.echo(f"{'Full' if m.kind == 'full' else 'Incremental'} database backup for {name!r}: "
                   f"generations {m.gen_low:08X}..{m.gen_high:08X}, {result.bytes_streamed} bytes, "
                   f"{len(m.files)} files.")
        click.echo(f"Backed up database to {result.directory}.")
        if result.truncated is not None:
            click.echo(f"Database logs successfully truncated ({len(result.truncated)} generation(s) removed).")


def _session_cmd(show_status: bool, abort: bool, directory: Path | None, home: Path | None, server: ServerSpec,
                 as_json: bool) -> None:
    """``backup --status`` / ``backup --abort``: one call to the service, rendered."""
    from ..client.backup import abort_backup, backup_status

    if show_status and abort:
        raise InvalidArgument(E_INVALIDARG, "backup", "--status and --abort exclude each other")
    if directory is not None:
        raise InvalidArgument(E_INVALIDARG, "backup", f"--{'status' if show_status else 'abort'} takes no "
                              f"DIRECTORY ({directory}); run it alone")
    with server.client(home) as client:
        st = backup_status(client) if show_status else abort_backup(client)
    if as_json:
        echo_json({"session": st})
    elif st is None:
        click.echo("No backup session is running.")
    else:
        if abort:
            click.echo(f"Aborted the backup session of {st['principal']}; the next backup can start now.")
        cur = st.get("open_file")
        reading = f", reading {cur} ({st['open_file_pos']}/{st['open_file_size']} bytes)" if cur else ""
        click.echo(f"{st['kind'].capitalize()} backup by {st['principal']}, started {st['started']}, phase "
                   f"{st['phase']}: {st['files_done']}/{st['files_listed']} files, {st['bytes_sent']} bytes sent"
                   f"{reading}; idle {st['idle_seconds']:g}s (limit {st['idle_limit']:g}s)")


@cli.command("verify-backup")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The set's password (first line): checks the set's authenticator.")
@click.option("--structure-only", is_flag=True,
              help="No password: check sizes, hashes and logs only, and say that authenticity was NOT checked.")
@click.option("--allow-unauthenticated", is_flag=True,
              help="Accept a set written before sets were authenticated (with a warning).")
@json_option
def verify_backup_cmd(directory: Path, password_file: Path | None, structure_only: bool,
                      allow_unauthenticated: bool, as_json: bool) -> None:
    """Check a backup set: its authenticator (with --password-file), manifest, sizes, SHA-256, log continuity,
    CA identity. Exit 1 naming the bad file. Without the password, "OK" is never printed: only the structure
    can be checked, and a forger can recompute hashes."""
    from ..backupset.verify import verify_backup

    if password_file is None and not structure_only:
        raise InvalidArgument(ERROR_INVALID_PASSWORD, str(directory),
                              "authenticity cannot be checked without the set's password: give --password-file "
                              "(or --structure-only to check only sizes, hashes and logs)")
    password = _read_secret(password_file, "password") if password_file is not None else None
    rep = verify_backup(directory, password, allow_unauthenticated=allow_unauthenticated)
    if as_json:
        echo_json(rep.to_json())
    elif rep.ok and rep.manifest is not None:
        m = rep.manifest
        if rep.unauthenticated_allowed:
            click.echo(f"certsrv: verify-backup: WARNING: {rep.directory} has NO authenticator (written before "
                       "authenticated backup sets): anyone who could write the backup storage could have changed "
                       "it; accepted only because of --allow-unauthenticated", err=True)
        what = (f"{m.kind} backup of {m.ca_name!r} (identity {m.identity}), generations "
                f"{m.gen_low:08X}..{m.gen_high:08X}, {len(rep.checked)} files, {rep.records} log records")
        if rep.authenticated:
            click.echo(f"OK: {what}; authenticator verified")
        elif rep.unauthenticated_allowed:
            click.echo(f"UNAUTHENTICATED: {what}; the structure is intact but nothing proves who wrote it")
        else:
            click.echo(f"STRUCTURE OK, AUTHENTICITY NOT CHECKED: {what}; give --password-file to check the "
                       "set's authenticator")
    if not rep.ok:
        for p in rep.problems[1:]:
            # The same shape as every refusal: subject, HRESULT in hex with its symbolic name, message (issue 10).
            hr = f"0x{p.hresult:08X} {hresult_name(p.hresult)}"
            click.echo(f"certsrv: verify-backup: {rep.directory / p.path}: {hr}: {p.message}", err=True)
        first = rep.problems[0]
        more = f" (and {len(rep.problems) - 1} more problem(s))" if len(rep.problems) > 1 else ""
        raise CorruptData(first.hresult, str(rep.directory / first.path), first.message + more)
