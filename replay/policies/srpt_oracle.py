"""Shortest true remaining processing time first: the clairvoyant lower bound.

At batch size one with free switches, preemptive SRPT minimises mean latency (Schrage, 1968). It is
the only policy that sees true service times, through :meth:`Policy.reveal`.
"""

from __future__ import annotations

from typing_extensions import override

from lapsd.replay import timeshare
from lapsd.replay.policies.base import (
    NS_PER_S,
    Policy,
    RequestId,
    RequestState,
    Rounds,
)
from lapsd.replay.policies.registry import register


@register
class SRPTOracle(Policy[RequestState]):
    """Preemptive shortest true remaining service time first."""

    name = "srpt-oracle"
    needs_oracle = True
    shares = True

    def __init__(self) -> None:
        super().__init__()
        self._truth: dict[RequestId, int] = {}

    def reveal(self, request_id: RequestId, service_s: float) -> None:
        """The true total service time of a request (before it is admitted)."""
        self._truth[request_id] = round(service_s * NS_PER_S)

    def _key(self, st: RequestState) -> tuple:
        try:
            total = self._truth[st.info.request_id]
        except KeyError:
            raise ValueError(f"srpt-oracle needs reveal() before admit() "
                             f"(request {st.info.request_id!r})") from None
        return (total - st.service_ns, st.seq)

    @override
    def _consume(self, st: RequestState, rounds: Rounds) -> int:
        # Its remaining time only shrinks while it runs: no waiting request can overtake it.
        return rounds.n

    def finish(self, request_id: RequestId) -> None:
        """The request left: forget its true service time too."""
        super().finish(request_id)
        self._truth.pop(request_id, None)

    @override
    def _share_state(self, n: int, fresh: int) -> timeshare.State:
        return self._static_state(n, preemptive=True, drops=True)
