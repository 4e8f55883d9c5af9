"""The discrete-event replay engine.

At batch size one the server runs one round at a time; at every round boundary the policy may
switch to another request, which costs ``c0 + c1 * context_tokens`` seconds (the preempted
request's KV cache goes out and comes back later). Round times, tokens and acceptance come from
the trace; arrivals from the workload.

Speed comes from :meth:`Policy.advance`: the engine offers the picked request's next rounds up to
the next arrival (or to its end) and the policy takes as many as it can before its decision could
change, so a replay costs a few Python calls per scheduling decision rather than per round. With
``max_chunk=1`` the engine offers one round at a time, like a live server does.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import numpy as np

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.clock import check_horizon
from lapsd.replay.costs import SwitchCost
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies.base import (
    NS_PER_S,
    Policy,
    RequestId,
    RequestInfo,
    Rounds,
)
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


class RequestColumns(NamedTuple):
    """Per-request columns of a replay, in workload order, as Python lists.

    Scalar indexing and bisect on lists are much faster than on numpy arrays.
    """

    arrival: list[int]
    starts: list[int]
    ends: list[int]
    prompt_tokens: list[int]
    service_s: list[float]

    @classmethod
    def of(cls, arrays: TraceArrays, workload: Workload, policy: Policy[Any],
           ) -> RequestColumns:
        """The columns of ``workload``; checks that ``policy`` gets the predictions it needs."""
        if policy.needs_prediction and workload.predictions is None:
            raise ValueError(f"policy {policy.name!r} needs length predictions; build the "
                             "workload with predictions (a trace column, a predictor, or the "
                             "noisy-oracle what-if)")
        index = workload.index
        return cls(workload.arrival_ns.tolist(), arrays.offsets[index].tolist(),
                   arrays.offsets[index + 1].tolist(), arrays.prompt_tokens[index].tolist(),
                   (arrays.service_ns[index] / NS_PER_S).tolist())


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
             switch: SwitchCost | None = None, max_chunk: int | None = None) -> SimResult:
    """Replay ``workload`` through ``policy`` at batch size one.

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

    Returns
    -------
    SimResult
        Completion time of each arriving request, in workload order, and counters.
    """
    switch = switch or SwitchCost()
    check_span(arrays, workload, switch)
    arrival, starts, ends, prompt_tokens, service_s = RequestColumns.of(arrays, workload, policy)
    n_jobs = len(workload)
    pos = list(starts)
    prefix = arrays.prefix
    c_ns, c_emitted = prefix.lists["ns"], prefix.lists["emitted"]
    completion = [0] * n_jobs
    preds = workload.predictions
    oracle = policy.needs_oracle
    preemptive = policy.preempts_on_arrival
    c0_ns = round(switch.c0 * NS_PER_S)
    c1_ns = switch.c1 * NS_PER_S
    admit, pick, advance, finish = policy.admit, policy.pick, policy.advance, policy.finish
    may_preempt = policy.arrivals_may_preempt
    update = policy.update_prediction
    # Each request's pending re-predictions, as absolute round positions (ends of runs).
    pending: list[list[tuple[int, LengthPrediction]]] | None = None
    if workload.updates is not None:
        pending = [[(starts[j] + r, p) for r, p in reversed(u) if 0 < r < ends[j] - starts[j]]
                   for j, u in enumerate(workload.updates)]
    estimates: dict[int, float] = {}

    def record(request_id: RequestId, total_s: float) -> None:
        estimates[cast(int, request_id)] = total_s

    policy.on_estimate = record

    now = 0
    nxt = 0
    done = 0
    last = -1
    preemptions = 0
    switch_ns = 0
    decisions = 0
    while done < n_jobs:
        while nxt < n_jobs and arrival[nxt] <= now:
            if oracle:
                policy.reveal(nxt, service_s[nxt])
            admit(RequestInfo(nxt, arrival[nxt] / NS_PER_S, prompt_tokens[nxt],
                              None if preds is None else preds[nxt]))
            nxt += 1
        picked = pick()
        if picked is None:
            now = arrival[nxt]
            continue
        rid = cast(int, picked)  # the engine admits requests by their workload position
        decisions += 1
        if rid != last and last >= 0:
            # The last request was preempted unfinished: its KV cache is swapped out and back.
            preemptions += 1
            if c0_ns or c1_ns:
                context = prompt_tokens[last] + c_emitted[pos[last]] - c_emitted[starts[last]]
                cost = c0_ns + round(c1_ns * context)
                switch_ns += cost
                now += cost
        a = pos[rid]
        b = ends[rid]
        base = c_ns[a]
        if preemptive and nxt < n_jobs and may_preempt():
            # Rounds that start before the next arrival (round 0 starts now, before it); at least
            # one: the picked request runs a round even if a switch ran past the arrival.
            b = max(a + 1, bisect_left(c_ns, base + (arrival[nxt] - now), a, b))
        if max_chunk is not None and b - a > max_chunk:
            b = a + max_chunk
        todo = None if pending is None else pending[rid]
        if todo:
            b = min(b, todo[-1][0])  # a re-prediction lands at a round boundary
        a += advance(rid, Rounds(prefix, a, b))
        now += c_ns[a] - base
        pos[rid] = a
        if todo and todo[-1][0] == a:
            update(rid, todo.pop()[1])
        if a == ends[rid]:
            finish(rid)
            completion[rid] = now
            done += 1
            last = -1
        else:
            last = rid

    return SimResult.of(arrays, workload, policy, completion, preemptions=preemptions,
                        switch_ns=switch_ns, decisions=decisions, estimates=estimates)
