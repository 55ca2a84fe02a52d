"""The restore registration (``HOME/system/restore.json``): its states, registering and completing sets.

A restore is *registered* by the certbcli restore functions (spec §2.14–2.16) and *performed*
at the CA's next start (spec §3.3 "What happens at next service start"):

- ``registered`` — at least one set registered, not completed: the CA refuses to start
  (JET_errRestoreInProgress) and another context cannot register (spec §2.14 interlock).
- ``complete`` — ``RestoreRegisterComplete(S_OK)``: the next :meth:`Store.open` replays
  genLow..genHigh from the backup log path onto a temp copy of the restored database
  (phase I), rolls forward contiguous newer generations of the live log directory (phase II),
  checks integrity, then commits by renaming the copy into place.
- ``failed`` — completed with a failure hr, or recovery failed: the CA refuses to start with it.
- ``recovering`` — internal: the recovered copy is ready and the finishing steps (rename,
  moving conflicting generations aside, the fresh generation, checkpoint) are being done;
  each is idempotent, so a crash here is finished at the next start.

Spec §6 item 11 leaves the persistence and the merging of repeated registrations open; we
keep one JSON file, written atomically, whose genLow/genHigh are the min/max over the sets. The hard
recovery a completed registration triggers is the engine's (:mod:`.sqlite.restore`).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import (
    E_FAIL,
    E_INVALIDARG,
    ERROR_DIRECTORY,
    JET_ERR_RESTORE_IN_PROGRESS,
    S_OK,
    Conflict,
    CorruptData,
    InvalidArgument,
    SequenceError,
    hresult_name,
)
from ..fsutil import atomic_write, fsync_dir, make_dirs
from ..home import Home

FORMAT = "pycertsrv-restore/1"
REGISTRATION_FILE = "restore.json"
LAST_RESTORE_FILE = "last-restore.json"

STATE_REGISTERED = "registered"
STATE_COMPLETE = "complete"
STATE_FAILED = "failed"
STATE_RECOVERING = "recovering"
STATES = (STATE_REGISTERED, STATE_COMPLETE, STATE_FAILED, STATE_RECOVERING)

# Settings written by the recovery epilogue (spec §1.3 wszREGDBLASTRECOVERY; §2.17: the next backup must be full).
SETTING_LAST_RECOVERY = "DBLastRecovery"
SETTING_REQUIRES_FULL = "backup_requires_full"

MAX_GENERATION = 0xFFFFFFFF


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def stamp() -> str:
    """A UTC time for directory names (``superseded-<stamp>``)."""
    # No dot in the name: Store._open picks database files by suffix, and a dot would make one.
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")


@dataclass
class RegisteredSet:
    """One ``RestoreRegister`` call: a full set (with a restore map) or an incremental one."""

    kind: str
    gen_low: int
    gen_high: int
    backup_log_path: str | None
    checkpoint_path: str | None
    log_path: str | None
    restore_map: list[list[str]]
    context: str
    via: str
    registered_at: str


@dataclass
class Registration:
    """The whole registration file (merged over the registered sets)."""

    state: str
    context: str
    pid: int
    created: str
    updated: str
    checkpoint_path: str | None = None
    log_path: str | None = None
    restore_map: list[list[str]] = field(default_factory=list)
    backup_log_path: str | None = None
    gen_low: int = 0
    gen_high: int = 0
    until_us: int | None = None
    identity: str | None = None
    sets: list[RegisteredSet] = field(default_factory=list)
    hr: int = S_OK
    message: str = ""
    recovery: dict[str, Any] | None = None
    home: str | None = None
    # The backup set directories given to ``certsrv restore`` (so an unfinished restore can be named and rerun).
    sources: list[str] = field(default_factory=list)
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        """The registration as plain data (what the file holds)."""
        d = asdict(self)
        d["hr_hex"] = f"0x{self.hr:08X}"
        d["hr_name"] = hresult_name(self.hr)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Registration:
        """Parse the file's content; KeyError/TypeError/ValueError on a malformed one."""
        if d.get("format") != FORMAT:
            raise ValueError(f"format {d.get('format')!r} is not {FORMAT}")
        if d.get("state") not in STATES:
            raise ValueError(f"unknown state {d.get('state')!r}")
        sets = [RegisteredSet(**s) for s in d.get("sets", [])]
        names = {f for f in cls.__dataclass_fields__ if f != "sets"}
        kw = {k: v for k, v in d.items() if k in names}
        return cls(sets=sets, **kw)

    @property
    def has_full(self) -> bool:
        """Whether a full set has been registered."""
        return any(s.kind == "full" for s in self.sets)

    def summary(self) -> str:
        """One line: state, generations, sets."""
        kinds = ", ".join(f"{s.kind} {s.gen_low:08X}..{s.gen_high:08X}" for s in self.sets) or "no sets"
        return f"restore {self.state}: generations {self.gen_low:08X}..{self.gen_high:08X} ({kinds})"


