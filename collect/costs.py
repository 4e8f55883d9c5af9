"""Cost models read from profiles: switch costs ``c0 + c1 * context_tokens`` and round times.

``lapsd collect-profile`` writes a cost table (JSON, ``kind: lapsd-cost-table``); its
``switch_fit`` is the cost of swapping a request's KV cache to host memory and back, and its
``resident_fit`` that of switching between requests whose caches both stay on the device.
``lapsd validate`` fits the same model to the switches a live run measured. A batched
collection times its rounds as at batch size one with :func:`profiled_round`. No torch here.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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


def read_cost_table(path: Path | str) -> dict[str, Any]:
    """Read a cost table written by ``lapsd collect-profile``.

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
