"""``certsrv restore ... --database URL``: finish a registered restore INTO PostgreSQL (issue 12).

:func:`~pycertsrv.backup.restore.run_restore` placed the set's files in the home and completed the
registration, as for SQLite. Here the registered snapshot and generations (from either engine: a set looks
the same) are loaded and replayed in the PostgreSQL database, up to the registered ``--until``, in ONE
transaction that is committed only after the log check passed (:class:`~pycertsrv.store.postgres.load.
PgRecoveryTarget`). Then, as the SQLite engine's hard recovery does, one logged epilogue record marks the
recovery (DBLastRecovery, the next backup must be full, a new archive lineage), the home's ``[store] url``
names the database, and the registration and the placed SQLite copies go. A failure leaves the database as
it was and the home with its completed SQLite registration, and says so.

Issue 14, a second node for a CA already on PostgreSQL: ``certsrv restore KEYSET --key-only --home NODE2
--database URL`` restores the key and certificate and points the new home at the database, after
:func:`check_node_database` found that what the database holds was signed by that certificate's key.
"""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from .. import config as config_mod
from ..errors import (
    CERTSRV_E_INVALID_CA_CERTIFICATE,
    E_INVALIDARG,
    CertSrvError,
    Conflict,
    CorruptData,
    InvalidArgument,
)
from ..errors import JET_ERR_MISSING_RESTORE_LOG_FILES as MISSING
from ..home import Home
from ..store import RecoveryReport, Until, archivemark, logfile, schema
from ..store.postgres import PgStore, check_url, describe
from ..store.postgres.lease import LEASE_TTL
from ..store.postgres.load import FileStream, PgRecoveryTarget
from ..store.postgres.reads import PgReads
from ..store.registration import (
    SETTING_LAST_RECOVERY,
    SETTING_REQUIRES_FULL,
    STATE_COMPLETE,
    clear_registration,
    read_registration,
    rebase_path,
    resolve_db_target,
)


def _generations(home: Path, gen_low: int, gen_high: int, dirs: list[str]) -> list[Path]:
    found: dict[int, Path] = {}
    for d in dirs:
        for g, p in logfile.list_generations(Path(d)).items():
            found.setdefault(g, p)
    missing = [g for g in range(gen_low, gen_high + 1) if g not in found]
    if missing:
        raise CorruptData(MISSING, logfile.log_name(missing[0]),
                          f"log generation {missing[0]:08X} is missing from the backup log path ({', '.join(dirs)})")
    return [found[g] for g in range(gen_low, gen_high + 1)]


def finish_into_postgres(home: Path, url: str, *, force: bool = False) -> RecoveryReport:
    """Hard recovery of ``home``'s completed registration into ``url``; the home then uses that database.

    :param force: replace a CA database already in ``url``.
    """
    check_url(url)
    h = Home(Path(home))
    reg = read_registration(h.root)
    if reg is None or reg.state != STATE_COMPLETE or not reg.restore_map:
        raise InvalidArgument(E_INVALIDARG, str(h.root), "no completed restore of a full set is registered here")
    db_file = resolve_db_target(h.root, rebase_path(reg, h.root, reg.restore_map[0][1]))
    dirs = sorted({rebase_path(reg, h.root, s.backup_log_path or reg.backup_log_path or "")
                   for s in reg.sets if (s.backup_log_path or reg.backup_log_path)})
    files = _generations(h.root, reg.gen_low, reg.gen_high, dirs)
    target = PgRecoveryTarget(url, force=force, home=h.root)
    target.load_snapshot(FileStream(db_file))
    rep = target.replay([FileStream(p) for p in files], Until(time_us=reg.until_us), identity=reg.identity)
    target.finish()
    # The epilogue (the SQLite engine's too): a logged record, so backups and the archive see the recovery.
    t = schema.table("setting")
    with PgStore.open(url, home=h.root, takeover=True) as store:
        fresh = store.current_generation  # the restore left a fresh, empty generation open
        store.commit([
            ("setting", "p", schema.row_to_image(t, {"name": SETTING_LAST_RECOVERY,
                                                     "value": datetime.now(UTC).isoformat()})),
            ("setting", "p", schema.row_to_image(t, {"name": SETTING_REQUIRES_FULL, "value": "1"})),
            ("setting", "p", schema.row_to_image(t, {"name": archivemark.SETTING_LINEAGE,
                                                     "value": archivemark.new_lineage()})),
            ("setting", "p", schema.row_to_image(t, {"name": archivemark.SETTING_LINEAGE_START,
                                                     "value": str(fresh)})),
        ])
    cfg = config_mod.load(h.root)
    config_mod.save(h.root, cfg.model_copy(update={"store": cfg.store.model_copy(update={"url": url})}))
    # The placed SQLite copies served only as the restore's input (the sets still hold them).
    db_file.unlink(missing_ok=True)
    for d in dirs:
        if Path(d).resolve().is_relative_to(h.root.resolve()):
            shutil.rmtree(d, ignore_errors=True)
    clear_registration(h.root)
    return rep


