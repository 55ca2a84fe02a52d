"""The ``[archive]`` section of ``certsrv.toml`` (issue 13)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(v: object) -> float:
    """Seconds from a number or a text like ``"60s"``, ``"5m"``, ``"500ms"``."""
    if isinstance(v, bool):
        raise ValueError("a duration is a number of seconds or a text like '60s'")
    if isinstance(v, int | float):
        return float(v)
    m = _DURATION.match(str(v))
    if not m:
        raise ValueError(f"{v!r} is not a duration (e.g. '60s', '5m', 0.5)")
    return float(m.group(1)) * _UNIT[m.group(2)]


class ArchiveSection(BaseModel):
    """Where and how often closed log generations are shipped.

    ``dest``: a directory (local disk or a mounted network filesystem); or ``command``, archive_command
    style: ``%p`` is the generation's path, ``%f`` its archive name ``<identity>/<lineage>/edbX.log``,
    ``%%`` a percent sign; it exits 0 only once the file is stored. ``timeout``: roll and ship at least
    this often while there are changes (bounds what a lost machine loses). ``max_lag_bytes``: past this
    many unshipped bytes, status, health and log say so loudly (issuance goes on).
    """

    model_config = ConfigDict(extra="forbid")

    dest: str | None = None
    command: str | None = None
    timeout: float = Field(60.0, gt=0)
    max_lag_bytes: int = Field(256 << 20, ge=0)
    command_timeout: float = Field(600.0, gt=0)

    @field_validator("timeout", "command_timeout", mode="before")
    @classmethod
    def _duration(cls, v: object) -> float:
        return parse_duration(v)

    @model_validator(mode="after")
    def _one_target(self) -> ArchiveSection:
        if (self.dest is None) == (self.command is None):
            raise ValueError("give exactly one of dest (a directory) or command (with %p and %f)")
        if self.command is not None and "%p" not in self.command:
            raise ValueError("command must contain %p (the generation's path)")
        return self
