"""The replay clock: integer nanoseconds in int64.

Every time a replay computes with (arrivals, round times, switch costs, completions) is an
integer number of nanoseconds, so that schedules are exact and reproducible. Such arithmetic
wraps instead of failing when a time exceeds int64, so a time the clock cannot hold is refused
where it enters (:func:`check_horizon`), never computed with.
"""

from __future__ import annotations

from lapsd.errors import LapsdError

NS_PER_S = 1_000_000_000
#: The longest time the clock holds, in seconds (about 292 years).
HORIZON_S = (2**63 - 1) / NS_PER_S


def check_horizon(seconds: float, what: str, fix: str) -> None:
    """Raise :class:`LapsdError` unless ``seconds`` fit the clock (non-finite ones never do).

    The message says that ``what`` spans too long and how to ``fix`` it.
    """
    if not seconds < HORIZON_S:
        raise LapsdError(f"{what} spans {seconds:.4g} s, more than a replay's clock holds "
                         f"(int64 nanoseconds: {HORIZON_S:.4g} s, about 292 years): {fix}")
