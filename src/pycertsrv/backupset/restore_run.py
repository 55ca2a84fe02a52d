"""The planned restore of backup sets (``certsrv restore``, the run half): place the files and register them.

:func:`run_restore` carries out a :class:`~pycertsrv.backupset.restore_plan.RestorePlan` through the
certbcli restore API of the local, stopped home (:mod:`pycertsrv.backup.restore`, spec §3.3): the files
are placed, the sets registered and the registration completed — completed last, so an interrupted
restore leaves a home the CA refuses to start rather than one holding part of the data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from .. import config as config_mod
from ..backup.restore import RestoreContext, restore_end, restore_prepare, restore_register, restore_register_complete
from ..errors import (
    ERROR_DIR_NOT_EMPTY,
    ERROR_INVALID_PASSWORD,
    S_OK,
    CertSrvError,
    Conflict,
    InvalidArgument,
    from_oserror,
    oserror_hresult,
)
from ..fsutil import (
    PRIVATE_DIR,
    PRIVATE_FILE,
    PUBLIC_DIR,
    PUBLIC_FILE,
    atomic_write,
    copy_file,
    fsync_dir,
    fsync_file,
    make_dirs,
)
from ..store import engine_files
from ..store import registration as reg_mod
from .restore_cleanup import discard_partial, empty_home, failure, has_content, registration_or_none, remove_made
from .restore_plan import ProgressCallback, RestorePlan, _not_empty, load_p12, plan_config
from .setcheck import check_copy


@dataclass
class RestoreResult:
    """What :func:`run_restore` did."""

    plan: RestorePlan
    registration: dict[str, Any] | None = None
    files: int = 0
    bytes: int = 0
    key_written: bool = False
    config_written: bool = False
    superseded: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The result as plain data."""
        return {"plan": self.plan.to_json(), "registration": self.registration, "files": self.files,
                "bytes": self.bytes, "key_written": self.key_written, "config_written": self.config_written,
                "superseded": self.superseded,
                "next": "start the CA (certsrv serve) to run the recovery" if self.registration else None}


def _copy_durable(src: Path, dest: Path, mode: int = PRIVATE_FILE, dir_mode: int = PRIVATE_DIR,
                  sha256: str | None = None) -> int:
    """Copy via a temp name, fsync, rename: the destination is either absent, old, or whole; with ``sha256``, the
    copy is hashed before the rename and refused when it is not what the authenticated manifest lists."""
    make_dirs(dest.parent, dir_mode)
    tmp = dest.with_name(f".{dest.name}.restoring")
    copy_file(src, tmp, mode)
    check_copy(src, tmp, sha256)
    fsync_file(tmp)
    os.replace(tmp, dest)
    return dest.stat().st_size


def _key_passphrase(plan: RestorePlan, cfg: config_mod.Config, given: bytes | None) -> bytes | None:
    """The passphrase the restored key is encrypted with: the given one, else the configured source."""
    if given:
        return given
    if not (cfg.ca.key_passphrase_file or cfg.ca.key_passphrase_env):
        return None
    from ..ca.keys import configured_passphrase

    try:
        return configured_passphrase(plan.home.root, cfg.ca.key_passphrase_file, cfg.ca.key_passphrase_env)
    except CertSrvError:
        raise InvalidArgument(ERROR_INVALID_PASSWORD, str(plan.home.config),
                              "the configuration expects an encrypted CA key but its passphrase source is not "
                              "available here: give --key-passphrase-file") from None