def rerun_hint(reg: Registration, home: Path) -> str:
    """What to do about an unfinished restore: the command that finishes it, and how to abandon it."""
    import shlex

    sets = " ".join(shlex.quote(s) for s in reg.sources) or "FULL_SET [INCREMENTAL_SETS...]"
    return (f"rerun `certsrv restore {sets} --home {shlex.quote(str(home))} --force` to finish it, or remove "
            f"{registration_path(home)} to abandon it")


def unfinished_from(reg: Registration) -> str:
    """``an unfinished restore from SET`` (the set directories when they were recorded)."""
    return "an unfinished restore" + (f" from {', '.join(reg.sources)}" if reg.sources else "")


def refuse_unfinished(home: Path) -> None:
    """Raise the refusal of an uncompleted or failed registration of ``home`` (nothing when there is none).

    :meth:`Store.open` asks this before saying a home has no database: a restore that failed before placing
    the database leaves a registration, and the operator must hear about the restore, not a missing file.
    """
    reg = read_registration(Path(home))
    if reg is not None:
        refuse_if_unfinished(Path(home), reg)


def refuse_if_unfinished(home: Path, reg: Registration) -> None:
    """Raise when ``reg`` is uncompleted or failed: the CA does not start on it (spec §2.16)."""
    if reg.state == STATE_REGISTERED:
        # spec §2.16: the CA does not start on an uncompleted registration.
        raise Conflict(JET_ERR_RESTORE_IN_PROGRESS, str(home),
                       f"{unfinished_from(reg)} was found ({reg.summary()}, not completed); the CA will not start "
                       f"until it is: {rerun_hint(reg, home)}")
    if reg.state == STATE_FAILED:
        hr = reg.hr if reg.hr != S_OK else E_FAIL
        cls = CorruptData if (hr & 0xFFFF0000) == 0xC8000000 else Conflict
        raise cls(hr, str(home), f"{unfinished_from(reg)} was found: it failed ({reg.message}); the CA will not "
                                 f"start until a full set is restored again: {rerun_hint(reg, home)}")


def registration_path(home: Path) -> Path:
    """``HOME/system/restore.json``."""
    return Home(Path(home)).restore_registration


def read_registration(home: Path) -> Registration | None:
    """The registration of ``home``, or None; an unreadable file is a Conflict (the CA must not start)."""
    path = registration_path(home)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return Registration.from_json(json.loads(raw))
    except (ValueError, KeyError, TypeError) as e:
        raise Conflict(JET_ERR_RESTORE_IN_PROGRESS, str(path),
                       f"restore registration is unreadable ({e}); run the restore again with --force") from None


def write_registration(home: Path, reg: Registration) -> None:
    """Write the registration atomically (temp, fsync, rename, fsync dir)."""
    path = registration_path(home)
    make_dirs(path.parent)
    reg.updated = _now_iso()
    atomic_write(path, json.dumps(reg.to_json(), indent=1, sort_keys=True).encode(), mode=0o600)


