"""The epoch lineage of a backup set (issue 14: an incremental chain continues across a change of writer).

Every log generation is written under one writer lease epoch (the store rolls a new generation when a node
takes the lease: one epoch per generation; SQLite and single-node homes: epoch 0). A set's manifest records, under
its authenticator, which epochs wrote its generations, as runs ``[{"epoch", "gen_low", "gen_high"}, ...]``, and
an incremental's ``base`` records the epoch its base ended in. A chain is sound when

- each set's runs cover its generations exactly, in order, with epochs rising from run to run (an epoch never
  comes back: a fenced writer can commit nothing, PostgreSQL's trigger refuses it);
- an incremental starts in the epoch its base ended in or a later one, and that is the epoch the base set
  itself records.

Anything else is a forked lineage (generations of two writers, or of a timeline restored elsewhere, spliced
together) or a forged one: ``verify-backup`` refuses it with JET_ERR_BAD_LOG_SIGNATURE (-530, "log of another
database": the generations are not the continuation they claim to be). Sets written before lineages existed
have none and are not checked.
"""

from __future__ import annotations

from typing import Any

from ..epochs import Run
from ..errors import JET_ERR_BAD_LOG_SIGNATURE

FORK = JET_ERR_BAD_LOG_SIGNATURE
WHAT_TO_DO = ("take a full backup through the current writer and start a new chain from it; restore only a "
              "chain whose lineage verifies")


def parse(value: Any) -> list[Run] | None:
    """The manifest's ``lineage`` (None: a set from before lineages); ValueError naming what is malformed."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("lineage is not a list")
    runs: list[Run] = []
    for i, r in enumerate(value):
        if not isinstance(r, dict) or not all(
                isinstance(r.get(k), int) and not isinstance(r.get(k), bool) and r[k] >= 0
                for k in ("epoch", "gen_low", "gen_high")):
            raise ValueError(f"lineage[{i}] is not {{epoch, gen_low, gen_high}}")
        runs.append(Run(r["epoch"], r["gen_low"], r["gen_high"]))
    return runs


def last_epoch(runs: list[Run] | None) -> int | None:
    """The epoch the set's last generation was written in."""
    return runs[-1].epoch if runs else None


def problems(runs: list[Run], gen_low: int, gen_high: int) -> list[str]:
    """What is wrong with a set's own lineage (empty: it covers ``gen_low..gen_high`` with rising epochs)."""
    if not runs:
        return ["the lineage is empty"]
    out: list[str] = []
    expect = gen_low
    for i, r in enumerate(runs):
        if r.gen_low != expect or r.gen_high < r.gen_low:
            out.append(f"lineage run {i} covers generations {r.gen_low:08X}..{r.gen_high:08X}, expected one "
                       f"starting at {expect:08X}")
            return out
        if i and r.epoch <= runs[i - 1].epoch:
            out.append(f"epoch {r.epoch} at generation {r.gen_low:08X} follows epoch {runs[i - 1].epoch}: "
                       "an epoch never goes back (a forked or forged lineage)")
        expect = r.gen_high + 1
    if expect != gen_high + 1:
        out.append(f"the lineage ends at generation {expect - 1:08X}, the set at {gen_high:08X}")
    return out


def continuation_problem(base_epoch: Any, runs: list[Run], base_name: str) -> str | None:
    """Why an incremental whose lineage is ``runs`` does not continue a base that ended in ``base_epoch``."""
    if not isinstance(base_epoch, int) or isinstance(base_epoch, bool) or not runs:
        return None
    if runs[0].epoch < base_epoch:
        return (f"starts in epoch {runs[0].epoch} but its base {base_name} ended in epoch {base_epoch}: the lineage "
                "is forked (generations of an older writer after a newer one's)")
    return None


__all__ = ["FORK", "WHAT_TO_DO", "Run", "continuation_problem", "last_epoch", "parse", "problems"]