def run_restore(
    plan: RestorePlan,
    *,
    password: bytes | None = None,
    key_passphrase: bytes | None = None,
    progress: ProgressCallback | None = None,
) -> RestoreResult:
    """Carry out a plan: check the key password, place the files, register and complete (spec §3.3).

    :param plan: from :func:`plan_restore`.
    :param password: the PKCS#12 password (needed unless ``--database-only``).
    :param key_passphrase: encrypt the restored CA key with this passphrase.
    :param progress: called with one line per step.
    """
    say = progress or (lambda _s: None)
    res = RestoreResult(plan)
    cfg = plan_config(plan)
    key_material: tuple[Any, x509.Certificate, list[x509.Certificate]] | None = None
    passphrase: bytes | None = None
    if plan.p12 is not None and plan.key_file is not None:
        # spec §5.1: checked before anything is placed — a wrong password writes nothing.
        key_material = load_p12(plan.p12, password, plan.expected.get(plan.p12))
        passphrase = _key_passphrase(plan, cfg, key_passphrase)
    root = plan.home.root
    # A home that is missing or empty is all ours: a failed restore removes everything it made there.
    fresh = not root.exists() or (root.is_dir() and not any(root.iterdir()))
    made = [p for p in (root, *root.parents) if not p.exists()]
    try:
        ctx = restore_prepare(home=plan.home, force=plan.force)
    except OSError as e:
        if fresh:
            with contextlib.suppress(OSError):
                plan.home.lock.unlink()  # the lock file this restore just created (writing its pid failed)
        remove_made(made)
        raise from_oserror(e, e.filename if e.filename is not None else root, "cannot create the CA home") from None
    try:
        not_empty = _not_empty(plan.home, plan.mode, plan.key_file)
        if not_empty and not plan.force:
            # spec §3.3 step 6, §5.3: certutil -f / PowerShell -Force; 0x80070091 otherwise.
            raise Conflict(ERROR_DIR_NOT_EMPTY, str(plan.home.root),
                           "the target is not empty (" + "; ".join(not_empty) + "); use --force")
        if plan.mode == "key":
            assert key_material is not None
            _write_key(plan, cfg, key_material, passphrase, res, say)
            return res
        _place_database(ctx, plan, cfg, key_material, passphrase, res, say)
        reg = reg_mod.read_registration(plan.home.root)
        res.registration = reg.to_json() if reg else None
        return res
    except BaseException as e:
        err = failure(e, root)
        if fresh:
            empty_home(root)  # under the lock: nothing of the failed restore stays
            left = f"nothing was left in {root}"
        else:
            reg = registration_or_none(root)
            left = (f"{root} keeps {reg_mod.unfinished_from(reg)}: {reg_mod.rerun_hint(reg, root)}"
                    if reg is not None and reg.state in (reg_mod.STATE_REGISTERED, reg_mod.STATE_FAILED) else "")
        if err is None:
            raise
        raise type(err)(err.hresult, err.function, f"{err.message}; {left}" if left else err.message) from None
    finally:
        restore_end(ctx)
        if fresh and not has_content(root):
            with contextlib.suppress(OSError):
                plan.home.lock.unlink()
            remove_made(made)


