"""The one loop that runs a scheduling policy: in a replay, a batched replay and a live server.

:func:`drive` owns the bookkeeping of serving under a :class:`~lapsd.replay.policies.base.Policy`:
it admits arrivals (after the oracle's :meth:`~Policy.reveal`), asks the policy which requests
run the next step (:meth:`~Policy.step`: batch size one is ``n = 1``), counts the preemptions
(a request of the last step, unfinished, that is not in this one), lets the executor switch
caches and run the step, tells the policy what each member produced (:meth:`~Policy.advance`),
finishes completed requests, delivers re-predictions (:meth:`~Policy.update_prediction`) and
records completion times. Outside the policies and the server plug-ins, no other module calls a
policy's lifecycle methods; ``lapsd replay`` and ``lapsd live`` differ only in what is behind it:

* a **clock**: :class:`SimulatedClock` (integer nanoseconds that jump over idle spells) or
  :class:`WallClock` (``perf_counter_ns``; an idle spell sleeps until the next arrival);
* an **executor**: :class:`~lapsd.replay.executor.TraceExecutor` (a trace's recorded rounds and a
  cost model) or the live server's GPU engine (:mod:`lapsd.collect.live`).

The replay's speed is an optimisation inside this loop, not a second loop: an executor may offer
a *run* of future rounds per member (:class:`~lapsd.replay.policies.base.Rounds`, prefix sums),
and the policy takes as many as it can before its decision could change (at batch size one,
:meth:`~Policy.advance` answers; above, the fewest that any member's :meth:`~Policy.horizon`
allows). A run stops before the next arrival whenever that arrival could enter the batch (a
free slot, or :meth:`~Policy.arrivals_may_preempt`). A live engine offers one round, and the
loop is then the plain round-by-round one that the differential tests check the replay against.

A decision still costs a few Python calls, and LAS decides every round or two. When the
executor has a :class:`~lapsd.replay.policies.base.Lookahead` (a replay on the simulated clock
with no KV capacity: every request's recorded rounds and the step-time model) and the policy
:attr:`~Policy.shares` (every registered one but banded LAPS-SD), the loop hands it a span of
:data:`SHARE_SPAN` arrivals instead: :meth:`~Policy.share` admits them and makes the decisions
up to the next arrival after them in one compiled call (:mod:`lapsd.replay.timeshare`: at batch
size one a decision per run, as here; above, a step at a time), and the loop does the
bookkeeping (the executor's :meth:`~Executor.advance`, finishing, completion times). The
differential tests check that the completions, preemptions and switch times are the step
loop's (at batch size one its decisions too).

Time is integer nanoseconds from the run's start. A step's member rounds last the whole step
(each member is served for it), so the step moves the clock by its switch time plus the taken
rounds' time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lapsd.replay.clock import NS_PER_S
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies.base import Lookahead, Policy, RequestId, RequestInfo, Rounds

_NONE: list[int] = []  # no request: no preemption, or none of a step left (never appended to)
#: Arrivals per call of a time-sharing policy's :meth:`~Policy.share`.
SHARE_SPAN = 256


class Clock(Protocol):
    """What the loop asks of time: to wait, with nothing to run, for the next arrival."""

    def idle(self, now: int, until: int) -> int:
        """Wait from ``now`` until ``until`` (ns since the start); the new time, ``until``."""
        ...


class SimulatedClock:
    """Simulated time: an idle spell is a jump."""

    def idle(self, now: int, until: int) -> int:  # noqa: ARG002
        """Jump to ``until``."""
        return until


class WallClock:
    """The wall clock (``perf_counter_ns``) from :attr:`t0`; an idle spell sleeps.

    Attributes
    ----------
    idle_ns
        Nominal idle time (from each idle spell's start to the arrival that ended it).
    last_idle_ns
        That of the latest idle spell (0 once a step has run since; the executor resets it).
    slept_ns
        Wall time spent waiting, for the executor's account of its own time.
    """

    def __init__(self) -> None:
        self.t0 = time.perf_counter_ns()
        self.idle_ns = 0
        self.last_idle_ns = 0
        self.slept_ns = 0

    def read(self) -> int:
        """Nanoseconds since :attr:`t0`."""
        return time.perf_counter_ns() - self.t0

    def idle(self, now: int, until: int) -> int:
        """Sleep until ``until`` (sleep, then spin the last millisecond); the arrival's time.

        The next boundary is the arrival itself, not the instant the sleep ended, so any
        oversleep is part of the next step's time, as it is of the server's.
        """
        s0 = time.perf_counter_ns()
        deadline = self.t0 + until
        while (left := deadline - time.perf_counter_ns()) > 0:
            if left > 1_500_000:
                time.sleep((left - 1_000_000) / NS_PER_S)
        self.slept_ns += time.perf_counter_ns() - s0
        self.idle_ns += until - now
        self.last_idle_ns += until - now
        return until


class Executor(Protocol):
    """What runs the requests' rounds behind :func:`drive`.

    Requests are named by their position in arrival order (``0 .. n - 1``).

    Attributes
    ----------
    batch
        Requests per step (``n`` of :meth:`Policy.step`).
    fits
        The memory check :meth:`Policy.step` calls in rank order, or ``None``.
    repredicts
        Whether :meth:`update` may give re-predictions (the loop asks only then).
    lookahead
        Every request's rounds ahead (a replay's), or ``None``: with it, a policy that
        time-shares the server serves between arrivals in one call (:meth:`Policy.share`).
    """

    @property
    def batch(self) -> int: ...  # noqa: D102

    @property
    def fits(self) -> Callable[[RequestId], bool] | None: ...  # noqa: D102

    @property
    def repredicts(self) -> bool: ...  # noqa: D102

    @property
    def lookahead(self) -> Lookahead | None: ...  # noqa: D102

    def request(self, j: int) -> RequestInfo:
        """What the policy is told of request ``j`` as it arrives (called once, in order)."""
        ...

    def true_service_s(self, j: int) -> float:
        """Request ``j``'s true service time (for an oracle policy only)."""
        ...

    def run(self, chosen: list[int], preempted: Sequence[int], now: int, until: int | None,
            ) -> tuple[int, list[Rounds]]:
        """Switch to ``chosen`` and offer their next rounds: ``(switch ns, runs)``.

        ``preempted`` are the last step's unfinished requests not in ``chosen``. The runs, one
        per member, start after the switch, and each round lasts its whole step (ns); a run
        stops before the first step that starts at or after ``until`` (except the first).
        """
        ...

    def advance(self, j: int, taken: int, now: int) -> bool:
        """Request ``j`` ran ``taken`` rounds of its offered run, ending at ``now``; done."""
        ...

    def update(self, j: int) -> LengthPrediction | None:
        """Request ``j``'s re-prediction after the rounds it just ran, if one is due."""
        ...


