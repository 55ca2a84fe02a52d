"""HRESULT values and the exception tree of pycertsrv.

Every failure the library, the service or the client reports is a :class:`CertSrvError`
carrying the spec's HRESULT (spec §1.5), in the manner of pywin32's ``pywintypes.error``:
``err.hresult``, ``err.function`` (the operation or subject) and ``err.message``.
The service maps the HRESULT to an HTTP status; the client maps it back to the same class.
"""

from __future__ import annotations

import errno
import os
from typing import ClassVar

S_OK = 0x00000000
E_UNEXPECTED = 0x8000FFFF
E_ACCESSDENIED = 0x80070005
E_INVALIDARG = 0x80070057
E_OUTOFMEMORY = 0x8007000E
E_NOTIMPL = 0x80004001
E_FAIL = 0x80004005
ERROR_FILE_NOT_FOUND = 0x80070002
ERROR_PATH_NOT_FOUND = 0x80070003
ERROR_INVALID_HANDLE = 0x80070006
ERROR_INVALID_DATA = 0x8007000D
ERROR_SHARING_VIOLATION = 0x80070020
ERROR_NOT_SUPPORTED = 0x80070032
ERROR_FILE_EXISTS = 0x80070050
ERROR_INVALID_PASSWORD = 0x80070056
ERROR_DIR_NOT_EMPTY = 0x80070091
ERROR_ALREADY_EXISTS = 0x800700B7
ERROR_DIRECTORY = 0x8007010B
ERROR_BUSY = 0x800700AA
ERROR_CRC = 0x80070017
# Win32 errors a file system failure maps to (spec §1.5 helper: 0x80070000 | Win32 code).
ERROR_TOO_MANY_OPEN_FILES = 0x80070004  # 4
ERROR_WRITE_PROTECT = 0x80070013  # 19
ERROR_HANDLE_DISK_FULL = 0x80070027  # 39
ERROR_DISK_FULL = 0x80070070  # 112
ERROR_FILENAME_EXCED_RANGE = 0x800700CE  # 206
ERROR_FILE_TOO_LARGE = 0x800700DF  # 223
ERROR_IO_DEVICE = 0x8007045D  # 1117
ERROR_DISK_QUOTA_EXCEEDED = 0x8007050F  # 1295
ERROR_OBJECT_EXISTS = 0x80071392
ERROR_INVALID_STATE = 0x8007139F
RPC_S_SERVER_UNAVAILABLE = 0x800706BA
# Issue 14 (several nodes, one CA; HA-CONTRACT "Error codes").
ERROR_HOST_NODE_NOT_RESOURCE_OWNER = 0x80071397  # Win32 5015: "The cluster node is not the owner of the resource"
RPC_S_CALL_FAILED = 0x800706BE  # Win32 1726: "The remote procedure call failed" (it MAY have executed)
RPC_S_CALL_FAILED_DNE = 0x800706BF  # Win32 1727: "The remote procedure call failed and did not execute"
ERROR_TIMEOUT = 0x800705B4  # Win32 1460: "This operation returned because the timeout period expired."
# TLS certificate trust failures (winerror.h CERT_E_* / TRUST_E_* / CRYPT_E_REVOKED, as schannel reports them).
CERT_E_EXPIRED = 0x800B0101
CERT_E_UNTRUSTEDROOT = 0x800B0109
CERT_E_CHAINING = 0x800B010A
TRUST_E_FAIL = 0x800B010B
CERT_E_CN_NO_MATCH = 0x800B010F
CRYPT_E_REVOKED = 0x80092010
CRYPT_E_NOT_FOUND = 0x80092004
CRYPT_E_NO_MATCH = 0x80092009
NTE_BAD_SIGNATURE = 0x80090006
NTE_BAD_KEY = 0x80090003
NTE_BAD_ALGID = 0x80090008
CERTSRV_E_BAD_REQUESTSUBJECT = 0x80094001
CERTSRV_E_NO_REQUEST = 0x80094002
CERTSRV_E_BAD_REQUESTSTATUS = 0x80094003
CERTSRV_E_PROPERTY_EMPTY = 0x80094004
CERTSRV_E_INVALID_CA_CERTIFICATE = 0x80094005
CERTSRV_E_ENROLL_DENIED = 0x80094011
CERTSRV_E_UNSUPPORTED_CERT_TYPE = 0x80094800
CERTSRV_E_TEMPLATE_DENIED = 0x80094012
CERTSRV_E_BAD_RENEWAL_CERT_ATTRIBUTE = 0x8009400E
CERTSRV_E_KEY_LENGTH = 0x80094811
CERTSRV_E_ADMIN_DENIED_REQUEST = 0x80094014
CERTSRV_E_BAD_REQUEST_KEY_ARCHIVAL = 0x8009400C  # winerror.h (0x8009400D is CERTSRV_E_NO_CAADMIN_DEFINED)
CERTSRV_E_SUBJECT_DNS_REQUIRED = 0x8009480F
# ESE errors mapped as 0xC8000000 | -jet_err (spec §1.5 [INF]).
JET_ERR_BACKUP_IN_PROGRESS = 0xC80001F9
JET_ERR_RESTORE_IN_PROGRESS = 0xC80001FA
JET_ERR_NO_BACKUP = 0xC8000208
JET_ERR_INVALID_BACKUP_SEQUENCE = 0xC8000209
JET_ERR_INVALID_BACKUP = 0xC800020E
JET_ERR_ENDING_RESTORE_LOG_TOO_LOW = 0xC8000229
JET_ERR_STARTING_RESTORE_LOG_TOO_HIGH = 0xC800022A
JET_ERR_MISSING_RESTORE_LOG_FILES = 0xC800022D
JET_ERR_MISSING_FULL_BACKUP = 0xC8000230
JET_ERR_MISSING_FILE_TO_BACKUP = 0xC8000239
JET_ERR_LOG_FILE_CORRUPT = 0xC80001F5  # -501
JET_ERR_BAD_LOG_SIGNATURE = 0xC8000212  # -530 (log of another database)
JET_ERR_MISSING_LOG_FILE = 0xC8000210  # -528
JET_ERR_DATABASE_CORRUPTED = 0xC8000567  # -1383
JET_ERR_BACKUP_ABORT_BY_SERVER = 0xC8000321
JET_ERR_CHECKPOINT_CORRUPT = 0xC8000215  # -533
JET_ERR_RESTORE_OF_NON_BACKUP_DATABASE = 0xC8000267  # -615

