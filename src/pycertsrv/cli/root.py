"""The ``certsrv`` group and its entry point: every failure becomes one line (the verb groups add their commands)."""

from __future__ import annotations

import os
import sys

import click

from ..commitnote import COMMITTED_NOT_APPLIED, commit_scope
from ..errors import E_UNEXPECTED, CertSrvError, from_oserror
from ..home import ENV_HOME

# Set to 1 to see the Python traceback of an unexpected failure (for a bug report), never by default.
ENV_TRACEBACK = "CERTSRV_TRACEBACK"


@click.group()
@click.version_option(package_name="pycertsrv")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """pycertsrv: a certificate authority with online backup and consistent restore."""
    # Writes the store holds as committed but not yet applied (disk full) are noted during the command,
    # directly or from the service's answer (the client notes its "commit" field): say so at the end.
    notes = ctx.with_resource(commit_scope())
    ctx.call_on_close(lambda: _say_unapplied(notes))


def _say_unapplied(notes: set[int]) -> None:
    if notes:
        click.echo(f"certsrv: note: the write (LSN {', '.join(map(str, sorted(notes)))}) is {COMMITTED_NOT_APPLIED}: "
                   "it is durable, and the CA applies it once the disk has room again (see certsrv status)", err=True)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _subject(argv: list[str]) -> str:
    """What an OSError without a file name is about: the ``--home`` given (the verb's files live there), else
    the verb itself."""
    for i, a in enumerate(argv):
        if a == "--home" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--home="):
            return a.partition("=")[2]
    if os.environ.get(ENV_HOME):
        return os.environ[ENV_HOME]
    words = [a for a in argv[:2] if not a.startswith("-")]
    return " ".join(words) or "certsrv"


def main() -> None:
    """Entry point: run the group, turning every failure into ONE line on stderr and exit status 1.

    CertSrvError is printed as it is; an OSError the library did not map (the last line of defense) becomes
    its HRESULT with the path (:func:`pycertsrv.errors.from_oserror`); anything else is E_UNEXPECTED. No
    traceback reaches a user unless CERTSRV_TRACEBACK=1 asks for one.
    """
    try:
        cli.main(standalone_mode=False)
    except CertSrvError as e:
        click.echo(_one_line(f"certsrv: {e}"), err=True)
        sys.exit(1)
    except PermissionError as e:  # a private file of another user: one line naming its owner (issue 9)
        from .common import access_denied

        click.echo(_one_line(f"certsrv: {access_denied(e)}"), err=True)
        sys.exit(1)
    except OSError as e:
        if os.environ.get(ENV_TRACEBACK) == "1":
            raise
        err = from_oserror(e, None if e.filename is not None else _subject(sys.argv[1:]))
        click.echo(_one_line(f"certsrv: {err}"), err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("certsrv: aborted", err=True)
        sys.exit(1)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("certsrv: interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if os.environ.get(ENV_TRACEBACK) == "1":
            raise
        err = CertSrvError(E_UNEXPECTED, "certsrv", f"internal error {type(e).__name__}: {e}; rerun with "
                           f"{ENV_TRACEBACK}=1 for the traceback and report it")
        click.echo(_one_line(f"certsrv: {err}"), err=True)
        sys.exit(1)
