"""The PostgreSQL commands (issue 12): ``certsrv init --database``, ``certsrv db upgrade``, and their refusals."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pycertsrv import config as config_mod
from pycertsrv.errors import CertSrvError
from pycertsrv.store.postgres.ddl import MIGRATIONS, PG_SCHEMA_VERSION, VERSION_DDL

ONE_LINE = re.compile(r"^certsrv: [^\n]+: 0x[0-9A-F]{8} [A-Z_]+: [^\n]+\n$")


def certsrv(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pycertsrv.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_db_upgrade_creates_then_has_nothing_to_do(pg_url: str, tmp_path: Path) -> None:
    first = certsrv("db", "upgrade", "--database", pg_url)
    assert first.returncode == 0 and f"from version 0 to {PG_SCHEMA_VERSION}" in first.stdout, first.stderr
    second = certsrv("db", "upgrade", "--database", pg_url)
    assert second.returncode == 0 and "nothing to do" in second.stdout
    with psycopg.connect(pg_url) as c:
        assert c.execute("SELECT max(version) FROM pg_schema_version").fetchone()[0] == PG_SCHEMA_VERSION
    # An upgraded but empty database holds no CA: opening it says what to run.
    init = certsrv("init", "--name", "Upgraded CA", "--home", str(tmp_path / "home"), "--database", pg_url)
    assert init.returncode == 0, init.stderr
    cfg = config_mod.load(tmp_path / "home")
    assert cfg.store.url == pg_url
    assert not (tmp_path / "home" / "db").exists() or not any((tmp_path / "home" / "db").glob("*.db"))


def test_db_upgrade_on_a_sqlite_home_is_refused(tmp_path: Path) -> None:
    assert certsrv("init", "--name", "Lite CA", "--home", str(tmp_path / "home")).returncode == 0
    out = certsrv("db", "upgrade", "--home", str(tmp_path / "home"))
    assert out.returncode == 1 and ONE_LINE.match(out.stderr) and "SQLite" in out.stderr


def test_init_with_a_bad_database_writes_nothing(pg_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    for url, hresult in (("postgresql://ca:pw@db/ca", "0x80070057"),
                         (pg_url.rsplit("/", 1)[0] + "/no_such_database?" + pg_url.split("?")[1], "0x80070002"),
                         (f"postgresql:///ca?host={tmp_path}&port=1", "0x800706BA")):
        out = certsrv("init", "--name", "Bad CA", "--home", str(home), "--database", url)
        assert out.returncode == 1 and ONE_LINE.match(out.stderr), out.stderr
        assert hresult in out.stderr and "pw" not in out.stderr.replace("password", "")
        assert not home.exists() or not any(home.iterdir()), sorted(home.iterdir())


def test_an_older_schema_is_refused_at_open_and_upgraded_by_db_upgrade(pg_url: str, tmp_path: Path) -> None:
    """The service never runs DDL: a database at schema version 1 is refused with what to run; then
    ``certsrv db upgrade`` applies the rest and the CA opens, its rows intact."""
    from pycertsrv.store.postgres import PgStore

    with psycopg.connect(pg_url, autocommit=True) as c, c.transaction():  # what release 1 created
        c.execute(VERSION_DDL)
        for stmt in MIGRATIONS[1]:
            c.execute(stmt)
        c.execute("INSERT INTO pg_schema_version VALUES (1, 0)")
        c.execute("INSERT INTO _meta VALUES ('identity', '00112233445566778899aabbccddeeff'), ('name', 'Old CA'),"
                  " ('applied_lsn', '0'), ('schema_version', '1'), ('circular_logging', '0')")
        c.execute("INSERT INTO log_generation VALUES (1, 1, 0, NULL)")
    with pytest.raises(CertSrvError) as e:
        PgStore.open(pg_url)
    assert "schema version 1" in e.value.message and "certsrv db upgrade" in e.value.message
    up = certsrv("db", "upgrade", "--database", pg_url)
    assert up.returncode == 0 and f"from version 1 to {PG_SCHEMA_VERSION}" in up.stdout, up.stderr
    with PgStore.open(pg_url) as store:
        with store.transaction() as tx:
            tx.put("setting", {"name": "after", "value": "upgrade"})
        assert store.get("setting", "after") is not None and store.name == "Old CA"