HRESULT_NAMES: dict[int, str] = {
    S_OK: "S_OK",
    E_UNEXPECTED: "E_UNEXPECTED",
    E_ACCESSDENIED: "E_ACCESSDENIED",
    E_INVALIDARG: "E_INVALIDARG",
    E_OUTOFMEMORY: "E_OUTOFMEMORY",
    E_NOTIMPL: "E_NOTIMPL",
    E_FAIL: "E_FAIL",
    ERROR_FILE_NOT_FOUND: "ERROR_FILE_NOT_FOUND",
    ERROR_PATH_NOT_FOUND: "ERROR_PATH_NOT_FOUND",
    ERROR_INVALID_HANDLE: "ERROR_INVALID_HANDLE",
    ERROR_INVALID_DATA: "ERROR_INVALID_DATA",
    ERROR_SHARING_VIOLATION: "ERROR_SHARING_VIOLATION",
    ERROR_NOT_SUPPORTED: "ERROR_NOT_SUPPORTED",
    ERROR_FILE_EXISTS: "ERROR_FILE_EXISTS",
    ERROR_INVALID_PASSWORD: "ERROR_INVALID_PASSWORD",
    ERROR_DIR_NOT_EMPTY: "ERROR_DIR_NOT_EMPTY",
    ERROR_ALREADY_EXISTS: "ERROR_ALREADY_EXISTS",
    ERROR_DIRECTORY: "ERROR_DIRECTORY",
    ERROR_BUSY: "ERROR_BUSY",
    ERROR_CRC: "ERROR_CRC",
    ERROR_TOO_MANY_OPEN_FILES: "ERROR_TOO_MANY_OPEN_FILES",
    ERROR_WRITE_PROTECT: "ERROR_WRITE_PROTECT",
    ERROR_HANDLE_DISK_FULL: "ERROR_HANDLE_DISK_FULL",
    ERROR_DISK_FULL: "ERROR_DISK_FULL",
    ERROR_FILENAME_EXCED_RANGE: "ERROR_FILENAME_EXCED_RANGE",
    ERROR_FILE_TOO_LARGE: "ERROR_FILE_TOO_LARGE",
    ERROR_IO_DEVICE: "ERROR_IO_DEVICE",
    ERROR_DISK_QUOTA_EXCEEDED: "ERROR_DISK_QUOTA_EXCEEDED",
    ERROR_OBJECT_EXISTS: "ERROR_OBJECT_EXISTS",
    ERROR_INVALID_STATE: "ERROR_INVALID_STATE",
    RPC_S_SERVER_UNAVAILABLE: "RPC_S_SERVER_UNAVAILABLE",
    ERROR_HOST_NODE_NOT_RESOURCE_OWNER: "ERROR_HOST_NODE_NOT_RESOURCE_OWNER",
    RPC_S_CALL_FAILED: "RPC_S_CALL_FAILED",
    RPC_S_CALL_FAILED_DNE: "RPC_S_CALL_FAILED_DNE",
    ERROR_TIMEOUT: "ERROR_TIMEOUT",
    CERT_E_EXPIRED: "CERT_E_EXPIRED",
    CERT_E_UNTRUSTEDROOT: "CERT_E_UNTRUSTEDROOT",
    CERT_E_CHAINING: "CERT_E_CHAINING",
    TRUST_E_FAIL: "TRUST_E_FAIL",
    CERT_E_CN_NO_MATCH: "CERT_E_CN_NO_MATCH",
    CRYPT_E_REVOKED: "CRYPT_E_REVOKED",
    CRYPT_E_NOT_FOUND: "CRYPT_E_NOT_FOUND",
    CRYPT_E_NO_MATCH: "CRYPT_E_NO_MATCH",
    NTE_BAD_SIGNATURE: "NTE_BAD_SIGNATURE",
    NTE_BAD_KEY: "NTE_BAD_KEY",
    NTE_BAD_ALGID: "NTE_BAD_ALGID",
    CERTSRV_E_BAD_REQUESTSUBJECT: "CERTSRV_E_BAD_REQUESTSUBJECT",
    CERTSRV_E_NO_REQUEST: "CERTSRV_E_NO_REQUEST",
    CERTSRV_E_BAD_REQUESTSTATUS: "CERTSRV_E_BAD_REQUESTSTATUS",
    CERTSRV_E_PROPERTY_EMPTY: "CERTSRV_E_PROPERTY_EMPTY",
    CERTSRV_E_INVALID_CA_CERTIFICATE: "CERTSRV_E_INVALID_CA_CERTIFICATE",
    CERTSRV_E_ENROLL_DENIED: "CERTSRV_E_ENROLL_DENIED",
    CERTSRV_E_UNSUPPORTED_CERT_TYPE: "CERTSRV_E_UNSUPPORTED_CERT_TYPE",
    CERTSRV_E_TEMPLATE_DENIED: "CERTSRV_E_TEMPLATE_DENIED",
    CERTSRV_E_BAD_RENEWAL_CERT_ATTRIBUTE: "CERTSRV_E_BAD_RENEWAL_CERT_ATTRIBUTE",
    CERTSRV_E_KEY_LENGTH: "CERTSRV_E_KEY_LENGTH",
    CERTSRV_E_ADMIN_DENIED_REQUEST: "CERTSRV_E_ADMIN_DENIED_REQUEST",
    CERTSRV_E_BAD_REQUEST_KEY_ARCHIVAL: "CERTSRV_E_BAD_REQUEST_KEY_ARCHIVAL",
    CERTSRV_E_SUBJECT_DNS_REQUIRED: "CERTSRV_E_SUBJECT_DNS_REQUIRED",
    JET_ERR_BACKUP_IN_PROGRESS: "JET_errBackupInProgress",
    JET_ERR_RESTORE_IN_PROGRESS: "JET_errRestoreInProgress",
    JET_ERR_NO_BACKUP: "JET_errNoBackup",
    JET_ERR_INVALID_BACKUP_SEQUENCE: "JET_errInvalidBackupSequence",
    JET_ERR_INVALID_BACKUP: "JET_errInvalidBackup",
    JET_ERR_ENDING_RESTORE_LOG_TOO_LOW: "JET_errEndingRestoreLogTooLow",
    JET_ERR_STARTING_RESTORE_LOG_TOO_HIGH: "JET_errStartingRestoreLogTooHigh",
    JET_ERR_MISSING_RESTORE_LOG_FILES: "JET_errMissingRestoreLogFiles",
    JET_ERR_MISSING_FULL_BACKUP: "JET_errMissingFullBackup",
    JET_ERR_MISSING_FILE_TO_BACKUP: "JET_errMissingFileToBackup",
    JET_ERR_LOG_FILE_CORRUPT: "JET_errLogFileCorrupt",
    JET_ERR_BAD_LOG_SIGNATURE: "JET_errBadLogSignature",
    JET_ERR_MISSING_LOG_FILE: "JET_errMissingLogFile",
    JET_ERR_DATABASE_CORRUPTED: "JET_errDatabaseCorrupted",
    JET_ERR_BACKUP_ABORT_BY_SERVER: "JET_errBackupAbortByServer",
    JET_ERR_CHECKPOINT_CORRUPT: "JET_errCheckpointCorrupt",
    JET_ERR_RESTORE_OF_NON_BACKUP_DATABASE: "JET_errRestoreOfNonBackupDatabase",
}


