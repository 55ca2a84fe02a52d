"""``GET /ui/backups``: the recovery window of the configured backup directory as one HTML page.

The page is :func:`pycertsrv.backupset.catalog_html.render_html` over
:func:`pycertsrv.backupset.catalog.build_catalog` of ``[backup] dir`` (issue 16), for Operators and
Auditors (``auth.OPERATION_ROLES["ui_backups"]``). Reading and verifying the sets touches every
file, so it runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from ..errors import ERROR_FILE_NOT_FOUND, NotFound
from . import auth
from .openapi import add_route


def _page(home_root: Path, directory: str, max_full_age: str, max_incremental_age: str,
          archive: str | None = None) -> str:
    from ..backupset.catalog import build_catalog, parse_duration
    from ..backupset.catalog_html import render_html

    d = Path(directory)
    # issue 16: the archive's coverage too, once the CA has shipped there ([archive] dest, relative to the home).
    a = None if archive is None else Path(archive) if Path(archive).is_absolute() else home_root / archive
    cat = build_catalog(d if d.is_absolute() else home_root / d,
                        max_full_age=parse_duration(max_full_age, "backup.max_full_age"),
                        max_incremental_age=parse_duration(max_incremental_age, "backup.max_incremental_age"),
                        archive=a if a is not None and a.is_dir() else None)
    return render_html(cat)


async def backups_page(request: web.Request) -> web.Response:
    """The recovery-window page (text/html)."""
    cfg = request.app["config"].backup
    if not cfg.dir:
        raise NotFound(ERROR_FILE_NOT_FOUND, "/ui/backups",
                       "no backup directory is configured; set [backup] dir in certsrv.toml and restart")
    arc = request.app["config"].archive
    text = await asyncio.to_thread(_page, request.app["home"].root, cfg.dir, cfg.max_full_age,
                                   cfg.max_incremental_age, arc.dest if arc is not None else None)
    # The page carries its own CSS and script and loads nothing else.
    return web.Response(text=text, content_type="text/html", charset="utf-8",
                        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                            "script-src 'unsafe-inline'"})


def setup_routes(app: web.Application) -> None:
    """Register the page."""
    op = add_route(app, "GET", "/ui/backups", backups_page, operation_id="ui_backups", tag="control",
              summary="The recovery window of the configured backup directory, as a self-contained HTML page",
              description="Issue 16. Needs `[backup] dir` in certsrv.toml; 404 (ERROR_FILE_NOT_FOUND) otherwise.",
              roles=auth.OPERATION_ROLES["ui_backups"], audit=False,
              response={"type": "string", "description": "text/html"})
    object.__setattr__(op, "response_content_type", "text/html")
