"""The certificate authority: one object per open home, owning the key, the CA certificate and the store.

Every state change follows the same shape: validate and sign first (nothing written), then write all
resulting rows in ONE ``store.transaction()`` (durable in the redo log before it returns). A refusal
therefore never changes the database. Methods are thread-safe; changes made concurrently are written
together by :class:`~pycertsrv.ca.commit.GroupCommitter` (one log record, one fsync, one SQLite commit).
"""

from __future__ import annotations

import datetime as dt
import getpass
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from ..config import Config
from ..errors import CERTSRV_E_ADMIN_DENIED_REQUEST as E_DENIED
from ..errors import (
    CERTSRV_E_BAD_REQUESTSTATUS,
    CERTSRV_E_BAD_REQUESTSUBJECT,
    CERTSRV_E_INVALID_CA_CERTIFICATE,
    ERROR_ALREADY_EXISTS,
    CertSrvError,
    Conflict,
    InvalidArgument,
)
from ..home import Home, Layout
from ..requestkey import REQUEST_KEY, checked_key, keyed_attributes
from ..store import CAStore, StoreOptions, Transaction, engine_facts, open_store
from ..store.schema import DISP_DENIED, DISP_ERROR, DISP_ISSUED, DISP_PENDING, DISP_REVOKED
from . import crl as crl_mod
from .commit import GroupCommitter
from .enroll import SERIAL_TRIES, PreparedRequest, cert_columns, no_unused_serial, prepare_submission
from .issuance import IssuedCertificate, Issuer, random_serial
from .keyclaims import KeyClaims, commit_keyed, key_answer
from .keys import (
    CAPrivateKey,
    key_type_of,
)
from .models import (
    DISPOSITION_NAMES,
    CRLInfo,
    RequestInfo,
    iso,
    normalize_serial,
    parse_iso,
    serial_hex,
    utcnow,
)
from .names import NamePlan, check_names
from .observe import CAObserver
from .policy import ParsedRequest, decode_request, parse_request
from .reading import RequestReader
from .revocation import check_invalidity_date, check_revocable, check_unrevocable, revocation_reason
from .rights import local_roles
from .serials import SerialBook
from .setup import check_ca_certificate, create_home, load_material
from .templates import Template, get_template, templates_of

CA_REQUEST_FILE = "ca.csr"  # a subordinate CA's request to its parent, HOME/ca.csr
_HOME_ITEMS = (Layout.CONFIG, Layout.DB, Layout.LOGS, Layout.SYSTEM, Layout.PRIVATE, Layout.PUBLISH, Layout.STAGING,
               CA_REQUEST_FILE)
_LOCK_STRIPES = 64
_REQUEST_LIMIT = 1 << 20  # re-parsing stored requests: they passed the size check when submitted


