"""Shortest predicted remaining tokens first, preemptive at round boundaries.

The remaining length is the prediction minus the tokens already out; once a request outlives its
prediction it becomes the predictor's conditional estimate (:meth:`LengthPrediction.remaining`),
so an under-predicted request can be overtaken instead of holding the server.
"""

from __future__ import annotations

from replay.policies import register
from replay.policies.base import Policy, RequestState, Rounds, first_true, loses_to


@register
class LPSRPT(Policy):
    """Preemptive shortest-predicted-remaining-length first."""

    name = "lp-srpt"
    needs_prediction = True

    def _key(self, st: RequestState) -> tuple:
        return (st.info.prediction.remaining_one(st.generated), st.seq)

    def _consume(self, st: RequestState, rounds: Rounds) -> int:
        rival = self._rival()
        if rival is None:
            return len(rounds)
        remaining = st.info.prediction.remaining(st.generated + rounds.cumulative("emitted"))
        return min(first_true(loses_to(rival, (), remaining, st.seq)) + 1, len(rounds))
