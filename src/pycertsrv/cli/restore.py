"""``certsrv restore``: restore a full backup set and its incrementals into a stopped home (spec §3.3, §5.2).

Parses, calls :func:`pycertsrv.backup.restore.plan_restore` / :func:`run_restore`, renders.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..errors import E_INVALIDARG
from .common import echo_json, home_option, json_option, read_secret_file
from .root import cli


def _read_secret(path: Path | None, what: str) -> bytes | None:
    return None if path is None else read_secret_file(path, what, empty_hresult=E_INVALIDARG)


@cli.command("restore")
@click.argument("directories", nargs=-1, required=True, type=click.Path(path_type=Path))
@home_option
@click.option("--database-only", is_flag=True, help="Restore the database only (keep the home's key).")
@click.option("--key-only", is_flag=True, help="Restore the CA key and certificate only.")
@click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File whose first line is the sets' password (authenticates every set, opens the PKCS#12).")
@click.option("--allow-unauthenticated", is_flag=True,
              help="Accept sets written before sets were authenticated (with a warning).")
@click.option("--key-passphrase-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Encrypt the restored CA key with the passphrase in this file.")
@click.option("--force", is_flag=True, help="Restore into a home that already has a database or key.")
@click.option("--until", "until", default=None, metavar="TIME",
              help="Point in time (ISO 8601, UTC when no zone): replay stops before later records.")
@click.option("--archive", "archive", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Continuous archive: replay its generations after the sets (to --until or its end).")
@click.option("--restore-config", is_flag=True, help="Replace an existing home's certsrv.toml with the set's.")
@click.option("--database", "database", default=None, metavar="URL",
              help="Restore the database into PostgreSQL (a libpq URI; recorded as [store] url), from a set of "
                   "either engine; --force replaces a CA database already there. With --key-only: make this home "
                   "another node of the CA whose database is at URL (its key and certificate; the database is "
                   "left as it is and must be that CA's).")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@json_option
def restore_cmd(directories: tuple[Path, ...], home: Path | None, database_only: bool, key_only: bool,
                password_file: Path | None, allow_unauthenticated: bool, key_passphrase_file: Path | None,
                force: bool, until: str | None, restore_config: bool, archive: Path | None, database: str | None,
                dry_run: bool, as_json: bool) -> None:
    """Restore DIR (the full set) and any incremental DIRs into a stopped CA home.

    A second node of a CA on PostgreSQL (issue 14): restore KEYSET --key-only --home NODE2 --database URL."""
    from ..backupset.restore_plan import plan_restore
    from ..backupset.restore_run import run_restore

    if database:
        from ..store.postgres import check_url

        check_url(database)  # a bad URL is refused before anything is placed
    password = _read_secret(password_file, "password")
    key_passphrase = _read_secret(key_passphrase_file, "key passphrase")
    if password is None and sys.stdin.isatty():
        password = click.prompt("Password of the backup sets", hide_input=True).encode()
    plan = plan_restore(list(directories), home=home, database_only=database_only, key_only=key_only, force=force,
                        until=until, restore_config=restore_config, password=password,
                        allow_unauthenticated=allow_unauthenticated, archive=archive)
    for w in plan.warnings:
        click.echo(f"certsrv: restore: WARNING: {w}", err=True)
    if dry_run:
        if as_json:
            echo_json({"dry_run": True, "plan": plan.to_json()})
        else:
            for line in plan.describe():
                click.echo(line)
        return
    if key_only and database:
        _new_node(plan, database, password, key_passphrase, as_json)
        return
    if not as_json:
        for line in plan.describe():
            click.echo(line)
    result = run_restore(plan, password=password, key_passphrase=key_passphrase,
                         progress=None if as_json else click.echo)
    if database and result.registration is not None:
        from ..backup.restore_postgres import describe_failure, finish_into_postgres
        from ..errors import CertSrvError
        from ..store.postgres import describe

        try:
            rep = finish_into_postgres(plan.home.root, database, force=force)
        except CertSrvError as e:
            raise describe_failure(e, plan.home.root) from None
        if as_json:
            echo_json({**result.to_json(), "registration": None, "database": database, "recovery": rep.to_json(),
                       "next": None})
        else:
            click.echo(rep.summary())
            click.echo(f"Database restored into PostgreSQL ({describe(database)}); [store] url set in "
                       f"{plan.home.config}; start the CA (certsrv serve).")
        return
    if as_json:
        echo_json(result.to_json())
    elif result.registration is not None:
        click.echo(f"Restore registered in {plan.home.restore_registration}; start the CA (certsrv serve) "
                   "to complete the database restore.")
    else:
        click.echo("certsrv: restore command completed successfully.")


def _new_node(plan: Any, url: str, password: bytes | None, key_passphrase: bytes | None, as_json: bool) -> None:
    """Issue 14: the key set's key and certificate into a new home that uses the CA's PostgreSQL database; refused
    (nothing written) unless what the database holds was signed by that key."""
    from ..backup.restore_postgres import check_node_database, point_home_at
    from ..backupset.restore_plan import load_p12
    from ..backupset.restore_run import run_restore

    assert plan.p12 is not None
    _, cert, _ = load_p12(plan.p12, password, plan.expected.get(plan.p12))
    found = check_node_database(url, cert)  # before anything is written
    result = run_restore(plan, password=password, key_passphrase=key_passphrase,
                         progress=None if as_json else click.echo)
    if not plan.home.config.is_file() and plan.config_text is not None:
        from ..fsutil import atomic_write

        atomic_write(plan.home.config, plan.config_text.encode())
    config = point_home_at(plan.home.root, url)
    if as_json:
        echo_json({**result.to_json(), "database": found["database"], "checked": found, "config": str(config)})
        return
    what = ", ".join(x for x in (f"CRL #{found['crl']}" if found["crl"] is not None else "",
                                 f"certificate {found['certificate']}" if found["certificate"] else "") if x)
    click.echo(f"{found['database']} holds the CA of this key ({what or 'nothing signed yet to compare'}); "
               f"[store] url set in {config}.")
    click.echo(f"Node home ready: start it with `certsrv serve --home {plan.home.root}` (a standby while another "
               "node holds the writer lease; it takes over when that lease expires).")
