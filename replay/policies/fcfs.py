"""First come, first served: arrival order, each request runs to completion."""

from __future__ import annotations

import numpy as np
from typing_extensions import override

from lapsd.replay.policies.base import Lookahead, Policy, RequestState, Rounds
from lapsd.replay.policies.registry import register


@register
class FCFS(Policy[RequestState]):
    """Arrival order, non-preemptive. Knows nothing about requests."""

    name = "fcfs"
    preempts_on_arrival = False
    shares = True

    def _key(self, st: RequestState) -> tuple:
        return (st.seq,)

    @override
    def _consume(self, st: RequestState, rounds: Rounds) -> int:
        return rounds.n

    def _share_run(self, ahead: Lookahead, ids: np.ndarray, fresh: int, run: int, now: int,
                   until: int) -> tuple[int, int, int, int, int, np.ndarray]:
        return self._share_static(ahead, ids, fresh, run, now, until, preemptive=False)
