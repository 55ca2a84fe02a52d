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

Every call of a session, BackupPrepare included, carries ``X-Backup-Hold: connection``: the service
binds the session to the connection, so a client that exits or is killed without BackupEnd releases the
backup at once (spec §2.20 [INF]) instead of after the idle limit. On the Unix socket the whole session
runs on one keep-alive connection (:class:`_UnixReader`).
"""

from __future__ import annotations

import contextlib
import json
import socket
from typing import Any, NoReturn, Protocol

import httpx

from ..errors import (
    E_FAIL,
    E_INVALIDARG,
    RPC_S_SERVER_UNAVAILABLE,
    CertSrvError,
    InvalidArgument,
    Unavailable,
    error_from_json,
)
from ..spec import CSBACKUP_TYPE_FULL, CSBACKUP_TYPE_LOGS_ONLY, FULL, INCREMENTAL, MAX_READ, MAX_SEND


class Transport(Protocol):
    """What a backup session needs of its :class:`pycertsrv.client.Client`: a Protocol, so that this module does
    not import the client module, which offers ``client.backup()`` from it (no import cycle)."""

    @property
    def address(self) -> str: ...

    @property
    def _http(self) -> httpx.Client: ...

    def call(self, method: str, path: str, json: Any = None, params: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> Any: ...

    def close(self) -> None: ...

    def _check_name(self) -> None: ...

    def _transport_error(self, e: httpx.TransportError, what: str) -> CertSrvError: ...

MID_ANSWER = ("the service closed the connection mid-answer (if the service is up, the session was ended: "
              "see certsrv backup --status, then run the backup again)")
HOLD = {"X-Backup-Hold": "connection"}  # see backup_routes: the session ends when this connection closes


class _UnixReader:
    """A keep-alive HTTP/1.1 connection to the service's Unix socket for BackupRead alone.

    httpx parses bodies in 64 KiB pieces and joins them; for multi-megabyte chunks that costs more
    than the transfer. Here the body is received straight into the caller's buffers: whole
    (:meth:`post`) or piece by piece (:meth:`begin` then :meth:`readinto`).
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.left = 0  # body bytes of the current answer not received yet
        self._rest = b""  # body bytes received with the headers
        self._close_after = False  # the service said Connection: close

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
        self.left = 0
        self._rest = b""

    def post(self, target: str, method: str = "POST", body: bytes = b"") -> tuple[int, bytes]:
        """``method target`` with a JSON ``body`` (or none); returns (status, answer body)."""
        status, length = self.begin(target, method, body)
        answer = bytearray(length)
        self.readinto(memoryview(answer))
        return status, bytes(answer)

    def begin(self, target: str, method: str = "POST", body: bytes = b"") -> tuple[int, int]:
        """``method target`` with a JSON ``body`` (or none); returns (status, answer length), the answer left
        to :meth:`readinto`."""
        if self.left:
            self.close()  # an unread body: the connection cannot carry another request
        fresh = self.sock is None
        if self.sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(self.timeout)
            s.connect(self.path)
            self.sock = s
        try:
            kind = "Content-Type: application/json\r\n" if body else ""
            hold = "".join(f"{k}: {v}\r\n" for k, v in HOLD.items())
            self.sock.sendall(f"{method} {target} HTTP/1.1\r\nHost: certsrv\r\n{kind}{hold}"
                              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            return self._response()
        except _StaleConnection:
            # The service closed an idle keep-alive connection before reading the request: nothing was
            # read from the file, so asking again on a new connection is safe.
            self.close()
            if fresh:
                raise ConnectionError("the service closed the connection") from None
            return self.begin(target, method, body)
        except BaseException:
            self.close()
            raise

    def _response(self) -> tuple[int, int]:
        assert self.sock is not None
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                if not buf:
                    raise _StaleConnection()
                raise ConnectionError(MID_ANSWER)
            buf += chunk
            if len(buf) > 65536:
                raise ConnectionError("answer headers too long")
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        length = int(headers.get("content-length", "-1"))
        if length < 0 or len(rest) > length:
            raise ConnectionError("answer without a usable Content-Length")
        self.left, self._rest = length, rest
        self._close_after = headers.get("connection", "").lower() == "close"
        if not length and self._close_after:
            self.close()
        return status, length

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` with the next body bytes (fewer only at the body's end); returns how many."""
        want = min(len(buf), self.left)
        got = 0
        try:
            if self._rest:
                got = min(len(self._rest), want)
                buf[:got] = self._rest[:got]
                self._rest = self._rest[got:]
            while got < want:
                assert self.sock is not None
                n = self.sock.recv_into(buf[got:want])
                if n == 0:
                    raise ConnectionError(MID_ANSWER)
                got += n
        except BaseException:
            self.close()
            raise
        self.left -= got
        if not self.left and self._close_after:
            self.close()
        return got


class _StaleConnection(Exception):
    pass


class BackupSession:
    """A prepared backup session on a service (the certbcli ``HCSBC`` of a backup).

    :param client: the connection.
    :param info: the service's answer to BackupPrepare (handle, kind, ca_name, identity).
    """

    def __init__(self, client: Transport, info: dict[str, Any], reader: _UnixReader | None = None) -> None:
        self.client = client
        self.handle: str = str(info["handle"])
        self.kind: str = str(info["kind"])
        self.ca_name: str = str(info.get("ca_name", ""))
        self.identity: str = str(info.get("identity", ""))
        self.ended = False
        self.owns_client = False  # certbcli: close the client at CertSrvBackupEnd
        self.end_result: dict[str, Any] | None = None
        self._base = f"/backup/sessions/{self.handle}"
        self._reader = reader if reader is not None else _reader_for(client)
        self._eof = False  # readinto saw the open file's end
        self._held = memoryview(b"")  # TLS: received by readinto, not handed out yet
        self.read_ask = MAX_SEND  # bytes one BackupRead of readinto asks for (the server caps it at MAX_SEND)
        # Bytes of the open file not received yet (its size from BackupOpenFile; None: no file opened here).
        self._unread: int | None = None

    @classmethod
    def prepare(cls, client: Transport, kind: str | None = FULL, *, grbit: int | None = None,
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
        body = {"grbit": int(grbit or 0), "flags": int(CSBACKUP_TYPE_FULL if flags is None else flags)}
        if len(getattr(client, "endpoints", ())) > 1:
            # Several nodes (issue 14): the session lives on one, the first that answers (a read picks it).
            client.call("GET", "/online")
        reader = _reader_for(client)
        if reader is None:
            return cls(client, client.call("POST", "/backup/sessions", json=body, headers=HOLD))
        client._check_name()
        try:
            # Prepared on the connection the whole session uses: it holds the session from the start.
            info = _json_call(client, reader, "POST", "/backup/sessions", body)
        except BaseException:
            reader.close()
            raise
        return cls(client, info, reader)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON call of this session: on the Unix socket over the session's own keep-alive connection
        (a fraction of a general client call's cost), otherwise through the client."""
        if self._reader is None:
            return self.client.call(method, path, json=body, headers=HOLD)
        return _json_call(self.client, self._reader, method, path, body)

    def _names(self, what: str) -> list[str]:
        body = self._call("POST", f"{self._base}/{what}")
        return [str(n) for n in body["names"]]

    def database_names(self) -> list[str]:
        """BackupGetDatabaseNames: tag-prefixed ('D') database files."""
        return self._names("database-names")

    def backup_logs(self) -> list[str]:
        """BackupGetBackupLogs: tag-prefixed ('!') log generations (the server rolls the log); ``lineage`` keeps
        the generations' writer lease epochs (issue 14; None from a server before it)."""
        body = self._call("POST", f"{self._base}/logs")
        lineage = body.get("lineage")
        self.lineage: list[dict[str, int]] | None = lineage if isinstance(lineage, list) else None
        return [str(n) for n in body["names"]]

    def dynamic_files(self) -> list[str]:
        """BackupGetDynamicFileList: untagged paths of published files."""
        return self._names("dynamic-files")

    def database_locations(self) -> list[str]:
        """RestoreGetDatabaseLocations: 'D' database, U+0082 log dir, U+0083 system dir."""
        return self._names("locations")

    def open_file(self, name: str, hint: int = 0) -> int:
        """BackupOpenFile: open a listed name (tag removed); returns its size in bytes."""
        body = self._call("POST", f"{self._base}/open", {"name": name, "hint": int(hint)})
        self._unread = int(body["size"])
        return int(body["size"])

    def read(self, n: int = MAX_READ) -> bytes:
        """BackupRead: the next at most ``n`` bytes (the server may return fewer); b"" at the end of the file."""
        what = "BackupRead"
        if self._held:  # bytes readinto received and has not handed out yet
            data = bytes(self._held[:int(n)])
            self._held = self._held[len(data):]
            return data
        if self._reader is not None and self._reader.left:  # the rest of an answer readinto began
            buf = bytearray(min(int(n), self._reader.left))
            return bytes(buf[:self.readinto(buf)])
        if self._reader is not None:
            try:
                status, content = self._reader.post(f"{self._base}/read?n={int(n)}")
            except OSError as e:
                raise Unavailable(RPC_S_SERVER_UNAVAILABLE, self.client.address,
                                  f"{what}: the service does not answer ({e})") from None
        else:
            http: httpx.Client = self.client._http  # raw bytes: the JSON helper does not fit
            try:
                resp = http.post(f"{self._base}/read", params={"n": int(n)}, headers=HOLD)
            except httpx.TransportError as e:
                raise self.client._transport_error(e, what) from None
            status, content = resp.status_code, resp.content
        if 200 <= status < 300:
            if self._unread is not None:
                self._unread = max(self._unread - len(content), 0)
            return content
        self._raise_error(status, content, what)

    @staticmethod
    def _raise_error(status: int, content: bytes, what: str) -> NoReturn:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if isinstance(body, dict) and "hresult" in body:
            raise error_from_json(body)
        raise CertSrvError(E_FAIL, what, f"HTTP {status}: {content[:200]!r}")

    def readinto(self, buf: memoryview | bytearray) -> int:
        """BackupRead into ``buf``: the next bytes of the open file, as many as fit; 0 at the end of the file.

        On the Unix socket one BackupRead asks for up to MAX_SEND bytes (sent with sendfile) and its body
        is received piece by piece into the caller's buffers: no per-chunk round trip or allocation.
        """
        view = memoryview(buf).cast("B")
        if self._unread == 0 and not self._held:  # the whole announced size came: no request for the end
            return 0
        if self._reader is None:  # TLS: whole MAX_READ answers, handed out as the buffers ask
            if not self._held:
                self._held = memoryview(self.read(MAX_READ))
            n = min(len(view), len(self._held))
            view[:n] = self._held[:n]
            self._held = self._held[n:]
            return n
        if not self._reader.left:
            if self._eof:
                return 0
            try:
                status, length = self._reader.begin(f"{self._base}/read?n={int(self.read_ask)}")
                if not 200 <= status < 300:
                    body = bytearray(length)
                    self._reader.readinto(memoryview(body))
                    self._raise_error(status, bytes(body), "BackupRead")
            except OSError as e:
                raise Unavailable(RPC_S_SERVER_UNAVAILABLE, self.client.address,
                                  f"BackupRead: the service does not answer ({e})") from None
            if not length:
                self._eof = True
                return 0
        try:
            got = self._reader.readinto(view)
            if self._unread is not None:
                self._unread = max(self._unread - got, 0)
            return got
        except OSError as e:
            raise Unavailable(RPC_S_SERVER_UNAVAILABLE, self.client.address,
                              f"BackupRead: the service does not answer ({e})") from None

    def close_file(self) -> None:
        """BackupClose."""
        self._eof = False
        self._held = memoryview(b"")
        self._unread = None
        if self._reader is not None and self._reader.left:
            self._reader.close()  # the file was not read to its end: drop the rest of the answer
        self._call("POST", f"{self._base}/close")

    def truncate_logs(self) -> list[int]:
        """BackupTruncateLogs; returns the generations deleted."""
        body = self._call("POST", f"{self._base}/truncate")
        return [int(g) for g in body.get("deleted", [])]

    def end(self) -> dict[str, Any]:
        """BackupEnd: the server records a complete backup and releases its lock (a second End: E_UNEXPECTED)."""
        self.ended = True
        try:
            result: dict[str, Any] = self._call("DELETE", self._base)
        finally:
            if self._reader is not None:
                self._reader.close()
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


def _reader_for(client: Transport) -> _UnixReader | None:
    sock = getattr(client, "socket_path", None)
    return _UnixReader(str(sock), 300.0) if sock is not None else None


def _json_call(client: Transport, reader: _UnixReader, method: str, path: str, body: dict[str, Any] | None) -> Any:
    data = json.dumps(body).encode() if body is not None else b""
    try:
        status, content = reader.post(path, method, data)
    except OSError as e:
        raise Unavailable(RPC_S_SERVER_UNAVAILABLE, client.address,
                          f"{method} {path}: the service does not answer ({e})") from None
    if not 200 <= status < 300:
        BackupSession._raise_error(status, content, f"{method} {path}")
    try:
        return json.loads(content)
    except ValueError:
        raise CertSrvError(E_FAIL, f"{method} {path}", f"HTTP {status}: the answer is not JSON") from None


def backup_status(client: Transport) -> dict[str, Any] | None:
    """The backup session running on the service (holder, start, kind, phase, progress), or None.

    :param client: the connection (Operator role).
    """
    session: dict[str, Any] | None = client.call("GET", "/backup/status")["session"]
    return session


def abort_backup(client: Transport) -> dict[str, Any]:
    """End the running backup session at once, whoever holds it; returns what it was (its last status).

    :param client: the connection (Operator role).
    """
    session: dict[str, Any] = client.call("POST", "/backup/abort")["session"]
    return session


def open_backup(client: Transport, kind: str = FULL) -> BackupSession:
    """``client.backup(kind)``: prepare a session to use in a ``with`` block.

    :param client: the connection.
    :param kind: ``"full"`` or ``"incremental"``.
    """
    return BackupSession.prepare(client, kind)


__all__ = ["BackupSession", "abort_backup", "backup_status", "open_backup"]