def clear_registration(home: Path) -> None:
    """Remove the registration (idempotent)."""
    path = registration_path(home)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)


def rebase_path(reg: Registration, home: Path, path: str) -> str:
    """A registered path inside the registering home, moved along when the home was moved or copied since."""
    if reg.home is None:
        return path
    old, p = Path(reg.home), Path(path)
    if p.is_absolute() and (p == old or old in p.parents):
        return str(Path(home).resolve() / p.relative_to(old))
    return path


def resolve_db_target(home: Path, new_name: str) -> Path:
    """Where the restore map puts the database: it must be a ``.db`` file in ``HOME/db``."""
    db_dir = Home(Path(home)).db_dir.resolve()
    p = Path(new_name)
    target = (p if p.is_absolute() else db_dir / p).resolve()
    if target.parent != db_dir or target.suffix != ".db":
        raise InvalidArgument(E_INVALIDARG, new_name,
                              f"restore map must name a .db file in {db_dir} (the CA's database directory)")
    return target


def register(
    home: Path,
    *,
    context: str,
    checkpoint_path: str | None,
    log_path: str | None,
    restore_map: list[tuple[str, str]] | None,
    backup_log_path: str | None,
    gen_low: int,
    gen_high: int,
    until_us: int | None = None,
    identity: str | None = None,
    force: bool = False,
    via: str = "register",
    function: str = "CertSrvRestoreRegister",
) -> Registration:
    """Register one restored set, merging with earlier registrations (spec §2.14).

    :param home: the CA home (its lock must be held by the caller's restore context).
    :param context: id of the restore context registering.
    :param checkpoint_path: checkpoint directory (the 0x83 location), or None.
    :param log_path: the live log directory (the 0x82 location), or None.
    :param restore_map: ``[(backup_db_name, new_db_name)]`` for the full set; None/empty for an incremental.
    :param backup_log_path: directory holding this set's restored log generations.
    :param gen_low: lowest generation of this set.
    :param gen_high: highest generation of this set.
    :param until_us: stop the replay before the first record later than this (point in time).
    :param identity: the database identity the sets belong to (checked at recovery).
    :param force: replace a registration left uncompleted by another (dead) context.
    :param via: ``register`` or ``file`` (CertSrvRestoreRegisterThroughFile).
    :param function: the name errors carry.
    """
    for name, v in (("genLow", gen_low), ("genHigh", gen_high)):
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_GENERATION:
            raise InvalidArgument(E_INVALIDARG, function, f"{name} {v!r} is not a generation (1..0xFFFFFFFF)")
    if gen_high < gen_low:
        raise InvalidArgument(E_INVALIDARG, function, f"genHigh {gen_high:08X} is below genLow {gen_low:08X}")
    if backup_log_path is None:
        raise InvalidArgument(E_INVALIDARG, function, "a backup log path is needed to replay the generations")
    full = bool(restore_map)
    rmap: list[list[str]] = []
    for pair in restore_map or []:
        if len(pair) != 2 or not all(isinstance(x, str) and x for x in pair):
            raise InvalidArgument(E_INVALIDARG, function, f"restore map entry {pair!r} is not (old, new)")
        resolve_db_target(home, pair[1])
        rmap.append([pair[0], pair[1]])
    if len(rmap) > 1:
        raise InvalidArgument(E_INVALIDARG, function, "a CA has one database: the restore map takes one entry")
    old = read_registration(home) if not force else _read_or_none(home)
    now = _now_iso()
    if old is not None and old.state == STATE_REGISTERED and old.context != context and not force:
        # spec §2.14: until RegisterComplete, a second registration cannot succeed.
        raise Conflict(JET_ERR_RESTORE_IN_PROGRESS, function,
                       f"a restore registered by another context (pid {old.pid}) is not completed; "
                       "restore again with --force to replace it")
    if old is not None and old.state == STATE_RECOVERING and not force:
        raise Conflict(JET_ERR_RESTORE_IN_PROGRESS, function,
                       "a registered restore is being recovered; start the CA to finish it, or use --force")
    if full:
        # A full registration starts a new restore: it replaces whatever was registered before.
        reg = Registration(state=STATE_REGISTERED, context=context, pid=os.getpid(), created=now, updated=now,
                           home=str(Path(home).resolve()))
        reg.restore_map = rmap
        reg.gen_low, reg.gen_high = gen_low, gen_high
    else:
        if old is None or not old.has_full or old.state == STATE_FAILED:
            raise SequenceError(ERROR_DIRECTORY, function,
                                "Restore of an incremental image cannot be performed before a restore "
                                "from a full image" + (" (the registered restore failed)" if old else ""))
        reg = old
        reg.gen_low, reg.gen_high = min(reg.gen_low, gen_low), max(reg.gen_high, gen_high)
        reg.state = STATE_REGISTERED
        reg.context = context
        reg.pid = os.getpid()
        reg.hr, reg.message = S_OK, ""
    if identity is not None:
        if reg.identity is not None and reg.identity != identity:
            raise InvalidArgument(E_INVALIDARG, function,
                                  f"set belongs to database {identity}, the registered full set to {reg.identity}")
        reg.identity = identity
    reg.checkpoint_path = checkpoint_path if checkpoint_path is not None else reg.checkpoint_path
    reg.log_path = log_path if log_path is not None else reg.log_path
    reg.backup_log_path = backup_log_path if reg.backup_log_path is None or full else reg.backup_log_path
    if until_us is not None:
        reg.until_us = until_us
    if not full and any((o.kind, o.gen_low, o.gen_high, o.backup_log_path)
                        == ("incremental", gen_low, gen_high, backup_log_path) for o in reg.sets):
        write_registration(home, reg)  # the same incremental again: nothing new to merge
        return reg
    reg.sets.append(RegisteredSet(
        kind="full" if full else "incremental", gen_low=gen_low, gen_high=gen_high,
        backup_log_path=backup_log_path, checkpoint_path=checkpoint_path, log_path=log_path,
        restore_map=rmap, context=context, via=via, registered_at=now))
    write_registration(home, reg)
    return reg


