"""The CA verbs: init, install-cert, submit, issue, deny, resubmit, revoke, unrevoke, crl publish, view, get.

Each command parses its arguments, makes ONE call on :class:`pycertsrv.ca.Authority`, and renders.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from ..ca import KEY_TYPES, Authority
from ..ca.paging import MAX_OFFSET, PAGE_MAX, collect
from ..errors import E_INVALIDARG, InvalidArgument, from_oserror
from ..fsutil import PUBLIC_FILE, atomic_write
from ..requestkey import checked_key, new_request_key
from .backend import ServerSpec, ca_backend, server_options
from .common import echo_json, home_option, json_option, open_authority, passphrase_options
from .render import crl_line, request_line, request_table
from .root import cli


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise from_oserror(e, path, "cannot read") from None


def _write_output(path: Path, data: bytes) -> None:
    """Write ``--out`` whole or not at all (temp name, fsync, rename): a full disk leaves no truncated file."""
    try:
        atomic_write(path, data, PUBLIC_FILE)  # a certificate is public
    except OSError as e:
        raise from_oserror(e, path, "cannot write") from None


def _parse_time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(E_INVALIDARG, "invalidity date", f"not an ISO 8601 time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _parse_attrib(pairs: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs:
        name, sep, value = p.partition(":")
        if not sep or not name.strip():
            raise InvalidArgument(E_INVALIDARG, "--attrib", f"expected NAME:VALUE, got {p!r}")
        out[name.strip()] = value.strip()
    return out


@cli.command("init")
@home_option
@click.option("--name", required=True, help="CA name (the CN of its certificate).")
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="ec-p256", show_default=True)
@click.option("--days", type=click.IntRange(1, 36500), default=3650, show_default=True,
              help="Validity of the root certificate.")
@click.option("--force", is_flag=True, help="Replace an existing CA home (its files are moved aside, not deleted).")
@click.option("--confirm-name", default=None, metavar="NAME",
              help="With --force: the existing CA's name, confirming its replacement when it has issued "
                   "certificates (otherwise asked for on a terminal).")
@click.option("--subordinate", is_flag=True, help="Write a request (HOME/ca.csr) for a parent CA instead.")
@click.option("--pending", is_flag=True, help="Leave new requests pending for an officer (policy.mode).")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Encrypt the key with the passphrase in this file (recorded in certsrv.toml).")
@click.option("--passphrase-env", default=None, metavar="NAME",
              help="Encrypt the key with the passphrase in this environment variable (recorded).")
@click.option("--database", default=None, metavar="URL",
              help="Put the CA database on PostgreSQL (a libpq URI, several hosts allowed; the password comes "
                   "from PGPASSWORD, ~/.pgpass or a service file). Recorded as [store] url.")
@json_option
def init_cmd(home: Path | None, name: str, key_type: str, days: int, force: bool, confirm_name: str | None,
             subordinate: bool, pending: bool, passphrase_file: Path | None, passphrase_env: str | None,
             database: str | None, as_json: bool) -> None:
    """Make a CA home: private key, self-signed root (or a subordinate request), config, empty database."""
    from ..ca import resolve_passphrase
    from ..ca.replace import ConfirmationRequired

    passphrase = resolve_passphrase(passphrase_file, passphrase_env)

    def init(confirm: str | None) -> Authority:
        return Authority.init(home, name, key_type=key_type, days=days, passphrase=passphrase, force=force,
                              subordinate=subordinate, passphrase_env=passphrase_env,
                              passphrase_file=str(passphrase_file.resolve()) if passphrase_file else None,
                              policy={"mode": "pending"} if pending else None, confirm_name=confirm,
                              database=database)

    try:
        a = init(confirm_name)
    except ConfirmationRequired as e:
        # Issue 9, finding 6: the operator types the CA's name; no terminal (a script) -> refused.
        if confirm_name is not None or not sys.stdin.isatty():
            raise
        click.echo(f"certsrv: init: {e.message}", err=True)
        a = init(click.prompt(f"Type the name of the CA to replace ({e.ca_name})", err=True))
    with a:
        info = a.summary()
        replaced = a.replaced
    if as_json:
        info["replaced"] = str(replaced) if replaced else None
        echo_json(info)
    elif subordinate:
        click.echo(f"subordinate CA {name!r} created in {info['home']} ({key_type}); request written to "
                   f"{info['home']}/ca.csr: have the parent CA sign it, then run certsrv install-cert CERT")
    else:
        click.echo(f"CA {name!r} created in {info['home']} ({key_type}), serial {info['serial']}, "
                   f"valid until {info['not_after']}")
    if replaced is not None and not as_json:
        click.echo(f"the old home's files were moved to {replaced} (nothing was deleted)")


@cli.command("install-cert")
@home_option
@passphrase_options
@click.argument("cert", type=click.Path(allow_dash=True))
@click.option("--force", is_flag=True, help="Replace an installed CA certificate.")
def install_cert_cmd(home: Path | None, passphrase: bytes | None, cert: str, force: bool) -> None:
    """Install a subordinate CA's certificate signed by its parent (PEM, chain allowed, or DER)."""
    data = _read_input(cert)
    with open_authority(home, passphrase) as a:
        c = a.install_certificate(data, force=force)
    click.echo(f"installed CA certificate {c.subject.rfc4514_string()} issued by {c.issuer.rfc4514_string()}")