def describe_failure(e: CertSrvError, home: Path) -> CertSrvError:
    """The refusal, with what the home holds now (its completed SQLite restore) and what to do next."""
    return type(e)(e.hresult, e.function,
                   f"{e.message}; the PostgreSQL database was not changed and {home} holds the restore registered "
                   f"for SQLite: rerun with --database URL --force, or start the CA on SQLite")


class _Reader(PgReads):
    """The CA database's tables read without the writer lease (a node being set up must not take it)."""

    def __init__(self, url: str) -> None:
        self.url, self.lease_ttl = url, LEASE_TTL
        self._local, self._conns, self._conns_lock, self._closed = threading.local(), [], threading.Lock(), False

    def close(self) -> None:
        self._closed = True
        for c in self._conns:
            c.close()


def _signed_by(der: bytes, ca: x509.Certificate, crl: bool) -> bool:
    try:
        if crl:
            c = x509.load_der_x509_crl(der)
            return c.issuer == ca.subject and c.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        x509.load_der_x509_certificate(der).verify_directly_issued_by(ca)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def check_node_database(url: str, certificate: x509.Certificate) -> dict[str, Any]:
    """Issue 14: refuse to make a node of ``certificate``'s CA on ``url`` unless the database is that CA's: its
    newest CRL and its newest issued certificate (when it has them) are signed by this certificate's key.
    Reads only (no lease is taken). Returns what was compared."""
    check_url(url)
    subject = describe(url)
    r = _Reader(url)
    try:
        try:
            crls = r.select("crl", order_by=["-number"], limit=1)
            certs = r.select("request", [("raw_cert", "is not null", None)], order_by=["-request_id"], limit=1)
        except CertSrvError as e:
            raise type(e)(e.hresult, subject, f"cannot read a CA database there ({e.message}); give the URL of "
                          "the CA's database (certsrv init --database made it)") from None
    finally:
        r.close()
    name = certificate.subject.rfc4514_string()
    found: dict[str, Any] = {"database": subject, "ca": name, "crl": None, "certificate": None}
    if crls:
        found["crl"] = int(crls[0]["number"])
        if not _signed_by(bytes(crls[0]["raw"]), certificate, True):
            raise Conflict(CERTSRV_E_INVALID_CA_CERTIFICATE, subject,
                           f"the database's CRL #{crls[0]['number']} was not signed by the key of {name}: this "
                           "database belongs to another CA; give the key set of the CA whose database this is, "
                           "or the URL of this CA's database")
    if certs:
        found["certificate"] = certs[0]["serial"]
        if not _signed_by(bytes(certs[0]["raw_cert"]), certificate, False):
            raise Conflict(CERTSRV_E_INVALID_CA_CERTIFICATE, subject,
                           f"the database's certificate {certs[0]['serial']} was not issued by {name}: this "
                           "database belongs to another CA; give the key set of the CA whose database this is, "
                           "or the URL of this CA's database")
    return found


def point_home_at(home: Path, url: str) -> Path:
    """Record ``url`` as the home's ``[store] url`` (the node's database); returns the configuration file."""
    h = Home(Path(home))
    cfg = config_mod.load(h.root)
    config_mod.save(h.root, cfg.model_copy(update={"store": cfg.store.model_copy(update={"url": url})}))
    return h.config
