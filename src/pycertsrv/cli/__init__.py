"""The ``certsrv`` command: one module per verb group, each a thin shell over the library.

The group itself and the entry point are in :mod:`pycertsrv.cli.root`; each verb module registers its
commands on that group when imported (here), so no verb module imports this package back.
"""

from __future__ import annotations

from . import archive, backup, ca, catalog, db, demo, restore, service, templates  # noqa: F401
from .root import ENV_TRACEBACK, cli, main

__all__ = ["ENV_TRACEBACK", "cli", "main"]
