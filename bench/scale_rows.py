"""What bench/scale.py, bench/scale_ppo.py and bench/scale_train.py share: one table row
per measured configuration, its printer, and a scoped environment for a run."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

__all__ = ["Row", "print_table", "scoped_env"]


@dataclass(frozen=True)
class Row:
    """One measured configuration of one stage."""

    stage: str  # "alignment", "BC epoch", "PPO"
    config: str  # "single process", "pool", "ray", "torchrun gloo", ...
    workers: int
    value: float  # in ``unit``, higher is better
    unit: str
    seconds: float  # wall time of the run
    single: float  # the single-process value of the same stage in the same run
    item_s: float | None = None  # mean seconds one item (pair, ...) took inside its worker


def print_table(rows: list[Row], notes: list[str]) -> None:
    print(f"{'stage':<10} {'config':<15} {'workers':>7} {'value':>9} {'unit':<12} {'wall s':>7} {'x single':>8} {'s/item':>7}")
    for r in rows:
        item = "-" if r.item_s is None else f"{r.item_s:.2f}"
        print(f"{r.stage:<10} {r.config:<15} {r.workers:>7} {r.value:>9.1f} {r.unit:<12} {r.seconds:>7.1f} "
              f"{r.value / r.single:>8.2f} {item:>7}")
    for line in notes:
        print(line)


@contextlib.contextmanager
def scoped_env(**values: str | None):
    """Set (None: unset) environment variables for the block, then put back what was there."""
    old = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
