"""The Certificate Services backup and restore API (``certbcli.h`` / ``Certadm.dll``) in Python.

The 18 ``CertSrv*`` functions keep their documented names and argument order (spec §2); the
``W``-suffixed export names are aliases. Out-parameters are return values, failures raise
:class:`CertSrvError` whose ``.hresult`` is the spec's value (spec §1.5) and whose ``.function``
is the certbcli function name, in the manner of pywin32.

- File lists come back as Python lists of tag-prefixed strings (spec §1.4); :func:`encode_multisz`
  and :func:`decode_multisz` convert to and from the UTF-16 double-NUL form, :func:`split_tag`
  splits one entry. Paths are absolute POSIX paths (our reversible "UNC" form, spec §1.4 [INF]).
- ``server`` arguments take ``unix:PATH``, ``HOST:PORT`` (TLS), a config string ``HOST\\CA Name``,
  None (the local home's socket) or an open :class:`pycertsrv.client.Client`.
- ``HCSBC`` is a :class:`pycertsrv.client.backup.BackupSession` for backups and a
  :class:`pycertsrv.backup.restore.RestoreContext` for restores (the restore functions are
  :mod:`pycertsrv.backup.restore`'s, re-exported with their ``W`` aliases here).
- :func:`CertSrvBackupRead` returns ``bytes`` (``b""`` at the end of the file) and fills up to
  ``cb`` bytes (spec §2.7 [INF]: certadm adapts the caller's buffer size).
- :func:`CertSrvBackupFree` does nothing: returned lists are ordinary Python objects (spec §2.11).

Example (spec §3.1)::

    hbc = CertSrvBackupPrepare(None, 0, CSBACKUP_TYPE_FULL)
    try:
        locations = CertSrvRestoreGetDatabaseLocations(hbc)
        for entry in CertSrvBackupGetDatabaseNames(hbc) + CertSrvBackupGetBackupLogs(hbc):
            ...  # CertSrvBackupOpenFile(hbc, entry[1:]), CertSrvBackupRead, CertSrvBackupClose
        CertSrvBackupTruncateLogs(hbc)
    finally:
        CertSrvBackupEnd(hbc)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from . import spec as _spec
from .backup import restore as _restore
from .client.backup import BackupSession
from .client.client import Client
from .errors import E_INVALIDARG, E_UNEXPECTED, ERROR_INVALID_HANDLE, S_OK, CertSrvError, InvalidArgument, SequenceError
from .spec import *  # noqa: F403  (spec §1.3: every constant, defined once in pycertsrv.spec, re-exported)

P = ParamSpec("P")
R = TypeVar("R")

HCSBC = BackupSession  # the backup context type (restore contexts: see pycertsrv.backup.restore)


# ---------------------------------------------------------------------------- spec §1.4 helpers
def encode_multisz(entries: list[str]) -> bytes:
    """A list of strings as the UTF-16LE double-NUL-terminated form; ``len()`` of it is ``*pcbSize``.

    :param entries: the strings (already tag-prefixed where the list has tags).
    """
    for e in entries:
        if e == "" or "\0" in e:
            raise InvalidArgument(E_INVALIDARG, "encode_multisz", f"entry {e!r} is empty or holds a NUL")
    return ("".join(e + "\0" for e in entries) + "\0").encode("utf-16-le")


def decode_multisz(buf: bytes) -> list[str]:
    """The strings of a UTF-16LE double-NUL-terminated buffer (the first empty string ends the list).

    :param buf: the buffer (an empty buffer is an empty list).
    """
    if len(buf) % 2:
        raise InvalidArgument(E_INVALIDARG, "decode_multisz", f"odd buffer length {len(buf)} for UTF-16")
    out: list[str] = []
    for part in buf.decode("utf-16-le").split("\0"):
        if part == "":
            break
        out.append(part)
    return out


def split_tag(entry: str) -> tuple[int, str]:
    """``(tag code point, path)`` of a tagged list entry (spec §1.4: exactly one tag character).

    :param entry: e.g. ``"D/srv/ca/db/Example CA.db"``.
    """
    if not entry:
        raise InvalidArgument(E_INVALIDARG, "split_tag", "empty entry")
    return ord(entry[0]), entry[1:]


# ---------------------------------------------------------------------------- plumbing
def _api(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Name the certbcli function in every CertSrvError raised below it (pywin32 style)."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except CertSrvError as e:
                if e.function == name:
                    raise
                raise type(e)(e.hresult, name, f"{e.function}: {e.message}" if e.function else e.message) from e

        return wrapper

    return deco


def _client(server: str | Client | None) -> tuple[Client, bool]:
    if isinstance(server, Client):
        return server, False
    if server is not None and not isinstance(server, str):
        raise InvalidArgument(E_INVALIDARG, "server", f"server must be a string or Client, not {type(server).__name__}")
    return Client(server or None), True


def _session(hbc: Any, fn: str) -> BackupSession:
    if not isinstance(hbc, BackupSession):
        raise InvalidArgument(ERROR_INVALID_HANDLE, fn, f"not a backup context: {type(hbc).__name__}")
    if hbc.ended and hbc.owns_client:
        # Its connection went with CertSrvBackupEnd; as on the server, a call after End is out of sequence.
        raise SequenceError(E_UNEXPECTED, fn, "the backup context was ended (CertSrvBackupEnd)")
    return hbc


# ---------------------------------------------------------------------------- spec §2.1, §2.18
@_api("CertSrvIsServerOnline")
def CertSrvIsServerOnline(pwszServerName: str | Client | None) -> bool:
    """True when the CA serves, False when suspended; raises (0x800706BA) when it does not answer (spec §2.1).

    :param pwszServerName: the service (see the module docstring).
    """
    client, owned = _client(pwszServerName)
    try:
        return client.is_server_online()
    finally:
        if owned:
            client.close()


@_api("CertSrvServerControl")
def CertSrvServerControl(pwszServerName: str | Client | None, dwControlFlags: int) -> bytes | None:
    """CSCONTROL_SHUTDOWN (1) stops the CA; 2 and 3 do nothing; other values E_INVALIDARG (spec §2.18, §4.1).

    :param pwszServerName: the service.
    :param dwControlFlags: the control code.
    :returns: ``ppbOut``, always None today.
    """
    client, owned = _client(pwszServerName)
    try:
        client.server_control(int(dwControlFlags))
        return None
    finally:
        if owned:
            client.close()


# ---------------------------------------------------------------------------- backup, spec §2.2–2.11
@_api("CertSrvBackupPrepare")
def CertSrvBackupPrepare(pwszServerName: str | Client | None, grbitJet: int = 0,
                         dwBackupFlags: int = _spec.CSBACKUP_TYPE_FULL) -> BackupSession:
    """Start the backup session; returns the context ``hbc`` (pass it to CertSrvBackupEnd exactly once).

    :param pwszServerName: the service.
    :param grbitJet: 0 (or 1 = JET_bitBackupIncremental).
    :param dwBackupFlags: CSBACKUP_TYPE_FULL or CSBACKUP_TYPE_LOGS_ONLY.
    """
    client, owned = _client(pwszServerName)
    try:
        hbc = BackupSession.prepare(client, None, grbit=int(grbitJet), flags=int(dwBackupFlags))
    except BaseException:
        if owned:
            client.close()
        raise
    hbc.owns_client = owned
    return hbc


@_api("CertSrvBackupGetDatabaseNames")
def CertSrvBackupGetDatabaseNames(hbc: BackupSession) -> list[str]:
    """The database files, each tagged CSBFT_CERTSERVER_DATABASE ('D'); full backups, before the log list."""
    return _session(hbc, "CertSrvBackupGetDatabaseNames").database_names()


@_api("CertSrvBackupGetBackupLogs")
def CertSrvBackupGetBackupLogs(hbc: BackupSession) -> list[str]:
    """The log generations to back up, each tagged CSBFT_LOG ('!'); database files can no longer be opened."""
    return _session(hbc, "CertSrvBackupGetBackupLogs").backup_logs()


@_api("CertSrvBackupGetDynamicFileList")
def CertSrvBackupGetDynamicFileList(hbc: BackupSession) -> list[str]:
    """The published CA certificates and CRLs (untagged paths); our server lets the session read them."""
    return _session(hbc, "CertSrvBackupGetDynamicFileList").dynamic_files()


@_api("CertSrvBackupOpenFile")
def CertSrvBackupOpenFile(hbc: BackupSession, pwszAttachmentName: str,
                          cbReadHintSize: int = 0) -> int:
    """Open a listed file (its tag removed); returns its size in bytes.

    :param hbc: the backup context.
    :param pwszAttachmentName: a name from a list of this session, without its tag character.
    :param cbReadHintSize: read buffer hint (accepted, not needed).
    """
    return _session(hbc, "CertSrvBackupOpenFile").open_file(pwszAttachmentName, int(cbReadHintSize))


@_api("CertSrvBackupRead")
def CertSrvBackupRead(hbc: BackupSession, cb: int) -> bytes:
    """Up to ``cb`` next bytes of the open file; fewer only at its end; ``b""`` once it is all read.

    :param hbc: the backup context.
    :param cb: the buffer size in bytes (> 0).
    """
    s = _session(hbc, "CertSrvBackupRead")
    if int(cb) <= 0:
        raise InvalidArgument(E_INVALIDARG, "CertSrvBackupRead", f"buffer size {cb} must be positive")
    out = bytearray()
    while len(out) < cb:
        want = min(int(cb) - len(out), _spec.MAX_READ)
        chunk = s.read(want)
        out += chunk
        if len(chunk) < want:
            break  # the server returns short reads only at the end of the file
    return bytes(out)


@_api("CertSrvBackupClose")
def CertSrvBackupClose(hbc: BackupSession) -> None:
    """Close the open file."""
    _session(hbc, "CertSrvBackupClose").close_file()


@_api("CertSrvBackupTruncateLogs")
def CertSrvBackupTruncateLogs(hbc: BackupSession) -> None:
    """Delete the log generations this backup made redundant (only after every listed file was read)."""
    _session(hbc, "CertSrvBackupTruncateLogs").truncate_logs()


@_api("CertSrvBackupEnd")
def CertSrvBackupEnd(hbc: BackupSession) -> None:
    """End the session and release the context (once per successful CertSrvBackupPrepare)."""
    s = _session(hbc, "CertSrvBackupEnd")
    try:
        s.end()
    finally:
        if s.owns_client:
            s.client.close()


def CertSrvBackupFree(pv: Any) -> None:
    """Nothing to free: returned lists are Python objects (spec §2.11, kept for parity)."""
    return None


# ---------------------------------------------------------------------------- restore, spec §2.12–2.17
# The restore functions act on a local, stopped home (spec §3.3 step 2) through pycertsrv.backup.restore;
# here they keep the C names and argument order. CertSrvRestoreGetDatabaseLocations accepts a backup
# context too (spec §2.12).


@dataclass(frozen=True)
class CSEDB_RSTMAP:
    """One restore-map entry: the backed-up database name and its name after the restore."""

    pwszDatabaseName: str
    pwszNewDatabaseName: str


def _rstmap(rgrstmap: Any, crstmap: int, function: str) -> list[tuple[str, str]] | None:
    entries = list(rgrstmap or [])
    if crstmap != len(entries):
        raise InvalidArgument(E_INVALIDARG, function, f"crstmap {crstmap} does not match {len(entries)} map entries")
    out: list[tuple[str, str]] = []
    for e in entries:
        if isinstance(e, CSEDB_RSTMAP):
            out.append((e.pwszDatabaseName, e.pwszNewDatabaseName))
        else:
            old, new = e
            out.append((str(old), str(new)))
    return out or None


@_api("CertSrvRestorePrepare")
def CertSrvRestorePrepare(pwszServerName: str | None,
                          dwRestoreFlags: int = _spec.CSRESTORE_TYPE_FULL) -> _restore.RestoreContext:
    """CertSrvRestorePrepareW: returns the restore context (``phbc``)."""
    return _restore.restore_prepare(pwszServerName, dwRestoreFlags)


@_api("CertSrvRestoreRegister")
def CertSrvRestoreRegister(hbc: _restore.RestoreContext, pwszCheckPointFilePath: str | None,
                           pwszLogPath: str | None, rgrstmap: Any, crstmap: int, pwszBackupLogPath: str | None,
                           genLow: int, genHigh: int) -> None:
    """CertSrvRestoreRegisterW, C argument order; ``rgrstmap`` = CSEDB_RSTMAP entries or (old, new) pairs."""
    _restore.restore_register(hbc, pwszCheckPointFilePath, pwszLogPath,
                              _rstmap(rgrstmap, crstmap, "CertSrvRestoreRegister"), pwszBackupLogPath, genLow, genHigh)


@_api("CertSrvRestoreRegisterThroughFile")
def CertSrvRestoreRegisterThroughFile(hbc: _restore.RestoreContext, pwszCheckPointFilePath: str | None,
                                      pwszLogPath: str | None, rgrstmap: Any, crstmap: int,
                                      pwszBackupLogPath: str | None, genLow: int, genHigh: int) -> None:
    """CertSrvRestoreRegisterThroughFile, C argument order."""
    _restore.restore_register_through_file(hbc, pwszCheckPointFilePath, pwszLogPath,
                                           _rstmap(rgrstmap, crstmap, "CertSrvRestoreRegisterThroughFile"),
                                           pwszBackupLogPath, genLow, genHigh)


@_api("CertSrvRestoreRegisterComplete")
def CertSrvRestoreRegisterComplete(hbc: _restore.RestoreContext, hrRestoreState: int = S_OK) -> None:
    """CertSrvRestoreRegisterComplete."""
    _restore.restore_register_complete(hbc, hrRestoreState)


@_api("CertSrvRestoreEnd")
def CertSrvRestoreEnd(hbc: _restore.RestoreContext) -> None:
    """CertSrvRestoreEnd."""
    _restore.restore_end(hbc)


CSEDB_RSTMAPW = CSEDB_RSTMAP


@_api("CertSrvRestoreGetDatabaseLocations")
def CertSrvRestoreGetDatabaseLocations(hbc: BackupSession | _restore.RestoreContext) -> list[str]:
    """Database file 'D', log directory U+0082, system directory U+0083 (backup or restore context, spec §2.12)."""
    if isinstance(hbc, BackupSession):
        return _session(hbc, "CertSrvRestoreGetDatabaseLocations").database_locations()
    if isinstance(hbc, _restore.RestoreContext):
        return _restore.restore_get_database_locations(hbc)
    raise InvalidArgument(ERROR_INVALID_HANDLE, "CertSrvRestoreGetDatabaseLocations",
                          f"not a backup or restore context: {type(hbc).__name__}")


# ---------------------------------------------------------------------------- W aliases (spec §1.2)
CertSrvIsServerOnlineW = CertSrvIsServerOnline
CertSrvBackupGetDynamicFileListW = CertSrvBackupGetDynamicFileList
CertSrvBackupPrepareW = CertSrvBackupPrepare
CertSrvBackupGetDatabaseNamesW = CertSrvBackupGetDatabaseNames
CertSrvBackupOpenFileW = CertSrvBackupOpenFile
CertSrvBackupGetBackupLogsW = CertSrvBackupGetBackupLogs
CertSrvRestoreGetDatabaseLocationsW = CertSrvRestoreGetDatabaseLocations
CertSrvServerControlW = CertSrvServerControl
CertSrvRestorePrepareW = CertSrvRestorePrepare
CertSrvRestoreRegisterW = CertSrvRestoreRegister


__all__ = [
    "S_OK",
    "CertSrvBackupClose",
    "CertSrvBackupEnd",
    "CertSrvBackupFree",
    "CertSrvBackupGetBackupLogs",
    "CertSrvBackupGetBackupLogsW",
    "CertSrvBackupGetDatabaseNames",
    "CertSrvBackupGetDatabaseNamesW",
    "CertSrvBackupGetDynamicFileList",
    "CertSrvBackupGetDynamicFileListW",
    "CertSrvBackupOpenFile",
    "CertSrvBackupOpenFileW",
    "CertSrvBackupPrepare",
    "CertSrvBackupPrepareW",
    "CertSrvBackupRead",
    "CertSrvBackupTruncateLogs",
    "CertSrvError",
    "CertSrvIsServerOnline",
    "CertSrvIsServerOnlineW",
    "CertSrvRestoreEnd",
    "CertSrvRestoreGetDatabaseLocations",
    "CertSrvRestoreGetDatabaseLocationsW",
    "CertSrvRestorePrepare",
    "CertSrvRestorePrepareW",
    "CertSrvRestoreRegister",
    "CertSrvRestoreRegisterComplete",
    "CertSrvRestoreRegisterThroughFile",
    "CertSrvRestoreRegisterW",
    "CertSrvServerControl",
    "CertSrvServerControlW",
    "decode_multisz",
    "encode_multisz",
    "split_tag",
]
