"""First come, first served: arrival order, each request runs to completion."""

from __future__ import annotations

from typing_extensions import override

from lapsd.replay.policies.base import Policy, RequestState, Rounds
from lapsd.replay.policies.registry import register


@register
class FCFS(Policy[RequestState]):
    """Arrival order, non-preemptive. Knows nothing about requests."""

    name = "fcfs"
    preempts_on_arrival = False

    def _key(self, st: RequestState) -> tuple:
        return (st.seq,)

    @override
    def _consume(self, st: RequestState, rounds: Rounds) -> int:
        return rounds.n
