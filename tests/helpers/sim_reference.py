"""Test helpers: the plain reference simulator and a small synthetic trace builder."""

from __future__ import annotations

import numpy as np
import polars as pl

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.costs import SwitchCost
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies.base import NS_PER_S, Policy, RequestInfo
from lapsd.replay.trace import Trace, make_trace, new_manifest
from lapsd.replay.workload import Workload


def reference_simulate(arrays: TraceArrays, workload: Workload, policy: Policy,
                       switch: SwitchCost | None = None) -> np.ndarray:
    """The obviously-correct simulator: one round at a time, as a live server would run.

    At each round boundary: admit every arrival up to now, ask the policy which request runs,
    charge a switch if the last request was preempted unfinished, run exactly one round, report
    it with ``observe``. Returns completion times (ns) in workload order.
    """
    switch = switch or SwitchCost()
    n = len(workload)
    cum = arrays.cum
    per_round = {k: np.diff(v) for k, v in cum.items()}
    pos = arrays.offsets[workload.index].copy()
    start = pos.copy()
    end = arrays.offsets[workload.index + 1]
    done = np.full(n, -1, dtype=np.int64)
    now, nxt, last = 0, 0, -1
    while (done < 0).any():
        while nxt < n and workload.arrival_ns[nxt] <= now:
            j = nxt
            if policy.needs_oracle:
                policy.reveal(j, arrays.service_ns[workload.index[j]] / NS_PER_S)
            pred = None if workload.predictions is None else workload.predictions[j]
            policy.admit(RequestInfo(j, workload.arrival_ns[j] / NS_PER_S,
                                     int(arrays.prompt_tokens[workload.index[j]]), pred))
            nxt += 1
        rid = policy.pick()
        if rid is None:
            now = int(workload.arrival_ns[nxt])
            continue
        if last >= 0 and rid != last:
            context = int(arrays.prompt_tokens[workload.index[last]]) + int(
                cum["emitted"][pos[last]] - cum["emitted"][start[last]])
            now += round(switch.c0 * NS_PER_S) + round(switch.c1 * NS_PER_S * context)
        r = pos[rid]
        policy.observe(rid, int(per_round["emitted"][r]), int(per_round["drafted"][r]),
                       int(per_round["accepted"][r]), per_round["ns"][r] / NS_PER_S)
        now += int(per_round["ns"][r])
        pos[rid] += 1
        for rounds, pred in (workload.updates[rid] if workload.updates is not None else ()):
            if rounds == pos[rid] - start[rid] and pos[rid] < end[rid]:
                policy.update_prediction(rid, pred)
        if pos[rid] == end[rid]:
            policy.finish(rid)
            done[rid] = now
            last = -1
        else:
            last = rid
    return done


def synthetic_trace(seed: int, n_requests: int = 12, max_rounds: int = 40,
                    k: int = 4) -> Trace:
    """A small random trace with integer-microsecond round times (for differential tests)."""
    rng = np.random.default_rng(seed)
    req, rows = [], {c: [] for c in ("request_id", "round", "drafted", "accepted", "emitted",
                                     "round_s")}
    for i in range(n_requests):
        n = int(rng.integers(1, max_rounds + 1))
        alpha = rng.uniform(0.1, 0.95)
        base = rng.uniform(0.01, 0.05)
        for r in range(n):
            acc = int(rng.binomial(k, alpha))
            rows["request_id"].append(f"r{i}")
            rows["round"].append(r)
            rows["drafted"].append(k)
            rows["accepted"].append(acc)
            rows["emitted"].append(acc + 1)
            rows["round_s"].append(round(base * rng.uniform(0.8, 1.2), 6))
        req.append({"request_id": f"r{i}", "source": "synthetic",
                    "prompt_tokens": int(rng.integers(5, 500)), "k": k})
    return make_trace(pl.DataFrame(req), pl.DataFrame(rows), new_manifest(timing="synthetic"))


def random_updates(arrays: TraceArrays, workload: Workload, seed: int, every: int = 3,
                   sigma: float = 0.6) -> list[list[tuple[int, LengthPrediction]]]:
    """Re-predictions every ``every`` rounds of each request: the true length x noise."""
    rng = np.random.default_rng(seed)
    out = []
    for j in workload.index:
        n = int(arrays.offsets[j + 1] - arrays.offsets[j])
        true = float(arrays.output_tokens[j])
        out.append([(r, LengthPrediction(max(true * float(np.exp(sigma * rng.standard_normal())),
                                             1.0), sigma))
                    for r in range(every, n, every)])
    return out
