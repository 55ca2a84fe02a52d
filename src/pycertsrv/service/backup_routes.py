"""Backup endpoints under ``/backup/...`` (the ICertAdminD backup methods, spec §2.19), Operator only.

Each handler parses, calls one :class:`pycertsrv.backup.BackupManager` method in a worker thread
and renders; the state machine and every rule live in the manager (spec §2.20). Only a caller
holding the Operator role gets through (spec §1.6: the backup privilege; Administrator alone
is refused). A session belongs to the principal that prepared it: another caller presenting
its handle gets E_UNEXPECTED, as if no session existed.

======  ==========================================  ===========================================
method  path                                        certbcli function
======  ==========================================  ===========================================
POST    /backup/sessions                            CertSrvBackupPrepare  {grbit, flags}
POST    /backup/sessions/{h}/database-names         CertSrvBackupGetDatabaseNames
POST    /backup/sessions/{h}/logs                   CertSrvBackupGetBackupLogs (rolls the log)
POST    /backup/sessions/{h}/dynamic-files          CertSrvBackupGetDynamicFileList
POST    /backup/sessions/{h}/locations              CertSrvRestoreGetDatabaseLocations
POST    /backup/sessions/{h}/open                   CertSrvBackupOpenFile  {name}
POST    /backup/sessions/{h}/read?n=N               CertSrvBackupRead (raw bytes; empty = EOF)
POST    /backup/sessions/{h}/close                  CertSrvBackupClose
POST    /backup/sessions/{h}/truncate               CertSrvBackupTruncateLogs
DELETE  /backup/sessions/{h}                        CertSrvBackupEnd
GET     /backup/status                              (who runs a backup now, progress; no handle shown)
POST    /backup/abort                               (end the running session now, whoever holds it)
======  ==========================================  ===========================================

A client that sends ``X-Backup-Hold: connection`` with a session call binds the session to that
connection: once every connection so bound is closed (the client exited or was killed), the session
ends as by BackupEnd (spec §2.20 [INF]: "if the client goes away without End, the server should abort
and release the lock"). The watcher is :func:`pycertsrv.service.backup_watch.watch_sessions`, run by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from ..backup.session import BackupManager
from ..errors import E_INVALIDARG, RPC_S_SERVER_UNAVAILABLE, InvalidArgument, Unavailable
from ..spec import MAX_READ, MAX_SEND
from . import auth, backup_watch
from .middleware import json_response, read_model
from .openapi import add_route

log = logging.getLogger(__name__)
OPERATOR_ONLY = frozenset({auth.OPERATOR})
HANDLE = "{handle:[0-9a-f]{32}}"
SEND_BUFFER = 4 << 20
HOLD_HEADER = "X-Backup-Hold"


class PrepareBody(BaseModel):
    """``POST /backup/sessions`` body: BackupPrepare's grbitJet and dwBackupFlags."""

    model_config = ConfigDict(extra="forbid", strict=True)
    grbit: int = Field(0, ge=0, le=0xFFFFFFFF)
    flags: int = Field(1, ge=0, le=0xFFFFFFFF)


class OpenBody(BaseModel):
    """``POST /backup/sessions/{h}/open`` body."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: str = Field(max_length=4096)
    hint: int = Field(0, ge=0, le=0xFFFFFFFF)


def principal_id(request: web.Request) -> str:
    """The caller a session is bound to: the Unix uid, or the TLS client certificate's SHA-256."""
    p: auth.Principal = request["principal"]
    if p.kind == "tls" and p.cert_sha256:
        return f"cert-sha256:{p.cert_sha256}"
    return p.ident


def _manager(request: web.Request) -> BackupManager:
    mgr = request.app.get("backup")
    if mgr is None:
        raise Unavailable(RPC_S_SERVER_UNAVAILABLE, "backup", "backups are not available in this service")
    assert isinstance(mgr, BackupManager)
    return mgr


def _hold(request: web.Request, mgr: BackupManager, handle: str, pid: str) -> None:
    """Bind the session to this request's connection when the client asks for it (X-Backup-Hold)."""
    if request.headers.get(HOLD_HEADER, "").strip().lower() == "connection" and request.transport is not None:
        mgr.hold(handle, request.transport, pid)


async def _run(request: web.Request, method: str, *args: Any) -> Any:
    mgr = _manager(request)
    handle = request.match_info.get("handle")
    if handle is not None:
        _hold(request, mgr, handle, principal_id(request))
    fn = getattr(mgr, method)
    call = functools.partial(fn, *args) if handle is None else functools.partial(fn, handle, *args,
                                                                                   principal_id(request))
    return await asyncio.to_thread(call)


async def prepare(request: web.Request) -> web.Response:
    """BackupPrepare."""
    body = await read_model(request, PrepareBody)
    request["audit"].update(grbit=body.grbit, flags=body.flags)
    mgr = _manager(request)
    node = request.app.get("node")
    if node is not None and not node.is_writer:  # issue 14: busy if a backup runs on any node, else NotWriter
        await asyncio.to_thread(node.refuse_backup, "backup_prepare")
    pid = principal_id(request)
    handle = await asyncio.to_thread(mgr.prepare, pid, body.grbit, body.flags)
    _hold(request, mgr, handle, pid)
    info = await asyncio.to_thread(mgr.info, handle, pid)
    request["audit"].update(kind=info["kind"])
    return json_response(info)


