"""The cost models of a replay and the cost tables they are read from, in one place.

:class:`SwitchCost` is what preempting a request costs, ``c0 + c1 * context_tokens`` seconds;
:class:`BatchCost` how much longer a batched step takes than a batch-1 round. ``lapsd
collect-profile`` writes a cost table (JSON, ``kind: lapsd-cost-table``): its ``switch_fit`` is
the cost of swapping a request's KV cache to host memory and back, its ``resident_fit`` that of
switching between requests whose caches both stay on the device, its ``batch`` rows the step
times of batches, its ``rounds`` batch-1 round times by context. ``lapsd fit-batch-cost`` writes
a table of batch rows only (``batch_unit: collected_round``). Every consumer reads a table
through :func:`read_table` (missing file, JSON, kind and version checked in one place);
``lapsd validate`` fits the switch model to a live run's switches with :func:`fit_line`, and a
batched collection times its rounds as at batch size one with :func:`profiled_round`.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lapsd.errors import LapsdError
from lapsd.io import read_json

#: Cost tables this lapsd reads.
TABLE_KIND, TABLE_VERSION = "lapsd-cost-table", 2


def fit_line(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Least-squares ``y = c0 + c1 x`` with ``c0, c1 >= 0`` (costs are never negative).

    When the free fit has a negative slope the best line is flat (``c0`` = the mean), when it
    has a negative intercept it goes through the origin (``y >= 0``). Points at a single ``x``
    give a flat line; none gives zeros.
    """
    if not y:
        return {"c0": 0.0, "c1": 0.0}
    mx, my = statistics.fmean(x), statistics.fmean(y)
    var = sum((a - mx) ** 2 for a in x)
    c1 = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / var if var else 0.0
    if c1 <= 0:
        return {"c0": max(my, 0.0), "c1": 0.0}
    if my - c1 * mx < 0:
        c1 = sum(a * b for a, b in zip(x, y, strict=True)) / sum(a * a for a in x)
        return {"c0": 0.0, "c1": max(c1, 0.0)}
    return {"c0": my - c1 * mx, "c1": c1}


def profiled_round(profile: Sequence[dict[str, Any]], drafted: int, context: int
                   ) -> tuple[float, float, float]:
    """``(draft_s, verify_s, round_s)`` of a batch-1 round, from profile rows.

    The rows (``drafted``, ``context``, the three times: a cost table's ``rounds``) with the
    round's drafted count are interpolated linearly in context, and held flat beyond the
    profiled contexts.
    """
    rows = sorted((r["context"], r["draft_s"], r["verify_s"], r["round_s"]) for r in profile
                  if r["drafted"] == drafted)
    if not rows:
        raise LapsdError(f"the round profile has no rounds that drafted {drafted} tokens")
    i = bisect.bisect_left([c for c, *_ in rows], context)
    if i == 0 or i == len(rows):
        _, *times = rows[min(i, len(rows) - 1)]
        return times[0], times[1], times[2]
    (c0, *t0), (c1, *t1) = rows[i - 1], rows[i]
    w = (context - c0) / (c1 - c0)
    a, b, c = (x + w * (y - x) for x, y in zip(t0, t1, strict=True))
    return a, b, c


def read_table(path: Path | str) -> dict[str, Any]:
    """A cost table's JSON object, its kind and version checked (either kind of table).

    Raises
    ------
    LapsdError
        When the file is missing, not JSON, not a cost table, or of another version.
    """
    p = Path(path)
    table = read_json(p, missing=f"cost table {p} not found (write one with `lapsd "
                                 "collect-profile`)", what="cost table ")
    if not isinstance(table, dict) or table.get("kind") != TABLE_KIND:
        raise LapsdError(f"{p} is not a cost table (no kind={TABLE_KIND!r}); write one with "
                         "`lapsd collect-profile`")
    if table.get("version") != TABLE_VERSION:
        raise LapsdError(f"cost table {p} has version {table.get('version')!r}; this lapsd "
                         f"reads version {TABLE_VERSION}: profile again with "
                         "`lapsd collect-profile`")
    return table


def read_cost_table(path: Path | str) -> dict[str, Any]:
    """Read a cost table written by ``lapsd collect-profile``, with its switch-cost fits.

    Raises
    ------
    LapsdError
        As :func:`read_table`, and for a table without valid ``switch_fit`` and
        ``resident_fit`` (a ``fit-batch-cost`` table has none).
    """
    p = Path(path)
    table = read_table(p)
    if table.get("batch_unit") == "collected_round":
        raise LapsdError(f"{p} is a batch cost table (`lapsd fit-batch-cost`), without switch "
                         "costs: give it as --batch-cost, and a `lapsd collect-profile` table "
                         "as --cost-table")
    for key in ("switch_fit", "resident_fit"):
        fit = table.get(key)
        if not (isinstance(fit, dict) and all(_seconds(fit.get(c)) for c in ("c0", "c1"))):
            raise LapsdError(f"cost table {p}: {key} must be {{\"c0\": S, \"c1\": S}} with "
                             f"finite numbers of seconds >= 0, got {fit!r}; profile again with "
                             "`lapsd collect-profile`")
    return table


