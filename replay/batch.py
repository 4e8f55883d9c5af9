"""Replay at batch sizes above one: continuous batching of speculative-decoding rounds.

At every step the server runs one SD round of each of up to ``B`` requests together (one
drafting pass and one verification pass over the batch), as vLLM and SGLang do. The policy
ranks every request in the system exactly as at batch size one (:meth:`Policy.step`: the
requests of the last step by their running key, the others by their key) and the first ``B``
that fit in KV memory run. Each runs a round of its own trace (its own accepted tokens).

Definitions at ``B > 1`` (design page, section 7), in its terms:

* *attained service*: a request's time in service is the wall time of the steps it ran in
  (each member of a step is served for the whole step); rounds and tokens count as at
  ``B = 1``. So LAS, MLFQ and LAPS-SD's queues age a batched request by the steps it was in.
* *preemption*: a request of the last step that is not in the next one. With a KV capacity
  (tokens), a request whose cache does not fit any more is swapped out and pays the switch
  cost ``c0 + c1 * context`` (out and back in, as at ``B = 1``); without one, every preemption
  pays it, as at ``B = 1``.
* *step time*: from a :class:`BatchCost` model of the batch, not the sum of its members'
  rounds: the mean of the members' own batch-1 round times (their draft lengths, acceptance and
  context as recorded), times the measured slowdown of a batch of that size.

A plain round-by-round reference at ``B > 1`` lives in the tests; both must give the same
completion times.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from lapsd.errors import LapsdError
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.costs import BatchCost, SwitchCost
from lapsd.replay.engine import RequestColumns, SimResult, check_span
from lapsd.replay.policies.base import (
    NS_PER_S,
    Policy,
    PrefixSums,
    RequestId,
    RequestInfo,
    Rounds,
)
from lapsd.replay.workload import Updates, Workload


def simulate_batched(arrays: TraceArrays, workload: Workload, policy: Policy[Any], batch: int,
                     *, cost: BatchCost | None = None, switch: SwitchCost | None = None,
                     kv_tokens: int | None = None) -> SimResult:
    """Replay ``workload`` through ``policy`` at batch size ``batch`` (module docstring).

    Parameters
    ----------
    batch
        Requests per step (>= 1).
    cost
        The step-time model (flat by default).
    switch
        Swap cost model.
    kv_tokens
        KV capacity in tokens (prompt plus generated of every resident request); ``None``:
        unbounded, every preemption pays the switch cost.
    """
    if batch < 1:
        raise LapsdError(f"batch size must be >= 1, got {batch}")
    if kv_tokens is not None and kv_tokens < 1:
        raise LapsdError(f"KV capacity must be >= 1 token, got {kv_tokens} (--kv-tokens)")
    cost = cost or BatchCost()
    switch = switch or SwitchCost()
    check_span(arrays, workload, switch, max(cost.slowdown))
    arrival, starts, ends, prompt, service_s = RequestColumns.of(arrays, workload, policy)
    n_jobs = len(workload)
    pos = list(starts)
    per = {k: np.diff(v).tolist() for k, v in arrays.cum.items()}
    cum_ns, cum_em = arrays.cum["ns"], arrays.prefix.lists["emitted"]
    preds = workload.predictions
    updates = workload.updates
    completion = [0] * n_jobs
    estimates: dict[int, float] = {}

    def record(request_id: RequestId, total_s: float) -> None:
        estimates[cast(int, request_id)] = total_s

    policy.on_estimate = record
    c0_ns, c1_ns = switch.c0 * NS_PER_S, switch.c1 * NS_PER_S
    generated = [0] * n_jobs
    resident: set[int] = set()
    last: list[int] = []
    now = nxt = done = preemptions = switch_ns = steps = 0

    def context(j: int) -> int:
        return prompt[j] + generated[j]

    while done < n_jobs:
        while nxt < n_jobs and arrival[nxt] <= now:
            if policy.needs_oracle:
                policy.reveal(nxt, service_s[nxt])
            policy.admit(RequestInfo(nxt, arrival[nxt] / NS_PER_S, prompt[nxt],
                                     None if preds is None else preds[nxt]))
            nxt += 1
        used = 0

        def fits(rid: RequestId) -> bool:
            nonlocal used
            need = context(cast(int, rid))
            if kv_tokens is not None and used + need > kv_tokens and used > 0:
                return False
            used += need
            return True

        chosen = [cast(int, r) for r in policy.step(batch, fits)]
        if not chosen:
            now = arrival[nxt]
            continue
        steps += 1
        pay = 0
        members = set(chosen)
        for j in last:
            if j not in members and pos[j] < ends[j]:
                preemptions += 1
                if kv_tokens is None:
                    pay += round(c0_ns + c1_ns * context(j))
        if kv_tokens is not None:
            # Resident caches that no longer fit beside the batch are swapped out (largest
            # first); a swap's cost covers the way out and back in.
            resident |= members
            held = sum(context(i) for i in resident)
            for j in sorted(resident - members, key=context, reverse=True):
                if held <= kv_tokens:
                    break
                resident.discard(j)
                held -= context(j)
                pay += round(c0_ns + c1_ns * context(j))
        switch_ns += pay
        now += pay
        steps_ns = _steps(chosen, pos, ends, cum_ns, cost.factor(len(chosen)),
                          None if updates is None else
                          [_next_update(updates[j], pos[j] - starts[j]) for j in chosen],
                          now, arrival[nxt] if nxt < n_jobs else None,
                          lookahead=kv_tokens is None)
        taken = len(steps_ns)
        if taken > 1:
            # The batch runs unchanged for as long as no member's decision could change.
            steps_cum = np.concatenate(([0], np.cumsum(steps_ns, dtype=np.int64)))
            runs = {j: _member_rounds(arrays, pos[j], steps_cum) for j in chosen}
            taken = min([taken, *(policy.horizon(j, runs[j]) for j in chosen)])
            for j in chosen:
                policy.advance(j, Rounds(runs[j].prefix, 0, taken))
        else:
            r0 = steps_ns[0] / NS_PER_S
            for j in chosen:
                r = pos[j]
                policy.observe(j, per["emitted"][r], per["drafted"][r], per["accepted"][r], r0)
        now += int(sum(steps_ns[:taken]))
        for j in chosen:
            generated[j] += cum_em[pos[j] + taken] - cum_em[pos[j]]
            pos[j] += taken
            if pos[j] == ends[j]:
                policy.finish(j)
                completion[j] = now
                resident.discard(j)
                done += 1
            elif updates is not None:
                for rounds, pred in updates[j]:
                    if rounds == pos[j] - starts[j]:
                        policy.update_prediction(j, pred)
        last = chosen
    return SimResult.of(arrays, workload, policy, completion, preemptions=preemptions,
                        switch_ns=switch_ns, decisions=steps, estimates=estimates)


def _next_update(updates: Updates, done: int) -> int | None:
    """Rounds until a member's next re-prediction (``None``: no more)."""
    ahead = [r - done for r, _ in updates if r > done]
    return min(ahead) if ahead else None