async def database_names(request: web.Request) -> web.Response:
    """BackupGetDatabaseNames."""
    return json_response({"names": await _run(request, "database_names")})


async def backup_logs(request: web.Request) -> web.Response:
    """BackupGetBackupLogs (with the listed generations' epoch lineage, issue 14)."""
    names = await _run(request, "backup_logs")
    return json_response({"names": names, "lineage": await _run(request, "lineage")})


async def dynamic_files(request: web.Request) -> web.Response:
    """BackupGetDynamicFileList."""
    return json_response({"names": await _run(request, "dynamic_files")})


async def locations(request: web.Request) -> web.Response:
    """RestoreGetDatabaseLocations on a backup context."""
    return json_response({"names": await _run(request, "database_locations")})


async def open_file(request: web.Request) -> web.Response:
    """BackupOpenFile."""
    body = await read_model(request, OpenBody)
    return json_response({"size": await _run(request, "open_file", body.name)})


async def read(request: web.Request) -> web.StreamResponse:
    """BackupRead: the next chunk as raw bytes (at most MAX_SEND); an empty body is the end of the file.

    The bytes go from the file to the socket with sendfile(2) (no copy through Python) on the Unix
    socket; over TLS they are read in a worker thread and written MAX_READ at a time (bounded memory).
    """
    raw = request.query.get("n", str(MAX_READ))
    try:
        n = int(raw)
    except ValueError:
        raise InvalidArgument(E_INVALIDARG, "BackupRead", f"n={raw!r} is not a byte count") from None
    rng = await _run(request, "read_range", n)
    reading = backup_watch.reading(request, _manager(request), request.match_info["handle"])
    try:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = len(rng.prefix) + rng.count
        await resp.prepare(request)
        if rng.prefix:
            await resp.write(rng.prefix)
        if rng.count:
            transport = request.transport
            if transport is None:
                raise ConnectionResetError("connection lost")
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family == socket.AF_UNIX:
                # A larger send buffer: fewer sendfile rounds through the event loop that also serves
                # issuance (the kernel caps it at net.core.wmem_max).
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            offset, end = rng.offset, rng.offset + rng.count
            try:
                # closefd=False: the descriptor is the range's (see ReadRange.close). Sent MAX_READ at a time so
                # a client that stops draining is seen as idle (progress() is not called).
                with os.fdopen(rng.fd, "rb", closefd=False) as fobj:
                    while offset < end:
                        piece = min(MAX_READ, end - offset)
                        await asyncio.get_running_loop().sendfile(transport, fobj, offset, piece)
                        offset += piece
                        reading.progress()
            except NotImplementedError:  # TLS: no sendfile (nothing was sent by it)
                pass
            while offset < end:
                data = await asyncio.to_thread(os.pread, rng.fd, min(MAX_READ, end - offset), offset)
                if not data:
                    raise ConnectionResetError("file shrank while being sent")
                await resp.write(data)
                offset += len(data)
                reading.progress()
        await resp.write_eof()
        return resp
    finally:
        reading.done()
        rng.close()


async def close_file(request: web.Request) -> web.Response:
    """BackupClose."""
    await _run(request, "close_file")
    return json_response({})


async def truncate(request: web.Request) -> web.Response:
    """BackupTruncateLogs."""
    deleted = await _run(request, "truncate_logs")
    request["audit"].update(deleted=deleted)
    return json_response({"deleted": deleted})


async def end(request: web.Request) -> web.Response:
    """BackupEnd."""
    result = await _run(request, "end")
    request["audit"].update(result)
    return json_response(result)


async def status(request: web.Request) -> web.Response:
    """The backup in progress, if any."""
    return json_response({"session": await _run(request, "status")})


async def abort(request: web.Request) -> web.Response:
    """End the running backup session now (``certsrv backup --abort``)."""
    who = principal_id(request)
    ended = await _run(request, "abort", who)
    request["audit"].update(holder=ended["principal"], kind=ended["kind"], started=ended["started"])
    log.info("backup session of %s (%s, started %s) aborted by %s; pins and staging released",
             ended["principal"], ended["kind"], ended["started"], who)
    return json_response({"session": ended})


def _names_schema() -> dict[str, Any]:
    return {"type": "object", "required": ["names"],
            "properties": {"names": {"type": "array", "items": {"type": "string"}}}}


def _logs_schema() -> dict[str, Any]:
    run = {"type": "object", "properties": {k: {"type": "integer"} for k in ("epoch", "gen_low", "gen_high")}}
    schema = _names_schema()
    schema["properties"]["lineage"] = {"type": ["array", "null"], "items": run}
    return schema


