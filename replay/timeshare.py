"""Time-sharing: a span of arrivals served in one compiled call.

In a replay most of the time goes to the decisions: each costs a few Python
calls (:meth:`~lapsd.replay.policies.base.Policy.step`, the executor's offer,
:meth:`~lapsd.replay.policies.base.Policy.advance`), and LAS decides every round or two. When the
executor knows every request's rounds ahead (a :class:`~lapsd.replay.policies.base.Lookahead`),
a policy makes the decisions up to the next span of arrivals in one call of :func:`serve`
(:meth:`~lapsd.replay.policies.base.Policy.share`): the very decisions the driver would ask for
one by one, taken in the same order with the same arithmetic, in a compiled loop.

:func:`_serve` is that loop, written once: it admits each arrival at the first decision at or
after it, ranks the members (the waiting ones in a heap by key, which does not change while
they wait; the running one by its running key) to choose the member that runs and its rival,
the best waiting one, charges the switch when the last member was preempted unfinished,
offers the rounds up to the next arrival (when the ``cut`` hook says an arrival could preempt
the run) or to the member's end, lets the ``take`` hook say how many of them run before the
decision could change (moving the policy's per-member state on), and finishes members. Each
policy's hooks are a few functions below; a :class:`State` names the policy (``kind``) and
holds its per-member arrays and parameters. Every policy passes the same state type, so the
loop compiles once.

Members are the admitted requests in admission order, the span's ``fresh`` arrivals last (their
states admitted already, waiting for their arrival), so a member's index is in the order of its
sequence number and breaks ties as the policy's keys do. ``c`` is the trace's prefix sums
stacked (emitted, drafted, accepted, ns), ``meta`` the executor's per-request first round, end,
prompt tokens and arrival, ``pos`` its positions (read, not moved). :func:`serve` serves until
the first decision at or after ``until`` (the arrival after the span; < 0: none) once the span's
arrivals are in, or until no request is left, and returns ``(now, the request running at the end
or -1, decisions, preemptions, switch ns, rows)``: a row of :data:`COLUMNS` per member that ran
or arrived. The state's arrays hold each member's state at the end. Above batch size one (or
with a step-time slowdown at one), :func:`serve_batched` is the same loop a step at a time:
each step ranks every member and runs a round of the first ``B``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lapsd.jit import njit
from lapsd.replay.kernels import (
    ROUNDS,
    SECONDS,
    TOKENS,
    estimate,
    gittins_rank_of,
    gittins_run,
    new_request_run,
    perceptible_run,
    srpt_predicted_run,
)
from lapsd.replay.lognormal import remaining_tokens

#: The rows of the stacked prefix sums.
EMITTED, DRAFTED, ACCEPTED, NS = 0, 1, 2, 3
#: The columns of a kernel's rows: request, member index, rounds run, what they added to each
#: prefix sum, completion time (-1: still running or waiting).
COLUMNS = ("request", "member", "rounds", "emitted", "drafted", "accepted", "ns", "done_at")
#: The policies (:attr:`State.kind`).
LAS, MLFQ, STATIC, LP_SRPT, GITTINS, LAPS_SD = range(6)

_INTS = np.zeros(0, dtype=np.int64)
_FLOATS = np.zeros(0)
_BOOLS = np.zeros(0, dtype=np.bool_)
_TABLE = np.zeros((0, 0))


class State(NamedTuple):
    """A policy's state for :func:`serve`: what its hooks read and move (per member: arrays).

    Fields a policy does not use keep their empty defaults; every field keeps its type (int,
    float, bool, int64/float64/bool arrays), so that the loop compiles once for all.
    """

    kind: int
    unit: int = SECONDS
    #: Attained service in ``unit`` (filled in by :func:`serve`; LAS, MLFQ, LAPS-SD).
    att: np.ndarray = _INTS
    #: The key's first element (static keys, lp-srpt, Gittins).
    key: np.ndarray = _FLOATS
    #: Static keys: whether the running request competes on its key (else it keeps the
    #: server); MLFQ: whether arrivals always cut a run short.
    preemptive: bool = False
    #: Static keys: the key is the remaining service (ns) and falls as the request runs.
    drops: bool = False
    #: MLFQ: level, entry, the entry count (one element) and the levels' upper edges.
    level: np.ndarray = _INTS
    entry: np.ndarray = _INTS
    entries: np.ndarray = _INTS
    bounds: np.ndarray = _INTS
    #: The length beliefs (lp-srpt, Gittins, LAPS-SD).
    median: np.ndarray = _FLOATS
    sigma: np.ndarray = _FLOATS
    cap: np.ndarray = _FLOATS
    #: Gittins: per member its belief's fixed terms (``lognormal.gittins_beliefs``, read by the
    #: step-at-a-time loop), and its parameters (:class:`~lapsd.replay.policies.gittins.Gittins`).
    terms: np.ndarray = _TABLE
    r0: float = 0.0
    prior: float = 0.0
    c0: float = 0.0
    c1: float = 0.0
    weight: float = 0.0
    h: np.ndarray = _TABLE
    arg: np.ndarray = _TABLE
    #: LAPS-SD: per member its queue, perceptibility, estimated remaining service, acceptance
    #: history (``(members, gamma - 1)``) and estimated total seconds once perceptible (NaN
    #: before); its parameters (:class:`~lapsd.replay.policies.laps_sd.LapsSD`).
    queue: np.ndarray = _INTS
    perceptible: np.ndarray = _BOOLS
    t_rem: np.ndarray = _FLOATS
    history: np.ndarray = _TABLE
    estimate: np.ndarray = _FLOATS
    queue_bounds: np.ndarray = _FLOATS
    gamma: int = 0
    delta: float = 0.0
    max_spread: float = 0.0
    mode: int = 0
    q: float = 0.0
    cls_perceptible: int = 0
    cls_new: int = 0
    perceptible_first: bool = False


@njit(cache=True)
def serve(c, meta, pos, ids, fresh, run, now, until, c0_ns, c1_ns, s):
    """Serve a span under the policy of state ``s`` (module docstring)."""
    if s.att.shape[0]:
        _attained(c, meta, pos, ids, s.unit, s.att)
    return _serve(c, meta, pos, ids, fresh, run, now, until, c0_ns, c1_ns, s)


# ------------------------------------------------------------------------------- the one loop
@njit(cache=True)
def _serve(c, meta, pos, ids, fresh, run, now, until, c0_ns, c1_ns, s):
    """The decisions of a span (module docstring), with the policy's hooks and state ``s``."""
    m = ids.shape[0]
    c_ns = c[NS]
    p = pos[ids]
    # The state's fields as locals, once: the hooks take them (a field read per decision
    # would count a reference to each array it touches).
    kind, att, key, level, entry, entries = s.kind, s.att, s.key, s.level, s.entry, s.entries
    queue, perceptible, t_rem = s.queue, s.perceptible, s.t_rem
    member = (s.unit, att, queue, perceptible, t_rem, s.history, s.estimate)
    belief = (s.median, s.sigma, s.cap)
    laps = (s.queue_bounds, s.gamma, s.delta, s.max_spread, s.mode, s.q, s.cls_perceptible,
            s.cls_new)
    gittins = (s.r0, s.prior, s.c0, s.c1, s.weight, s.h, s.arg)
    done_at = np.full(m, -1, dtype=np.int64)
    # The waiting members in a heap by key (a waiting request's key does not change); the
    # running one competes on its running key.
    k0, k1, k2 = np.empty(m), np.empty(m), np.empty(m)
    heap = np.empty(m, dtype=np.int64)
    hn = 0
    ran_last = -1
    for i in range(m - fresh):
        if ids[i] == run:
            ran_last = i
        elif p[i] < meta[1, ids[i]]:
            k0[i], k1[i], k2[i] = _batch_key(s, c, meta, ids, p, i, False)
            hn = _heap_push(heap, hn, i, k0, k1, k2)
    run = ran_last
    keep = kind == STATIC and not s.preemptive  # the running request keeps the server
    nxt = m - fresh  # the next member to arrive
    decisions = preemptions = switched = 0
    while True:
        if nxt < m and meta[3, ids[nxt]] <= now:
            if kind == MLFQ:  # it takes its entry as it arrives
                entries[0] += 1
                entry[nxt] = entries[0]
            k0[nxt], k1[nxt], k2[nxt] = _batch_key(s, c, meta, ids, p, nxt, False)
            hn = _heap_push(heap, hn, nxt, k0, k1, k2)
            nxt += 1
            continue
        arrival = meta[3, ids[nxt]] if nxt < m else until
        if nxt == m and 0 <= until <= now:
            break
        if run < 0 and hn == 0:
            if nxt == m:
                break
            now = arrival  # idle until it arrives
            continue
        best = run
        if run >= 0 and not keep:
            k0[run], k1[run], k2[run] = _batch_key(s, c, meta, ids, p, run, True)
        if run < 0 or (not keep and hn > 0 and _key_before(heap[0], run, k0, k1, k2)):
            best = heap[0]
            hn = _heap_pop(heap, hn, k0, k1, k2)
            if run >= 0:  # preempted: back among the waiting, on its key
                k0[run], k1[run], k2[run] = _batch_key(s, c, meta, ids, p, run, False)
                hn = _heap_push(heap, hn, run, k0, k1, k2)
        rival = heap[0] if hn > 0 else -1
        decisions += 1
        pay = 0
        if run >= 0 and run != best:
            preemptions += 1
            j = ids[run]
            pay = c0_ns + int(np.rint(c1_ns * (meta[2, j] + c[EMITTED, p[run]]
                                               - c[EMITTED, meta[0, j]])))
            switched += pay
        a = p[best]
        end = meta[1, ids[best]]
        b = end
        if arrival >= 0 and _cut(kind, s.preemptive, level, queue, perceptible,
                                 s.perceptible_first, best):
            # The rounds that start before the arrival, at least one (the executor's offer).
            b = max(a + 1, _bisect_left(c_ns, c_ns[a] + (arrival - now - pay), a, end))
        n = _take(kind, s.drops, member, belief, laps, gittins, level, entry, entries, key,
                  s.bounds, c, meta, ids, best, rival, a, b - a, nxt)
        now += pay + c_ns[a + n] - c_ns[a]
        p[best] = a + n
        run = best
        if a + n >= end:
            done_at[best] = now
            run = -1
    return (now, ids[run] if run >= 0 else -1, decisions, preemptions, switched,
            _rows(c, pos, ids, fresh, p, done_at))


