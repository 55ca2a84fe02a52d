"""Fixtures for the CA tests: keys generated once per session (RSA-3072/4096 keygen is slow), request
builders, a fresh CA per test, and a snapshot of the whole database to prove refusals change nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import support
from pycertsrv.ca import Authority
from pycertsrv.ca.keys import generate_key
from pycertsrv.store import TABLES

KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
_KEYS: dict[str, Any] = {}


@pytest.fixture(scope="session")
def ca_key() -> Callable[[str], Any]:
    """``ca_key(key_type)``: a CA key of that type, generated once per session."""

    def get(key_type: str) -> Any:
        if key_type not in _KEYS:
            _KEYS[key_type] = generate_key(key_type)
        return _KEYS[key_type]

    return get


@pytest.fixture(scope="session")
def req_keys() -> dict[str, Any]:
    """Requester keys: ECDSA P-256 and RSA-2048."""
    return {"ec": ec.generate_private_key(ec.SECP256R1()), "rsa": rsa.generate_private_key(65537, 2048)}


def build_csr(key: Any, cn: str | None = "www.example.com", sans: list[str] | None = None, **kw: Any) -> bytes:
    """:func:`support.make_csr` with the requester's key first, as the CA tests call it."""
    return support.make_csr(cn, sans, key=key, **kw)


@pytest.fixture()
def make_csr() -> Callable[..., bytes]:
    """The :func:`build_csr` helper."""
    return build_csr


@pytest.fixture()
def new_ca(tmp_path: Path, ca_key: Callable[[str], Any]) -> Iterator[Callable[..., Authority]]:
    """``new_ca(key_type="ec-p256", name=..., **init_kwargs)``: a fresh CA in tmp_path; closed at teardown."""
    made: list[Authority] = []

    def make(key_type: str = "ec-p256", name: str | None = None, sub: str | None = None, **kw: Any) -> Authority:
        home = tmp_path / (sub or f"home{len(made)}")
        kw.setdefault("key", ca_key(key_type))
        a = Authority.init(home, name or f"Test {key_type} CA", key_type=key_type, **kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


@pytest.fixture()
def ca(new_ca: Callable[..., Authority]) -> Authority:
    """A fresh ECDSA P-256 CA issuing at once."""
    return new_ca()


def db_state(a: Authority) -> tuple[int, dict[str, list[dict[str, Any]]]]:
    """Everything in the database: the applied LSN and every row of every table, re-read from SQLite."""
    rows = {}
    for name, t in TABLES.items():
        rows[name] = a.store.select(name, order_by=list(t.key))
    return a.store.applied_lsn, rows


@pytest.fixture()
def snapshot() -> Callable[[Authority], tuple[int, dict[str, list[dict[str, Any]]]]]:
    """The :func:`db_state` helper."""
    return db_state


def openssl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real ``openssl`` binary."""
    return subprocess.run(["openssl", *args], capture_output=True, text=True, check=check, timeout=60)


@pytest.fixture()
def run_openssl() -> Callable[..., subprocess.CompletedProcess[str]]:
    """The :func:`openssl` helper."""
    return openssl
