"""``certsrv serve``, ``certsrv status`` and ``certsrv shutdown``: run the service and talk to it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from ..errors import E_INVALIDARG, InvalidArgument
from . import cli
from .backend import ServerSpec, server_options
from .common import echo_json, home_option, json_option, passphrase_options


def _parse_tcp(value: str | None) -> tuple[str, int] | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(E_INVALIDARG, "--tcp", f"expected HOST:PORT, got {value!r}")
    return (host.strip("[]") or "0.0.0.0", int(port))


@cli.command("serve")
@home_option
@passphrase_options
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Unix socket path (default: service.socket in certsrv.toml, HOME/certsrv.sock).")
@click.option("--tcp", default=None, metavar="HOST:PORT",
              help="Also listen on TLS over TCP here (needs service.tls_cert, tls_key, client_ca); port 0 = any.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def serve_cmd(home: Path | None, passphrase: bytes | None, socket_path: Path | None, tcp: str | None,
              log_level: str) -> None:
    """Run the CA service in the foreground until SIGTERM, SIGINT or `certsrv shutdown`."""
    from ..service import serve

    logging.basicConfig(stream=sys.stderr, level=log_level.upper(),
                        format="%(asctime)s certsrv[%(process)d] %(levelname)s %(message)s")
    serve(home, socket=socket_path, tcp=_parse_tcp(tcp), passphrase=passphrase)


@cli.command("status")
@home_option
@server_options
@json_option
def status_cmd(home: Path | None, server: ServerSpec, as_json: bool) -> None:
    """Show the running service's state (fails with 0x800706BA when none answers)."""
    with server.client(home) as c:
        st = c.status()
    if as_json:
        echo_json(st)
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
