"""Request-arrival traces: the Azure LLM inference CSVs and the Mooncake JSONL format.

Both give arrival times (and token counts that lapsd does not need for arrivals). Only the times
are used: a ``trace:PATH`` workload replays their pattern, time-scaled to a target load.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from lapsd.io import read_jsonl
from lapsd.replay.trace import TraceError


def read_arrivals(path: Path | str) -> np.ndarray:
    """Arrival times in seconds from the first request, sorted.

    ``.csv`` files are read as Azure traces (``TIMESTAMP`` column, ``YYYY-MM-DD HH:MM:SS.fffffff``);
    ``.jsonl`` files as Mooncake traces (``timestamp`` in milliseconds).
    """
    p = Path(path)
    if not p.is_file():
        raise TraceError("arrival trace not found", path=p)
    if p.suffix == ".csv":
        times = _azure(p)
    elif p.suffix in (".jsonl", ".json"):
        times = _mooncake(p)
    else:
        raise TraceError("unknown arrival-trace format: expected an Azure .csv or a Mooncake "
                         ".jsonl", path=p)
    if times.size == 0:
        raise TraceError("the arrival trace has no requests", path=p)
    times = np.sort(times)
    return times - times[0]


def _azure(path: Path) -> np.ndarray:
    try:
        df = pl.read_csv(path, columns=["TIMESTAMP"])
    except Exception as exc:
        raise TraceError(f"cannot read as an Azure trace CSV: {exc}", path=path,
                         column="TIMESTAMP") from None
    # Seven fractional digits; polars parses up to nanoseconds.
    ts = df["TIMESTAMP"].str.to_datetime("%Y-%m-%d %H:%M:%S%.f", time_unit="ns", strict=False)
    bad = ts.is_null()
    if bad.any():
        row = int(bad.arg_true()[0])
        raise TraceError(f"unparsable timestamp {df['TIMESTAMP'][row]!r}", path=path,
                         column="TIMESTAMP", row=row)
    return ts.dt.epoch("ns").to_numpy().astype(np.float64) / 1e9


def _mooncake(path: Path) -> np.ndarray:
    times = []
    for lineno, record in read_jsonl(path, what="Mooncake record"):
        try:
            stamp = record["timestamp"]
            if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not (
                    math.isfinite(stamp)):
                raise ValueError(f"got {stamp!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"line {lineno}: not a Mooncake record with a 'timestamp' in "
                             f"milliseconds, a finite number ({exc})", path=path,
                             column="timestamp", row=lineno - 1) from None
        times.append(stamp / 1000.0)
    return np.asarray(times)
