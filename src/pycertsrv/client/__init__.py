"""The network client of the service: :class:`Client` (enrollment, administration, control).

The backup helper adds :mod:`pycertsrv.client.backup` (``BackupSession``) on top of ``Client.call``.
"""

from __future__ import annotations

from .client import Client
from .endpoints import DEFAULT_TLS_PORT, local_socket

__all__ = ["DEFAULT_TLS_PORT", "Client", "local_socket"]