def _seconds(value: Any) -> bool:
    """Whether ``value`` is a finite number >= 0 (a JSON number, not a bool)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and 0 <= value < math.inf)


@dataclass(frozen=True)
class SwitchCost:
    """Cost of preempting a request: ``c0 + c1 * context_tokens`` seconds.

    ``context_tokens`` is the preempted request's prompt plus the tokens it has generated.
    """

    c0: float = 0.0
    c1: float = 0.0

    def __post_init__(self) -> None:
        """Reject negative and non-finite costs."""
        if not (0 <= self.c0 < math.inf and 0 <= self.c1 < math.inf):
            raise LapsdError(f"switch costs must be finite numbers of seconds >= 0, got "
                             f"c0={self.c0}, c1={self.c1} (--c0, --c1)")

    @property
    def free(self) -> bool:
        """Whether switching costs nothing."""
        return self.c0 == 0 and self.c1 == 0


@dataclass(frozen=True)
class BatchCost:
    """How much longer a batched SD step takes than a batch-1 round.

    ``slowdown[i]`` is the step time at batch size ``batch_sizes[i]`` over that at batch size
    one (piecewise linear in between, constant past the last); a table fitted to a live server
    (:meth:`from_profile`) is over the members' collected rounds instead, so its first entry may
    exceed 1. Measured by ``lapsd
    collect-profile`` on the GPU; an imported trace, which only knows batch-1 rounds, gets that
    shape scaled to its own round times (``source`` says which table).
    """

    batch_sizes: tuple[int, ...] = (1,)
    slowdown: tuple[float, ...] = (1.0,)
    source: str = "flat: every batch as fast as one request (no table given)"

    def __post_init__(self) -> None:
        """Check the table."""
        if (len(self.batch_sizes) != len(self.slowdown) or not self.batch_sizes
                or self.batch_sizes[0] != 1 or list(self.batch_sizes) != sorted(
                    set(self.batch_sizes)) or not all(0 < s < math.inf for s in self.slowdown)):
            raise LapsdError("batch cost table: batch sizes must start at 1 and increase, with "
                             f"one finite positive slowdown each; got sizes {self.batch_sizes}, "
                             f"slowdowns {self.slowdown}")

    def factor(self, b: int) -> float:
        """The slowdown of a step of ``b`` requests."""
        sizes = self.batch_sizes
        if b >= sizes[-1]:
            return self.slowdown[-1]
        i = bisect.bisect_right(sizes, b) - 1
        lo, hi = sizes[i], sizes[i + 1]
        t = (b - lo) / (hi - lo)
        return self.slowdown[i] * (1 - t) + self.slowdown[i + 1] * t

    @classmethod
    def from_profile(cls, path: str | Path) -> BatchCost:
        """The shape of a cost table's ``batch`` rows.

        A ``collect-profile --batches`` table gives step times, divided here by batch size
        one's at the same context. A table fitted to a live server's steps (``lapsd
        fit-batch-cost``, ``"batch_unit": "collected_round"``) gives the slowdown itself, over
        the members' collected batch-1 rounds, so its batch size one may be above 1 (the
        server's own work per step).
        """
        p = Path(path)
        table = read_table(p)
        try:
            rows = table["batch"]
            by_b: dict[int, list[float]] = {}
            if table.get("batch_unit") == "collected_round":
                for r in rows:
                    by_b[int(r["batch"])] = [_positive(r, "slowdown")]
            else:
                base = {r["context"]: _positive(r, "round_s") for r in rows if r["batch"] == 1}
                for r in rows:
                    if r["context"] in base:
                        by_b.setdefault(int(r["batch"]), []).append(
                            _positive(r, "round_s") / base[r["context"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise LapsdError(f"{p}: not a cost table with batch rows ({exc}); write one with "
                             "`lapsd collect-profile --batches`") from None
        sizes = tuple(sorted(by_b))
        try:
            return cls(sizes, tuple(float(np.mean(by_b[b])) for b in sizes),
                       f"{p.name}: {table.get('gpu') or table.get('device')}, "
                       f"{table.get('target')} / {table.get('draft')}")
        except LapsdError as exc:
            raise LapsdError(f"{p}: {exc}") from None


def _positive(row: dict[str, Any], key: str) -> float:
    """``row[key]``, a finite number > 0 (a cost table's time or slowdown)."""
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value < math.inf):
        raise ValueError(f"row {row}: {key} must be a finite number > 0, got {value!r}")
    return float(value)
