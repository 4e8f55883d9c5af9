"""The discrete-event replay: a workload of a trace, served under a policy.

At batch size one the server runs one round at a time; at every round boundary the policy may
switch to another request, which costs ``c0 + c1 * context_tokens`` seconds (the preempted
request's KV cache goes out and comes back later). Round times, tokens and acceptance come from
the trace; arrivals from the workload. Above batch size one (:mod:`lapsd.replay.batch`) a step
runs a round of each of up to ``B`` requests.

The loop is :func:`~lapsd.replay.driver.drive`, the one the live server runs, over a
:class:`~lapsd.replay.executor.TraceExecutor` and the simulated clock. Speed comes from
:meth:`Policy.advance`: the executor offers the chosen request's next rounds up to the next
arrival (or to its end) and the policy takes as many as it can before its decision could
change, so a replay costs a few Python calls per scheduling decision rather than per round.
Faster still, a policy that time-shares (every registered one but banded LAPS-SD) serves whole
spans of arrivals in one compiled call (:meth:`Policy.share`, :mod:`lapsd.replay.timeshare`), at
any batch size when there is no KV capacity.
With ``max_chunk=1`` the replay offers one round at a time, like a live server does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.clock import check_horizon
from lapsd.replay.costs import BatchCost, SwitchCost
from lapsd.replay.driver import drive
from lapsd.replay.executor import TraceExecutor
from lapsd.replay.policies.base import NS_PER_S, Policy, RequestId
from lapsd.replay.workload import Workload


@dataclass
class SimResult:
    """Outcome of one replay. Times are integer nanoseconds."""

    policy: str
    workload: str
    arrival_ns: np.ndarray
    completion_ns: np.ndarray
    service_ns: np.ndarray
    output_tokens: np.ndarray
    preemptions: int
    switch_ns: int
    rounds: int
    decisions: int
    estimates: dict[int, float] = field(default_factory=dict)

    @property
    def latency_s(self) -> np.ndarray:
        """Completion minus arrival of each request, seconds."""
        return (self.completion_ns - self.arrival_ns) / NS_PER_S

    @classmethod
    def of(cls, arrays: TraceArrays, workload: Workload, policy: Policy[Any],
           completion: list[int], *, preemptions: int, switch_ns: int, decisions: int,
           estimates: dict[int, float]) -> SimResult:
        """The result of replaying ``workload`` of ``arrays`` under ``policy``."""
        index = workload.index
        return cls(policy=policy.name, workload=workload.name,
                   arrival_ns=workload.arrival_ns.copy(),
                   completion_ns=np.array(completion, dtype=np.int64),
                   service_ns=arrays.service_ns[index], output_tokens=arrays.output_tokens[index],
                   preemptions=preemptions, switch_ns=switch_ns,
                   rounds=int((arrays.offsets[index + 1] - arrays.offsets[index]).sum()),
                   decisions=decisions, estimates=estimates)


def check_span(arrays: TraceArrays, workload: Workload, switch: SwitchCost,
               slowdown: float = 1.0) -> None:
    """Refuse a replay whose clock could pass :data:`~lapsd.replay.clock.HORIZON_S`.

    Its last completion is at most the last arrival plus every request's service (times the
    largest batch ``slowdown``) plus a switch before each round; summed in floats, so that the
    bound itself cannot wrap.
    """
    index = workload.index
    if index.size == 0:
        return
    rounds = float((arrays.offsets[index + 1] - arrays.offsets[index]).sum())
    context = float((arrays.prompt_tokens[index] + arrays.output_tokens[index]).max())
    span = (float(workload.arrival_ns[-1]) + slowdown * arrays.service_ns[index].sum(
        dtype=np.float64)) / NS_PER_S + rounds * (switch.c0 + switch.c1 * context)
    check_horizon(span, f"replaying workload {workload.name!r}",
                  "lower the switch costs (--c0, --c1), the cost table's slowdowns or n=")


def simulate(arrays: TraceArrays, workload: Workload, policy: Policy[Any], *,
             switch: SwitchCost | None = None, max_chunk: int | None = None, batch: int = 1,
             cost: BatchCost | None = None, kv_tokens: int | None = None) -> SimResult:
    """Replay ``workload`` through ``policy``.

    Parameters
    ----------
    arrays
        The compiled trace.
    workload
        Arrivals, predictions and re-predictions (delivered with
        :meth:`Policy.update_prediction` right after the round they were made for).
    policy
        A fresh policy object (it is consumed by the replay).
    switch
        Preemption cost model (free by default).
    max_chunk
        Largest run of rounds offered to the policy at once; 1 replays round by round.
    batch, cost, kv_tokens
        Requests per step, the step-time model and the KV capacity in tokens
        (:class:`~lapsd.replay.executor.TraceExecutor`).

    Returns
    -------
    SimResult
        Completion time of each arriving request, in workload order, and counters.
    """
    executor = TraceExecutor(arrays, workload, policy, batch=batch, cost=cost, switch=switch,
                             kv_tokens=kv_tokens, max_chunk=max_chunk)
    check_span(arrays, workload, executor.switch, max(executor.cost.slowdown))
    estimates: dict[int, float] = {}

    def record(request_id: RequestId, total_s: float) -> None:
        estimates[cast(int, request_id)] = total_s

    policy.on_estimate = record
    out = drive(policy, workload.arrival_ns.tolist(), executor)
    return SimResult.of(arrays, workload, policy, out.completion_ns, preemptions=out.preemptions,
                        switch_ns=out.switch_ns, decisions=out.decisions, estimates=estimates)
