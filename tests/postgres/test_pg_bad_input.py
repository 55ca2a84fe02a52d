"""Bad input to the PostgreSQL engine (issue 12): one clear line with its HRESULT, and nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from pg_support import PASSWORD, PASSWORD_ROLE, PgCluster
from pycertsrv.errors import CertSrvError
from pycertsrv.store.postgres import PgStore

ONE_LINE = re.compile(r"^[^\n]+: 0x[0-9A-F]{8} [A-Z_]+: [^\n]+$")


def _refused(excinfo: pytest.ExceptionInfo[CertSrvError], hresult: int, *words: str) -> str:
    text = str(excinfo.value)
    assert ONE_LINE.match(text), text
    assert excinfo.value.hresult == hresult, text
    for w in words:
        assert w in text, text
    assert "right-password" not in text
    return text


@pytest.mark.parametrize("url,words", [
    ("mysql://db/ca", ["not a PostgreSQL URL"]),
    ("postgresql://ca:secret@db/ca", ["carries a password", "PGPASSWORD"]),
    ("postgresql://db/ca?password=secret", ["carries a password"]),
    ("postgresql://db/", ["names no database"]),
])
def test_bad_urls_are_refused_before_connecting(url: str, words: list[str]) -> None:
    with pytest.raises(CertSrvError) as e:
        PgStore.create(url, "CA")
    text = _refused(e, 0x80070057, *words)
    assert "secret" not in text


def test_wrong_password(pg_cluster: PgCluster, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = pg_url.replace(f"{pg_cluster.user}@", f"{PASSWORD_ROLE}@")
    monkeypatch.setenv("PGPASSWORD", "wrong-password")
    with pytest.raises(CertSrvError) as e:
        PgStore.create(url, "CA")
    _refused(e, 0x80070005, "refused the login", "pgpass")
    with psycopg.connect(pg_url) as c:  # nothing written
        assert c.execute("SELECT to_regclass('_meta')").fetchone()[0] is None
    monkeypatch.setenv("PGPASSWORD", PASSWORD)  # libpq's own source: the right one works
    PgStore.create(url, "CA").close()


def test_server_down(tmp_path: Path) -> None:
    url = f"postgresql:///ca?host={tmp_path}&port=1"
    with pytest.raises(CertSrvError) as e:
        PgStore.create(url, "CA")
    _refused(e, 0x800706BA, "cannot reach the PostgreSQL server", "start it")


def test_schema_of_another_version(pg_url: str) -> None:
    PgStore.create(pg_url, "CA").close()
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("INSERT INTO pg_schema_version VALUES (99, 0)")
        before = c.execute("SELECT epoch FROM writer_lease").fetchone()[0]
    with pytest.raises(CertSrvError) as e:
        PgStore.open(pg_url)
    _refused(e, 0x8007139F, "schema version 99", "release")
    with pytest.raises(CertSrvError) as e2:
        PgStore.create(pg_url, "CA")
    _refused(e2, 0x8007139F, "newer than this release")
    with psycopg.connect(pg_url) as c:  # the lease was not taken: nothing written
        assert c.execute("SELECT epoch FROM writer_lease").fetchone()[0] == before
