"""Tell a caller when its write is committed but not yet applied (issue 10: "the writer must be told the truth").

The outermost middleware opens a :func:`pycertsrv.store.health.commit_scope` for each request; the
store and the group committer note there the LSNs of this caller's writes that are durable in the
redo log but not yet applied to SQLite (a degraded store, see :mod:`pycertsrv.store.health`). The
answer then carries them: a JSON object gains ``"commit": {"state": "committed, not yet applied",
"lsns": [...], "message": ...}``; an error's message names them too, so an error that follows a
durable write never hides it.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..store.health import COMMITTED_NOT_APPLIED, commit_note, commit_scope

HEADER = "X-CertSrv-Commit"


@web.middleware
async def commit_note_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Run the request in its own commit scope; mark the answer when a write of it is not yet applied."""
    with commit_scope() as notes:
        resp: web.StreamResponse = await handler(request)
    note = commit_note(notes)
    if note is None or not isinstance(resp, web.Response) or resp.content_type != "application/json":
        return resp
    resp.headers[HEADER] = f"{COMMITTED_NOT_APPLIED}; lsn={','.join(map(str, note['lsns']))}"
    try:
        body = json.loads(resp.body) if isinstance(resp.body, (bytes, bytearray)) else None
    except ValueError:
        return resp
    if isinstance(body, dict):
        if "hresult" in body and resp.status >= 400:
            body["message"] = (f"{body.get('message', '')}; NOTE: this call's write LSN "
                               f"{', '.join(map(str, note['lsns']))} is {COMMITTED_NOT_APPLIED}")
        body["commit"] = note
        resp.body = json.dumps(body).encode()
    return resp
