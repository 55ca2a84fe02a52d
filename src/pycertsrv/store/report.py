"""What a recovery did (soft at open, hard at a restore): the report every engine gives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RecoveryReport:
    """What a recovery did: records replayed, LSN range, tail cut, time taken."""

    kind: str = "soft"
    replayed: int = 0
    from_lsn: int = 0
    to_lsn: int = 0
    generations: list[int] = field(default_factory=list)
    torn_tail: dict[str, Any] | None = None
    stopped_at: str | None = None
    seconds: float = 0.0
    clean: bool = True
    damaged: list[dict[str, Any]] = field(default_factory=list)  # applied records found damaged (stepped over)

    def summary(self) -> str:
        """One line for logs and the CLI."""
        if self.replayed == 0 and self.torn_tail is None and not self.damaged:
            return f"{self.kind} recovery: nothing to replay (applied LSN {self.to_lsn})"
        s = (f"{self.kind} recovery: replayed {self.replayed} records (LSN {self.from_lsn}..{self.to_lsn}) "
             f"from {len(self.generations)} generation(s) in {self.seconds:.3f}s")
        if self.torn_tail:
            s += (f"; cut torn tail of {self.torn_tail['file']} at offset {self.torn_tail['offset']} "
                  f"({self.torn_tail['reason']})")
        if self.stopped_at:
            s += f"; stopped at {self.stopped_at}"
        if self.damaged:
            d = self.damaged[0]
            s += (f"; DAMAGED log record(s) already applied, stepped over: {d['file']} LSN {d['lsns'][0]}"
                  + (f"..{d['lsns'][1]}" if d['lsns'][1] != d['lsns'][0] else "") + f" at offset {d['offset']}"
                  + (f" and {len(self.damaged) - 1} more" if len(self.damaged) > 1 else ""))
        return s

    def to_json(self) -> dict[str, Any]:
        """The report as plain data."""
        return dict(self.__dict__)
