"""The replay's executor: a trace's recorded rounds, step times and switches from cost models.

:func:`~lapsd.replay.driver.drive` runs a policy over it exactly as the live server runs one over
the GPU engine. Each request replays its own recorded rounds (tokens, drafts, acceptance). A
step's time is, at batch size one with a flat cost model, the round's recorded time; otherwise
the mean of its members' recorded rounds times the :class:`~lapsd.replay.costs.BatchCost`
slowdown of the batch (:mod:`lapsd.replay.batch`). A preemption costs ``c0 + c1 * context``
(:class:`~lapsd.replay.costs.SwitchCost`); with a KV capacity only the caches that no longer fit
pay it, largest first.

The executor offers each member its rounds up to the first point where the batch must be
decided again (a member finishing or due a re-prediction, the next arrival when it could enter,
``max_chunk``); the policy then takes as many as its decision allows.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lapsd.errors import LapsdError
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.costs import BatchCost, SwitchCost
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies.base import (
    NS_PER_S,
    Lookahead,
    Policy,
    PrefixSums,
    RequestId,
    RequestInfo,
    Rounds,
)
from lapsd.replay.workload import Workload


class TraceExecutor:
    """Runs a workload's requests from their recorded rounds (module docstring).

    Parameters
    ----------
    arrays
        The compiled trace.
    workload
        Arrivals, predictions and re-predictions (each delivered right after the round it was
        made for).
    policy
        The policy that will be driven (checked for the predictions it needs).
    batch
        Requests per step (>= 1).
    cost
        The step-time model (flat by default).
    switch
        Preemption (swap) cost model (free by default).
    kv_tokens
        KV capacity in tokens (prompt plus generated of every resident request); ``None``:
        unbounded, every preemption pays the switch cost.
    max_chunk
        Most rounds offered at once (1: round by round, as a live server runs).
    """

    def __init__(self, arrays: TraceArrays, workload: Workload, policy: Policy[Any], *,
                 batch: int = 1, cost: BatchCost | None = None, switch: SwitchCost | None = None,
                 kv_tokens: int | None = None, max_chunk: int | None = None) -> None:
        if batch < 1:
            raise LapsdError(f"batch size must be >= 1, got {batch}")
        if kv_tokens is not None and kv_tokens < 1:
            raise LapsdError(f"KV capacity must be >= 1 token, got {kv_tokens} (--kv-tokens)")
        if policy.needs_prediction and workload.predictions is None:
            raise ValueError(f"policy {policy.name!r} needs length predictions; build the "
                             "workload with predictions (a trace column, a predictor, or the "
                             "noisy-oracle what-if)")
        self.batch = batch
        self.repredicts = workload.updates is not None
        self.cost = cost or BatchCost()
        self.switch = switch or SwitchCost()
        self.kv_tokens = kv_tokens
        self.max_chunk = max_chunk
        index = workload.index
        self._arrival_s: list[float] = (workload.arrival_ns / NS_PER_S).tolist()
        self._starts: list[int] = arrays.offsets[index].tolist()
        self._ends: list[int] = arrays.offsets[index + 1].tolist()
        self._prompt: list[int] = arrays.prompt_tokens[index].tolist()
        self._service_s: list[float] = (arrays.service_ns[index] / NS_PER_S).tolist()
        self._preds = workload.predictions
        self._pos = array("q", self._starts)  # each request's next round (a buffer: lookahead)
        self._arrays = arrays
        self._prefix = arrays.prefix
        # At batch size one the offer is one run, reused: a policy reads a run in advance and
        # keeps nothing of it (as Policy.observe's buffer).
        self._offer = Rounds(arrays.prefix, 0, 0)
        self._offers = [self._offer]
        self._c_ns: list[int] = arrays.prefix.lists["ns"]
        self._c_em: list[int] = arrays.prefix.lists["emitted"]
        self._c0_ns = round(self.switch.c0 * NS_PER_S)
        self._c1_ns = self.switch.c1 * NS_PER_S
        self._paid = bool(self._c0_ns or self._c1_ns)  # whether a switch costs anything
        # At batch size one with a flat step model a step is its member's recorded round.
        one = batch == 1 and self.cost.factor(1) == 1.0 and kv_tokens is None
        #: Charge the switch, then offer each member its rounds (the module docstring; the
        #: executor protocol's ``run``, chosen once: it is called at every decision).
        self.run: Callable[[list[int], Sequence[int], int, int | None],
                           tuple[int, list[Rounds]]] = self._run_one if one else self._run_steps
        # Each request's pending re-predictions, as absolute round positions, latest first.
        self._pending: list[list[tuple[int, LengthPrediction]]] | None = None
        if workload.updates is not None:
            self._pending = [
                [(self._starts[j] + r, p) for r, p in reversed(u)
                 if 0 < r < self._ends[j] - self._starts[j]]
                for j, u in enumerate(workload.updates)]
        self._bounded = max_chunk is not None or self._pending is not None
        #: Every request's rounds ahead, for a policy that time-shares the server
        #: (:meth:`Policy.share`): with no KV capacity and nothing that bounds a run
        #: (``max_chunk``, re-predictions).
        self.lookahead = None if kv_tokens is not None or self._bounded else Lookahead(
            arrays.stacked, np.stack([arrays.offsets[index], arrays.offsets[index + 1],
                                      arrays.prompt_tokens[index], workload.arrival_ns]),
            np.frombuffer(self._pos, dtype=np.int64), self._c0_ns, self._c1_ns,
            np.array([1.0, *(self.cost.factor(b) for b in range(1, batch + 1))]))
        self._resident: set[int] = set()
        self._used = 0
        self.fits: Callable[[RequestId], bool] | None = (
            None if kv_tokens is None else self._fits)

    # ---------------------------------------------------------------- the executor protocol
    def request(self, j: int) -> RequestInfo:
        """Request ``j`` as it arrives, with its prediction."""
        return RequestInfo(j, self._arrival_s[j], self._prompt[j],
                           None if self._preds is None else self._preds[j])

    def true_service_s(self, j: int) -> float:
        """Request ``j``'s recorded service time."""
        return self._service_s[j]

    def _run_one(self, chosen: list[int], preempted: Sequence[int], now: int,
                 until: int | None) -> tuple[int, list[Rounds]]:
        """:meth:`run` at batch size one with a flat step model and no KV capacity."""
        pay = self._swaps(chosen, preempted) if preempted and self._paid else 0
        j = chosen[0]
        a = self._pos[j]
        b = self._ends[j]
        if until is not None:
            # Rounds that start before the arrival; at least one, even if a switch ran past it.
            c_ns = self._c_ns
            b = bisect_left(c_ns, c_ns[a] + (until - now - pay), a, b)
            if b <= a:
                b = a + 1
        if self._bounded:
            b = self._bound(j, a, b)
        offer = self._offer
        offer.start = a
        offer.n = b - a
        return pay, self._offers

    def _run_steps(self, chosen: list[int], preempted: Sequence[int], now: int,
                   until: int | None) -> tuple[int, list[Rounds]]:
        """:meth:`run` in general: batch step times, KV capacity."""
        self._used = 0
        pay = self._swaps(chosen, preempted)
        now += pay
        steps_ns = self._steps(chosen, now, until)
        steps_cum = np.concatenate(([0], np.cumsum(steps_ns, dtype=np.int64)))
        return pay, [self._member_rounds(self._pos[j], steps_cum) for j in chosen]

    def advance(self, j: int, taken: int, now: int) -> bool:  # noqa: ARG002
        """Move request ``j`` on by ``taken`` rounds; whether it is done."""
        pos = self._pos
        pos[j] += taken
        if pos[j] < self._ends[j]:
            return False
        self._resident.discard(j)
        return True

    def update(self, j: int) -> LengthPrediction | None:
        """The re-prediction made for request ``j``'s position, if it has just reached one."""
        assert self._pending is not None
        todo, pos = self._pending[j], self._pos[j]
        belief = None
        while todo and todo[-1][0] == pos:  # several for one round: the latest wins
            belief = todo.pop()[1]
        return belief

    # ---------------------------------------------------------------------------- internals
    def _bound(self, j: int, a: int, b: int) -> int:
        """Where request ``j``'s offered run ``[a, b)`` ends: ``max_chunk``, re-predictions."""
        if self.max_chunk is not None and b - a > self.max_chunk:
            b = a + self.max_chunk
        if self._pending is not None and (todo := self._pending[j]):
            b = min(b, todo[-1][0])  # a re-prediction lands at a round boundary
        return b

    def _context(self, j: int) -> int:
        """Request ``j``'s context: its prompt and what it has generated."""
        c_em = self._c_em
        return self._prompt[j] + c_em[self._pos[j]] - c_em[self._starts[j]]

    def _fits(self, rid: RequestId) -> bool:
        """Whether request ``rid``'s cache fits beside the step's members chosen so far."""
        need = self._context(rid)  # type: ignore[arg-type]
        assert self.kv_tokens is not None
        if self._used + need > self.kv_tokens and self._used > 0:
            return False
        self._used += need
        return True

    def _swaps(self, chosen: list[int], preempted: Sequence[int]) -> int:
        """The switch time of a step: every preemption, or with a KV capacity every swap-out."""
        c0_ns, c1_ns = self._c0_ns, self._c1_ns
        if self.kv_tokens is None:
            if not self._paid:
                return 0
            return sum(c0_ns + round(c1_ns * self._context(j)) for j in preempted)
        # Resident caches that no longer fit beside the batch are swapped out (largest
        # first); a swap's cost covers the way out and back in.
        resident = self._resident
        resident.update(chosen)
        held = sum(self._context(i) for i in resident)
        pay = 0
        for j in sorted(resident.difference(chosen), key=self._context, reverse=True):
            if held <= self.kv_tokens:
                break
            resident.discard(j)
            held -= self._context(j)
            pay += c0_ns + round(c1_ns * self._context(j))
        return pay

    def _steps(self, chosen: list[int], now: int, next_arrival: int | None) -> list[int]:
        """Step times (ns) of the steps the batch could run unchanged, at least one.

        A step takes the mean of its members' rounds times the batch's slowdown. The run stops
        at the first member to finish, at a re-prediction, before the first step that starts
        at or after the next arrival, and at ``max_chunk``; with a KV capacity (contexts grow,
        and the next step may not fit), after one step.
        """
        b = len(chosen)
        factor = self.cost.factor(b)
        pos, ends, cum_ns = self._pos, self._ends, self._arrays.cum["ns"]
        at = [pos[j] for j in chosen]
        length = (min(ends[j] - pos[j] for j in chosen) if self.kv_tokens is None else 1)
        if self.max_chunk is not None:
            length = min(length, self.max_chunk)
        if self._pending is not None:
            due = [todo[-1][0] - pos[j] for j in chosen if (todo := self._pending[j])]
            length = min([length, *due])
        if length == 1:
            return [round(sum(int(cum_ns[a + 1] - cum_ns[a]) for a in at) / b * factor)]
        ends_ns = cum_ns[np.add.outer(at, np.arange(length + 1))]  # (b, length + 1) prefixes
        steps = np.rint(np.diff(ends_ns, axis=1).sum(axis=0) / b * factor).astype(np.int64)
        if next_arrival is not None:
            begins = now + np.concatenate(([0], np.cumsum(steps[:-1])))
            length = max(1, int(np.count_nonzero(begins < next_arrival)))
        return steps[:length].tolist()

    def _member_rounds(self, at: int, steps_cum: np.ndarray) -> Rounds:
        """Rounds ``at, at + 1, ...`` of a request, each lasting its batch step.

        The trace's prefix sums are used as they are (views: only differences are read) with
        the steps' cumulative times as the service.
        """
        cum = self._arrays.cum
        stop = at + steps_cum.size
        sums = {f: cum[f][at:stop] for f in ("emitted", "drafted", "accepted")}
        sums["ns"] = steps_cum
        return Rounds(PrefixSums(sums), 0, steps_cum.size - 1)