def hresult_from_win32(code: int) -> int:
    """Wrap a Win32 error code as an HRESULT (spec §1.5 helper)."""
    return code if code <= 0 else (0x80070000 | (code & 0xFFFF))


def hresult_name(hresult: int) -> str:
    """Symbolic name of an HRESULT, or its hex form when unknown."""
    return HRESULT_NAMES.get(hresult & 0xFFFFFFFF, f"HRESULT_{hresult & 0xFFFFFFFF:08X}")


class CertSrvError(Exception):
    """A failure with the spec's HRESULT.

    :param hresult: the HRESULT (spec §1.5).
    :param function: the operation or subject that failed (e.g. ``"backup"``, ``"CertSrvBackupOpenFile"``).
    :param message: one line naming what went wrong.
    """

    default_hresult: ClassVar[int] = E_FAIL
    http_status: ClassVar[int] = 500

    def __init__(self, hresult: int | None = None, function: str = "", message: str = "") -> None:
        self.hresult = (self.default_hresult if hresult is None else hresult) & 0xFFFFFFFF
        self.function = function
        self.message = message
        super().__init__(str(self))

    @property
    def name(self) -> str:
        """The HRESULT's symbolic name."""
        return hresult_name(self.hresult)

    def __str__(self) -> str:
        subject = f"{self.function}: " if self.function else ""
        return f"{subject}0x{self.hresult:08X} {self.name}: {self.message}"

    def __reduce__(self) -> tuple[type[CertSrvError], tuple[int, str, str]]:
        return (type(self), (self.hresult, self.function, self.message))

    def to_json(self) -> dict[str, object]:
        """The error as the service's JSON body."""
        return {
            "hresult": self.hresult,
            "hresult_hex": f"0x{self.hresult:08X}",
            "name": self.name,
            "function": self.function,
            "message": self.message,
            "error": type(self).__name__,
        }