@njit(cache=True)
def _rows(c, pos, ids, fresh, p, done_at):
    """A row of :data:`COLUMNS` per member that ran or arrived."""
    m = ids.shape[0]
    k = 0
    for i in range(m):
        k += p[i] != pos[ids[i]] or i >= m - fresh
    rows = np.empty((k, 8), dtype=np.int64)
    r = 0
    for i in range(m):
        j = ids[i]
        a, e = pos[j], p[i]
        if a == e and i < m - fresh:
            continue
        rows[r, 0] = j
        rows[r, 1] = i
        rows[r, 2] = e - a
        for f in range(4):
            rows[r, 3 + f] = c[f, e] - c[f, a]
        rows[r, 7] = done_at[i]
        r += 1
    return rows


@njit(cache=True)
def _bisect_left(c: np.ndarray, x: int, lo: int, hi: int) -> int:
    """First index in ``[lo, hi)`` with ``c[i] >= x``, ``hi`` if none (``bisect_left``)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if c[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def _rounds_until(unit: int, c: np.ndarray, a: int, n: int, need: int) -> int:
    """Fewest of the ``n`` rounds from ``a`` whose service reaches ``need``.

    At least 1; ``n + 1`` when all of them fall short (:meth:`Rounds.rounds_until`).
    """
    if unit == ROUNDS:
        return max(1, need)
    return _bisect_left(c, c[a] + need, a + 1, a + n + 1) - a


@njit(cache=True)
def _unit_row(unit: int) -> int:
    """The stacked row that measures attained service in ``unit`` (rounds count themselves)."""
    return EMITTED if unit == TOKENS else NS


@njit(cache=True)
def _attained(c, meta, pos, ids, unit, att):
    """Fill in each member's attained service in ``unit`` (integer)."""
    row = c[_unit_row(unit)]
    for i in range(ids.shape[0]):
        j = ids[i]
        att[i] = pos[j] - meta[0, j] if unit == ROUNDS else row[pos[j]] - row[meta[0, j]]


