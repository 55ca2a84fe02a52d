"""Man pages generated from the CLI itself: ``python -m pycertsrv.cli.manpages OUTDIR``.

Walks the click command tree and writes one roff page per command (``certsrv.1``, ``certsrv-backup.1``,
``certsrv-crl-publish.1`` ...) from the same help texts ``--help`` prints, so the pages cannot drift from
the code. Install them with ``install -m 644 OUTDIR/*.1 /usr/local/share/man/man1/`` (or point
``MANPATH`` at OUTDIR). Output is deterministic (no date), so packaging can diff it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

from .. import __version__
from .root import cli

SECTION = "1"


def roff_escape(text: str) -> str:
    """Text safe in roff: backslashes doubled, hyphens as ``\\-`` (so they copy-paste as ASCII), and no line
    starting with ``.`` or ``'`` (a control line) — groff(7)."""
    out = []
    for line in text.replace("\\", "\\e").replace("-", "\\-").split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        out.append(line)
    return "\n".join(out)


def walk(group: click.Command = cli, path: tuple[str, ...] = ("certsrv",)) -> Iterator[tuple[tuple[str, ...],
                                                                                          click.Command]]:
    """Every command with its name path, the group first, sorted, hidden ones left out."""
    yield path, group
    if isinstance(group, click.Group):
        for name in sorted(group.commands):
            sub = group.commands[name]
            if not sub.hidden:
                yield from walk(sub, (*path, name))


def page_name(path: tuple[str, ...]) -> str:
    """``("certsrv", "crl", "publish")`` → ``certsrv-crl-publish``."""
    return "-".join(path)


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def render(path: tuple[str, ...], cmd: click.Command) -> str:
    """The roff source of one command's page."""
    name = page_name(path)
    ctx = click.Context(cmd, info_name=" ".join(path))
    # click: "\f" ends the help text; a "\b" line marks a paragraph not to rewrap (roff fills it anyway).
    help_text = (cmd.help or "").split("\f")[0].replace("\b\n", "")
    short = cmd.get_short_help_str(limit=200)
    lines = [
        f'.TH "{name.upper()}" "{SECTION}" "" "pycertsrv {__version__}" "pycertsrv manual"',
        ".SH NAME",
        f"{roff_escape(name)} \\- {roff_escape(short)}",
        ".SH SYNOPSIS",
        f".B {roff_escape(' '.join(path))}",
        roff_escape(" ".join(cmd.collect_usage_pieces(ctx))),
    ]
    paras = _paragraphs(help_text)
    if paras:
        lines.append(".SH DESCRIPTION")
        for i, p in enumerate(paras):
            if i:
                lines.append(".PP")
            lines.append(roff_escape(p))
    records = [r for p in cmd.get_params(ctx) if (r := p.get_help_record(ctx)) is not None]
    if records:
        lines.append(".SH OPTIONS")
        for opts, text in records:
            lines += [".TP", f"\\fB{roff_escape(opts)}\\fR", roff_escape(" ".join(text.split())) or "\\&"]
    if isinstance(cmd, click.Group):
        subs = [(n, c) for n, c in sorted(cmd.commands.items()) if not c.hidden]
        if subs:
            lines.append(".SH COMMANDS")
            for n, c in subs:
                lines += [".TP", f"\\fB{roff_escape(n)}\\fR",
                          f"{roff_escape(c.get_short_help_str(limit=200))} See \\fB{roff_escape(page_name((*path, n)))}"
                          f"\\fR({SECTION})."]
    see = ["certsrv"] if len(path) > 1 else []
    if isinstance(cmd, click.Group):
        see += [page_name((*path, n)) for n, c in sorted(cmd.commands.items()) if not c.hidden]
    if see:
        lines += [".SH SEE ALSO", ",\n".join(f"\\fB{roff_escape(s)}\\fR({SECTION})" for s in see)]
    return "\n".join(lines) + "\n"


def generate(outdir: Path) -> list[Path]:
    """Write every page into ``outdir`` (created); returns the paths written."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for path, cmd in walk():
        target = outdir / f"{page_name(path)}.{SECTION}"
        target.write_text(render(path, cmd), encoding="utf-8")
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m pycertsrv.cli.manpages OUTDIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pycertsrv.cli.manpages OUTDIR", file=sys.stderr)
        return 2
    try:
        pages = generate(Path(args[0]))
    except OSError as e:
        print(f"certsrv: manpages: cannot write {e.filename}: {e.strerror}; choose a writable OUTDIR",
              file=sys.stderr)
        return 1
    print(f"{len(pages)} man pages written to {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
