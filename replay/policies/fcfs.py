"""First come, first served: arrival order, each request runs to completion."""

from __future__ import annotations

from typing_extensions import override

from lapsd.replay import timeshare
from lapsd.replay.policies.base import Policy, RequestState, Rounds
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

    @override
    def _share_state(self, n: int, fresh: int) -> timeshare.State:
        return self._static_state(n, preemptive=False)
