"""The layout of a CA home directory (``--home``, env ``CERTSRV_HOME``).

::

    HOME/certsrv.toml        configuration
    HOME/.lock               flock held by the process that owns the home (store, service)
    HOME/db/<CA>.db          SQLite tables               (store)
    HOME/logs/edbXXXXXXXX.log log generations            (store)
    HOME/system/edb.chk      checkpoint                  (store)
    HOME/system/restore.json restore registration        (backup.restore)
    HOME/private/ca.key      CA private key, PKCS#8 PEM, 0600
    HOME/publish/            published ("dynamic") files: CA certificate, CRLs
    HOME/staging/            backup snapshots while a session runs
    HOME/certsrv.sock        the service's Unix socket
    HOME/audit.log           the service's audit log (JSON lines)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "CERTSRV_HOME"


def default_home() -> Path:
    """``$CERTSRV_HOME`` or ``~/.certsrv``."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".certsrv")


@dataclass(frozen=True)
class Home:
    """Paths inside one CA home."""

    root: Path

    @classmethod
    def at(cls, path: Path | str | None) -> Home:
        """The home at ``path`` (default: :func:`default_home`), made absolute."""
        return cls(Path(path if path is not None else default_home()).expanduser().resolve())

    @property
    def config(self) -> Path:
        """``certsrv.toml``."""
        return self.root / "certsrv.toml"

    @property
    def db_dir(self) -> Path:
        """Database directory."""
        return self.root / "db"

    @property
    def log_dir(self) -> Path:
        """Log generations directory."""
        return self.root / "logs"

    @property
    def system_dir(self) -> Path:
        """Checkpoint and registration directory."""
        return self.root / "system"

    @property
    def private_dir(self) -> Path:
        """Private key directory (0700)."""
        return self.root / "private"

    @property
    def publish_dir(self) -> Path:
        """Published (dynamic) files."""
        return self.root / "publish"

    @property
    def staging_dir(self) -> Path:
        """Backup staging area."""
        return self.root / "staging"

    @property
    def restore_registration(self) -> Path:
        """The restore registration file."""
        return self.system_dir / "restore.json"

    @property
    def socket(self) -> Path:
        """Default Unix socket of the service."""
        return self.root / "certsrv.sock"

    @property
    def audit_log(self) -> Path:
        """The service's audit log."""
        return self.root / "audit.log"

    @property
    def lock(self) -> Path:
        """The lock file."""
        return self.root / ".lock"