def _read_or_none(home: Path) -> Registration | None:
    try:
        return read_registration(home)
    except Conflict:
        return None  # --force replaces an unreadable registration


def complete(home: Path, *, context: str, hr: int = S_OK, message: str = "",
             function: str = "CertSrvRestoreRegisterComplete") -> Registration:
    """Mark the registration complete (``hr`` S_OK) or failed (any other hr) — spec §2.16.

    :param home: the CA home.
    :param context: the context that registered.
    :param hr: the outcome of the restore (S_OK when the files were placed).
    :param message: why it failed, when it did.
    """
    reg = read_registration(home)
    if reg is None or reg.context != context or reg.state != STATE_REGISTERED:
        raise SequenceError(None, function, "this restore context has no registration to complete")
    hr &= 0xFFFFFFFF
    if hr == S_OK:
        reg.state = STATE_COMPLETE
    else:
        reg.state = STATE_FAILED
        reg.hr = hr
        reg.message = message or f"restore completed with {hresult_name(hr)} (0x{hr:08X})"
    write_registration(home, reg)
    return reg


def mark_failed(home: Path, hr: int, message: str) -> None:
    """Record a failure in the registration (the CA then refuses to start with ``hr``)."""
    reg = _read_or_none(home)
    if reg is None:
        return
    reg.state = STATE_FAILED
    reg.hr = hr & 0xFFFFFFFF
    reg.message = message
    write_registration(home, reg)


def last_restore(home: Path) -> dict[str, Any] | None:
    """The record of the last finished restore (registration + outcome), if any."""
    try:
        data: dict[str, Any] = json.loads(Home(Path(home)).last_restore.read_bytes())
        return data
    except (FileNotFoundError, ValueError):
        return None