# ------------------------------------------------------------------------- batch sizes above one
@njit(cache=True)
def serve_batched(c, meta, pos, ids, fresh, last, now, until, c0_ns, c1_ns, factors, svc, s):
    """Serve a span at batch size ``B = len(factors) - 1`` under the policy of state ``s``.

    Continuous batching as :mod:`lapsd.replay.batch` defines it, a step at a time: every step
    ranks the members (the last step's by their running key; a non-preemptive policy keeps
    them first, in their order), the first ``B`` run one round each, the step lasts the mean of
    their rounds' times times ``factors[b]`` (``b`` members), and each member's service grows
    by the step. A member of the last step left out unfinished pays the switch cost first.
    ``last`` are the request ids of the last step's unfinished members, ``svc`` (per member)
    their service so far (ns; it moves on in place). Returns what :func:`serve` does, with the
    request ids of the final step's unfinished members in place of the running one, and each
    decision a step.
    """
    m = ids.shape[0]
    batch = factors.shape[0] - 1
    c_ns = c[NS]
    p = pos[ids]
    svc0 = svc.copy()
    if s.att.shape[0]:  # a policy that counts attained service
        _attained(c, meta, pos, ids, s.unit, s.att)
        if s.unit == SECONDS:
            s.att[:] = svc  # in service for whole steps, not for its rounds' times
    done_at = np.full(m, -1, dtype=np.int64)
    running = np.zeros(m, dtype=np.bool_)  # in the last step, unfinished
    order = np.empty(m, dtype=np.int64)  # ... in the order they ran
    nlast = 0
    for r in range(last.shape[0]):
        for i in range(m - fresh):
            if ids[i] == last[r]:
                running[i] = True
                order[nlast] = i
                nlast += 1
    chosen = np.empty(batch, dtype=np.int64)
    taken = np.zeros(m, dtype=np.bool_)
    k0, k1, k2 = np.empty(m), np.empty(m), np.empty(m)
    heap = np.empty(m, dtype=np.int64)  # the waiting members by key: heap[:hn]
    hn = 0
    for i in range(m - fresh):
        if p[i] < meta[1, ids[i]] and not running[i]:
            k0[i], k1[i], k2[i] = _batch_key(s, c, meta, ids, p, i, False)
            hn = _heap_push(heap, hn, i, k0, k1, k2)
    # The one-round prefix sums a policy's kernel reads (emitted, drafted, accepted, step).
    one = np.zeros((4, 2), dtype=np.int64)
    nxt = m - fresh
    decisions = preemptions = switched = 0
    while True:
        if nxt < m and meta[3, ids[nxt]] <= now:
            if s.kind == MLFQ:
                s.entries[0] += 1
                s.entry[nxt] = s.entries[0]
            k0[nxt], k1[nxt], k2[nxt] = _batch_key(s, c, meta, ids, p, nxt, False)
            hn = _heap_push(heap, hn, nxt, k0, k1, k2)
            nxt += 1
            continue
        if nxt == m and 0 <= until <= now:
            break
        if nlast == 0 and hn == 0:
            if nxt == m:
                break
            now = meta[3, ids[nxt]]
            continue
        # Rank: the last step's members by their running key, merged with the waiting ones
        # (a heap by their key, which does not change while they wait); the first B run. A
        # non-preemptive policy keeps the last step's members first, in their order.
        keep = s.kind == STATIC and not s.preemptive
        for r in range(nlast):
            i = order[r]
            k0[i], k1[i], k2[i] = _batch_key(s, c, meta, ids, p, i, True)
        if not keep:
            _sort_members(order, nlast, k0, k1, k2)
        b = r = 0
        while b < batch and (r < nlast or hn > 0):
            if r < nlast and (keep or hn == 0 or _key_before(order[r], heap[0], k0, k1, k2)):
                chosen[b] = order[r]
                r += 1
            else:
                chosen[b] = heap[0]
                hn = _heap_pop(heap, hn, k0, k1, k2)
            taken[chosen[b]] = True
            b += 1
        decisions += 1
        for r in range(nlast):
            i = order[r]
            if not taken[i]:
                preemptions += 1
                j = ids[i]
                pay = c0_ns + int(np.rint(c1_ns * (meta[2, j] + c[EMITTED, p[i]]
                                                   - c[EMITTED, meta[0, j]])))
                switched += pay
                now += pay
                k0[i], k1[i], k2[i] = _batch_key(s, c, meta, ids, p, i, False)
                hn = _heap_push(heap, hn, i, k0, k1, k2)
        total = 0
        for r in range(b):
            i = chosen[r]
            total += c_ns[p[i] + 1] - c_ns[p[i]]
        step = int(np.rint(total / b * factors[b]))
        now += step
        for r in range(nlast):
            running[order[r]] = False
        nlast = 0
        for r in range(b):
            i = chosen[r]
            taken[i] = False
            a = p[i]
            for f in range(3):
                one[f, 1] = c[f, a + 1] - c[f, a]
            one[NS, 1] = step
            _observe(s, c, meta, ids, i, a, svc[i], one)
            svc[i] += step
            p[i] = a + 1
            if a + 1 >= meta[1, ids[i]]:
                done_at[i] = now
            else:
                running[i] = True
                order[nlast] = i
                nlast += 1
    rows = _rows(c, pos, ids, fresh, p, done_at)
    for r in range(rows.shape[0]):
        rows[r, 6] = svc[rows[r, 1]] - svc0[rows[r, 1]]  # served: the steps, not its rounds
    return now, ids[order[:nlast]], decisions, preemptions, switched, rows