@cli.command("submit")
@home_option
@passphrase_options
@server_options
@click.argument("req", type=click.Path(allow_dash=True))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the issued certificate (PEM).")
@click.option("--template", default=None, metavar="NAME",
              help="Certificate template (certsrv templates lists them; default: policy.default_template).")
@click.option("--attrib", multiple=True, metavar="NAME:VALUE", help="Request attribute (repeatable).")
@click.option("--requester", default="", help="Requester name stored with the request.")
@click.option("--request-key", default=None, metavar="KEY",
              help="Idempotency key, 1..128 printable ASCII (default: a new random one). A submit with the key of "
                   "an earlier one returns that request, never a second certificate.")
@json_option
def submit_cmd(home: Path | None, passphrase: bytes | None, server: ServerSpec, req: str, out: Path | None,
               template: str | None, attrib: tuple[str, ...], requester: str, request_key: str | None,
               as_json: bool) -> None:
    """Submit a PKCS#10 request (PEM or DER); prints the request id and disposition."""
    # Issue 14: every submit carries a key, so that a retry (by the client after a failover, or by the user
    # after an unknown outcome) returns the first answer.
    key = checked_key(request_key) if request_key is not None else new_request_key()
    data = _read_input(req)
    attributes = _parse_attrib(attrib)
    with ca_backend(home, server, passphrase) as a:
        info = a.submit(data, requester=requester, template=template, attributes=attributes, request_key=key)
    if out is not None and info.certificate_pem:
        _write_output(out, info.certificate_pem.encode())
    echo_json({**info.to_json(), "request_key": key}) if as_json else click.echo(request_line(info))


def _resolve_cmd(verb: str, doc: str) -> None:
    @cli.command(verb, help=doc)
    @home_option
    @passphrase_options
    @server_options
    @click.argument("request_id", type=click.IntRange(min=1))
    @json_option
    def cmd(home: Path | None, passphrase: bytes | None, server: ServerSpec, request_id: int, as_json: bool) -> None:
        with ca_backend(home, server, passphrase) as a:
            info = getattr(a, verb)(request_id)
        echo_json(info.to_json()) if as_json else click.echo(request_line(info))


_resolve_cmd("issue", "Issue a pending request.")
_resolve_cmd("deny", "Deny a pending request.")
_resolve_cmd("resubmit", "Resubmit a pending, denied or failed request (issues it).")


@cli.command("revoke")
@home_option
@passphrase_options
@server_options
@click.argument("serial")
@click.option("--reason", default="unspecified", show_default=True,
              help="RFC 5280 reason name or code (keyCompromise, superseded, certificateHold, ...).")
@click.option("--invalidity-date", default=None, metavar="ISO8601",
              help="When the key was known or suspected compromised.")