@dataclass
class Outcome:
    """What a run of :func:`drive` counted. Times are integer nanoseconds."""

    completion_ns: list[int]
    preemptions: int
    switch_ns: int
    #: Scheduling decisions: steps asked of the policy that ran something.
    decisions: int


def drive(policy: Policy[Any], arrival_ns: Sequence[int], executor: Executor,
          clock: Clock | None = None) -> Outcome:
    """Serve the requests arriving at ``arrival_ns`` (sorted) under ``policy`` (module docstring).

    Parameters
    ----------
    policy
        A fresh policy object (it is consumed by the run).
    arrival_ns
        Each request's arrival, in arrival order.
    executor
        What runs the rounds (a trace and cost model, or the GPU engine).
    clock
        How idle spells pass (simulated by default).

    Returns
    -------
    Outcome
        Completion time of each request, in arrival order, and counters.
    """
    clock = clock or SimulatedClock()
    n_jobs = len(arrival_ns)
    arrival = list(arrival_ns)
    batch, fits = executor.batch, executor.fits
    oracle = policy.needs_oracle
    admit, step, advance, finish = policy.admit, policy.step, policy.advance, policy.finish
    may_preempt = policy.arrivals_may_preempt if policy.preempts_on_arrival else None
    request, run, ran = executor.request, executor.run, executor.advance
    update = executor.update if executor.repredicts else None
    ahead = (executor.lookahead if policy.shares and isinstance(clock, SimulatedClock)
             else None)
    completion = [-1] * n_jobs  # -1: not finished
    last: list[int] = []  # the last step's unfinished members
    now = nxt = done = preemptions = switch_ns = decisions = 0
    while done < n_jobs:
        if ahead is not None:
            # Time-sharing: a span of arrivals in one call (admitted there), then the span's
            # bookkeeping: the executor moves on, completed requests finish.
            span = range(nxt, min(n_jobs, nxt + SHARE_SPAN))
            if oracle:
                for j in span:
                    policy.reveal(j, executor.true_service_s(j))
            nxt = span.stop
            shared = policy.share(ahead, now, [request(j) for j in span],
                                  arrival[nxt] if nxt < n_jobs else None)
            now = shared.now
            decisions += shared.decisions
            preemptions += shared.preemptions
            switch_ns += shared.switch_ns
            for j, taken, at in shared.ran:
                if ran(j, taken, now if at < 0 else at):
                    finish(j)
                    completion[j] = at
                    done += 1
            continue
        while nxt < n_jobs and arrival[nxt] <= now:
            if oracle:
                policy.reveal(nxt, executor.true_service_s(nxt))
            admit(request(nxt))
            nxt += 1
        chosen: list[int] = step(batch, fits)  # type: ignore[assignment]  # admitted as positions
        if not chosen:
            now = clock.idle(now, arrival[nxt])
            continue
        decisions += 1
        if not last:
            preempted = last
        elif len(last) == 1:  # batch size one: the one request of the last step, or none
            preempted = _NONE if last[0] in chosen else last
            preemptions += len(preempted)
        else:
            preempted = [j for j in last if j not in chosen]
            preemptions += len(preempted)
        until = (arrival[nxt] if nxt < n_jobs and (
            len(chosen) < batch or (may_preempt is not None and may_preempt())) else None)
        cost, runs = run(chosen, preempted, now, until)
        if len(runs) == 1:
            taken = advance(chosen[0], runs[0])
        else:
            # The batch runs unchanged for as long as no member's decision could change.
            taken = min(policy.horizon(j, r) for j, r in zip(chosen, runs, strict=True))
            for j, r in zip(chosen, runs, strict=True):
                advance(j, Rounds(r.prefix, r.start, r.start + taken))
        r = runs[0]  # Rounds.total("ns", taken), inlined: once per decision
        ns = r.prefix.lists["ns"]
        now += cost + ns[r.start + taken] - ns[r.start]
        switch_ns += cost
        last = chosen  # step's list is the caller's: nothing else holds it
        for j in chosen:
            if ran(j, taken, now):
                finish(j)
                completion[j] = now
                done += 1
                last = _NONE
            elif update is not None and (belief := update(j)) is not None:
                policy.update_prediction(j, belief)
        if last is _NONE and len(chosen) > 1:
            last = [j for j in chosen if completion[j] < 0]
    return Outcome(completion, preemptions, switch_ns, decisions)