class InvalidArgument(CertSrvError):
    """Malformed or unacceptable input (bad CSR, unknown name, bad flag)."""

    default_hresult = E_INVALIDARG
    http_status = 400


class AccessDenied(CertSrvError):
    """The caller lacks the role the call needs (spec §1.6)."""

    default_hresult = E_ACCESSDENIED
    http_status = 403


class NotFound(CertSrvError):
    """The named request, certificate, file or session does not exist."""

    default_hresult = ERROR_FILE_NOT_FOUND
    http_status = 404


class SequenceError(CertSrvError):
    """A call made out of the order spec §2.20 allows."""

    default_hresult = E_UNEXPECTED
    http_status = 409


class Conflict(CertSrvError):
    """The target is busy, exists already or is in a state that forbids the call."""

    default_hresult = ERROR_BUSY
    http_status = 409


class CorruptData(CertSrvError):
    """A log, database, checkpoint or backup file failed its checks."""

    default_hresult = JET_ERR_LOG_FILE_CORRUPT
    http_status = 500


class Unavailable(CertSrvError):
    """The service could not be reached or is shutting down."""

    default_hresult = RPC_S_SERVER_UNAVAILABLE
    http_status = 503


class StorageError(CertSrvError):
    """The store cannot write now: the disk is full (degraded, recovers by itself) or a log sync failed
    (writes stop until a restart). Reads may still work."""

    default_hresult = ERROR_DISK_FULL
    http_status = 507  # RFC 4918 §11.5 Insufficient Storage