@njit(cache=True)
def _key_before(i, k, k0, k1, k2):
    """Whether member ``i``'s key sorts before member ``k``'s."""
    return _before4((k0[i], k1[i], k2[i]), i, (k0[k], k1[k], k2[k]), k)


@njit(cache=True)
def _heap_push(heap, hn, i, k0, k1, k2):
    """Push member ``i`` on the binary heap ``heap[:hn]``; the new size."""
    at = hn
    heap[at] = i
    while at > 0:
        up = (at - 1) // 2
        if not _key_before(heap[at], heap[up], k0, k1, k2):
            break
        heap[at], heap[up] = heap[up], heap[at]
        at = up
    return hn + 1


@njit(cache=True)
def _heap_pop(heap, hn, k0, k1, k2):
    """Drop the top of the binary heap ``heap[:hn]``; the new size."""
    hn -= 1
    heap[0] = heap[hn]
    at = 0
    while True:
        least = at
        for child in (2 * at + 1, 2 * at + 2):
            if child < hn and _key_before(heap[child], heap[least], k0, k1, k2):
                least = child
        if least == at:
            return hn
        heap[at], heap[least] = heap[least], heap[at]
        at = least


@njit(cache=True)
def _sort_members(order, n, k0, k1, k2):
    """Sort ``order[:n]`` by key (insertion: a batch's few members)."""
    for r in range(1, n):
        i = order[r]
        q = r
        while q > 0 and _key_before(i, order[q - 1], k0, k1, k2):
            order[q] = order[q - 1]
            q -= 1
        order[q] = i