def _place_database(ctx: RestoreContext, plan: RestorePlan, cfg: config_mod.Config,
                    key_material: tuple[Any, x509.Certificate, list[x509.Certificate]] | None,
                    passphrase: bytes | None, res: RestoreResult, say: ProgressCallback) -> None:
    h = plan.home
    full = plan.full
    assert full is not None and full.manifest is not None
    assert plan.database_target is not None and plan.database_source is not None
    assert plan.backup_log_path is not None and plan.backup_db_name is not None
    # Registered before anything is placed: from here on the CA refuses to start until completed.
    restore_register(ctx, str(h.system_dir), str(h.log_dir), [(plan.backup_db_name, str(plan.database_target))],
                     str(plan.backup_log_path), full.manifest.gen_low, full.manifest.gen_high,
                     until_us=plan.until_us, identity=plan.identity)
    try:
        # The sets are recorded so that an unfinished restore can be named and rerun (issue 10).
        reg = reg_mod.read_registration(h.root)
        if reg is not None:
            reg.sources = [str(s.directory) for s in plan.sets]
            reg_mod.write_registration(h.root, reg)
        for d in (h.db_dir, h.log_dir, h.system_dir):
            make_dirs(d)
        # Small files first (configuration, published files, key): a CA whose restore did not finish then
        # fails at its store with the restore's own error rather than at a missing configuration.
        if plan.config_action in ("restore", "default") and plan.config_text is not None:
            atomic_write(h.config, plan.config_text.encode())
            res.config_written = True
        for src, dest in plan.dynamic:
            res.bytes += _copy_durable(src, dest, PUBLIC_FILE, PUBLIC_DIR, sha256=plan.expected.get(src))
            res.files += 1
        if plan.dynamic:
            fsync_dir(h.publish_dir)
        if key_material is not None:
            _write_key(plan, cfg, key_material, passphrase, res, say)
        _place_db_file(plan, res)
        say(f"Restoring Database files: {plan.database_target}")
        # The backup log path holds copies of the sets' generations only: an earlier restore's are stale.
        shutil.rmtree(plan.backup_log_path, ignore_errors=True)
        make_dirs(plan.backup_log_path)
        for src, dest in plan.logs:
            res.bytes += _copy_durable(src, dest, sha256=plan.expected.get(src))
            res.files += 1
        fsync_dir(plan.backup_log_path)
        say(f"Restoring Log files: {len(plan.logs)} generation(s) {plan.gen_low:08X}..{plan.gen_high:08X}")
        for s in plan.sets[1:]:
            assert s.manifest is not None
            restore_register(ctx, None, None, None, str(plan.backup_log_path), s.manifest.gen_low,
                             s.manifest.gen_high, identity=plan.identity)
        if plan.archive_range is not None:  # issue 13: the archived generations, registered like an incremental
            restore_register(ctx, None, None, None, str(plan.backup_log_path), *plan.archive_range,
                             identity=plan.identity)
    except BaseException as e:
        # Half-copied files go first (on a full disk they hold the space the registration needs), then the
        # registration records the failure (spec §2.16: RegisterComplete with the failure hr), so that the
        # CA refuses to start naming it; if even that cannot be written, the registration stays uncompleted,
        # which the CA refuses as well.
        discard_partial(h.db_dir, h.publish_dir, h.private_dir, plan.backup_log_path or h.db_dir)
        err = failure(e, h.root)
        with contextlib.suppress(OSError, CertSrvError):
            reg_mod.complete(h.root, context=ctx.id, hr=hresult_of(e),
                             message=str(err) if err is not None else f"{type(e).__name__}: {e}",
                             function="CertSrvRestoreRegisterComplete")
        raise
    restore_register_complete(ctx, S_OK)
    say(f"Full database restore for {plan.ca_name} registered; start the CA to complete the restore.")


def _place_db_file(plan: RestorePlan, res: RestoreResult) -> None:
    """Put the set's database at its target; the home's earlier database files are moved aside, never deleted."""
    h = plan.home
    assert plan.database_target is not None and plan.database_source is not None
    tmp = h.db_dir / f".{plan.database_target.name}.restoring"
    copy_file(plan.database_source, tmp)
    check_copy(plan.database_source, tmp, plan.expected.get(plan.database_source))
    fsync_file(tmp)
    res.bytes += tmp.stat().st_size
    res.files += 1
    aside = h.db_dir / f"superseded-{reg_mod.stamp()}"
    for p in engine_files(h.db_dir):  # the engine's files go aside together (its side files with its database)
        make_dirs(aside)
        os.replace(p, aside / p.name)
        res.superseded.append(str(aside / p.name))
    os.replace(tmp, plan.database_target)
    fsync_dir(h.db_dir)


def hresult_of(e: BaseException) -> int:
    """An HRESULT for any failure (OSError errno wrapped as a Win32 error, else E_FAIL)."""
    if isinstance(e, CertSrvError):
        return e.hresult
    if isinstance(e, OSError):
        return oserror_hresult(e)  # errno mapped to its Win32 error (ENOSPC: ERROR_DISK_FULL), spec §1.5
    return 0x80004005


def _write_key(plan: RestorePlan, cfg: config_mod.Config,
               key_material: tuple[Any, x509.Certificate, list[x509.Certificate]], passphrase: bytes | None,
               res: RestoreResult, say: ProgressCallback) -> None:
    from ..ca.crl import write_ca_certificate
    from ..ca.keys import save_private_key

    key, cert, chain = key_material
    assert plan.key_file is not None and plan.cert_file is not None
    plan.home.private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    save_private_key(plan.key_file, key, passphrase)  # PKCS#8 PEM, 0600, atomic
    write_ca_certificate(plan.cert_file, cert, chain)
    res.key_written = True
    say(f"Restored keys and certificates for {plan.ca_name} from {plan.p12}.")
