"""``certsrv serve``, ``certsrv status`` and ``certsrv shutdown``: run the service and talk to it."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import E_INVALIDARG, InvalidArgument
from .backend import ServerSpec, server_options
from .common import echo_json, home_option, json_option, passphrase_options
from .root import cli


def _parse_tcp(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(E_INVALIDARG, "--tcp", f"expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or "0.0.0.0", int(port))


def _age(when: str | None, now: dt.datetime) -> str:
    """``2026-11-29T06:00:00+00:00 (3h 12m ago)`` / ``(in 6d 23h)``."""
    if not when:
        return "unknown time"
    try:
        t = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return when
    secs = int((now - t).total_seconds())
    ago, secs = secs >= 0, abs(secs)
    d, h, m = secs // 86400, secs % 86400 // 3600, secs % 3600 // 60
    span = f"{d}d {h}h" if d else f"{h}h {m}m" if h else f"{m}m {secs % 60}s"
    return f"{when} ({span} ago)" if ago else f"{when} (in {span})"


def _size(n: int | None) -> str:
    if n is None:
        return "size not recorded"
    if n < 1024:
        return f"{n} B"
    x, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if x < 1024:
            break
        x, unit = x / 1024, bigger
    return f"{x:.1f} {unit}"


def health_lines(h: dict[str, Any], now: dt.datetime | None = None, *, store_line: bool = True) -> list[str]:
    """``GET /v1/health`` in words (``certsrv status``)."""
    now = now or dt.datetime.now(dt.UTC)
    out = node_lines(h)
    if store_line:
        out.append(f"store: {h.get('summary') or h.get('store', 'ok')}")
    for kind in ("full", "incremental"):
        b = (h.get("last_backup") or {}).get(kind)
        if b is None:
            out.append(f"last {kind} backup: none recorded (certsrv backup --into DIR"
                       + (" --incremental" if kind == "incremental" else "") + ")")
            continue
        took = b.get("duration_seconds")
        out.append(f"last {kind} backup: #{b['backup_id']} ended {_age(b.get('time'), now)}, "
                   f"{_size(b.get('size_bytes'))}" + (f" in {took:.1f} s" if took is not None else ""))
    if h.get("backup_sessions_open"):
        out.append("backup session: one open (certsrv backup --status)")
    lg = h.get("log")
    if lg:
        out.append(f"log: {lg['generations']} generation(s) on disk, {_size(lg['bytes_since_backup'])} written "
                   "since the last backup")
    crl = h.get("crl")
    if crl is None:
        out.append("CRL: none published yet (certsrv crl publish)")
    else:
        nu = crl.get("next_update")
        expired = bool(nu) and dt.datetime.fromisoformat(str(nu).replace("Z", "+00:00")) <= now
        out.append(f"CRL #{crl['number']}: next update {_age(nu, now)}"
                   + ("; EXPIRED: publish one now (certsrv crl publish)" if expired else ""))
    arc = h.get("archive")
    if arc:
        out.append(f"archive: {arc.get('state')}, {arc.get('lag_generations')} generation(s) / "
                   f"{_size(arc.get('lag_bytes'))} not yet archived, oldest {arc.get('lag_seconds')} s")
    out.extend(f"could not read: {e}" for e in h.get("errors") or [])
    out.extend(f"WARNING: {w}" for w in h.get("warnings") or [])
    return out


def node_lines(h: dict[str, Any]) -> list[str]:
    """Role, epoch, writer and replication mode (issue 14); a service from before it shows its role only."""
    node = h.get("node")
    role = h.get("role", "writer")
    if not node:
        return [f"role: {role}"]
    w = node.get("writer") or {}
    at = ", ".join(w.get("endpoints") or []) or "no endpoint advertised"
    if role == "writer":
        line = f"role: writer ({node.get('name')}), lease epoch {node.get('epoch')}"
    else:
        age = w.get("renewed_age_s")
        line = (f"role: standby ({node.get('name')}); writer {w.get('holder') or 'none'} (epoch {w.get('epoch')}, "
                f"at {at}" + (f", renewed {age:.1f}s ago" if isinstance(age, int | float) else "") + ")")
    out = [line]
    rep = h.get("replication") or {}
    mode = rep.get("mode", "none")
    standbys = rep.get("standbys") or []
    detail = ", ".join(f"{s.get('name')} {s.get('sync_state') or s.get('state')}" for s in standbys)
    out.append(f"replication: {mode}" + (f" ({detail})" if detail else ""))
    return out


@cli.command("serve")
@home_option
@passphrase_options
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Unix socket path (default: service.socket in certsrv.toml, HOME/certsrv.sock).")
@click.option("--tcp", default=None, metavar="HOST:PORT",
              help="Also listen on TLS over TCP here (needs service.tls_cert, tls_key, client_ca); port 0 = any.")
@click.option("--workers", type=click.IntRange(0, 256), default=None, metavar="N", envvar="CERTSRV_WORKERS",
              help="Worker processes that parse, check and sign requests (default: the number of cores, "
                   "at least 2; 0: all in the service's process; env CERTSRV_WORKERS).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def serve_cmd(home: Path | None, passphrase: bytes | None, socket_path: Path | None, tcp: str | None,
              workers: int | None, log_level: str) -> None:
    """Run the CA service in the foreground until SIGTERM, SIGINT or `certsrv shutdown`."""
    from ..service import serve

    logging.basicConfig(stream=sys.stderr, level=log_level.upper(),
                        format="%(asctime)s certsrv[%(process)d] %(levelname)s %(message)s")
    serve(home, socket=socket_path, tcp=_parse_tcp(tcp), passphrase=passphrase, workers=workers)


@cli.command("status")
@home_option
@server_options
@json_option
def status_cmd(home: Path | None, server: ServerSpec, as_json: bool) -> None:
    """Show the running service's state (fails with 0x800706BA when none answers)."""
    with server.client(home) as c:
        st = c.status()
        health: dict[str, Any] = c.call("GET", "/v1/health")
    if as_json:
        echo_json({**st, "health": health})
        return
    caller = st.get("caller", {})
    click.echo(f"CA {st['name']!r}: {st['state']} (online: {'yes' if st['online'] else 'no'}), pid {st['pid']}, "
               f"home {st['home']}")
    click.echo(f"listening on {', '.join(st['listeners'])}")
    store = st.get("store") or {}
    if store:
        # "degraded: disk full" / "failed: log sync error, restart required" and what it means (store.health).
        click.echo(f"store: {store.get('summary') or store.get('state')}")
        if store.get("since"):
            click.echo(f"  since {store['since']}")
    rec = st.get("recovery") or {}
    if rec:
        click.echo(f"last start: {rec.get('kind', 'soft')} recovery replayed {rec.get('replayed', 0)} records")
    if st.get("metrics"):
        click.echo(f"metrics on {st['metrics']}")
    for line in health_lines(health, store_line=not st.get("store")):
        click.echo(line)
    click.echo(f"you are {caller.get('ident')} with roles: {', '.join(caller.get('roles', [])) or 'none'}")


@cli.command("shutdown")
@home_option
@server_options
@click.option("--wait", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds to wait until the service has stopped (0: do not wait).")
def shutdown_cmd(home: Path | None, server: ServerSpec, wait: float) -> None:
    """Stop the service cleanly (ServerControl CSCONTROL_SHUTDOWN): requests finish, checkpoint written."""
    with server.client(home) as c:
        c.shutdown(wait=wait)
        click.echo(f"service at {c.address} {'stopped' if wait else 'is stopping'}")
