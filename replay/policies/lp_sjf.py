"""Shortest predicted job first: the length-prediction-only state of the art, non-preemptive."""

from __future__ import annotations

import numpy as np
from typing_extensions import override

from lapsd.replay.policies.base import (
    Lookahead,
    Policy,
    RequestInfo,
    RequestState,
    Rounds,
    prediction_of,
)
from lapsd.replay.policies.registry import register


@register
class LPSJF(Policy[RequestState]):
    """Orders waiting requests by predicted output length; the running one finishes first."""

    name = "lp-sjf"
    preempts_on_arrival = False
    needs_prediction = True
    shares = True

    def _key(self, st: RequestState) -> tuple:
        return (st.prediction.median, st.seq)

    def admission_rank(self, info: RequestInfo) -> float:
        """The predicted median length, tokens."""
        return float(prediction_of(info).median)

    @override
    def _consume(self, st: RequestState, rounds: Rounds) -> int:
        return rounds.n

    def _share_run(self, ahead: Lookahead, ids: np.ndarray, fresh: int, run: int, now: int,
                   until: int) -> tuple[int, int, int, int, int, np.ndarray]:
        return self._share_static(ahead, ids, fresh, run, now, until, preemptive=False)
