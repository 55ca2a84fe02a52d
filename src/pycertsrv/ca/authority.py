"""The certificate authority: one object per open home, owning the key, the CA certificate and the store.

Every state change follows the same shape: validate and sign first (nothing written), then write all
resulting rows in ONE ``store.transaction()`` (durable in the redo log before it returns). A refusal
therefore never changes the database. Methods are thread-safe; changes made concurrently are written
together by :class:`~pycertsrv.ca.commit.GroupCommitter` (one log record, one fsync, one SQLite commit).
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from .. import config as config_mod
from ..config import CASection, Config
from ..errors import CERTSRV_E_ADMIN_DENIED_REQUEST as E_DENIED
from ..errors import (
    CERTSRV_E_BAD_REQUESTSTATUS,
    CERTSRV_E_BAD_REQUESTSUBJECT,
    CERTSRV_E_INVALID_CA_CERTIFICATE,
    CERTSRV_E_NO_REQUEST,
    CERTSRV_E_PROPERTY_EMPTY,
    CRYPT_E_NO_MATCH,
    CRYPT_E_NOT_FOUND,
    E_INVALIDARG,
    ERROR_ALREADY_EXISTS,
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
from ..store import Store, StoreOptions, Transaction
from ..store.schema import DISP_DENIED, DISP_ERROR, DISP_ISSUED, DISP_PENDING, DISP_REVOKED
from . import crl as crl_mod
from .commit import GroupCommitter
from .issuance import IssuedCertificate, Issuer, random_serial, self_signed_root, subordinate_request
from .keys import (
    CAPrivateKey,
    generate_key,
    key_type_of,
    load_private_key,
    resolve_passphrase,
    same_public_key,
    save_private_key,
)
from .models import (
    DISPOSITION_NAMES,
    MSG_ISSUED,
    MSG_PENDING,
    CRLInfo,
    RequestInfo,
    iso,
    normalize_serial,
    parse_disposition,
    parse_iso,
    serial_hex,
    utcnow,
    utcnow_iso,
)
from .names import NamePlan, check_names
from .observe import CAObserver
from .paging import check_page
from .policy import ParsedRequest, choose_template, decide_pending, merge_attributes, parse_request
from .replace import move_old_home_aside
from .revocation import check_invalidity_date, check_revocable, check_unrevocable, revocation_reason
from .rights import admit, local_roles
from .templates import Template, get_template, templates_of

CA_REQUEST_FILE = "ca.csr"  # a subordinate CA's request to its parent, HOME/ca.csr
_HOME_ITEMS = ("certsrv.toml", "db", "logs", "system", "private", "publish", "staging", CA_REQUEST_FILE)
_LOCK_STRIPES = 64
_REQUEST_LIMIT = 1 << 20  # re-parsing stored requests: they passed the size check when submitted
_CERT_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)


def _officer(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "officer"


def _home_in_use(home: Home) -> bool:
    return any((home.root / item).exists() for item in _HOME_ITEMS if item not in ("publish", "staging"))


class Authority:
    """An open CA home: key, certificate, configuration and database.

    Use :meth:`init` to make a home and :meth:`open` to open one; ``close()`` (or ``with``) releases it.
    """

    def __init__(self, home: Home, cfg: Config, store: Store, key: CAPrivateKey,
                 certificate: x509.Certificate | None, chain: list[x509.Certificate]) -> None:
        self.home = home
        self.config = cfg
        self.store = store
        self.name = cfg.ca.name
        self._key = key
        self._cert = certificate
        self.chain = chain
        self._issuer = Issuer(key, certificate, cfg.policy) if certificate is not None else None
        self.templates = templates_of(cfg)
        self._local_roles: frozenset[str] | None = None
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._serial_lock = threading.Lock()
        self._reserved: set[str] = set()
        self._crl_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._commit = GroupCommitter(store)
        self.replaced: Path | None = None  # init --force: where the old home's items were moved
        self._observer: CAObserver | None = None

    def set_observer(self, observer: CAObserver | None) -> None:
        """Tell ``observer`` about resolved requests and commit batches (the service's metrics)."""
        self._observer = observer
        self._commit.observer = observer

    def _observed(self, info: RequestInfo, started: float) -> RequestInfo:
        if self._observer is not None:
            self._observer.request_resolved(DISPOSITION_NAMES.get(info.disposition, str(info.disposition)),
                                            info.template or "", time.monotonic() - started)
        return info

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def init(
        cls,
        home: Path | str | Home | None,
        name: str,
        *,
        key_type: str = "ec-p256",
        days: int = 3650,
        passphrase: bytes | None = None,
        force: bool = False,
        subordinate: bool = False,
        key: CAPrivateKey | None = None,
        passphrase_file: str | None = None,
        passphrase_env: str | None = None,
        policy: Mapping[str, Any] | None = None,
        confirm_name: str | None = None,
    ) -> Authority:
        """Make a CA home (key, root certificate or subordinate request, certsrv.toml, empty database).

        :param home: the home directory (created if missing).
        :param name: CA name, the CN of its certificate.
        :param key_type: ec-p256, ec-p384, rsa-2048, rsa-3072 or rsa-4096.
        :param days: validity of the root certificate.
        :param passphrase: encrypt the private key with this passphrase.
        :param force: replace an existing home (refused while another process holds it); its items are moved
            to ``HOME/.replaced-<UTC time>/`` (see ``replaced``), never deleted.
        :param subordinate: write HOME/ca.csr for a parent CA instead of a self-signed certificate.
        :param key: use this key instead of generating one (its type must match ``key_type``).
        :param passphrase_file: record where later opens read the passphrase from.
        :param passphrase_env: record the environment variable later opens read the passphrase from.
        :param policy: overrides for the ``[policy]`` section (e.g. ``{"mode": "pending"}``).
        :param confirm_name: with ``force``, the existing CA's name: required when its database holds issued
            certificates (:class:`~pycertsrv.ca.replace.ConfirmationRequired` otherwise).
        """
        h = home if isinstance(home, Home) else Home.at(home)
        if not 1 <= int(days) <= 36500:
            raise InvalidArgument(E_INVALIDARG, "init", f"--days must be 1..36500, got {days}")
        if key is None:
            key = generate_key(key_type)
        elif key_type_of(key) != key_type:
            raise InvalidArgument(E_INVALIDARG, "init", f"given key is {key_type_of(key)}, not {key_type}")
        try:
            cfg = Config(ca=CASection(name=name, key_type=key_type, validity_days=days, subordinate=subordinate,
                                      key_passphrase_file=passphrase_file, key_passphrase_env=passphrase_env))
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
        if h.root.exists() and _home_in_use(h):
            if not force:
                raise Conflict(ERROR_FILE_EXISTS, str(h.root), "a CA home exists here; use --force to replace it")
            if HomeLock(h.root).is_held():
                raise Conflict(ERROR_SHARING_VIOLATION, str(h.root),
                               f"home is in use ({HomeLock(h.root).holder() or 'unknown pid'}); stop it first")
            # Issue 9, finding 6: never destroys a CA; confirmed by name when it issued anything.
            replaced = move_old_home_aside(h, _HOME_ITEMS, confirm_name=confirm_name)
        make_dirs(h.root)
        os.chmod(h.root, 0o700)  # a private home (issue 9), whatever the umask or an earlier mode
        try:
            make_dirs(h.private_dir)
            save_private_key(h.root / cfg.ca.key_file, key, passphrase)
            if cert is not None:
                crl_mod.write_ca_certificate(h.root / cfg.ca.cert_file, cert)
            if csr is not None:
                atomic_write(h.root / CA_REQUEST_FILE, csr.public_bytes(Encoding.PEM))
            make_dirs(h.publish_dir, PUBLIC_DIR)
            config_mod.save(h.root, cfg)
            store = Store.create(h.root, name, cls._store_options(cfg))
        except BaseException:
            for item in _HOME_ITEMS:  # leave no half-made home that would need --force
                p = h.root / item
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.exists():
                    p.unlink()
            raise
        a = cls(h, cfg, store, key, cert, [])
        a.replaced = replaced
        return a

    @staticmethod
    def _store_options(cfg: Config) -> StoreOptions:
        return StoreOptions(log_size=cfg.store.log_size, checkpoint_records=cfg.store.checkpoint_records,
                            circular_logging=cfg.store.circular_logging, archiving=cfg.archive is not None)

    @classmethod
    def open(cls, home: Path | str | Home | None, *, passphrase: bytes | None = None) -> Authority:
        """Open a CA home: read the config, load the key (decrypting it), the CA certificate, and the store.

        :param home: the home directory (default ``$CERTSRV_HOME`` or ``~/.certsrv``).
        :param passphrase: the key passphrase; when None, the configured file/variable or
            ``CERTSRV_KEY_PASSPHRASE`` is used.
        """
        h = home if isinstance(home, Home) else Home.at(home)
        check_owner(h.root)  # one line naming the owner, not a PermissionError traceback (issue 9)
        cfg = config_mod.load(h.root)
        secure_home(h.root, group_traverse=cfg.service.socket_group is not None)  # homes made before issue 9
        if passphrase is None:
            pfile = cfg.ca.key_passphrase_file
            if pfile is not None and not Path(pfile).is_absolute():
                pfile = str(h.root / pfile)
            passphrase = resolve_passphrase(pfile, cfg.ca.key_passphrase_env)
        key = load_private_key(h.root / cfg.ca.key_file, passphrase)
        cert_path = h.root / cfg.ca.cert_file
        cert: x509.Certificate | None = None
        chain: list[x509.Certificate] = []
        if cert_path.exists():
            certs = _load_certificates(cert_path.read_bytes(), str(cert_path))
            cert, chain = certs[0], certs[1:]
            if not same_public_key(cert.public_key(), key.public_key()):
                raise CorruptData(CRYPT_E_NO_MATCH, str(cert_path), "CA certificate does not match the CA key")
        elif not cfg.ca.subordinate:
            raise NotFound(ERROR_FILE_NOT_FOUND, str(cert_path), "CA certificate is missing")
        store = Store.open(h.root, cls._store_options(cfg))
        return cls(h, cfg, store, key, cert, chain)

    def close(self) -> None:
        """Checkpoint and release the store and the home lock (idempotent)."""
        self.store.close()

    def __enter__(self) -> Authority:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ properties

    @property
    def certificate(self) -> x509.Certificate:
        """The CA certificate (a subordinate CA has none until ``install_certificate``)."""
        if self._cert is None:
            raise Conflict(CERTSRV_E_INVALID_CA_CERTIFICATE, self.name,
                           f"CA certificate is not installed yet: have {self.request_path} signed by the parent "
                           "CA and run certsrv install-cert")
        return self._cert

    @property
    def has_certificate(self) -> bool:
        """Whether the CA certificate is installed."""
        return self._cert is not None

    @property
    def key_type(self) -> str:
        """The CA key type (``ec-p256`` ...)."""
        return key_type_of(self._key)

    @property
    def request_path(self) -> Path:
        """Where a subordinate CA's own request is written."""
        return self.home.root / CA_REQUEST_FILE

    @property
    def certificate_path(self) -> Path:
        """The published CA certificate (PEM)."""
        return self.home.root / self.config.ca.cert_file

    def _require_issuer(self) -> Issuer:
        if self._issuer is None:
            _ = self.certificate  # raises the clear error
        assert self._issuer is not None
        return self._issuer

    def summary(self) -> dict[str, Any]:
        """Name, key type, certificate facts and row counts (for ``certsrv status``)."""
        cert = self._cert
        counts = {DISPOSITION_NAMES[d]: self.store.count("request", [("disposition", "=", d)])
                  for d in DISPOSITION_NAMES}
        last = self.store.max_value("crl", "number")
        return {
            "name": self.name,
            "home": str(self.home.root),
            "key_type": self.key_type,
            "subordinate": self.config.ca.subordinate,
            "certificate_installed": cert is not None,
            "subject": cert.subject.rfc4514_string() if cert else None,
            "serial": serial_hex(cert.serial_number) if cert else None,
            "not_before": iso(cert.not_valid_before_utc) if cert else None,
            "not_after": iso(cert.not_valid_after_utc) if cert else None,
            "policy_mode": self.config.policy.mode,
            "requests": counts,
            "crl_number": last,
            "applied_lsn": self.store.applied_lsn,
        }

    # ------------------------------------------------------------------ helpers

    @contextmanager
    def _row_lock(self, request_id: int) -> Iterator[None]:
        # Read-check-write of one request is serialised, so "issue twice" sees the first one's result.
        with self._locks[request_id % _LOCK_STRIPES]:
            yield

    def _row(self, request_id: int) -> dict[str, Any]:
        if isinstance(request_id, bool) or not isinstance(request_id, int) or request_id <= 0:
            raise InvalidArgument(E_INVALIDARG, "request", f"request id must be a positive integer: {request_id!r}")
        row = self.store.get("request", request_id)
        if row is None:
            raise NotFound(CERTSRV_E_NO_REQUEST, f"request {request_id}", "no such request in the database")
        return row

    def _row_by_serial(self, serial: str) -> dict[str, Any]:
        rows = self.store.select("request", [("serial", "=", serial)], limit=1)
        if not rows:
            raise NotFound(CRYPT_E_NOT_FOUND, f"serial {serial}", "no certificate with this serial in the database")
        return rows[0]

    def _reserve_serial(self) -> tuple[int, str]:
        """A random serial (and its database text) unused in the database and by in-flight issuances; held
        (so no other issuance can take it) until :meth:`_release_serial`, called once its row is written or
        the issuance failed."""
        reserved = self._reserved
        while True:
            n = random_serial()
            text = serial_hex(n)
            with self._serial_lock:
                if text in reserved:
                    continue
                reserved.add(text)
            # RFC 5280 §4.1.2.2: unique per CA. The database is checked, not only this process's memory.
            # Outside the lock: the reservation already keeps concurrent issuances off this serial, and a
            # query that lets go of the GIL while holding the lock would make every other issuer wait.
            if self.store.count("request", [("serial", "=", text)]):
                self._release_serial(text)
                continue
            return n, text

    def _release_serial(self, text: str) -> None:
        with self._serial_lock:
            self._reserved.discard(text)

    @staticmethod
    def _cert_columns(issued: IssuedCertificate, serial_text: str) -> dict[str, Any]:
        return {
            "serial": serial_text,
            "raw_cert": issued.der,
            "not_before": issued.not_before_iso,
            "not_after": issued.not_after_iso,
            "subject": issued.subject,
            "thumbprint": hashlib.sha256(issued.der).hexdigest(),
            "revoked_at": None,
            "revocation_reason": None,
            "invalidity_date": None,
        }

    @staticmethod
    def _put_extensions(tx: Transaction, request_id: int, issued: IssuedCertificate) -> None:
        # Extension rows, one per extension of the signed certificate (the AD CS Extension table):
        # flags 1 = critical; value = the extension's DER (extnValue contents).
        put = tx.put
        for oid, critical, value in issued.extensions:
            put("extension", {"request_id": request_id, "oid": oid, "flags": critical, "value": value})

    def _sign(self, req: ParsedRequest, template: Template, serial: int, names: NamePlan,
              now: dt.datetime | None = None) -> IssuedCertificate:
        if template.ca and not req.subject:
            raise InvalidArgument(CERTSRV_E_BAD_REQUESTSUBJECT, "submit", "a CA certificate needs a subject name")
        return self._require_issuer().build(req, template, serial, now or utcnow(), names)

    def caller_roles(self) -> frozenset[str]:
        """The roles of a direct (in-process) caller: this uid's on the home, as the service would grant
        them over its socket (the home's owner: Administrator and Operator)."""
        if self._local_roles is None:
            self._local_roles = local_roles(self.home.root, self.config)
        return self._local_roles

    # ------------------------------------------------------------------ requests

    def submit(self, csr: bytes, *, requester: str = "", template: str | None = None,
               attributes: Mapping[str, str] | None = None, roles: frozenset[str] | None = None) -> RequestInfo:
        """Take a PKCS#10 request (PEM or DER, sniffed); issue it at once or leave it pending per policy.

        Checked before anything is written or signed: the caller's roles against the template's
        (CERTSRV_E_TEMPLATE_DENIED), role-grant subjects (E_ACCESSDENIED), and every name
        (:mod:`pycertsrv.ca.names`, CERTSRV_E_BAD_REQUESTSUBJECT).

        :param csr: the request bytes (at most policy.max_request_bytes).
        :param requester: who submitted it (stored in the request row).
        :param template: certificate template (default: the CertificateTemplate attribute or the policy's).
        :param attributes: extra request attributes (``name: value``), as certreq -attrib.
        :param roles: the caller's roles (the service passes its principal's); None: a direct caller,
            whose roles are this uid's on the home (:meth:`caller_roles`).
        """
        started = time.monotonic()
        req = parse_request(csr, self.config.policy.max_request_bytes)
        attrs = merge_attributes(req, attributes)
        held = self.caller_roles() if roles is None else frozenset(roles)
        tmpl = choose_template(self.config.policy, template, attrs, self.templates)
        names = admit(self.config, req, tmpl, held, requester or "this caller", self._cert)
        now, now_text = utcnow_iso()
        row: dict[str, Any] = {
            "status_code": 0,
            "submitted_at": now_text,
            "requester": requester,
            "raw_request": req.der,
            "request_subject": req.subject,
            "template": tmpl.name,
        }
        if decide_pending(self.config.policy, tmpl):
            row.update(disposition=DISP_PENDING, disposition_message=MSG_PENDING)
            return self._observed(self._write_new(row, attrs, None), started)
        self._require_issuer()
        serial, serial_text = self._reserve_serial()
        try:
            issued = self._sign(req, tmpl, serial, names, now)
            row.update(disposition=DISP_ISSUED, disposition_message=MSG_ISSUED, resolved_at=now_text,
                       **self._cert_columns(issued, serial_text))
            return self._observed(self._write_new(row, attrs, issued), started)
        finally:
            self._release_serial(serial_text)

    def _write_new(self, row: dict[str, Any], attrs: Mapping[str, str],
                   issued: IssuedCertificate | None) -> RequestInfo:
        def write(tx: Transaction) -> None:
            rid = tx.next_id("request")
            row["request_id"] = rid
            tx.put("request", row)
            for name, value in attrs.items():
                tx.put("attribute", {"request_id": rid, "name": name, "value": value})
            if issued is not None:
                self._put_extensions(tx, rid, issued)

        self._commit.run(write)
        return RequestInfo.from_row(row)

    def _put(self, table: str, row: dict[str, Any]) -> None:
        self._commit.run(lambda tx: tx.put(table, row))

    def _resolve(self, request_id: int, allowed: tuple[int, ...], verb: str, issue: bool, message: str,
                 status: int = 0) -> RequestInfo:
        started = time.monotonic()
        with self._row_lock(request_id):
            row = self._row(request_id)
            disp = int(row["disposition"])
            if disp not in allowed:
                want = " or ".join(DISPOSITION_NAMES[d] for d in allowed)
                raise Conflict(CERTSRV_E_BAD_REQUESTSTATUS, f"request {request_id}",
                               f"cannot {verb}: request is {DISPOSITION_NAMES.get(disp, str(disp))}, not {want}")
            new = dict(row)
            new.update(resolved_at=iso(utcnow()), disposition_message=message, status_code=status)
            if not issue:
                new["disposition"] = DISP_DENIED
                self._put("request", new)
                return self._observed(RequestInfo.from_row(new), started)
            req = parse_request(bytes(row["raw_request"]), _REQUEST_LIMIT)  # re-checked: replay never re-decides
            tmpl = get_template(row["template"] or self.config.policy.default_template, self.templates)
            # The names are checked again under today's configuration; the requester's rights were checked
            # at submission, and the Officer issuing it is the decision a pending template waits for.
            names = check_names(req.subject_name, req.san, tmpl)
            serial, serial_text = self._reserve_serial()
            try:
                issued = self._sign(req, tmpl, serial, names)
                new.update(disposition=DISP_ISSUED, **self._cert_columns(issued, serial_text))

                def write(tx: Transaction) -> None:
                    tx.put("request", new)
                    self._put_extensions(tx, request_id, issued)

                self._commit.run(write)
            finally:
                self._release_serial(serial_text)
            return self._observed(RequestInfo.from_row(new), started)

    def issue(self, request_id: int, *, by: str | None = None) -> RequestInfo:
        """Issue a pending request (an officer's approval).

        :param request_id: the request.
        :param by: the officer, for the disposition message (default: the current user).
        """
        return self._resolve(request_id, (DISP_PENDING,), "issue", True, f"Issued by {_officer(by)}")

    def deny(self, request_id: int, *, by: str | None = None) -> RequestInfo:
        """Deny a pending request (status CERTSRV_E_ADMIN_DENIED_REQUEST, as AD CS records it).

        :param request_id: the request.
        :param by: the officer, for the disposition message.
        """
        return self._resolve(request_id, (DISP_PENDING,), "deny", False, f"Denied by {_officer(by)}", E_DENIED)

    def resubmit(self, request_id: int, *, by: str | None = None) -> RequestInfo:
        """Run a pending, denied or failed request through issuance again (the officer's resubmit issues it).

        :param request_id: the request.
        :param by: the officer, for the disposition message.
        """
        return self._resolve(request_id, (DISP_PENDING, DISP_DENIED, DISP_ERROR), "resubmit", True,
                             f"Resubmitted by {_officer(by)}")

    # ------------------------------------------------------------------ revocation

    def revoke(self, serial_hex: str | int, reason: str | int = "unspecified",
               invalidity_date: dt.datetime | None = None, *, by: str | None = None) -> RequestInfo:
        """Revoke an issued certificate (or make a held one final).

        :param serial_hex: the serial, hex in any case, colons allowed.
        :param reason: RFC 5280 reason name or code (7 and removeFromCRL refused).
        :param invalidity_date: when the key was known or suspected compromised (not in the future).
        :param by: the officer, for the disposition message.
        """
        serial = normalize_serial(serial_hex)
        code = revocation_reason(reason)
        now = utcnow()
        inv = check_invalidity_date(invalidity_date, now)
        rid = int(self._row_by_serial(serial)["request_id"])
        with self._row_lock(rid):
            row = self._row(rid)
            check_revocable(row, serial, code)
            new = dict(row)
            new.update(disposition=DISP_REVOKED, revocation_reason=code,
                       disposition_message=f"Revoked by {_officer(by)}")
            if row["revoked_at"] is None:
                new["revoked_at"] = iso(now)  # a hold made final keeps its original revocation date
            if inv is not None:
                new["invalidity_date"] = iso(inv)
            self._put("request", new)
        return RequestInfo.from_row(new)

    def unrevoke(self, serial_hex: str | int, *, by: str | None = None) -> RequestInfo:
        """Lift a certificateHold: the certificate is issued again and leaves the next CRL.

        :param serial_hex: the serial.
        :param by: the officer, for the disposition message.
        """
        serial = normalize_serial(serial_hex)
        rid = int(self._row_by_serial(serial)["request_id"])
        with self._row_lock(rid):
            row = self._row(rid)
            check_unrevocable(row, serial)
            new = dict(row)
            new.update(disposition=DISP_ISSUED, revoked_at=None, revocation_reason=None, invalidity_date=None,
                       disposition_message=f"Unrevoked by {_officer(by)}")
            self._put("request", new)
        return RequestInfo.from_row(new)

    # ------------------------------------------------------------------ CRLs

    def publish_crl(self) -> CRLInfo:
        """Build and sign a full CRL of every revoked certificate, store it, and write publish/ca.crl(.pem)."""
        issuer = self._require_issuer()
        with self._crl_lock:
            now = utcnow()
            number = int(self.store.max_value("crl", "number") or 0) + 1
            # RFC 5280 §3.3: entries stay until a CRL issued after the certificate's expiry carried them;
            # we keep every revoked certificate (no removal of expired entries).
            rows = self.store.select("request", [("disposition", "=", DISP_REVOKED)], order_by=["request_id"])
            next_update = now + dt.timedelta(hours=self.config.crl.validity_hours)
            crl = crl_mod.build_crl(self._key, issuer.cert, rows, number, now, next_update)
            der = crl.public_bytes(Encoding.DER)
            self._put("crl", {"number": number, "this_update": iso(now), "next_update": iso(next_update),
                              "raw": der, "entries": len(rows)})
            # Files are written after the row is durable: a crash in between is repaired by the next publish.
            der_path, pem_path = crl_mod.write_published(self.home.publish_dir, crl)
        return CRLInfo(number, iso(now) or "", iso(next_update) or "", len(rows), der, der_path, pem_path)

    def latest_crl(self) -> CRLInfo | None:
        """The last CRL in the database, if any."""
        rows = self.store.select("crl", order_by=["-number"], limit=1)
        if not rows:
            return None
        r = rows[0]
        return CRLInfo(int(r["number"]), r["this_update"], r["next_update"], int(r["entries"]), bytes(r["raw"]),
                       self.home.publish_dir / crl_mod.CRL_DER, self.home.publish_dir / crl_mod.CRL_PEM)

    def crl_due(self, now: dt.datetime | None = None) -> bool:
        """Whether a CRL should be published now: none yet, its period (crl.period_hours) has passed,
        it is past nextUpdate, or the published files are missing."""
        if self._cert is None:
            return False
        last = self.latest_crl()
        if last is None:
            return True
        now = now or utcnow()
        this_update = parse_iso(last.this_update)
        next_update = parse_iso(last.next_update)
        assert this_update is not None and next_update is not None
        if now >= this_update + dt.timedelta(hours=self.config.crl.period_hours) or now >= next_update:
            return True
        return not all(p.exists() for p in (last.der_path, last.pem_path) if p is not None)

    # ------------------------------------------------------------------ reading

    def view(self, *, disposition: str | int | None = None, serial: str | int | None = None,
             request_id: int | None = None, expired: bool | None = None, limit: int | None = 100,
             offset: int = 0) -> list[RequestInfo]:
        """Requests and certificates, oldest first, filtered.

        :param disposition: pending, issued, revoked, error, denied (or the AD CS number).
        :param serial: one certificate by serial.
        :param request_id: one request.
        :param expired: True: only expired certificates; False: only unexpired ones.
        :param limit: at most this many rows, 1..ca.paging.PAGE_MAX (None: all, for the library's own use).
        :param offset: skip this many rows first.
        """
        where: list[tuple[str, str, Any]] = []
        if disposition is not None:
            where.append(("disposition", "=", parse_disposition(disposition)))
        if serial is not None:
            where.append(("serial", "=", normalize_serial(serial)))
        if request_id is not None:
            where.append(("request_id", "=", int(request_id)))
        if expired is not None:
            where.append(("not_after", "<" if expired else ">=", iso(utcnow())))
        if limit is not None:
            check_page(limit, offset)  # ca.paging: the one rule, the same through the service
        elif offset < 0:
            raise InvalidArgument(E_INVALIDARG, "view", "offset must not be negative")
        rows = self.store.select("request", where, order_by=["request_id"], limit=limit, offset=offset)
        return [RequestInfo.from_row(r) for r in rows]

    def get_request(self, request_id: int) -> RequestInfo:
        """One request row, or NotFound (CERTSRV_E_NO_REQUEST)."""
        return RequestInfo.from_row(self._row(request_id))

    def request_attributes(self, request_id: int) -> dict[str, str]:
        """The stored attributes of a request."""
        self._row(request_id)
        return {r["name"]: r["value"] for r in self.store.select("attribute", [("request_id", "=", request_id)])}

    def certificate_extensions(self, request_id: int) -> list[dict[str, Any]]:
        """The stored extensions of an issued certificate (oid, flags 1 = critical, DER value)."""
        self._row(request_id)
        return self.store.select("extension", [("request_id", "=", request_id)], order_by=["oid"])

    def get_certificate(self, serial_or_request_id: str | int) -> bytes:
        """The DER certificate of a serial (str) or of a request id (int).

        :param serial_or_request_id: hex serial (any case, colons allowed) or the request id as int.
        """
        if isinstance(serial_or_request_id, int) and not isinstance(serial_or_request_id, bool):
            row = self._row(serial_or_request_id)
            what = f"request {serial_or_request_id}"
        else:
            serial = normalize_serial(serial_or_request_id)
            row = self._row_by_serial(serial)
            what = f"serial {serial}"
        if row["raw_cert"] is None:
            state = DISPOSITION_NAMES.get(int(row["disposition"]), str(row["disposition"]))
            raise NotFound(CERTSRV_E_PROPERTY_EMPTY, what, f"no certificate: the request is {state}")
        return bytes(row["raw_cert"])

    def dynamic_files(self) -> list[Path]:
        """The published ("dynamic") files in HOME/publish: CA certificate (PEM, DER) and the CRL (DER, PEM)."""
        names = [self.certificate_path, self.home.publish_dir / crl_mod.CA_DER,
                 self.home.publish_dir / crl_mod.CRL_DER, self.home.publish_dir / crl_mod.CRL_PEM]
        return [p for p in dict.fromkeys(names) if p.is_file()]

    # ------------------------------------------------------------------ subordinate CA

    def install_certificate(self, data: bytes, *, force: bool = False) -> x509.Certificate:
        """Install the parent-signed certificate of a subordinate CA (PEM with optional chain, or DER).

        Checked: it matches our key, it is a CA certificate with keyCertSign, it is valid now, and when the
        parent's certificate follows it, the parent's signature verifies.

        :param data: the certificate, optionally followed by its parents (PEM).
        :param force: replace an installed certificate.
        """
        with self._state_lock:
            if self._cert is not None and not force:
                raise Conflict(ERROR_ALREADY_EXISTS, "install-cert",
                               f"a CA certificate is installed already ({self.certificate_path}); use --force")
            certs = _load_certificates(data, "install-cert")
            mine = [c for c in certs if same_public_key(c.public_key(), self._key.public_key())]
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
            crl_mod.write_ca_certificate(self.certificate_path, cert, chain)
            self._cert = cert
            self.chain = chain
            self._issuer = Issuer(self._key, cert, self.config.policy)
            return cert


def _load_certificates(data: bytes, subject: str) -> list[x509.Certificate]:
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


__all__ = ["CA_REQUEST_FILE", "Authority"]