@njit(cache=True, inline="always")
def _batch_key(s, c, meta, ids, p, i, running):
    """Member ``i``'s key at a step but its sequence number, as three numbers."""
    k = s.kind
    if k == LAS:
        return float(s.att[i]), 0.0, 0.0
    if k == MLFQ:
        return float(s.level[i]), float(s.entry[i]), 0.0
    if k in (STATIC, LP_SRPT):
        return s.key[i], 0.0, 0.0
    if k == GITTINS:
        x = s.key[i]
        if running:
            j = ids[i]
            x = x - s.weight * (s.c0 + s.c1 * (meta[2, j] + c[EMITTED, p[i]]
                                               - c[EMITTED, meta[0, j]]))
        return x, 0.0, 0.0
    q, cls, x = _laps_key(s.queue, s.perceptible, s.t_rem, s.att, s.cls_perceptible, s.cls_new,
                          i, running)
    return float(q), float(cls), x


@njit(cache=True, inline="always")
def _observe(s, c, meta, ids, i, a, service0, one):
    """Member ``i`` ran round ``a`` in a step: the policy's state moves on.

    ``one`` holds the round's one-round prefix sums, with the step's time as its service.
    """
    k = s.kind
    unit = s.unit
    start = meta[0, ids[i]]
    g = c[EMITTED, a + 1] - c[EMITTED, start]  # tokens out after the round
    before = 0
    if s.att.shape[0]:
        before = s.att[i]
        s.att[i] += one[NS, 1] if unit == SECONDS else 1 if unit == ROUNDS else one[EMITTED, 1]
    if k == MLFQ:
        q = s.level[i]
        if q < s.bounds.shape[0] and s.att[i] >= s.bounds[q]:
            s.level[i] = max(q, np.searchsorted(s.bounds, s.att[i], side="right"))
            s.entries[0] += 1
            s.entry[i] = s.entries[0]
    elif k == STATIC:
        if s.drops:
            s.key[i] -= one[NS, 1]
    elif k == LP_SRPT:
        s.key[i] = remaining_tokens(s.median[i], s.sigma[i], s.cap[i], float(g))
    elif k == GITTINS:
        t = s.terms
        s.key[i] = gittins_rank_of((t[i, 0], t[i, 1], t[i, 2], t[i, 3], t[i, 4], t[i, 5], t[i, 6]),
                                   s.median[i], s.sigma[i], s.cap[i], g, service0 + one[NS, 1],
                                   s.r0, s.prior, s.h, s.arg)
    elif k == LAPS_SD:
        rounds = a + 1 - start
        if not s.perceptible[i]:
            q = s.queue[i]
            bound = int(s.queue_bounds[q]) if q < s.queue_bounds.shape[0] else -1
            _, stable = new_request_run(
                one[EMITTED], one[DRAFTED], one[ACCEPTED], one[NS], 0, 1, unit, before, bound,
                c[ACCEPTED, a] - c[ACCEPTED, start], c[DRAFTED, a] - c[DRAFTED, start],
                g - one[EMITTED, 1], s.history[i], rounds - 1, s.gamma, s.delta, s.median[i],
                s.sigma[i], s.cap[i], s.max_spread)
            if stable:
                s.perceptible[i] = True
                s.queue[i], s.t_rem[i], _, s.estimate[i] = estimate(
                    unit, rounds, g, service0 + one[NS, 1], s.median[i], s.sigma[i], s.cap[i],
                    s.mode, s.q, s.queue_bounds)
            else:
                s.queue[i] = np.searchsorted(s.queue_bounds, s.att[i], side="right")
        else:
            s.queue[i], s.t_rem[i], _, _ = estimate(
                unit, rounds, g, service0 + one[NS, 1], s.median[i], s.sigma[i], s.cap[i],
                s.mode, s.q, s.queue_bounds)


