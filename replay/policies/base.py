"""The online scheduling interface that servers drive and the simulator runs.

A server calls, for each request, :meth:`Policy.admit` when it arrives, :meth:`Policy.step` at
each step boundary to learn which requests run the next step (one at batch size one),
:meth:`Policy.observe` after the step with what each produced, and :meth:`Policy.finish` when
it completes. That is the whole contract; :mod:`lapsd.replay.driver` is the one loop that keeps
it, for the simulator and the live server alike.

The simulator drives the same objects through :meth:`Policy.advance`, which takes a *run* of
future rounds of a running request at once and answers how many of them the policy lets run
before its decision could change (a queue threshold, a stability test, a rival overtaking it).
The policy consumes those rounds exactly as if they had been observed one by one: ``observe`` is
``advance`` over a run of length one, and a differential test checks that batched and
round-by-round replays produce identical schedules.

What a policy may know about a request is a :class:`RequestInfo` (arrival, prompt size, predicted
length) plus what it observes. The true remaining work is not there; only the oracle receives it,
through the separate :meth:`Policy.reveal` channel.
"""

from __future__ import annotations

import heapq
import math
from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from operator import attrgetter
from typing import ClassVar, Generic, TypeVar

import numpy as np

from lapsd.replay import timeshare
from lapsd.replay.clock import NS_PER_S
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies.params import UNITS, Unit

__all__ = ["NS_PER_S", "UNITS", "Lookahead", "Policy", "RequestInfo", "RequestState", "Rounds",
           "Shared", "TraceScale", "Unit"]

RequestId = Hashable

