"""Options and helpers shared by every ``certsrv`` verb: ``--home``, ``--json``, the key passphrase
options, and :func:`open_authority`."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import E_ACCESSDENIED, ERROR_FILE_NOT_FOUND, AccessDenied, CertSrvError, InvalidArgument, NotFound
from ..home import ENV_HOME

F = TypeVar("F", bound=Callable[..., Any])

home_option = click.option(
    "--home",
    envvar=ENV_HOME,
    # readable=False: another user's private home gets the library's one line naming its owner (issue 9),
    # not click's usage text.
    type=click.Path(file_okay=False, readable=False, path_type=Path),
    default=None,
    help=f"CA home directory (env {ENV_HOME}; default ~/.certsrv).",
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def passphrase_options(f: F) -> F:
    """Add ``--passphrase-file`` and ``--passphrase-env``; the command receives ``passphrase: bytes | None``.

    Neither given: None, and the library falls back to the configured source or ``CERTSRV_KEY_PASSPHRASE``.
    """

    @click.option("--passphrase-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Read the CA key passphrase from this file (first line).")
    @click.option("--passphrase-env", default=None, metavar="NAME",
                  help="Read the CA key passphrase from this environment variable (default CERTSRV_KEY_PASSPHRASE).")
    @functools.wraps(f)
    def wrapper(*args: Any, passphrase_file: Path | None, passphrase_env: str | None, **kwargs: Any) -> Any:
        from ..ca.keys import resolve_passphrase

        given = passphrase_file is not None or passphrase_env is not None
        kwargs["passphrase"] = resolve_passphrase(passphrase_file, passphrase_env) if given else None
        return f(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def read_secret_file(path: Path, what: str, *, empty_hresult: int) -> bytes:
    """The first line of a password or passphrase file.

    :param path: the file.
    :param what: what it holds, for the message (``"password"``, ``"key passphrase"``).
    :param empty_hresult: the HRESULT for an empty file.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise NotFound(ERROR_FILE_NOT_FOUND, str(path), f"cannot read the {what} file: {e.strerror}") from None
    secret = raw.splitlines()[0] if raw.strip() else b""
    if not secret:
        raise InvalidArgument(empty_hresult, str(path), f"the {what} file is empty")
    return secret


def open_authority(home: Path | str | None, passphrase: bytes | None = None) -> Any:
    """Open the CA at ``home`` (``Authority.open``); use it as a context manager to close it.

    :param home: the home (None: ``$CERTSRV_HOME`` or ``~/.certsrv``).
    :param passphrase: the key passphrase (None: configured source or ``CERTSRV_KEY_PASSPHRASE``).
    """
    from ..ca import Authority

    return Authority.open(home, passphrase=passphrase)


def access_denied(e: PermissionError) -> CertSrvError:
    """The one-line E_ACCESSDENIED refusal for a PermissionError that reached the CLI (issue 9).

    Names the owner of the nearest directory on the path that can be looked at (a private home's owner).
    """
    from ..home import not_owner_error

    path = Path(str(e.filename)) if e.filename else Path.cwd()
    for p in (path, *path.parents):
        try:
            owner = os.stat(p).st_uid
        except OSError:
            continue
        if owner == os.geteuid():
            return AccessDenied(E_ACCESSDENIED, str(path), f"{e.strerror}; check the mode of {p}")
        return not_owner_error(path, owner)
    return not_owner_error(path)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON."""
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