# ------------------------------------------------------------------------------ the hooks
# Inlined into the loops, they hand each policy's function only its fields (a function that
# takes the whole state costs about a second to compile). The ranking is :func:`_batch_key`.
@njit(cache=True, inline="always")
def _cut(kind, preemptive, level, queue, perceptible, perceptible_first, best):
    """Whether an arrival could preempt the run of member ``best``."""
    if kind == MLFQ:
        return preemptive or level[best] > 0
    if kind == STATIC:
        return preemptive
    if kind == LAPS_SD:
        return queue[best] > 0 or (perceptible[best] and not perceptible_first)
    return True


@njit(cache=True, inline="always")
def _take(kind, drops, member, belief, laps, gittins, level, entry, entries, key, bounds, c,
          meta, ids, best, rival, a, n, nxt):
    """How many of the ``n`` rounds from ``a`` member ``best`` runs (its state moves on).

    ``nxt`` is the index of the next member to arrive (``len(ids)``: none in the span).
    """
    unit, att = member[0], member[1]
    if kind == LAS:
        return _las_take(unit, att, c, best, rival, a, n)
    if kind == MLFQ:
        return _mlfq_take(unit, att, level, entry, entries, bounds, c, best, a, n)
    if kind == STATIC:
        if drops:
            key[best] -= c[NS, a + n] - c[NS, a]  # remaining service: falls as it runs
        return n
    median, sigma, cap = belief
    if kind == LP_SRPT:
        return _srpt_take(key, median, sigma, cap, c, meta, ids, best, rival, a, n)
    if kind == GITTINS:
        r0, prior, c0, c1, weight, h, arg = gittins
        return _gittins_take(key, median, sigma, cap, r0, prior, c0, c1, weight, h, arg, c,
                             meta, ids, best, rival, a, n)
    return _laps_take(member, belief, laps, c, meta, ids, best, rival, a, n, nxt)