_AHEAD_OF_ALL = (-math.inf,)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a scheduler may know about a request when it arrives."""

    request_id: RequestId
    arrival: float = 0.0
    prompt_tokens: int = 0
    prediction: LengthPrediction | None = None


@dataclass(frozen=True, slots=True)
class TraceScale:
    """Typical sizes of the served workload, used to set scale-dependent defaults.

    Parameters
    ----------
    round_s
        Median seconds per round.
    tokens_per_round
        Mean tokens appended per round.
    """

    round_s: float = 0.03
    tokens_per_round: float = 2.5

    def per_round(self, unit: Unit) -> float:
        """Service of one typical round, in ``unit``."""
        return {"seconds": self.round_s, "rounds": 1.0, "tokens": self.tokens_per_round}[unit]


class PrefixSums:
    """Prefix sums of per-round values.

    ``arrays[f][i]`` is the total of ``f`` over rounds ``[0, i)``, for ``f`` in emitted,
    drafted, accepted and ns (round time in integer nanoseconds). Kept as numpy arrays for
    vectorised queries and as lists for scalar ones, which are several times faster on single
    values.
    """

    __slots__ = ("arrays", "lists")

    FIELDS = ("emitted", "drafted", "accepted", "ns")

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self.lists = {k: v.tolist() for k, v in arrays.items()}


class Rounds:
    """A run of consecutive rounds of one request.

    Holds :class:`PrefixSums` and the slice ``[start, start + n)``; every query is O(1) or
    O(log n), so offering a long run costs nothing when the policy only takes a few rounds.
    Times are integer nanoseconds, so sums are exact and independent of how rounds are grouped.
    """

    __slots__ = ("_lists", "arrays", "n", "prefix", "start")

    def __init__(self, prefix: PrefixSums, start: int, stop: int) -> None:
        self.prefix = prefix
        #: The prefix-sum arrays (for compiled kernels, with ``start`` and ``n``).
        self.arrays = prefix.arrays
        self._lists = prefix.lists
        self.start = start
        self.n = stop - start

    @classmethod
    def single(cls, emitted: int, drafted: int | None, accepted: int, seconds: float) -> Rounds:
        """One observed round, as a server reports it."""
        one = cls(PrefixSums({f: np.zeros(2, dtype=np.int64) for f in PrefixSums.FIELDS}), 0, 1)
        return one.set_single(emitted, drafted, accepted, seconds)

    def set_single(self, emitted: int, drafted: int | None, accepted: int,
                   seconds: float) -> Rounds:
        """Make this one-round run hold another observed round, in place (no allocation)."""
        for f, value in (("emitted", int(emitted)), ("drafted", int(drafted or 0)),
                         ("accepted", int(accepted)), ("ns", round(seconds * NS_PER_S))):
            self.arrays[f][1] = value
            self._lists[f][1] = value
        return self

    def __len__(self) -> int:
        """The number of rounds in the run."""
        return self.n

    def total(self, field: str, n: int) -> int:
        """Sum of ``field`` over the first ``n`` rounds (``field='rounds'`` gives ``n``)."""
        if field == "rounds":
            return n
        c = self._lists[field]
        return c[self.start + n] - c[self.start]

    def totals(self, n: int) -> tuple[int, int, int, int]:
        """Sums of emitted, drafted, accepted and ns over the first ``n`` rounds."""
        s, e = self.start, self.start + n
        lists = self._lists
        em, dr, ac, ns = lists["emitted"], lists["drafted"], lists["accepted"], lists["ns"]
        return em[e] - em[s], dr[e] - dr[s], ac[e] - ac[s], ns[e] - ns[s]

    def rounds_until(self, field: str, amount: float) -> int:
        """Fewest rounds whose ``field`` adds up to at least ``amount`` (at least 1).

        Returns ``len(self) + 1`` when the whole run adds up to less.
        """
        if field == "rounds":
            return max(1, math.ceil(amount))
        c = self._lists[field]
        s = self.start
        return bisect_left(c, c[s] + amount, s + 1, s + self.n + 1) - s


@dataclass(frozen=True, slots=True)
class Lookahead:
    """Every request's recorded rounds, for a policy that time-shares the server.

    A replay's executor knows the rounds each admitted request will run; a policy then serves
    a span of arrivals in one compiled call (:meth:`Policy.share`) rather than a few Python
    calls per decision.
    Requests are named by their position in arrival order, as the driver names them; the
    arrays are indexed by it. A live server has no lookahead.

    Attributes
    ----------
    c
        The trace's prefix sums stacked: emitted, drafted, accepted, ns (``(4, rounds + 1)``).
    meta
        Each request's first round, the end of its rounds, its prompt tokens (the switch
        cost's context) and its arrival (ns), ``(4, requests)``.
    pos
        Each request's next round: the executor's own positions, which the policy reads and
        does not move.
    c0_ns, c1_ns
        The switch cost: ``c0_ns + c1_ns * context`` nanoseconds per preemption.
    factors
        The step-time slowdown of a step of ``b`` requests at ``factors[b]``, for ``b`` up to
        the batch size (``[1, 1]``: batch size one, each step its member's recorded round).
    """

    c: np.ndarray
    meta: np.ndarray
    pos: np.ndarray
    c0_ns: int
    c1_ns: float
    factors: np.ndarray


@dataclass(slots=True)
class Shared:
    """What :meth:`Policy.share` served. Times are integer nanoseconds.

    Attributes
    ----------
    now
        The time at its end (a decision point).
    ran
        ``(request, rounds run, completion or -1)`` of each request that ran.
    decisions, preemptions, switch_ns
        The decisions it took, the preemptions among them and their switch time.
    """

    now: int
    ran: list[tuple[int, int, int]]
    decisions: int
    preemptions: int
    switch_ns: int


@dataclass(slots=True)
class RequestState:
    """What a policy has observed of one admitted request."""

    info: RequestInfo
    seq: int
    rounds: int = 0
    generated: int = 0
    drafted: int = 0
    accepted: int = 0
    service_ns: int = 0
    key: tuple = ()
    belief: LengthPrediction | None = None
    #: Whether it is running: in the current step (see :meth:`Policy.step`).
    running: bool = False

    @property
    def prediction(self) -> LengthPrediction:
        """The request's current length prediction (the admission one, or the latest update).

        Policies that need one are given one at admission.
        """
        if self.belief is None:
            raise ValueError(f"request {self.info.request_id!r} has no length prediction")
        return self.belief

    def attained(self, unit: Unit) -> int:
        """Attained service in ``unit`` (integer: nanoseconds, rounds or tokens)."""
        return ATTAINED[unit](self)


def prediction_of(info: RequestInfo) -> LengthPrediction:
    """The length prediction a request arrives with (raises ``ValueError`` when it has none)."""
    if info.prediction is None:
        raise ValueError(f"request {info.request_id!r} has no length prediction")
    return info.prediction


#: The Rounds field whose prefix sums measure attained service in each unit.
UNIT_FIELD: dict[Unit, str] = {"seconds": "ns", "rounds": "rounds", "tokens": "emitted"}
#: A request state's attained service in each unit (:meth:`RequestState.attained` as one C
#: call, for the policies' per-decision keys).
ATTAINED: dict[Unit, Callable[[RequestState], int]] = {
    "seconds": attrgetter("service_ns"), "rounds": attrgetter("rounds"),
    "tokens": attrgetter("generated")}


def unit_amount(value: float, unit: Unit) -> int:
    """A service amount in ``unit`` as the integer the policies compare (ns for seconds)."""
    return round(value * NS_PER_S) if unit == "seconds" else math.ceil(value)


S = TypeVar("S", bound=RequestState)


class Policy(ABC, Generic[S]):
    """A scheduling policy: an online priority order over admitted requests.

    Generic over the per-request state ``S`` it keeps (a :class:`RequestState` subclass).

    Subclasses define a priority key per request (smaller runs first; it must end with the
    request's admission sequence number, which makes keys unique) and how many offered rounds the
    running request may take before its key could lose to the best waiting one.

    Class attributes
    ----------------
    name
        Registry name.
    preempts_on_arrival
        Whether the policy is preemptive. A non-preemptive policy keeps the running request
        until it finishes, and the simulator then never splits runs at arrivals.
    needs_prediction
        Whether :class:`RequestInfo` must carry a :class:`LengthPrediction`.
    needs_oracle
        Whether :meth:`reveal` must be called with each request's true service time (an
        oracle: a reference, not a baseline a server can run).
    load_bands
        Whether a config may set its parameters per load band
        (:class:`~lapsd.replay.policies.banded.BandedLapsSD`).
    uses_acceptance
        Whether it reads the running acceptance statistic (a config that exports it records
        the statistic's definition).
    wraps_policy
        Whether it serves another registered policy in another way (a held-out row of that
        policy, not a baseline of its own).
    shares
        Whether :meth:`share` serves spans of arrivals in one call (:meth:`_share_state`, the
        loops of :mod:`~lapsd.replay.timeshare`). A subclass that changes what the kernel
        models (its keys, or parameters that follow the load) must turn it off.
    """

    name: ClassVar[str]
    preempts_on_arrival: ClassVar[bool] = True
    needs_prediction: ClassVar[bool] = False
    needs_oracle: ClassVar[bool] = False
    load_bands: ClassVar[bool] = False
    uses_acceptance: ClassVar[bool] = False
    wraps_policy: ClassVar[bool] = False
    shares: ClassVar[bool] = False

    def __init__(self) -> None:
        self._states: dict[RequestId, S] = {}
        self._heap: list[tuple[tuple, RequestId]] = []
        #: The requests of the current step (see :meth:`step`).
        self._running: list[S] = []
        self._seq = 0
        #: Whether a running request competes on its own key (a preemptive policy with the
        #: default :meth:`_running_key`): the per-decision paths then read the key directly.
        self._runs_on_key = (self.preempts_on_arrival
                             and type(self)._running_key is Policy._running_key)  # noqa: SLF001
        #: The buffer :meth:`observe` reports each round through.
        self._one = Rounds.single(1, 0, 0, 0.0)
        #: Called with ``(request_id, estimated total service in seconds)`` when the policy
        #: commits to an execution-time estimate (LAPS-SD: when a request becomes
        #: perceptible). The simulator sets it to measure estimation errors; a server may log
        #: them. The policy itself keeps no record of finished requests.
        self.on_estimate: Callable[[RequestId, float], None] | None = None

    # ------------------------------------------------------------------ online API
    def admit(self, info: RequestInfo) -> None:
        """A request arrived."""
        if info.request_id in self._states:
            raise ValueError(f"request {info.request_id!r} is already admitted")
        if self.needs_prediction and info.prediction is None:
            raise ValueError(f"policy {self.name!r} needs a length prediction for each request "
                             f"(request {info.request_id!r} has none)")
        st = self._new_state(info, self._seq)
        st.belief = info.prediction
        self._seq += 1
        st.key = self._key(st)
        self._states[info.request_id] = st
        heapq.heappush(self._heap, (st.key, info.request_id))

    def step(self, n: int = 1, fits: Callable[[RequestId], bool] | None = None,
             ) -> list[RequestId]:
        """The requests that run the next step at batch size ``n``, best first.

        Every request in the system is ranked: those of the last step by their running key (so
        a non-preemptive policy keeps them, and LAPS-SD does not let peers displace a new
        request), the others by their key. The first ``n`` for which ``fits(request_id)`` holds
        (the engine's memory check, called in rank order) run; each then reports its round with
        :meth:`observe` (or :meth:`advance`). Batch size one is ``n = 1``. The list is new
        at every call: the caller's to keep.
        """
        if n == 1 and fits is None:
            # Batch size one with no memory check: one comparison with the best waiting
            # request, the general ranking's choice without its sort and allocations (a replay
            # asks for a decision every few rounds; a differential test checks the two agree).
            heap, running = self._heap, self._running
            if not running:
                # The best live heap entry (with no request running, a live one is a waiting
                # request's current key: _rival's test), found by popping.
                states = self._states
                while heap:
                    key, rid = heapq.heappop(heap)
                    st = states.get(rid)
                    if st is not None and st.key is key:
                        st.running = True
                        running.append(st)
                        return [rid]
                return []
            rival = self._rival()
            cur = running[0]
            if rival is not None and rival < (
                    cur.key if self._runs_on_key else self._running_key(cur)):
                cur.running = False
                st = self._states[heapq.heappushpop(heap, (cur.key, cur.info.request_id))[1]]
                st.running = True
                running[0] = st
                return [st.info.request_id]
            return [cur.info.request_id]
        return self._step_ranked(n, fits)

    def _step_ranked(self, n: int, fits: Callable[[RequestId], bool] | None,
                     ) -> list[RequestId]:
        """:meth:`step` in general: rank the last step's requests and the waiting ones."""
        ranked = sorted(((self._running_key(st), st.info.request_id) for st in self._running),
                        key=lambda e: e[0])
        heap = self._heap
        popped: list[tuple[tuple, RequestId]] = []
        chosen: list[RequestId] = []
        i = 0
        while len(chosen) < n:
            best_waiting = heap[0] if self._rival() is not None else None
            if i < len(ranked) and (best_waiting is None or ranked[i][0] < best_waiting[0]):
                entry = ranked[i]
                i += 1
            elif best_waiting is not None:
                entry = heapq.heappop(heap)
                popped.append(entry)
            else:
                break
            if fits is None or fits(entry[1]):
                chosen.append(entry[1])
        for entry in popped:
            if entry[1] not in chosen:
                heapq.heappush(heap, entry)
        for st in self._running:
            st.running = False
        running = [self._states[rid] for rid in chosen]
        for st in running:
            st.running = True
        for st in self._running:
            if not st.running:
                heapq.heappush(heap, (st.key, st.info.request_id))
        self._running = running
        return chosen

    def pick(self) -> RequestId | None:
        """The one request :meth:`step` runs at batch size one, or ``None`` when nothing waits."""
        chosen = self.step(1)
        return chosen[0] if chosen else None

    def observe(self, request_id: RequestId, emitted: int, drafted: int | None, accepted: int,
                seconds: float) -> None:
        """One round of the running request finished: tokens appended, drafted, accepted, time."""
        self.advance(request_id, self._one.set_single(emitted, drafted, accepted, seconds))

    def advance(self, request_id: RequestId, rounds: Rounds) -> int:
        """Observe up to ``len(rounds)`` rounds of the running request; return how many ran.

        The policy takes rounds until the first one after which its decision could change, and
        updates its state with exactly those rounds.
        """
        st = self._states.get(request_id)
        if st is None or not st.running:
            raise ValueError(f"request {request_id!r} is not the one picked to run")
        n = self._consume(st, rounds)
        if not 1 <= n <= rounds.n:
            raise RuntimeError(f"policy {self.name!r} took {n} of {len(rounds)} offered rounds; "
                               "_consume must take at least one and at most all")
        s, e = rounds.start, rounds.start + n
        lists = rounds._lists  # noqa: SLF001 (Rounds.totals, inlined: once per decision)
        c = lists["emitted"]
        st.generated += c[e] - c[s]
        c = lists["drafted"]
        st.drafted += c[e] - c[s]
        c = lists["accepted"]
        st.accepted += c[e] - c[s]
        c = lists["ns"]
        st.service_ns += c[e] - c[s]
        st.rounds += n
        st.key = self._key(st)
        return n

    def share(self, ahead: Lookahead, now: int, arrivals: list[RequestInfo],
              until: int | None) -> Shared:
        """Serve through a span of arrivals in one compiled call (any batch size).

        From ``now``, the admitted requests and ``arrivals`` (the next requests to arrive, in
        order, at the times ``ahead`` gives), until the first decision at or after ``until``
        (the arrival after them; ``None``: until every request is done). The same schedule
        as the driver's loop of :meth:`admit`, :meth:`step` and :meth:`advance` over each
        chosen request's offered run (above batch size one, or with a step-time slowdown, a
        step at a time), with the rounds that ``ahead`` says each request runs,
        taken in one loop (for a policy with :attr:`shares`); the arrivals are admitted here,
        and the policy's state moves on as if each decision had been made by itself. The
        caller moves the executor on by what :attr:`Shared.ran` says and finishes the
        completed requests.
        """
        for info in arrivals:  # waiting until they arrive: share serves none of them before
            self.admit(info)
        states = self._states
        ids = np.fromiter(states, dtype=np.int64, count=len(states))  # admission (seq) order
        state = self._share_state(ids.size, len(arrivals))
        was = self._running
        last = [int(st.info.request_id) for st in was]  # type: ignore[call-overload]
        for st in was:
            st.running = False
        span = (ahead.c, ahead.meta, ahead.pos, ids, len(arrivals))
        end = -1 if until is None else until
        if ahead.factors.size == 2 and ahead.factors[1] == 1.0:  # batch size one, flat
            t, run, decisions, preemptions, switch_ns, rows = timeshare.serve(
                *span, last[0] if last else -1, now, end, ahead.c0_ns, ahead.c1_ns, state)
            running = [] if run < 0 else [run]
        else:
            service = np.fromiter((st.service_ns for st in states.values()), np.int64, ids.size)
            t, on, decisions, preemptions, switch_ns, rows = timeshare.serve_batched(
                *span, np.array(last, dtype=np.int64), now, end, ahead.c0_ns, ahead.c1_ns,
                ahead.factors, service, state)
            running = on.tolist()
        self._running = [states[j] for j in running]
        for st in self._running:
            st.running = True
        heap = self._heap
        ran = []
        touched = set()
        for row in rows.tolist():
            j, _, n, emitted, drafted, accepted, ns, done = row
            st = states[j]
            if n:
                st.generated += emitted
                st.drafted += drafted
                st.accepted += accepted
                st.service_ns += ns
                st.rounds += n
                ran.append((j, n, done))
            self._shared(st, row, state)
            st.key = self._shared_key(st, row[1], state)
            touched.add(j)
            if not st.running and done < 0:
                heapq.heappush(heap, (st.key, j))
        for st in was:  # preempted before they ran again
            if not st.running and st.info.request_id not in touched:
                heapq.heappush(heap, (st.key, st.info.request_id))
        return Shared(t, ran, decisions, preemptions, switch_ns)

    def horizon(self, request_id: RequestId, rounds: Rounds) -> int:
        """How many of ``rounds`` a running request could take before a decision could change.

        Takes none of them and changes nothing: the batched simulator's look-ahead.
        """
        st = self._states[request_id]
        if not st.running:
            raise ValueError(f"request {request_id!r} is not running")
        return self._horizon(st, rounds)

    def update_prediction(self, request_id: RequestId, prediction: LengthPrediction) -> None:
        """A new length prediction for an admitted request (re-predicted from its output so far).

        The request's priority is recomputed from it; policies that keep derived estimates
        refresh them (:meth:`_repredicted`).
        """
        st = self._states[request_id]
        st.belief = prediction
        self._repredicted(st)
        st.key = self._key(st)
        if not st.running:
            heapq.heappush(self._heap, (st.key, request_id))

    def finish(self, request_id: RequestId) -> None:
        """The request completed (or was cancelled) and leaves the scheduler."""
        st = self._states.pop(request_id)
        if st.running:
            running = self._running
            i = 0
            while running[i] is not st:
                i += 1
            del running[i]

    def order(self, n: int) -> list[RequestId]:
        """The ``n`` highest-priority requests in the system, best first (batch sizes > 1)."""
        entries = heapq.nsmallest(n, (e for e in self._heap if self._live(e)))
        entries.extend((self._running_key(st), st.info.request_id) for st in self._running)
        entries.sort(key=lambda e: e[0])
        return [rid for _, rid in entries[:n]]

    def arrivals_may_preempt(self) -> bool:
        """Whether a request arriving now could take a running request's place.

        The simulator splits an offered run at the next arrival only when this is true (or
        when the batch has room). A non-preemptive policy never lets an arrival in; a policy
        that answers false otherwise promises that its :meth:`_consume` stops once a running
        request's key passes :meth:`_arrival_floor`.
        """
        if not self.preempts_on_arrival:
            return False
        floor = self._arrival_floor()
        running = self._running
        if floor is None or not running:
            return True
        if len(running) == 1:
            st = running[0]
            return not (st.key if self._runs_on_key else self._running_key(st)) < floor
        return any(not self._running_key(st) < floor for st in running)

    def admission_rank(self, info: RequestInfo) -> float:  # noqa: ARG002
        """The request's rank when it arrives, nothing observed yet (smaller runs first).

        What a server that fixes a priority at admission (vLLM's, SGLang's and TensorRT-LLM's
        priority scheduling) can take from this policy: the first element of the key the
        policy gives the request on admission, in the policy's own unit. Ties go to the
        earlier arrival. The default, 0 for every request, is arrival order: right for a policy
        that knows nothing about a request before it runs (FCFS, LAS). Computing it changes
        nothing in the policy.
        """
        return 0.0

    def reveal(self, request_id: RequestId, service_s: float) -> None:  # noqa: ARG002
        """Oracle channel: the true total service time of a request (oracle policies only)."""
        raise TypeError(f"policy {self.name!r} is not an oracle and must not see true service")

    @property
    def waiting(self) -> int:
        """Requests admitted and not finished."""
        return len(self._states)

    # ------------------------------------------------------------------ for subclasses
    def _new_state(self, info: RequestInfo, seq: int) -> S:
        """The state of a newly admitted request (a plain :class:`RequestState` by default)."""
        return RequestState(info, seq)  # type: ignore[return-value]  # S's default

    @abstractmethod
    def _key(self, st: S) -> tuple:
        """Priority key of a request (smaller first); must end with ``st.seq``."""

    def _running_key(self, st: S) -> tuple:
        """Key of the running request when compared with waiting ones.

        Its own key for a preemptive policy; ahead of every key for a non-preemptive one.
        """
        return st.key if self.preempts_on_arrival else _AHEAD_OF_ALL

    def _consume(self, st: S, rounds: Rounds) -> int:  # noqa: ARG002
        """How many of ``rounds`` the running request takes (1..len); update policy state.

        Called before the base class adds the rounds to ``st``'s counters. The default takes
        one round, after which the keys are compared again: always correct, so a new policy
        needs only its :meth:`_key`. Taking more (up to the first round after which the
        decision could change) is a speed-up that the differential tests check.
        """
        return 1

    def _horizon(self, st: S, rounds: Rounds) -> int:
        """:meth:`_consume` without its effects on the policy's state.

        The default calls :meth:`_consume`: right for every policy whose ``_consume`` only
        counts rounds. A policy whose ``_consume`` updates state overrides it.
        """
        return self._consume(st, rounds)

    def _share_state(self, n: int, fresh: int) -> timeshare.State:
        """What :meth:`share`'s compiled loop needs of the policy, its state.

        Over the ``n`` members: every admitted request in admission order, the ``fresh``
        arrivals last.
        """
        raise NotImplementedError(f"policy {self.name!r} does not time-share (shares is off)")

    def _static_state(self, n: int, *, preemptive: bool, drops: bool = False,
                      ) -> timeshare.State:
        """:meth:`_share_state` of a policy whose key ``(x, seq)`` is fixed while it waits.

        ``preemptive``: the running request competes on its key, so an arrival can take the
        server (otherwise it keeps it to the end); ``drops``: ``x`` is the remaining service in
        ns, which falls by each round's time as the request runs (no waiting request can then
        overtake it).
        """
        key = np.fromiter((st.key[0] for st in self._states.values()), np.float64, n)
        return timeshare.State(timeshare.STATIC, key=key, preemptive=preemptive, drops=drops)

    def _beliefs(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every admitted request's belief as arrays: median, sigma, cap (admission order)."""
        beliefs = [st.prediction for st in self._states.values()]
        return (np.fromiter((b.median for b in beliefs), np.float64, n),
                np.fromiter((b.sigma for b in beliefs), np.float64, n),
                np.fromiter((b.cap for b in beliefs), np.float64, n))

    def _shared(self, st: S, row: list[int], state: timeshare.State) -> None:
        """Bring the rest of ``st`` up to date from its row of the last share.

        ``row[1]`` is its member index in ``state``. Called after its counters and before its
        key (nothing by default).
        """

    def _shared_key(self, st: S, i: int, state: timeshare.State) -> tuple:  # noqa: ARG002
        """``st``'s key after a share, where it is member ``i`` of ``state``.

        :meth:`_key` by default; a policy whose key the compiled loop keeps (``state.key``,
        computed by the same kernel function as :meth:`_key`) returns it instead of computing
        it again in Python.
        """
        return self._key(st)

    def _repredicted(self, st: S) -> None:
        """Refresh what the policy derived from ``st``'s prediction (nothing by default)."""

    def _arrival_floor(self) -> tuple | None:
        """A key no larger than that of any request admitted from now on (``None``: unknown)."""
        return None

    def _rival(self) -> tuple | None:
        """Key of the best waiting request, or ``None``; drops the stale heap entries above it.

        (:meth:`_live`'s test, inlined: this runs at every decision.)
        """
        heap, states = self._heap, self._states
        while heap:
            key, rid = heap[0]
            st = states.get(rid)
            if st is not None and st.key is key and not st.running:
                return key
            heapq.heappop(heap)
        return None

    def _live(self, entry: tuple[tuple, RequestId]) -> bool:
        """Whether a heap entry is a waiting request's current key (else it is stale)."""
        st = self._states.get(entry[1])
        return st is not None and st.key is entry[0] and not st.running