class NotWriter(CertSrvError):
    """A write sent to a standby node (issue 14): this node does not hold the writer lease.

    :param writer: who does: ``{"holder": "host:pid", "epoch": N, "endpoints": ["unix:/..", "host:8443"]}``;
        a client follows ``writer["endpoints"]`` first. Without ``message`` the line is built from it.
    """

    default_hresult = ERROR_HOST_NODE_NOT_RESOURCE_OWNER
    http_status = 503

    def __init__(self, hresult: int | None = None, function: str = "", message: str = "",
                 writer: dict[str, object] | None = None) -> None:
        self.writer: dict[str, object] = dict(writer or {})
        super().__init__(hresult, function, message or self.standby_message(self.writer))

    @staticmethod
    def standby_message(writer: dict[str, object]) -> str:
        """The contract's line: who the writer is and what to do."""
        holder = writer.get("holder") or "unknown"
        endpoints = writer.get("endpoints")
        at = ", ".join(str(e) for e in endpoints) if isinstance(endpoints, (list, tuple)) and endpoints else \
            "no endpoint advertised"
        return (f"this node is a standby; the writer is {holder} (epoch {writer.get('epoch', '?')}, at {at}); "
                "send writes there, or give --server every node")

    @classmethod
    def naming(cls, subject: str, writer: dict[str, object]) -> NotWriter:
        """The refusal of a write on a standby (the store's): ``subject`` (the database), the writer named;
        while no node holds the lease (the writer died, a standby takes it within the lease time), says so."""
        if writer.get("holder"):
            return cls(ERROR_HOST_NODE_NOT_RESOURCE_OWNER, subject, cls.standby_message(writer), writer)
        return cls(ERROR_HOST_NODE_NOT_RESOURCE_OWNER, subject,
                   f"this node is a standby and no node holds the writer lease now (epoch {writer.get('epoch', '?')}); "
                   "a standby takes it within the lease time: retry, or give --server every node", writer)

    def __reduce__(self) -> tuple[type[CertSrvError], tuple[int, str, str, dict[str, object]]]:  # type: ignore[override]
        return (type(self), (self.hresult, self.function, self.message, self.writer))

    def to_json(self) -> dict[str, object]:
        """The error JSON plus ``writer`` (HA-CONTRACT: 503 with ``"writer": {...}``)."""
        return {**super().to_json(), "writer": dict(self.writer)}


class OutcomeUnknown(CertSrvError):
    """A write whose outcome cannot be known (issue 14): the database connection was lost while committing, or
    the client lost its connection after sending. It may or may not have been written."""

    default_hresult = RPC_S_CALL_FAILED
    http_status = 503


ERROR_CLASSES: dict[str, type[CertSrvError]] = {
    cls.__name__: cls
    for cls in (
        CertSrvError,
        InvalidArgument,
        AccessDenied,
        NotFound,
        SequenceError,
        Conflict,
        CorruptData,
        Unavailable,
        StorageError,
        NotWriter,
        OutcomeUnknown,
    )
}


def error_from_json(body: dict[str, object]) -> CertSrvError:
    """Rebuild the exception a service sent as JSON (the client's half of the mapping)."""
    cls = ERROR_CLASSES.get(str(body.get("error", "")), CertSrvError)
    raw = body.get("hresult", E_FAIL)
    hresult = raw if isinstance(raw, int) else E_FAIL
    if issubclass(cls, NotWriter):
        writer = body.get("writer")
        return cls(hresult, str(body.get("function", "")), str(body.get("message", "")),
                   writer=writer if isinstance(writer, dict) else None)
    return cls(hresult, str(body.get("function", "")), str(body.get("message", "")))


