"""Engine settings (``[store]`` in ``certsrv.toml``), the same for every engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StoreOptions:
    """Engine settings.

    :param log_size: roll the generation when it would grow past this many bytes.
    :param checkpoint_records: checkpoint after this many applied records (0: only on demand/close).
    :param circular_logging: delete generations below the checkpoint by itself (no incrementals).
    :param retry_interval: seconds between attempts to apply committed records after an apply failed
        (disk full); see :mod:`.health`.
    :param archiving: continuous archiving is on: truncation and circular logging keep every generation
        above the archive watermark (issue 13).
    :param lease_ttl: PostgreSQL only (``[store] lease_ttl``): a writer lease not renewed for this many
        seconds may be taken by a standby node (issue 14).
    """

    log_size: int = 8 << 20
    checkpoint_records: int = 20000
    circular_logging: bool = False
    retry_interval: float = 0.5
    archiving: bool = False  # issue 13: never delete a generation not yet archived (see .archivemark)
    lease_ttl: float = 10.0  # issue 14: PostgreSQL writer lease, seconds unrenewed before a standby may take it

    @property
    def circular_flag(self) -> str:
        """``_meta.circular_logging`` for these options ("1" or "0"), as every engine stores it."""
        return "1" if self.circular_logging else "0"


def initial_meta(identity: str, name: str, options: StoreOptions | None) -> dict[str, str]:
    """The ``_meta`` rows of a new, empty CA database (both engines; PostgreSQL adds its schema version)."""
    return {"identity": identity, "name": name, "applied_lsn": "0",
            "circular_logging": (options or StoreOptions()).circular_flag}
