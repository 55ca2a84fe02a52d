"""One scripted sequence of CA operations, made deterministic, to run on either engine (issue 12 equivalence).

What differs between two runs of the CA is only its clock and its serial numbers; both are replaced here
(``monkeypatch`` of the two names the authority calls: nothing of the storage, network or crypto is
touched). The CA key is RSA (PKCS#1 v1.5 signatures are deterministic), and the requests are made once
and given to both runs, so two runs of :func:`run` produce the same row images, byte for byte, and any
difference in log payloads or tables comes from the engine.
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from pycertsrv.ca.authority import Authority
from pycertsrv.ca.models import iso

FIXED = dt.datetime(2026, 11, 29, 10, 0, 0, tzinfo=dt.UTC)


def make_csrs(n: int) -> list[bytes]:
    """``n`` requests for host0..host{n-1}.example.com, made once for both runs."""
    out = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        name = f"host{i}.example.com"
        b = (x509.CertificateSigningRequestBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False))
        out.append(b.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM))
    return out


def deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeze the CA's clock and make its serials a seeded sequence (reset by each call), in every module of
    ``pycertsrv.ca`` that imported those names (the CA layer may move code between its modules)."""
    import importlib
    import pkgutil

    import pycertsrv.ca

    rng = random.Random(20261129)
    fakes = {"utcnow": lambda: FIXED, "utcnow_iso": lambda: (FIXED, iso(FIXED)),
             "random_serial": lambda: rng.getrandbits(158) | (1 << 157)}
    patched = set()
    for info in pkgutil.iter_modules(pycertsrv.ca.__path__, "pycertsrv.ca."):
        mod = importlib.import_module(info.name)
        for name, fake in fakes.items():
            if name in vars(mod) and not mod.__name__.endswith((".models", ".issuance")):
                monkeypatch.setattr(mod, name, fake)
                patched.add(name)
    assert patched == set(fakes), f"the CA no longer imports {set(fakes) - patched}: update this harness"


def run(a: Authority, csrs: list[bytes]) -> dict[str, Any]:
    """init is done; submit (pending), issue, deny, resubmit, revoke, unrevoke, publish CRLs."""
    ids = [a.submit(c, requester="alice").request_id for c in csrs]
    issued = [a.issue(i, by="officer") for i in ids[:6]]
    a.deny(ids[6], by="officer")
    a.deny(ids[7], by="officer")
    a.resubmit(ids[7], by="officer")
    a.revoke(issued[0].serial, "keyCompromise")
    a.revoke(issued[1].serial, "certificateHold")
    a.publish_crl()
    a.unrevoke(issued[1].serial)
    a.revoke(issued[2].serial, "superseded")
    a.publish_crl()
    return {"ids": ids, "serials": [i.serial for i in issued]}


def twin_home(src: Path, dest: Path) -> None:
    """A second home with the same key, certificate and configuration, and no database."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("db", "logs", "system", ".lock", "*.sock"))



def point_at(home: Path, url: str) -> None:
    """Set ``[store] url`` in ``home``'s certsrv.toml: the home's CA database is then ``url``."""
    from pycertsrv import config as config_mod

    cfg = config_mod.load(home)
    config_mod.save(home, cfg.model_copy(update={"store": cfg.store.model_copy(update={"url": url})}))
