"""``BackupSession``: the client side of one backup session (spec §2.2–2.10).

::

    with client.backup("full") as session:          # BackupPrepare
        for entry in session.database_names():       # 'D' + path
            size = session.open_file(entry[1:])      # tag removed (spec §1.4)
            while chunk := session.read(1 << 20): ...
            session.close_file()
        ...
    # BackupEnd always runs when the block exits, also on error.

The server's rules (spec §2.20) are not duplicated here: every call goes to the service and its
error comes back as the same CertSrvError with the same HRESULT.
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import TYPE_CHECKING, Any

import httpx

from ..backup.session import CSBACKUP_TYPE_FULL, CSBACKUP_TYPE_LOGS_ONLY, FULL, INCREMENTAL, MAX_READ
from ..errors import (
    E_FAIL,
    E_INVALIDARG,
    RPC_S_SERVER_UNAVAILABLE,
    CertSrvError,
    InvalidArgument,
    Unavailable,
    error_from_json,
)

if TYPE_CHECKING:
    from .client import Client


class _UnixReader:
    """A keep-alive HTTP/1.1 connection to the service's Unix socket for BackupRead alone.

    httpx parses bodies in 64 KiB pieces and joins them; for multi-megabyte chunks that costs more
    than the transfer. Here the body is received straight into one preallocated buffer.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None

    def post(self, target: str) -> tuple[int, bytes]:
        """``POST target`` with an empty body; returns (status, body)."""
        fresh = self.sock is None
        if self.sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            s.connect(self.path)
            self.sock = s
        try:
            self.sock.sendall(f"POST {target} HTTP/1.1\r\nHost: certsrv\r\nContent-Length: 0\r\n\r\n".encode())
            return self._response()
        except _StaleConnection:
            # The service closed an idle keep-alive connection before reading the request: nothing was
            # read from the file, so asking again on a new connection is safe.
            self.close()
            if fresh:
                raise ConnectionError("the service closed the connection") from None
            return self.post(target)
        except BaseException:
            self.close()
            raise

    def _response(self) -> tuple[int, bytes]:
        assert self.sock is not None
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                if not buf:
                    raise _StaleConnection()
                raise ConnectionError("the service closed the connection mid-answer")
            buf += chunk
            if len(buf) > 65536:
                raise ConnectionError("answer headers too long")
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "-1"))
        if length < 0:
            raise ConnectionError("answer without Content-Length")
        body = bytearray(length)
        view = memoryview(body)
        got = min(len(rest), length)
        view[:got] = rest[:got]
        while got < length:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("the service closed the connection mid-answer")
            got += n
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, bytes(body)


class _StaleConnection(Exception):
    pass


