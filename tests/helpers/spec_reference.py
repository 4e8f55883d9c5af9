"""Plain references of the policies, written from the design page, not from lapsd's code.

``../shared/design/laps-sd.md`` (sections 4 and 5) specifies LAPS-SD and its baselines. Each
class here restates one policy as directly as possible: at every round boundary it recomputes
every admitted request's priority key from the rounds observed of that request, and
:func:`spec_simulate` runs the request with the smallest key for one round. No heaps, no
compiled kernels, no look-ahead. The only state besides the observed rounds is MLFQ's level
and time of entering it (first come, first served within a level is about that time).

Where the page leaves a detail open, the reference takes the choice the page's **choice**
notes or the policy's docstring name, and says so:

* ties go to the request admitted first;
* service is measured in integer nanoseconds (seconds unit), rounds or tokens, and a bound in
  seconds is rounded to the nearest nanosecond, as the trace format stores times;
* LAPS-SD measures ``k·A_hat + 1`` as the request's tokens per round so far and ``k·t_draft +
  t_verify`` as its mean round time (so variable draft lengths are covered); the remaining
  length is the prediction's own conditional estimate (the page's choice in section 3), read
  from the :class:`~lapsd.replay.estimate.LengthPrediction` the request carries;
* the acceptance rate of a round with nothing drafted counts as 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.costs import SwitchCost
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.workload import Workload

NS = 1_000_000_000


@dataclass
class Job:
    """An admitted request and everything observed of it, round by round."""

    seq: int
    prompt_tokens: int
    prediction: LengthPrediction | None
    true_service_ns: int
    emitted: list[int] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    ns: list[int] = field(default_factory=list)

    def attained(self, unit: str) -> int:
        if unit == "seconds":
            return sum(self.ns)
        return len(self.ns) if unit == "rounds" else sum(self.emitted)

    def attained_after(self, unit: str, r: int) -> int:
        """Attained service after the first ``r`` rounds."""
        if unit == "seconds":
            return sum(self.ns[:r])
        return r if unit == "rounds" else sum(self.emitted[:r])


def bound(value: float, unit: str) -> int:
    """A service amount in the integer measure of ``unit``."""
    return round(value * NS) if unit == "seconds" else math.ceil(value)


def band(bounds: list[int], value: float) -> int:
    """0-based index of the queue whose band ``[bounds[j-1], bounds[j])`` holds ``value``."""
    return sum(1 for b in bounds if b <= value)


class SpecPolicy:
    """A policy as the page states it: a key per request, smallest first."""

    preemptive = True

    def key(self, job: Job, running: bool) -> tuple:
        raise NotImplementedError

    def after_round(self, job: Job) -> None:
        """Hook for decisions the page ties to the end of a round (none by default)."""


class FCFS(SpecPolicy):
    """Arrival order, run to completion."""

    preemptive = False

    def key(self, job: Job, running: bool) -> tuple:
        return (job.seq,)


class LPSJF(SpecPolicy):
    """Shortest predicted output length first, non-preemptive."""

    preemptive = False

    def key(self, job: Job, running: bool) -> tuple:
        return (job.prediction.median, job.seq)


class LAS(SpecPolicy):
    """Least attained service first, preemptive at round boundaries."""

    def __init__(self, unit: str = "seconds") -> None:
        self.unit = unit

    def key(self, job: Job, running: bool) -> tuple:
        return (job.attained(self.unit), job.seq)


class LPSRPT(SpecPolicy):
    """Shortest predicted remaining tokens first, preemptive."""

    def key(self, job: Job, running: bool) -> tuple:
        return (job.prediction.remaining_one(sum(job.emitted)), job.seq)


class SRPTOracle(SpecPolicy):
    """Shortest true remaining time first, preemptive (the clairvoyant lower bound)."""

    def key(self, job: Job, running: bool) -> tuple:
        return (job.true_service_ns - sum(job.ns), job.seq)


class Gittins(SpecPolicy):
    """Highest Gittins index per unit of the request's own cost per token, preemptive; the
    running request is displaced only by a rank better than its own by the switch cost."""

    def __init__(self, seconds_per_token: float, prior_tokens: float, c0: float, c1: float,
                 switch_weight: float) -> None:
        self.r0 = seconds_per_token * NS
        self.prior, self.weight = prior_tokens, switch_weight
        self.c0, self.c1 = c0 * NS, c1 * NS

    def key(self, job: Job, running: bool) -> tuple:
        generated = sum(job.emitted)
        weight = generated + self.prior
        per_token = (self.r0 if weight <= 0 or math.isinf(self.prior)
                     else (sum(job.ns) + self.prior * self.r0) / weight)
        rank = per_token / job.prediction.gittins_index(generated)
        if running:
            rank -= self.weight * (self.c0 + self.c1 * (job.prompt_tokens + generated))
        return (rank, job.seq)


class MLFQ(SpecPolicy):
    """K levels with geometric quanta; demoted to the back of the next level when a quantum is
    used up; higher levels preempt; first come first served within a level.

    With ``skip_join`` a request starts at the highest level whose quantum covers its estimated
    prefill (FastServe's skip-join).
    """

    def __init__(self, K: int, q1: float, M: float, unit: str = "seconds",
                 skip_join: bool = False, prefill_s_per_token: float = 2e-5) -> None:
        self.K, self.unit = K, unit
        self.quanta = [q1 * M**j for j in range(K - 1)]
        self.bounds = [bound(b, unit) for b in np.cumsum(self.quanta)]
        self.skip_join, self.prefill = skip_join, prefill_s_per_token
        # (level, entry) of each job, re-derived from its history when it runs.
        self.place: dict[int, tuple[int, int]] = {}
        self.entries = 0

    def _enter(self, job: Job, level: int) -> None:
        self.entries += 1
        self.place[job.seq] = (level, self.entries)

    def key(self, job: Job, running: bool) -> tuple:
        if job.seq not in self.place:
            level = 0
            if self.skip_join:
                prefill = job.prompt_tokens * self.prefill
                fits = [j for j, q in enumerate(self.quanta) if q >= prefill]
                level = fits[0] if fits else self.K - 1
            self._enter(job, level)
        level, entry = self.place[job.seq]
        return (level, entry, job.seq)

    def after_round(self, job: Job) -> None:
        level, _ = self.place[job.seq]
        if level < self.K - 1 and job.attained(self.unit) >= self.bounds[level]:
            self._enter(job, max(level, band(self.bounds, job.attained(self.unit))))


class LapsSD(SpecPolicy):
    """LAPS-SD, section 4 of the design page (see the module docstring for the open details)."""

    def __init__(self, K: int, sup1: float, M: float, gamma: int, delta: float,
                 unit: str = "seconds", perceptible_first: bool = True,
                 length_estimate: str = "paper", quantile: float = 0.5,
                 max_spread: float | None = None) -> None:
        self.unit, self.gamma, self.delta = unit, gamma, delta
        self.length_estimate, self.quantile, self.max_spread = (length_estimate, quantile,
                                                                max_spread)
        #: The round after which each job became perceptible (a decision made at that time).
        self.perceptible: dict[int, int] = {}
        # Sup_j = Sup_1 * M^(j-1) for j = 1..K-1; queue K is unbounded.
        self.bounds = [bound(sup1 * M**j, unit) for j in range(K - 1)]
        self.perceptible_class, self.new_class = (0, 1) if perceptible_first else (1, 0)
        #: Estimated total service (seconds) of each job when it became perceptible.
        self.estimates: dict[int, float] = {}

    def stable_now(self, job: Job) -> bool:
        """Whether the job's acceptance rate is stable after its latest round.

        The running acceptance rates after its last ``gamma`` rounds must have a variance of
        at most ``delta`` (and it must have run ``gamma`` rounds).
        """
        if len(job.ns) < self.gamma:
            return False
        rates = []
        for r in range(len(job.ns) - self.gamma + 1, len(job.ns) + 1):
            accepted, drafted = sum(job.accepted[:r]), sum(job.drafted[:r])
            rates.append(accepted / drafted if drafted > 0 else 0.0)
        mean = sum(rates) / self.gamma
        return sum((x - mean) * (x - mean) for x in rates) / self.gamma <= self.delta

    def narrow_now(self, job: Job) -> bool:
        """Whether the remaining length's 80% interval is at most ``max_spread`` x its median."""
        if self.max_spread is None:
            return True
        g, pred = sum(job.emitted), job.prediction
        q10, q50, q90 = (pred.quantile_remaining(g, q) for q in (0.1, 0.5, 0.9))
        return (q90 - q10) / q50 <= self.max_spread

    def remaining(self, pred: LengthPrediction, generated: int) -> float:
        """The remaining tokens of the estimate (the paper's, the mean, or a quantile)."""
        if self.length_estimate == "mean":
            return pred.mean_remaining(generated)
        if self.length_estimate == "quantile":
            return pred.quantile_remaining(generated, self.quantile)
        return pred.remaining_one(generated)

    def estimate(self, job: Job, rounds: int) -> tuple[float, float, float]:
        """``(T_remaining, T_total, T_total in seconds)`` after the first ``rounds`` rounds."""
        generated = sum(job.emitted[:rounds])
        service_ns = sum(job.ns[:rounds])
        tokens_per_round = generated / rounds  # k * A_hat + 1
        round_ns = service_ns / rounds  # k * t_draft + t_verify
        cost = {"seconds": round_ns, "rounds": 1.0, "tokens": tokens_per_round}[self.unit]
        remaining = self.remaining(job.prediction, generated)
        return (remaining * cost / tokens_per_round,
                (generated + remaining) * cost / tokens_per_round,
                (generated + remaining) * (round_ns / 1e9) / tokens_per_round)

    def key(self, job: Job, running: bool) -> tuple:
        rounds = len(job.ns)
        if job.seq in self.perceptible:
            # Perceptible: placed by its estimated total, ordered by its estimated remaining
            # time, preempting peers.
            t_rem, t_total, _ = self.estimate(job, rounds)
            return (band(self.bounds, t_total), self.perceptible_class, t_rem, job.seq)
        # Non-perceptible: queue by attained service, least attained first, and the running one
        # is not preempted by non-perceptible peers of its queue.
        queue = band(self.bounds, job.attained(self.unit))
        return (queue, self.new_class, -math.inf if running else job.attained(self.unit),
                job.seq)

    def after_round(self, job: Job) -> None:
        if job.seq not in self.perceptible and self.stable_now(job) and self.narrow_now(job):
            self.perceptible[job.seq] = len(job.ns)
            self.estimates[job.seq] = self.estimate(job, len(job.ns))[2]


class StaticPriority(SpecPolicy):
    """A priority fixed when the request arrives, as vLLM, SGLang and TensorRT-LLM take one.

    The priority is the wrapped policy's key of the request with nothing observed (its first
    element); for LAPS-SD, whose key then says nothing about the request, the remaining length
    its execution-time estimate would use. It never changes (re-predictions are not seen);
    ties go to the earlier arrival. Non-preemptive unless ``preemptive``.
    """

    def __init__(self, policy: str, parameters: dict, preemptive: bool = False) -> None:
        self.inner = make(policy, **parameters)
        self.preemptive = preemptive
        self.rank: dict[int, float] = {}

    def key(self, job: Job, running: bool) -> tuple:
        if job.seq not in self.rank:
            assert not job.ns, "the first key of a request is taken before it runs"
            if isinstance(self.inner, LapsSD):
                self.rank[job.seq] = self.inner.remaining(job.prediction, 0)
            else:
                self.rank[job.seq] = self.inner.key(job, False)[0]
        return (self.rank[job.seq], job.seq)


def make(name: str, **params) -> SpecPolicy:
    """The reference of a registered policy, with the same parameters."""
    return {"fcfs": FCFS, "lp-sjf": LPSJF, "las": LAS, "lp-srpt": LPSRPT,
            "srpt-oracle": SRPTOracle, "mlfq": MLFQ, "laps-sd": LapsSD,
            "gittins": Gittins, "static-priority": StaticPriority}[name](**params)


def _columns(arrays: TraceArrays, workload: Workload) -> tuple[list[int], list[int], list[int]]:
    """Arrival time, first round and end round of each request, in workload order."""
    return (workload.arrival_ns.tolist(), arrays.offsets[workload.index].tolist(),
            arrays.offsets[workload.index + 1].tolist())


def _admit(arrays: TraceArrays, workload: Workload, jobs: dict[int, Job], nxt: int,
           now: int) -> int:
    """Admit every request that has arrived by ``now``; returns the next one to arrive."""
    while nxt < len(workload) and workload.arrival_ns[nxt] <= now:
        idx = int(workload.index[nxt])
        pred = None if workload.predictions is None else workload.predictions[nxt]
        jobs[nxt] = Job(nxt, int(arrays.prompt_tokens[idx]), pred, int(arrays.service_ns[idx]))
        nxt += 1
    return nxt


def spec_simulate_batched(arrays: TraceArrays, workload: Workload, policy: SpecPolicy,
                          batch: int, factor: Callable[[int], float],
                          switch: SwitchCost | None = None) -> np.ndarray:
    """Run ``workload`` in steps of up to ``batch`` requests; completion times (ns).

    At each step every arrival up to now is admitted and every request's key recomputed (the
    last step's requests with their running key); the ``batch`` smallest run one round each
    (a non-preemptive policy keeps the last step's unfinished requests first). The step takes
    the mean of their rounds' times times ``factor(size)``; a request of the last step left out
    unfinished costs ``c0 + c1 * context`` first. Each member's service grows by the step.
    """
    switch = switch or SwitchCost()
    per_round = {k: np.diff(v).tolist() for k, v in arrays.cum.items()}
    n = len(workload)
    arrival, starts, ends = _columns(arrays, workload)
    jobs: dict[int, Job] = {}
    done = [-1] * n
    now, nxt, last, finished = 0, 0, [], 0
    while finished < n:
        nxt = _admit(arrays, workload, jobs, nxt, now)
        if not jobs:
            now = arrival[nxt]
            continue
        if policy.preemptive:
            ranked = sorted(jobs, key=lambda j: policy.key(jobs[j], j in last))
        else:
            kept = [j for j in last if j in jobs]
            ranked = kept + sorted((j for j in jobs if j not in kept),
                                   key=lambda j: policy.key(jobs[j], False))
        chosen = ranked[:batch]
        for j in last:
            if j in jobs and j not in chosen:
                context = jobs[j].prompt_tokens + sum(jobs[j].emitted)
                now += round(switch.c0 * NS) + round(switch.c1 * NS * context)
        rows = [starts[j] + len(jobs[j].ns) for j in chosen]
        step = round(sum(per_round["ns"][r] for r in rows) / len(rows) * factor(len(chosen)))
        now += step
        for j, r in zip(chosen, rows, strict=True):
            job = jobs[j]
            job.emitted.append(per_round["emitted"][r])
            job.drafted.append(per_round["drafted"][r])
            job.accepted.append(per_round["accepted"][r])
            job.ns.append(step)
            policy.after_round(job)
            if starts[j] + len(job.ns) == ends[j]:
                done[j] = now
                del jobs[j]
                finished += 1
        last = [j for j in chosen if j in jobs]
    return np.array(done, dtype=np.int64)


def spec_simulate(arrays: TraceArrays, workload: Workload, policy: SpecPolicy,
                  switch: SwitchCost | None = None) -> np.ndarray:
    """Run ``workload`` one round at a time under ``policy``; completion times (ns).

    At each round boundary every arrival up to now is admitted, the key of every admitted
    request is recomputed, and the smallest runs one round (a non-preemptive policy keeps the
    running request). Switching away from an unfinished request costs ``c0 + c1 · context``.
    """
    switch = switch or SwitchCost()
    per_round = {k: np.diff(v).tolist() for k, v in arrays.cum.items()}
    n = len(workload)
    arrival, starts, ends = _columns(arrays, workload)
    jobs: dict[int, Job] = {}
    done = [-1] * n
    now, nxt, running, finished = 0, 0, None, 0
    while finished < n:
        nxt = _admit(arrays, workload, jobs, nxt, now)
        if not jobs:
            now = arrival[nxt]
            continue
        if running is not None and not policy.preemptive:
            pick = running
        else:
            pick = min(jobs, key=lambda j: policy.key(jobs[j], j == running))
        if running is not None and pick != running:
            last = jobs[running]
            context = last.prompt_tokens + sum(last.emitted)
            now += round(switch.c0 * NS) + round(switch.c1 * NS * context)
        job = jobs[pick]
        r = starts[pick] + len(job.ns)
        job.emitted.append(per_round["emitted"][r])
        job.drafted.append(per_round["drafted"][r])
        job.accepted.append(per_round["accepted"][r])
        job.ns.append(per_round["ns"][r])
        now += per_round["ns"][r]
        policy.after_round(job)
        for rounds, pred in (workload.updates[pick] if workload.updates is not None else ()):
            if rounds == len(job.ns) and starts[pick] + rounds < ends[pick]:
                job.prediction = pred  # re-predicted after this round
        if starts[pick] + len(job.ns) == ends[pick]:
            done[pick] = now
            del jobs[pick]
            finished += 1
            running = None
        else:
            running = pick
    return np.array(done, dtype=np.int64)
