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
from dataclasses import dataclass, field

import numpy as np

from lapsd.replay.engine import SwitchCost, TraceArrays, Workload
from lapsd.replay.estimate import LengthPrediction

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
                 unit: str = "seconds", perceptible_first: bool = True) -> None:
        self.unit, self.gamma, self.delta = unit, gamma, delta
        # Sup_j = Sup_1 * M^(j-1) for j = 1..K-1; queue K is unbounded.
        self.bounds = [bound(sup1 * M**j, unit) for j in range(K - 1)]
        self.perceptible_class, self.new_class = (0, 1) if perceptible_first else (1, 0)
        #: Estimated total service (seconds) of each job when it became perceptible.
        self.estimates: dict[int, float] = {}

    def stable_round(self, job: Job) -> int | None:
        """The first round after which the job's acceptance rate was stable (1-based), if any.

        After each round r >= gamma, the running acceptance rates after rounds r-gamma+1..r
        must have a variance of at most delta.
        """
        rates = []
        accepted = drafted = 0
        for a, d in zip(job.accepted, job.drafted, strict=True):
            accepted += a
            drafted += d
            rates.append(accepted / drafted if drafted > 0 else 0.0)
            if len(rates) >= self.gamma:
                window = rates[-self.gamma:]
                mean = sum(window) / self.gamma
                if sum((x - mean) * (x - mean) for x in window) / self.gamma <= self.delta:
                    return len(rates)
        return None

    def estimate(self, job: Job, rounds: int) -> tuple[float, float, float]:
        """``(T_remaining, T_total, T_total in seconds)`` after the first ``rounds`` rounds."""
        generated = sum(job.emitted[:rounds])
        service_ns = sum(job.ns[:rounds])
        tokens_per_round = generated / rounds  # k * A_hat + 1
        round_ns = service_ns / rounds  # k * t_draft + t_verify
        cost = {"seconds": round_ns, "rounds": 1.0, "tokens": tokens_per_round}[self.unit]
        remaining = job.prediction.remaining_one(generated)
        return (remaining * cost / tokens_per_round,
                (generated + remaining) * cost / tokens_per_round,
                (generated + remaining) * (round_ns / 1e9) / tokens_per_round)

    def key(self, job: Job, running: bool) -> tuple:
        rounds = len(job.ns)
        stable = self.stable_round(job)
        if stable is not None:
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
        stable = self.stable_round(job)
        if stable == len(job.ns):
            self.estimates[job.seq] = self.estimate(job, stable)[2]


def make(name: str, **params) -> SpecPolicy:
    """The reference of a registered policy, with the same parameters."""
    return {"fcfs": FCFS, "lp-sjf": LPSJF, "las": LAS, "lp-srpt": LPSRPT,
            "srpt-oracle": SRPTOracle, "mlfq": MLFQ, "laps-sd": LapsSD}[name](**params)


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
    arrival = workload.arrival_ns.tolist()
    starts = arrays.offsets[workload.index].tolist()
    ends = arrays.offsets[workload.index + 1].tolist()
    jobs: dict[int, Job] = {}
    done = [-1] * n
    now, nxt, running, finished = 0, 0, None, 0
    while finished < n:
        while nxt < n and arrival[nxt] <= now:
            idx = int(workload.index[nxt])
            pred = None if workload.predictions is None else workload.predictions[nxt]
            jobs[nxt] = Job(nxt, int(arrays.prompt_tokens[idx]), pred,
                            int(arrays.service_ns[idx]))
            nxt += 1
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