def setup_routes(app: web.Application) -> None:
    """Create the app's BackupManager and register the backup endpoints."""
    authority = app["authority"]
    if app.get("backup") is None and getattr(authority, "store", None) is not None:
        svc = app["config"].service
        app["backup"] = BackupManager(authority, app["home"], svc.backup_session_timeout,
                                      idle_timeout=svc.backup_idle_timeout)

    async def _close(app: web.Application) -> None:
        mgr = app.get("backup")
        if isinstance(mgr, BackupManager):
            await asyncio.to_thread(mgr.close)  # abort a running session: staging removed, lock released

    app.on_cleanup.append(_close)
    app[backup_watch.READS] = {}
    # Sessions whose client is gone or idle are ended by watch_sessions (run by service.server).
    h = f"/backup/sessions/{HANDLE}"
    common: dict[str, Any] = {"tag": "backup", "roles": OPERATOR_ONLY}
    handle_param = [{"name": "handle", "in": "path", "required": True, "schema": {"type": "string"}}]
    add_route(app, "POST", "/backup/sessions", prepare, operation_id="backup_prepare",
              summary="BackupPrepare: start the one backup session (grbit 0/flags 0|1 full; flags 2 or grbit 1 "
                      "logs only)",
              description="spec §2.2, §2.20. Busy: same caller 0x8000FFFF, another 0xC80001F9, a backup through "
                          "another node 0x800700AA (issue 14: one backup per CA across the cluster); on a standby "
                          "node 0x80071397 naming the writer; logs-only without a full backup 0xC8000230, with "
                          "circular logging 0xC800020E; bad flags 0x80070057.",
              body={"type": "object", "additionalProperties": False,
                    "properties": {"grbit": {"type": "integer"}, "flags": {"type": "integer"}}},
              response={"type": "object", "required": ["handle", "kind", "ca_name", "identity"]}, **common)
    add_route(app, "POST", f"{h}/database-names", database_names, operation_id="backup_database_names",
              summary="BackupGetDatabaseNames: the database file, tagged 'D' (full backups, before the log list)",
              parameters=handle_param, response=_names_schema(), audit=False, **common)
    add_route(app, "POST", f"{h}/logs", backup_logs, operation_id="backup_logs",
              summary="BackupGetBackupLogs: roll the log, list the generations to back up, tagged '!'",
              description="Also `lineage` (issue 14): the writer lease epoch of the generations listed, as runs "
                          "{epoch, gen_low, gen_high}; the set's manifest records it.",
              parameters=handle_param, response=_logs_schema(), **common)
    add_route(app, "POST", f"{h}/dynamic-files", dynamic_files, operation_id="backup_dynamic_files",
              summary="BackupGetDynamicFileList: published CA certificates and CRLs (untagged)",
              parameters=handle_param, response=_names_schema(), audit=False, **common)
    add_route(app, "POST", f"{h}/locations", locations, operation_id="backup_locations",
              summary="RestoreGetDatabaseLocations: database file 'D', log dir U+0082, system dir U+0083",
              parameters=handle_param, response=_names_schema(), audit=False, **common)
    add_route(app, "POST", f"{h}/open", open_file, operation_id="backup_open",
              summary="BackupOpenFile: open a name this session listed (tag removed); returns its size",
              description="Any other name (relative, '..', another path, tagged) fails with ERROR_FILE_NOT_FOUND "
                          "and nothing is read; a listed path replaced by a symlink fails with E_ACCESSDENIED.",
              parameters=handle_param,
              body={"type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, "hint": {"type": "integer"}}},
              response={"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}}},
              audit=False, **common)
    read_op = add_route(app, "POST", f"{h}/read", read, operation_id="backup_read",
                        summary=f"BackupRead: next chunk of the open file (raw bytes, at most {MAX_SEND}); "
                                "empty at the end",
                        parameters=[*handle_param, {"name": "n", "in": "query", "required": False,
                                                    "schema": {"type": "integer", "minimum": 1}}],
                        response={"type": "string", "format": "binary"}, audit=False, **common)
    object.__setattr__(read_op, "response_content_type", "application/octet-stream")
    add_route(app, "POST", f"{h}/close", close_file, operation_id="backup_close",
              summary="BackupClose: close the open file (it counts as backed up when read to its end)",
              parameters=handle_param, audit=False, **common)
    add_route(app, "POST", f"{h}/truncate", truncate, operation_id="backup_truncate",
              summary="BackupTruncateLogs: delete generations this backup made redundant (all files read first)",
              parameters=handle_param, **common)
    add_route(app, "DELETE", h, end, operation_id="backup_end",
              summary="BackupEnd: end the session, record a complete backup, release the lock",
              parameters=handle_param, **common)
    add_route(app, "GET", "/backup/status", status, operation_id="backup_status",
              summary="The backup session in progress (holder, kind, phase, start, progress, idle time), or null",
              audit=False, **common)
    add_route(app, "POST", "/backup/abort", abort, operation_id="backup_abort",
              summary="End the running backup session now, whoever holds it; released as by BackupEnd",
              description="No session: 0x8000FFFF. The holder's next call fails with 0x8000FFFF naming the abort.",
              response={"type": "object", "required": ["session"]}, **common)