# ---------------------------------------------------------------------------------------- LAS
@njit(cache=True)
def _las_take(unit, att, c, best, rival, a, n):
    row = c[_unit_row(unit)]
    if rival >= 0:
        # Keep the server while (attained, seq) stays below the rival's: attained values are
        # integers, so "passes" is "reaches the rival's + 1" for an earlier request.
        k = _rounds_until(unit, row, a, n, att[rival] - att[best] + (1 if best < rival else 0))
        if k < n:
            n = k
    att[best] += n if unit == ROUNDS else row[a + n] - row[a]
    return n


# --------------------------------------------------------------------------------------- MLFQ
@njit(cache=True)
def _mlfq_take(unit, att, level, entry, entries, bounds, c, best, a, n):
    row = c[_unit_row(unit)]
    q = level[best]
    if q < bounds.shape[0]:
        k = _rounds_until(unit, row, a, n, bounds[q] - att[best])
        if k < n:
            n = k
    att[best] += n if unit == ROUNDS else row[a + n] - row[a]
    if q < bounds.shape[0] and att[best] >= bounds[q]:
        # The quantum is used up: to the back of the level the service has reached.
        level[best] = max(q, np.searchsorted(bounds, att[best], side="right"))
        entries[0] += 1
        entry[best] = entries[0]
    return n


# -------------------------------------------------------------------------------------- lp-srpt
@njit(cache=True)
def _srpt_take(key, median, sigma, cap, c, meta, ids, best, rival, a, n):
    g0 = c[EMITTED, a] - c[EMITTED, meta[0, ids[best]]]
    n = srpt_predicted_run(c[EMITTED], a, n, g0, median[best], sigma[best], cap[best], best,
                           rival >= 0, key[rival] if rival >= 0 else 0.0, rival)
    key[best] = remaining_tokens(median[best], sigma[best], cap[best],
                                 float(g0 + c[EMITTED, a + n] - c[EMITTED, a]))
    return n


# -------------------------------------------------------------------------------------- Gittins
@njit(cache=True)
def _gittins_take(key, median, sigma, cap, r0, prior, c0, c1, weight, h, arg, c, meta, ids,
                  best, rival, a, n):
    j = ids[best]
    g0 = c[EMITTED, a] - c[EMITTED, meta[0, j]]
    n, rank = gittins_run(
        c[EMITTED], c[NS], a, n, g0, c[NS, a] - c[NS, meta[0, j]], meta[2, j] + g0,
        median[best], sigma[best], cap[best], r0, prior, c0, c1, weight, h, arg, best,
        rival >= 0, key[rival] if rival >= 0 else 0.0, rival)
    key[best] = rank
    return n


