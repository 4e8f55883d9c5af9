"""Shortest predicted job first: the length-prediction-only state of the art, non-preemptive."""

from __future__ import annotations

from typing_extensions import override

from lapsd.replay import timeshare
from lapsd.replay.policies.base import (
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

    @override
    def _share_state(self, n: int, fresh: int) -> timeshare.State:
        return self._static_state(n, preemptive=False)
