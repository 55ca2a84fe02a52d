"""Runs of log generations written under one writer lease epoch (issue 14).

One shape for both sides of a backup: the service's backup session lists the runs of the generations it hands out
(:func:`pycertsrv.backup.nodes.lineage_runs`), and the set's manifest records and checks them
(:mod:`pycertsrv.backupset.lineage`). Neither side imports the other, so the shape lives here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    """Generations ``gen_low..gen_high`` written under lease epoch ``epoch``."""

    epoch: int
    gen_low: int
    gen_high: int

    def to_json(self) -> dict[str, int]:
        """As the manifest stores it."""
        return {"epoch": self.epoch, "gen_low": self.gen_low, "gen_high": self.gen_high}


def runs_of(pairs: Iterable[tuple[int, int]]) -> list[Run]:
    """``(generation, epoch)`` pairs (any order) as runs of consecutive generations of one epoch."""
    out: list[Run] = []
    for gen, epoch in sorted(pairs):
        last = out[-1] if out else None
        if last is not None and last.epoch == epoch and last.gen_high + 1 == gen:
            out[-1] = Run(epoch, last.gen_low, gen)
        else:
            out.append(Run(epoch, gen, gen))
    return out


__all__ = ["Run", "runs_of"]