def _officer(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "officer"


class Authority(RequestReader):
    """An open CA home: key, certificate, configuration and database.

    Use :meth:`init` to make a home and :meth:`open` to open one; ``close()`` (or ``with``) releases it.
    """

    def __init__(self, home: Home, cfg: Config, store: CAStore, key: CAPrivateKey,
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
        self._serials = SerialBook(store)  # RFC 5280 §4.1.2.2: held in flight, checked against the database
        self._keys = KeyClaims()  # request keys of commits in flight (issue 14, ca.keyclaims)
        self._crl_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._commit = GroupCommitter(store)
        self.replaced: Path | None = None  # init --force: where the old home's items were moved
        self._observer: CAObserver | None = None
        self._request_text = str(home.root / CA_REQUEST_FILE)  # named in a refusal; computed once, not per request

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
        database: str | None = None,
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
        :param database: a PostgreSQL URL (issue 12): the database goes there (``[store] url``), not in the home.
        """
        made = create_home(home, name, key_type=key_type, days=days, passphrase=passphrase, force=force,
                           subordinate=subordinate, key=key, passphrase_file=passphrase_file,
                           passphrase_env=passphrase_env, policy=policy, confirm_name=confirm_name,
                           items=_HOME_ITEMS, request_file=CA_REQUEST_FILE, options=cls._store_options,
                           database=database)
        a = cls(made.home, made.config, made.store, made.key, made.certificate, [])
        a.replaced = made.replaced
        return a

    @staticmethod
    def _store_options(cfg: Config) -> StoreOptions:
        return StoreOptions(log_size=cfg.store.log_size, checkpoint_records=cfg.store.checkpoint_records,
                            circular_logging=cfg.store.circular_logging, archiving=cfg.archive is not None,
                            lease_ttl=cfg.store.lease_ttl)

    @classmethod
    def open(cls, home: Path | str | Home | None, *, passphrase: bytes | None = None,
             standby: bool = False) -> Authority:
        """Open a CA home: read the config, load the key (decrypting it), the CA certificate, and the store.

        :param home: the home directory (default ``$CERTSRV_HOME`` or ``~/.certsrv``).
        :param passphrase: the key passphrase; when None, the configured file/variable or
            ``CERTSRV_KEY_PASSPHRASE`` is used.
        :param standby: PostgreSQL (issue 14, ``certsrv serve``): while another node holds the writer lease,
            open as a standby (reads; writes refused naming the writer) instead of refusing with ERROR_BUSY.
        """
        h = home if isinstance(home, Home) else Home.at(home)
        cfg, key, cert, chain = load_material(h, passphrase)
        store = open_store(h.root, cls._store_options(cfg), cfg.store.url, standby=standby)
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
    def signing_key(self) -> CAPrivateKey:
        """The CA's private key (the service hands it to its worker processes over a private socketpair)."""
        return self._key

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
            **engine_facts(self.store),  # issue 12: engine, database, writer epoch
        }

    # ------------------------------------------------------------------ helpers

    @contextmanager
    def _row_lock(self, request_id: int) -> Iterator[None]:
        # Read-check-write of one request is serialised, so "issue twice" sees the first one's result.
        with self._locks[request_id % _LOCK_STRIPES]:
            yield

    def _reserve_serial(self) -> tuple[int, str]:
        """A random serial (and its database text) unused in the database and by in-flight issuances; held
        (so no other issuance can take it) until :meth:`_release_serial`, called once its row is written or
        the issuance failed."""
        while True:
            n = random_serial()
            text = serial_hex(n)
            if self._serials.claim(text):  # held unless in flight elsewhere or in the database
                return n, text

    def _release_serial(self, text: str) -> None:
        self._serials.release([text])

    @staticmethod
    def _put_extensions(tx: Transaction, request_id: int, extensions: Sequence[tuple[str, int, bytes]]) -> None:
        # Extension rows, one per extension of the signed certificate (the AD CS Extension table):
        # flags 1 = critical; value = the extension's DER (extnValue contents).
        put = tx.put
        for oid, critical, value in extensions:
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
               attributes: Mapping[str, str] | None = None, roles: frozenset[str] | None = None,
               request_key: str | None = None) -> RequestInfo:
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
        :param request_key: the client's idempotency key (issue 14, :mod:`pycertsrv.ca.keyclaims`): when the
            database holds it, that request is returned as it is now and nothing is written or signed.
        """
        started = time.monotonic()
        attrs = keyed_attributes(attributes, request_key)
        key = attrs.get(REQUEST_KEY)
        held = self.caller_roles() if roles is None else frozenset(roles)
        if key is None:
            return self._submit(csr, requester, template, attrs or None, held, started)
        # The key is claimed first, so one read decides (commit_prepared, for prepared requests from elsewhere,
        # claims and reads itself): a retry is answered before anything is signed, as the request is now.
        with self._keys.holding([key]):
            answer = self._key_answer(key, requester, csr)
            return answer if answer is not None else self._submit(csr, requester, template, attrs, held, started)

    def _submit(self, csr: bytes, requester: str, template: str | None, attrs: dict[str, str] | None,
                roles: frozenset[str], started: float) -> RequestInfo:
        """Prepare and write one request (its key, if any, held by the caller)."""
        for _ in range(SERIAL_TRIES):
            prepared = self.prepare(csr, requester=requester, template=template, attributes=attrs, roles=roles)
            done = self._commit_items([prepared], [started])[0]
            if done is not None:
                return done
        raise no_unused_serial()

    def request_key_answer(self, key: str | None, requester: str, csr: bytes) -> RequestInfo | None:
        """The request a submit with ``key`` returns without writing (the database holds the key), else None.

        :param key: the submit's request key (None: no key, None returned).
        :param requester: who submits (a key another requester's request holds is refused).
        :param csr: the submitted request, PEM or DER (a key held by a request with another CSR is refused).
        :raises Conflict: another requester's request, or another CSR's, holds the key.
        """
        return None if key is None else self._key_answer(checked_key(key), requester, csr)

    def _key_answer(self, key: str, requester: str, csr: bytes) -> RequestInfo | None:
        return key_answer(self.store, key, requester, lambda: decode_request(csr, self.config.policy.max_request_bytes))

    def prepare(self, csr: bytes, *, requester: str = "", template: str | None = None,
                attributes: Mapping[str, str] | None = None, roles: frozenset[str]) -> PreparedRequest:
        """Parse, check and sign a new request without writing it (:func:`pycertsrv.ca.enroll.prepare_submission`
        with this CA's material); :meth:`commit_prepared` writes it."""
        return prepare_submission(self.config, self.templates, self._issuer, self._cert, csr, requester=requester,
                                  template=template, attributes=attributes, roles=roles,
                                  request_path=self._request_text)

    def commit_prepared(self, items: Sequence[PreparedRequest],
                        started: Sequence[float] | None = None) -> list[RequestInfo | CertSrvError | None]:
        """Write prepared requests in ONE group-committed transaction (request ids in list order) and return
        their rows; None for an item whose serial is taken (in the database or by an issuance in flight):
        prepare it again. Serial uniqueness is decided here, by the one writer (RFC 5280 §4.1.2.2).

        Request keys are decided here too (issue 14, :mod:`pycertsrv.ca.keyclaims`): an item whose key the
        database holds, or an earlier item of ``items`` holds, is not written; its answer is that request (or the
        refusal, a :class:`CertSrvError`, when it is another requester's or another CSR's). A key held by another
        commit in flight is waited for.

        :param items: prepared by :meth:`prepare` here or in a worker process of the service.
        :param started: ``time.monotonic()`` when each request arrived (the metrics' latency).
        """
        if not any(REQUEST_KEY in p.attributes for p in items):
            return [*self._commit_items(items, started)]
        return commit_keyed(self._keys, self.store, items, started, self._commit_items)

    def _commit_items(self, items: Sequence[PreparedRequest],
                      started: Sequence[float] | None) -> list[RequestInfo | None]:
        # A serial held by an issuance in flight is refused here; one the database holds, by the write function
        # (one query per group-committed batch, see SerialBook.in_use). Either way the item is not written: None.
        held = self._serials.hold([p.serial for p in items])
        todo = [p for p, ok in zip(items, held) if ok]
        written: list[bool] = []
        try:
            if todo:
                def write(tx: Transaction) -> list[bool]:
                    done: list[bool] = []
                    for p in todo:
                        if p.serial is not None and self._serials.in_use(tx, p.serial):
                            done.append(False)
                        else:
                            self._write_prepared(tx, p)
                            done.append(True)
                    return done

                written = self._commit.run(write, len(todo))
        finally:
            self._serials.release([p.serial for p in todo])
        ok = iter(written)
        now = time.monotonic()
        out: list[RequestInfo | None] = []
        for k, (p, h) in enumerate(zip(items, held)):
            out.append(self._observed(RequestInfo.from_row(p.row), started[k] if started else now)
                       if h and next(ok) else None)
        return out

    def _write_prepared(self, tx: Transaction, p: PreparedRequest) -> None:
        rid = tx.next_id("request")
        row = p.row
        row["request_id"] = rid
        tx.put("request", row)
        for name, value in p.attributes.items():
            tx.put("attribute", {"request_id": rid, "name": name, "value": value})
        if p.extensions is not None:
            self._put_extensions(tx, rid, p.extensions)

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
                new.update(disposition=DISP_ISSUED, **cert_columns(issued, serial_text))

                def write(tx: Transaction) -> None:
                    tx.put("request", new)
                    self._put_extensions(tx, request_id, issued.extensions)

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
            cert, chain = check_ca_certificate(data, self._key)
            crl_mod.write_ca_certificate(self.certificate_path, cert, chain)
            self._cert = cert
            self.chain = chain
            self._issuer = Issuer(self._key, cert, self.config.policy)
            return cert


__all__ = ["CA_REQUEST_FILE", "Authority"]
