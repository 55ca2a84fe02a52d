"""``certsrv templates``: the home's certificate templates with their rights and limits.

A thin shell over :func:`pycertsrv.ca.templates.list_templates` (which reads and validates certsrv.toml).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import echo_json, home_option, json_option
from .root import cli


def _names(t: dict[str, Any]) -> str:
    parts = ["SAN required" if t["san_required"] else "SAN optional", f"CN not in SAN: {t['cn_not_in_san']}"]
    parts.append(f"allowed DNS: {', '.join(t['allowed_dns']) or 'any'}")
    if t["forbidden_dns"]:
        parts.append(f"forbidden DNS: {', '.join(t['forbidden_dns'])}")
    parts.append(f"IP: {', '.join(t['allowed_ip']) or 'any usable'}")
    parts.append("loopback allowed" if t["allow_loopback"] else "no loopback")
    if t["forbidden_cn"]:
        parts.append(f"forbidden CN: {', '.join(t['forbidden_cn'])}")
    return "; ".join(parts)


def render(rows: list[dict[str, Any]]) -> str:
    """The listing as text: one block of four lines per template."""
    out: list[str] = []
    for t in rows:
        kind = f"CA, pathLen {t['path_length']}" if t["ca"] else "end entity"
        out.append(f"{t['name']}: {t['description'] or '-'} ({kind})")
        out.append(f"  enroll: {', '.join(t['enroll_roles'])}; issue: {t['issue']}; validity: "
                   f"{t['validity_days']} days (template max {t['max_validity_days']})")
        policies = f"; policies: {', '.join(t['certificate_policies'])}" if t["certificate_policies"] else ""
        out.append(f"  key usage: {', '.join(t['key_usage'])}; EKU: {', '.join(t['eku']) or 'none'}{policies}")
        out.append(f"  names: {_names(t)}")
    return "\n".join(out)


@cli.command("templates")
@home_option
@json_option
def templates_cmd(home: Path | None, as_json: bool) -> None:
    """List the certificate templates: who may enroll, issue at once or pending, validity, usages, names."""
    from ..ca.templates import list_templates

    rows = list_templates(home)
    echo_json(rows) if as_json else click.echo(render(rows))