@json_option
def revoke_cmd(home: Path | None, passphrase: bytes | None, server: ServerSpec, serial: str, reason: str,
               invalidity_date: str | None, as_json: bool) -> None:
    """Revoke a certificate by serial (hex, any case, colons allowed)."""
    when = _parse_time(invalidity_date)
    with ca_backend(home, server, passphrase) as a:
        info = a.revoke(serial, reason, when)
    echo_json(info.to_json()) if as_json else click.echo(request_line(info))


@cli.command("unrevoke")
@home_option
@passphrase_options
@server_options
@click.argument("serial")
@json_option
def unrevoke_cmd(home: Path | None, passphrase: bytes | None, server: ServerSpec, serial: str, as_json: bool) -> None:
    """Lift a certificateHold."""
    with ca_backend(home, server, passphrase) as a:
        info = a.unrevoke(serial)
    echo_json(info.to_json()) if as_json else click.echo(request_line(info))


@cli.group("crl")
def crl_group() -> None:
    """Certificate revocation lists."""


@crl_group.command("publish")
@home_option
@passphrase_options
@server_options
@json_option
def crl_publish_cmd(home: Path | None, passphrase: bytes | None, server: ServerSpec, as_json: bool) -> None:
    """Build, store and publish a full CRL (HOME/publish/ca.crl and ca.crl.pem)."""
    with ca_backend(home, server, passphrase) as a:
        info = a.publish_crl()
    echo_json(info.to_json()) if as_json else click.echo(crl_line(info))


@cli.command("view")
@home_option
@passphrase_options
@server_options
@click.option("--disposition", default=None, help="pending, issued, revoked, error or denied.")
@click.option("--serial", default=None)
@click.option("--request-id", type=click.IntRange(min=1), default=None)
@click.option("--expired/--unexpired", default=None, help="Only expired / only unexpired certificates.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help=f"List at most N rows and say when more exist (default: all rows, fetched {PAGE_MAX} per call).")
@click.option("--offset", type=click.IntRange(0, MAX_OFFSET), default=0, show_default=True,
              help="Skip this many rows first.")
@json_option
def view_cmd(home: Path | None, passphrase: bytes | None, server: ServerSpec, disposition: str | None,
             serial: str | None, request_id: int | None, expired: bool | None, limit: int | None, offset: int,
             as_json: bool) -> None:
    """List requests and certificates, oldest first: all of them, or --limit rows from --offset."""
    with ca_backend(home, server, passphrase) as a:
        # ca.paging: the same pages of at most PAGE_MAX rows directly and through the service.
        rows, more = collect(lambda n, off: a.view(disposition=disposition, serial=serial, request_id=request_id,
                                                   expired=expired, limit=n, offset=off), limit, offset)
    hint = f"more rows: use --offset {offset + len(rows)}" if more else None
    if as_json:
        echo_json([r.to_json() for r in rows])
        if hint:
            click.echo(hint, err=True)  # stdout stays one JSON document
    else:
        click.echo(request_table(rows))
        if hint:
            click.echo(hint)


@cli.command("get")
@home_option
@passphrase_options
@server_options
@click.argument("which")
@click.option("--serial", "force_serial", is_flag=True, help="Treat WHICH as a serial even if it is all digits.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--der", is_flag=True, help="Write DER instead of PEM.")
def get_cmd(home: Path | None, passphrase: bytes | None, server: ServerSpec, which: str, force_serial: bool,
            out: Path | None, der: bool) -> None:
    """Write out a certificate, by serial (hex) or request id (a decimal number of up to 9 digits)."""
    key: str | int = int(which) if (which.isdigit() and len(which) <= 9 and not force_serial) else which
    with ca_backend(home, server, passphrase) as a:
        data = a.get_certificate(key)
    if not der:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        data = x509.load_der_x509_certificate(data).public_bytes(Encoding.PEM)
    if out is not None:
        _write_output(out, data)
    else:
        click.echo(data, nl=False) if not der else sys.stdout.buffer.write(data)
