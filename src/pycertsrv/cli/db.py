"""``certsrv db upgrade``: run the PostgreSQL schema's migrations (issue 12).

The service never runs DDL when it starts (a node on a read-only standby must still serve reads), so a
release with a newer schema is applied here, or by ``certsrv init --database``.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import E_INVALIDARG, InvalidArgument
from .common import echo_json, home_option, json_option
from .root import cli


@cli.group("db")
def db_group() -> None:
    """The CA database's schema (PostgreSQL)."""


@db_group.command("upgrade")
@home_option
@click.option("--database", "database", default=None, metavar="URL",
              help="The PostgreSQL database (default: the home's [store] url).")
@json_option
def upgrade_cmd(home: Path | None, database: str | None, as_json: bool) -> None:
    """Apply the schema migrations this release needs to the CA's PostgreSQL database."""
    from .. import config as config_mod
    from ..home import Home
    from ..store.postgres import describe
    from ..store.postgres.ddl import upgrade_schema

    url = database or config_mod.load(Home.at(home).root).store.url
    if not url:
        raise InvalidArgument(E_INVALIDARG, "db upgrade", "this home's database is SQLite (no [store] url), which "
                              "migrates itself when opened; give --database URL for a PostgreSQL database")
    found, now = upgrade_schema(url)
    if as_json:
        echo_json({"database": describe(url), "found": found, "version": now, "upgraded": found != now})
    elif found == now:
        click.echo(f"{describe(url)}: schema version {now}, nothing to do")
    else:
        click.echo(f"{describe(url)}: schema upgraded from version {found} to {now}")