# errno -> (HRESULT, exception class, what the operator should do next). Every file system failure of a verb
# goes through from_oserror, so one errno always reads the same way (issue 10: no traceback reaches a user).
_OSERROR_MAP: dict[int, tuple[int, type[CertSrvError], str]] = {
    errno.ENOSPC: (ERROR_DISK_FULL, CertSrvError,
                   "no space left on the device; free space there or choose a directory on another file system"),
    errno.EDQUOT: (ERROR_DISK_QUOTA_EXCEEDED, CertSrvError,
                   "disk quota exceeded; free space within the quota or choose another directory"),
    errno.EFBIG: (ERROR_FILE_TOO_LARGE, CertSrvError,
                  "the file is larger than the file system allows; choose another file system"),
    errno.EROFS: (ERROR_WRITE_PROTECT, CertSrvError,
                  "the file system is mounted read-only; choose a writable directory or remount it read-write"),
    errno.EACCES: (E_ACCESSDENIED, AccessDenied,
                   "permission denied; choose a directory this user may write, or run as its owner"),
    errno.EPERM: (E_ACCESSDENIED, AccessDenied,
                  "operation not permitted; choose a directory this user may write, or run as its owner"),
    errno.ENOENT: (ERROR_FILE_NOT_FOUND, NotFound, "no such file or directory; check the path"),
    errno.ENOTDIR: (ERROR_DIRECTORY, InvalidArgument, "a part of the path is not a directory; check the path"),
    errno.EISDIR: (ERROR_DIRECTORY, InvalidArgument, "is a directory; give a file name"),
    errno.EEXIST: (ERROR_FILE_EXISTS, Conflict, "already exists; remove it or choose another name"),
    errno.ENOTEMPTY: (ERROR_DIR_NOT_EMPTY, Conflict, "the directory is not empty; empty it or choose another"),
    errno.ENAMETOOLONG: (ERROR_FILENAME_EXCED_RANGE, InvalidArgument, "the path is too long; choose a shorter one"),
    errno.EMFILE: (ERROR_TOO_MANY_OPEN_FILES, CertSrvError, "too many open files; raise the limit (ulimit -n)"),
    errno.ENFILE: (ERROR_TOO_MANY_OPEN_FILES, CertSrvError, "too many open files on the system; try again later"),
    errno.EIO: (ERROR_IO_DEVICE, CertSrvError, "input/output error from the device; check the disk (dmesg)"),
    errno.ENOMEM: (E_OUTOFMEMORY, CertSrvError, "out of memory; free memory and try again"),
    errno.EBUSY: (ERROR_BUSY, Conflict, "the device or resource is busy; try again when it is free"),
}


_WRITE_SIDE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def oserror_hresult(exc: OSError) -> int:
    """The HRESULT of a file system error (Win32 code wrapped per spec §1.5; E_FAIL when errno is unknown)."""
    mapped = _OSERROR_MAP.get(exc.errno or 0)
    return mapped[0] if mapped else E_FAIL


def from_oserror(exc: OSError, subject: str | os.PathLike[str] | None = None, doing: str = "",
                 after: str = "") -> CertSrvError:
    """A :class:`CertSrvError` for a file system failure, naming the path and what to do next.

    ``certsrv: PATH: 0x80070070 ERROR_DISK_FULL: cannot write: no space left on the device; free space ...``

    :param exc: the OSError (its ``filename`` is the path when ``subject`` is not given).
    :param subject: the path or operation that failed (default: the OSError's file name).
    :param doing: what was being done, e.g. ``"cannot write the backup set"``.
    :param after: what else the operator should know, appended (e.g. what was kept and how to retry).
    """
    name = exc.filename if subject is None else subject
    if subject is None and exc.filename2 is not None and exc.errno in _WRITE_SIDE:
        name = exc.filename2  # a copy or rename: the space or the write permission lacking is the target's
    where = os.fsdecode(name) if name is not None else ""
    mapped = _OSERROR_MAP.get(exc.errno or 0)
    if mapped is None:
        hresult, cls, advice = E_FAIL, CertSrvError, exc.strerror or str(exc) or type(exc).__name__
    else:
        hresult, cls, advice = mapped
    message = f"{doing}: {advice}" if doing else advice
    return cls(hresult, where, f"{message}; {after}" if after else message)