# -------------------------------------------------------------------------------------- LAPS-SD
@njit(cache=True)
def _laps_key(queue, perceptible, t_rem, att, cls_perceptible, cls_new, i, running):
    """Member ``i``'s key but its sequence number: ``(queue, class, x)``.

    A running non-perceptible request is not preempted by peers of its queue (``x`` = -inf).
    """
    if perceptible[i]:
        return queue[i], cls_perceptible, t_rem[i]
    return queue[i], cls_new, -np.inf if running else float(att[i])


@njit(cache=True)
def _before4(a, i, b, k):
    """Whether ``(*a, i)`` sorts before ``(*b, k)`` (``a``, ``b``: queue, class, x)."""
    if a[0] != b[0]:
        return a[0] < b[0]
    if a[1] != b[1]:
        return a[1] < b[1]
    if a[2] != b[2]:
        return a[2] < b[2]
    return i < k


@njit(cache=True)
def _laps_take(member, belief, params, c, meta, ids, best, rival, a, n, nxt):
    """LAPS-SD's run of member ``best``.

    ``member`` (unit, att, queue, perceptible, t_rem, history, estimate), ``belief`` (median,
    sigma, cap) and ``params`` (queue bounds, gamma, delta, max_spread, mode, quantile, the two
    classes) are as :class:`State` holds them.
    """
    unit, att, queue, perceptible, t_rem, history, est = member
    median, sigma, cap = belief
    bounds, gamma, delta, max_spread, mode, q, cls_perceptible, cls_new = params
    start = meta[0, ids[best]]
    rounds0 = a - start
    g0 = c[EMITTED, a] - c[EMITTED, start]
    service0 = c[NS, a] - c[NS, start]
    row = c[_unit_row(unit)]
    if not perceptible[best]:
        k = queue[best]
        bound = int(bounds[k]) if k < bounds.shape[0] else -1
        n, stable = new_request_run(
            c[EMITTED], c[DRAFTED], c[ACCEPTED], c[NS], a, n, unit, att[best], bound,
            c[ACCEPTED, a] - c[ACCEPTED, start], c[DRAFTED, a] - c[DRAFTED, start], g0,
            history[best], rounds0, gamma, delta, median[best], sigma[best], cap[best],
            max_spread)
        after = att[best] + (n if unit == ROUNDS else row[a + n] - row[a])
        if stable:
            perceptible[best] = True
            queue[best], t_rem[best], _, est[best] = estimate(
                unit, rounds0 + n, g0 + c[EMITTED, a + n] - c[EMITTED, a],
                service0 + c[NS, a + n] - c[NS, a], median[best], sigma[best], cap[best], mode,
                q, bounds)
        else:
            queue[best] = np.searchsorted(bounds, after, side="right")
        att[best] = after
        return n
    # Perceptible: run while ahead of the best waiting request and of any arrival (which
    # joins queue 0, non-perceptible, with nothing attained and the next sequence number).
    key = _laps_key(queue, perceptible, t_rem, att, cls_perceptible, cls_new, best, True)
    floor = (0, cls_new, 0.0)
    has = rival >= 0
    r = (_laps_key(queue, perceptible, t_rem, att, cls_perceptible, cls_new, rival, False)
         if has else floor)
    rs = rival
    if _before4(key, best, floor, nxt) and (not has or _before4(floor, nxt, r, rival)):
        has, r, rs = True, floor, nxt
    n, queue[best], t_rem[best] = perceptible_run(
        c[EMITTED], c[NS], a, n, unit, rounds0, g0, service0, median[best], sigma[best],
        cap[best], mode, q, bounds, cls_perceptible, best, has, r[0], r[1], r[2], rs)
    att[best] += n if unit == ROUNDS else row[a + n] - row[a]
    return n

__all__ = ["COLUMNS", "GITTINS", "LAPS_SD", "LAS", "LP_SRPT", "MLFQ", "STATIC", "State", "serve",
           "serve_batched"]
