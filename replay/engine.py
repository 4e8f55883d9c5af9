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

import math
from bisect import bisect_left
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple, cast

import numpy as np
import polars as pl

from lapsd.errors import LapsdError
from lapsd.replay.clock import check_horizon
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies.base import (
    NS_PER_S,
    Policy,
    PrefixSums,
    RequestId,
    RequestInfo,
    Rounds,
    TraceScale,
)
from lapsd.replay.trace import Trace, number, prefill_in_rounds


@dataclass(frozen=True)
class SwitchCost:
    """Cost of preempting a request: ``c0 + c1 * context_tokens`` seconds.

    ``context_tokens`` is the preempted request's prompt plus the tokens it has generated.
    """

    c0: float = 0.0
    c1: float = 0.0

    def __post_init__(self) -> None:
        """Reject negative and non-finite costs."""
        if not (0 <= self.c0 < math.inf and 0 <= self.c1 < math.inf):
            raise LapsdError(f"switch costs must be finite numbers of seconds >= 0, got "
                             f"c0={self.c0}, c1={self.c1} (--c0, --c1)")

    @property
    def free(self) -> bool:
        """Whether switching costs nothing."""
        return self.c0 == 0 and self.c1 == 0


@dataclass(frozen=True)
class TraceArrays:
    """A trace compiled to flat arrays for replay.

    Rounds of request ``i`` are ``offsets[i]:offsets[i+1]`` in the prefix-sum arrays ``cum``
    (``emitted``, ``drafted``, ``accepted``, ``ns``; each of length ``rounds + 1``).
    ``responses`` and ``response_chars`` (per round, -1 where unknown) let a re-predictor see
    the text a request had produced after each round. ``max_new_tokens`` is the output cap the
    trace was produced under (``inf`` when unknown).
    """

    request_ids: list[str]
    offsets: np.ndarray
    cum: dict[str, np.ndarray]
    output_tokens: np.ndarray
    prompt_tokens: np.ndarray
    service_ns: np.ndarray
    categories: list[str | None]
    prompts: list[str | None]
    predicted: np.ndarray | None
    predicted_p90: np.ndarray | None
    scale: TraceScale
    responses: list[str | None] = field(default_factory=list)
    response_chars: np.ndarray | None = None
    max_new_tokens: float = math.inf
    target_models: list[str | None] = field(default_factory=list)

    @property
    def n_requests(self) -> int:
        """The number of requests."""
        return len(self.request_ids)

    @cached_property
    def prefix(self) -> PrefixSums:
        """The prefix sums in the form :class:`Rounds` reads."""
        return PrefixSums(self.cum)

    @classmethod
    def from_trace(cls, trace: Trace) -> TraceArrays:
        """Compile a validated trace.

        A request's first round takes its prefill too (``prefill_s``, where known), unless the
        trace's round times already hold it (:func:`prefill_in_rounds`): a replay's service is
        everything the server spends on the request.

        Unknown ``drafted`` counts (a variable draft length) are taken as the largest
        ``accepted`` of the trace, the smallest draft length consistent with every round: the
        acceptance rate LAPS-SD's stability test watches is then the request's accepted tokens
        per round over that constant, and its execution-time estimate (tokens per round,
        seconds per round) needs no draft count at all.
        """
        req, rnd = trace.requests, trace.rounds
        k_fill = int(number(rnd["accepted"].max()))
        rnd = rnd.with_columns(pl.col("drafted").fill_null(k_fill))
        counts = req["n_rounds"].to_numpy().astype(np.int64)
        offsets = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        ns = np.rint(rnd["round_s"].to_numpy() * NS_PER_S).astype(np.int64)
        if not prefill_in_rounds(trace.manifest) and "prefill_s" in req.columns:
            # the server is busy with a request's prefill before its first round
            prefill = np.rint(req["prefill_s"].fill_null(0.0).to_numpy() * NS_PER_S)
            first = counts > 0
            ns[offsets[:-1][first]] += prefill.astype(np.int64)[first]
        cum = {}
        for name, values in (
            ("emitted", rnd["emitted"].to_numpy()), ("drafted", rnd["drafted"].to_numpy()),
            ("accepted", rnd["accepted"].to_numpy()), ("ns", ns),
        ):
            c = np.zeros(values.size + 1, dtype=np.int64)
            np.cumsum(values, out=c[1:])
            cum[name] = c
        service = cum["ns"][offsets[1:]] - cum["ns"][offsets[:-1]]
        has_pred = "predicted_tokens" in req.columns
        chars = (rnd["response_chars"].fill_null(-1).to_numpy().astype(np.int64)
                 if "response_chars" in rnd.columns else None)
        return cls(
            request_ids=req["request_id"].to_list(),
            offsets=offsets,
            cum=cum,
            output_tokens=req["output_tokens"].to_numpy().astype(np.int64),
            prompt_tokens=req["prompt_tokens"].fill_null(0).to_numpy().astype(np.int64),
            service_ns=service,
            categories=req["category"].to_list(),
            prompts=req["prompt"].to_list(),
            predicted=req["predicted_tokens"].to_numpy() if has_pred else None,
            predicted_p90=(req["predicted_tokens_p90"].to_numpy()
                           if "predicted_tokens_p90" in req.columns else None),
            scale=TraceScale(
                round_s=number(rnd["round_s"].median()),
                tokens_per_round=number(rnd["emitted"].mean()),
            ),
            responses=(req["response"].to_list() if "response" in req.columns
                       else [None] * req.height),
            response_chars=chars,
            max_new_tokens=output_cap(trace),
            target_models=req["target_model"].to_list(),
        )

    def subset(self, indices: np.ndarray) -> TraceArrays:
        """The requests at ``indices`` as a trace of their own (for tuning/held-out splits)."""
        idx = np.asarray(indices, dtype=np.int64)
        counts = self.offsets[idx + 1] - self.offsets[idx]
        offsets = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx])
        cum = {}
        for name, c in self.cum.items():
            values = np.diff(c)[rows]
            out = np.zeros(values.size + 1, dtype=np.int64)
            np.cumsum(values, out=out[1:])
            cum[name] = out
        pick = idx.tolist()
        return TraceArrays(
            request_ids=[self.request_ids[i] for i in pick],
            offsets=offsets,
            cum=cum,
            output_tokens=self.output_tokens[idx],
            prompt_tokens=self.prompt_tokens[idx],
            service_ns=self.service_ns[idx],
            categories=[self.categories[i] for i in pick],
            prompts=[self.prompts[i] for i in pick],
            predicted=None if self.predicted is None else self.predicted[idx],
            predicted_p90=None if self.predicted_p90 is None else self.predicted_p90[idx],
            scale=self.scale,
            responses=[self.responses[i] for i in pick],
            response_chars=None if self.response_chars is None else self.response_chars[rows],
            max_new_tokens=self.max_new_tokens,
            target_models=[self.target_models[i] for i in pick],
        )


