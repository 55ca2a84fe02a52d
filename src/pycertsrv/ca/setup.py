"""Making and opening a CA home's signing material: the key, the CA certificate (with its chain) and the
configuration. :class:`~pycertsrv.ca.authority.Authority` calls these for ``init``, ``open`` and
``install_certificate``; a worker process of the service (issue 15) reads the same material without the
store.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from .. import config as config_mod
from ..config import CASection, Config
from ..errors import (
    CERTSRV_E_INVALID_CA_CERTIFICATE,
    CRYPT_E_NO_MATCH,
    E_INVALIDARG,
    ERROR_FILE_EXISTS,
    ERROR_FILE_NOT_FOUND,
    ERROR_INVALID_DATA,
    ERROR_SHARING_VIOLATION,
    NTE_BAD_SIGNATURE,
    Conflict,
    CorruptData,
    InvalidArgument,
    NotFound,
)
from ..fsutil import PUBLIC_DIR, HomeLock, atomic_write, make_dirs
from ..home import Home, check_owner, secure_home
from ..store import CAStore, StoreOptions, create_store
from ..store.postgres import check_url as check_database_url
from . import crl as crl_mod
from .issuance import self_signed_root, subordinate_request
from .keys import (
    CAPrivateKey,
    configured_passphrase,
    generate_key,
    key_type_of,
    load_private_key,
    same_public_key,
    save_private_key,
)
from .models import iso, utcnow
from .replace import move_old_home_aside

_CERT_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


@dataclass
class MadeHome:
    """What ``create_home`` made: the home, its configuration, the open store, key and certificate."""

    home: Home
    config: Config
    store: CAStore
    key: CAPrivateKey
    certificate: x509.Certificate | None
    replaced: Path | None


def _home_in_use(home: Home, items: tuple[str, ...]) -> bool:
    return any((home.root / item).exists() for item in items if item not in ("publish", "staging"))


def create_home(home: Path | str | Home | None, name: str, *, key_type: str, days: int, passphrase: bytes | None,
                force: bool, subordinate: bool, key: CAPrivateKey | None, passphrase_file: str | None,
                passphrase_env: str | None, policy: Mapping[str, Any] | None, confirm_name: str | None,
                items: tuple[str, ...], request_file: str,
                options: Callable[[Config], StoreOptions], database: str | None = None) -> MadeHome:
    """The body of :meth:`Authority.init` (see there for the parameters); ``items`` are the home's entries
    (moved aside by ``force``), ``request_file`` a subordinate CA's request, ``options`` the store's."""
    h = home if isinstance(home, Home) else Home.at(home)
    if database:
        check_database_url(database)  # one line naming what is wrong, before anything is made
    if not 1 <= int(days) <= 36500:
        raise InvalidArgument(E_INVALIDARG, "init", f"--days must be 1..36500, got {days}")
    if key is None:
        key = generate_key(key_type)
    elif key_type_of(key) != key_type:
        raise InvalidArgument(E_INVALIDARG, "init", f"given key is {key_type_of(key)}, not {key_type}")
    try:
        cfg = Config(ca=CASection(name=name, key_type=key_type, validity_days=days, subordinate=subordinate,
                                  key_passphrase_file=passphrase_file, key_passphrase_env=passphrase_env),
                     store=config_mod.StoreSection(url=database or None))  # issue 12: [store] url
        if policy:
            cfg = cfg.model_copy(update={"policy": cfg.policy.model_validate(
                {**cfg.policy.model_dump(), **dict(policy)})})
    except ValueError as e:
        raise InvalidArgument(E_INVALIDARG, "init", str(e).splitlines()[0]) from None
    now = utcnow()
    cert = None if subordinate else self_signed_root(key, name, days, now)
    csr = subordinate_request(key, name) if subordinate else None
    if h.root.exists() and not h.root.is_dir():
        raise Conflict(ERROR_FILE_EXISTS, str(h.root), "exists and is not a directory")
    check_owner(h.root)
    replaced: Path | None = None
    if h.root.exists() and _home_in_use(h, items):
        if not force:
            raise Conflict(ERROR_FILE_EXISTS, str(h.root), "a CA home exists here; use --force to replace it")
        if HomeLock(h.root).is_held():
            raise Conflict(ERROR_SHARING_VIOLATION, str(h.root),
                           f"home is in use ({HomeLock(h.root).holder() or 'unknown pid'}); stop it first")
        # Issue 9, finding 6: never destroys a CA; confirmed by name when it issued anything.
        replaced = move_old_home_aside(h, items, confirm_name=confirm_name)
    make_dirs(h.root)
    os.chmod(h.root, 0o700)  # a private home (issue 9), whatever the umask or an earlier mode
    try:
        make_dirs(h.private_dir)
        save_private_key(h.root / cfg.ca.key_file, key, passphrase)
        if cert is not None:
            crl_mod.write_ca_certificate(h.root / cfg.ca.cert_file, cert)
        if csr is not None:
            atomic_write(h.root / request_file, csr.public_bytes(Encoding.PEM))
        make_dirs(h.publish_dir, PUBLIC_DIR)
        config_mod.save(h.root, cfg)
        store = create_store(h.root, name, options(cfg), cfg.store.url)
    except BaseException:
        for item in items:  # leave no half-made home that would need --force
            p = h.root / item
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
        raise
    return MadeHome(h, cfg, store, key, cert, replaced)


def load_material(h: Home, passphrase: bytes | None) -> tuple[Config, CAPrivateKey, x509.Certificate | None,
                                                                list[x509.Certificate]]:
    """The configuration, the decrypted key, the CA certificate and its chain of the home ``h``
    (the body of :meth:`Authority.open` before the store).

    :param passphrase: the key passphrase; None: the configured file or variable, or
        ``CERTSRV_KEY_PASSPHRASE``.
    """
    check_owner(h.root)  # one line naming the owner, not a PermissionError traceback (issue 9)
    cfg = config_mod.load(h.root)
    secure_home(h.root, group_traverse=cfg.service.socket_group is not None)  # homes made before issue 9
    if passphrase is None:
        passphrase = configured_passphrase(h.root, cfg.ca.key_passphrase_file, cfg.ca.key_passphrase_env)
    key = load_private_key(h.root / cfg.ca.key_file, passphrase)
    cert_path = h.root / cfg.ca.cert_file
    cert: x509.Certificate | None = None
    chain: list[x509.Certificate] = []
    if cert_path.exists():
        certs = load_certificates(cert_path.read_bytes(), str(cert_path))
        cert, chain = certs[0], certs[1:]
        if not same_public_key(cert.public_key(), key.public_key()):
            raise CorruptData(CRYPT_E_NO_MATCH, str(cert_path), "CA certificate does not match the CA key")
    elif not cfg.ca.subordinate:
        raise NotFound(ERROR_FILE_NOT_FOUND, str(cert_path), "CA certificate is missing")
    return cfg, key, cert, chain


def check_ca_certificate(data: bytes, key: CAPrivateKey) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The checks of :meth:`Authority.install_certificate`: returns the certificate of ``key`` and its chain."""
    certs = load_certificates(data, "install-cert")
    mine = [c for c in certs if same_public_key(c.public_key(), key.public_key())]
    if not mine:
        raise InvalidArgument(CRYPT_E_NO_MATCH, "install-cert",
                              "certificate does not match this CA's key (signed for another request?)")
    cert = mine[0]
    chain = [c for c in certs if c is not cert]
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        is_ca = bc.ca and ku.key_cert_sign
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise InvalidArgument(CERTSRV_E_INVALID_CA_CERTIFICATE, "install-cert",
                              f"{cert.subject.rfc4514_string()} is not a CA certificate "
                              "(needs basicConstraints cA and keyUsage keyCertSign)")
    now = utcnow()
    if not cert.not_valid_before_utc <= now + dt.timedelta(minutes=10) or cert.not_valid_after_utc <= now:
        raise InvalidArgument(CERTSRV_E_INVALID_CA_CERTIFICATE, "install-cert",
                              f"certificate is not valid now ({iso(cert.not_valid_before_utc)} .. "
                              f"{iso(cert.not_valid_after_utc)})")
    parents = [c for c in chain if c.subject == cert.issuer]
    if parents:
        try:
            cert.verify_directly_issued_by(parents[0])
        except (InvalidSignature, ValueError, TypeError) as e:
            raise InvalidArgument(NTE_BAD_SIGNATURE, "install-cert",
                                  f"certificate is not signed by {parents[0].subject.rfc4514_string()}: {e}"
                                  ) from None
    return cert, chain


def load_certificates(data: bytes, subject: str) -> list[x509.Certificate]:
    """Certificates from PEM (one or more blocks) or DER."""
    try:
        if data.lstrip()[:1] == b"-":
            blocks = _CERT_PEM.findall(data)
            if not blocks:
                raise ValueError("no CERTIFICATE block")
            return [x509.load_pem_x509_certificate(b) for b in blocks]
        return [x509.load_der_x509_certificate(data)]
    except ValueError as e:
        raise InvalidArgument(ERROR_INVALID_DATA, subject, f"not an X.509 certificate: {e}") from None




__all__ = ["MadeHome", "check_ca_certificate", "create_home", "load_certificates", "load_material"]
