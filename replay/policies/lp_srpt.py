"""Shortest predicted remaining tokens first, preemptive at round boundaries.

The remaining length is the prediction minus the tokens already out; once a request outlives its
prediction it becomes the predictor's conditional estimate (:meth:`LengthPrediction.remaining`),
so an under-predicted request can be overtaken instead of holding the server.
"""

from __future__ import annotations

import numpy as np
from typing_extensions import override

from lapsd.replay import kernels, timeshare
from lapsd.replay.policies.base import (
    Policy,
    RequestInfo,
    RequestState,
    Rounds,
    prediction_of,
)
from lapsd.replay.policies.registry import register

_NO_RIVAL = (0.0, 0)


@register
class LPSRPT(Policy[RequestState]):
    """Preemptive shortest-predicted-remaining-length first."""

    name = "lp-srpt"
    needs_prediction = True
    shares = True

    def _key(self, st: RequestState) -> tuple:
        return (st.prediction.remaining_one(st.generated), st.seq)

    @override
    def _shared_key(self, st: RequestState, i: int, state: timeshare.State) -> tuple:
        return (float(state.key[i]), st.seq)  # the kernel's remaining_tokens, as _key's

    def admission_rank(self, info: RequestInfo) -> float:
        """The predicted length (capped), tokens."""
        return prediction_of(info).remaining_one(0)

    def _consume(self, st: RequestState, rounds: Rounds) -> int:
        rival = self._rival()
        pred = st.prediction
        return kernels.srpt_predicted_run(
            rounds.arrays["emitted"], rounds.start, rounds.n, st.generated, pred.median,
            pred.sigma, pred.cap, st.seq, rival is not None, *_NO_RIVAL if rival is None else
            (float(rival[0]), rival[1]))

    @override
    def _share_state(self, n: int, fresh: int) -> timeshare.State:
        key = np.fromiter((st.key[0] for st in self._states.values()), np.float64, n)
        median, sigma, cap = self._beliefs(n)
        return timeshare.State(timeshare.LP_SRPT, key=key, median=median, sigma=sigma, cap=cap)