class BackupSession:
    """A prepared backup session on a service (the certbcli ``HCSBC`` of a backup).

    :param client: the connection.
    :param info: the service's answer to BackupPrepare (handle, kind, ca_name, identity).
    """

    def __init__(self, client: Client, info: dict[str, Any]) -> None:
        self.client = client
        self.handle: str = str(info["handle"])
        self.kind: str = str(info["kind"])
        self.ca_name: str = str(info.get("ca_name", ""))
        self.identity: str = str(info.get("identity", ""))
        self.ended = False
        self.owns_client = False  # certbcli: close the client at CertSrvBackupEnd
        self.end_result: dict[str, Any] | None = None
        self._base = f"/backup/sessions/{self.handle}"
        sock = getattr(client, "socket_path", None)
        self._reader = _UnixReader(str(sock), 300.0) if sock is not None else None

    @classmethod
    def prepare(cls, client: Client, kind: str | None = FULL, *, grbit: int | None = None,
                flags: int | None = None) -> BackupSession:
        """BackupPrepare: ``kind`` ("full"/"incremental"), or the raw ``grbit``/``flags`` of spec §2.2.

        :param client: the connection.
        :param kind: the backup type (ignored when ``grbit`` or ``flags`` is given).
        :param grbit: ``grbitJet``.
        :param flags: ``dwBackupFlags``.
        """
        if grbit is None and flags is None:
            if kind not in (FULL, INCREMENTAL):
                raise InvalidArgument(E_INVALIDARG, "backup", f"unknown backup kind {kind!r} (full, incremental)")
            grbit, flags = 0, CSBACKUP_TYPE_FULL if kind == FULL else CSBACKUP_TYPE_LOGS_ONLY
        info = client.call("POST", "/backup/sessions", json={"grbit": int(grbit or 0),
                                                             "flags": int(CSBACKUP_TYPE_FULL if flags is None
                                                                          else flags)})
        return cls(client, info)

    def _names(self, what: str) -> list[str]:
        body = self.client.call("POST", f"{self._base}/{what}")
        return [str(n) for n in body["names"]]

    def database_names(self) -> list[str]:
        """BackupGetDatabaseNames: tag-prefixed ('D') database files."""
        return self._names("database-names")

    def backup_logs(self) -> list[str]:
        """BackupGetBackupLogs: tag-prefixed ('!') log generations (the server rolls the log)."""
        return self._names("logs")

    def dynamic_files(self) -> list[str]:
        """BackupGetDynamicFileList: untagged paths of published files."""
        return self._names("dynamic-files")

    def database_locations(self) -> list[str]:
        """RestoreGetDatabaseLocations: 'D' database, U+0082 log dir, U+0083 system dir."""
        return self._names("locations")

    def open_file(self, name: str, hint: int = 0) -> int:
        """BackupOpenFile: open a listed name (tag removed); returns its size in bytes."""
        body = self.client.call("POST", f"{self._base}/open", json={"name": name, "hint": int(hint)})
        return int(body["size"])

    def read(self, n: int = MAX_READ) -> bytes:
        """BackupRead: the next at most ``n`` bytes (the server may return fewer); b"" at the end of the file."""
        what = "BackupRead"
        if self._reader is not None:
            try:
                status, content = self._reader.post(f"{self._base}/read?n={int(n)}")
            except OSError as e:
                raise Unavailable(RPC_S_SERVER_UNAVAILABLE, self.client.address,
                                  f"{what}: the service does not answer ({e})") from None
        else:
            http: httpx.Client = self.client._http  # raw bytes: the JSON helper does not fit
            try:
                resp = http.post(f"{self._base}/read", params={"n": int(n)})
            except httpx.TransportError as e:
                raise self.client._transport_error(e, what) from None
            status, content = resp.status_code, resp.content
        if 200 <= status < 300:
            return content
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if isinstance(body, dict) and "hresult" in body:
            raise error_from_json(body)
        raise CertSrvError(E_FAIL, what, f"HTTP {status}: {content[:200]!r}")

    def close_file(self) -> None:
        """BackupClose."""
        self.client.call("POST", f"{self._base}/close")

    def truncate_logs(self) -> list[int]:
        """BackupTruncateLogs; returns the generations deleted."""
        body = self.client.call("POST", f"{self._base}/truncate")
        return [int(g) for g in body.get("deleted", [])]

    def end(self) -> dict[str, Any]:
        """BackupEnd: the server records a complete backup and releases its lock (a second End: E_UNEXPECTED)."""
        self.ended = True
        if self._reader is not None:
            self._reader.close()
        result: dict[str, Any] = self.client.call("DELETE", self._base)
        self.end_result = result
        return result

    def __enter__(self) -> BackupSession:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.ended:
            return
        if exc_type is None:
            self.end()
            return
        # Ending must not hide the error that got us here (the session also expires on the server).
        with contextlib.suppress(CertSrvError):
            self.end()


def open_backup(client: Client, kind: str = FULL) -> BackupSession:
    """``client.backup(kind)``: prepare a session to use in a ``with`` block.

    :param client: the connection.
    :param kind: ``"full"`` or ``"incremental"``.
    """
    return BackupSession.prepare(client, kind)


__all__ = ["BackupSession", "open_backup"]