def _steps(chosen: list[int], pos: list[int], ends: list[int], cum_ns: np.ndarray,
           factor: float, to_update: list[int | None] | None, now: int,
           next_arrival: int | None, *, lookahead: bool) -> list[int]:
    """Step times (ns) of the steps the batch could run unchanged, at least one.

    A step takes the mean of its members' rounds times ``factor``. The run stops at the first
    member to finish, at a re-prediction, and before the first step that starts after the next
    arrival (which may join or displace a member); without ``lookahead``, after one step.
    """
    b = len(chosen)
    at = [pos[j] for j in chosen]
    length = min(ends[j] - pos[j] for j in chosen) if lookahead else 1
    if to_update is not None:
        length = min([length, *(u for u in to_update if u is not None)])
    if length == 1:
        return [round(sum(int(cum_ns[a + 1] - cum_ns[a]) for a in at) / b * factor)]
    ends_ns = cum_ns[np.add.outer(at, np.arange(length + 1))]  # (b, length + 1) prefix values
    steps = np.rint(np.diff(ends_ns, axis=1).sum(axis=0) / b * factor).astype(np.int64)
    if next_arrival is not None and length > 1:
        begins = now + np.concatenate(([0], np.cumsum(steps[:-1])))
        length = max(1, int(np.count_nonzero(begins < next_arrival)))
    return steps[:length].tolist()


def _member_rounds(arrays: TraceArrays, at: int, steps_cum: np.ndarray) -> Rounds:
    """Rounds ``at, at + 1, ...`` of a request, each lasting its batch step.

    The trace's prefix sums are used as they are (views: only differences are read) with
    the steps' cumulative times as the service.
    """
    stop = at + steps_cum.size
    cum = {f: arrays.cum[f][at:stop] for f in ("emitted", "drafted", "accepted")}
    cum["ns"] = steps_cum
    return Rounds(PrefixSums(cum), 0, steps_cum.size - 1)