def output_cap(trace: Trace) -> float:
    """The ``max_new_tokens`` a trace was produced under, or ``inf`` when it does not say.

    A collected trace records it; otherwise the longest request that stopped for length.
    """
    collector = trace.manifest.get("collector") or {}
    if collector.get("max_new_tokens"):
        return float(collector["max_new_tokens"])
    capped = trace.requests.filter(pl.col("finish_reason") == "length")["output_tokens"]
    return number(capped.max()) if capped.len() else math.inf


#: Re-predictions of one arriving request: ``(rounds run, new prediction)`` pairs, the rounds
#: increasing; each applies after that many of the request's rounds.
Updates = list[tuple[int, LengthPrediction]]


@dataclass
class Workload:
    """Which trace requests arrive when, and what the schedulers are told of their length.

    Parameters
    ----------
    name
        The workload string it was built from.
    arrival_ns
        Sorted arrival times (integer nanoseconds).
    index
        For each arriving request, the trace request it replays.
    predictions
        For each arriving request, its length prediction (``None`` where no policy needs one).
    updates
        For each arriving request, its re-predictions (``None``: predictions never change).
    """

    name: str
    arrival_ns: np.ndarray
    index: np.ndarray
    predictions: list[LengthPrediction] | None = None
    updates: list[Updates] | None = None

    def __len__(self) -> int:
        """The number of arriving requests."""
        return int(self.index.size)


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
