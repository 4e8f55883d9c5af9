"""Compiled inner loops of the policies (numba).

Each kernel walks the rounds a policy is offered, one by one, and stops at the first round after
which the policy's decision could change. A server that reports one round at a time goes through
the very same kernel with a run of length one, so the arithmetic is identical whichever way the
rounds arrive; the differential tests check that bit for bit.

Round data are prefix sums (``c[i]`` = total over rounds ``[0, i)``) of integer values, so every
running total is exact.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from lapsd.replay.lognormal import (
    conditional_mean,
    conditional_quantile,
    gittins_index,
    remaining_tokens,
)

#: Attained-service units as kernel codes.
SECONDS, ROUNDS, TOKENS = 0, 1, 2

@njit(cache=True)
def _unit_total(unit: int, c_em: np.ndarray, c_ns: np.ndarray, start: int, i: int) -> int:
    if unit == SECONDS:
        return c_ns[start + i] - c_ns[start]
    if unit == ROUNDS:
        return i
    return c_em[start + i] - c_em[start]


@njit(cache=True)
def window_var(history: np.ndarray, rate: float, gamma: int) -> float:
    """Variance of the window ``history[:gamma - 1] + [rate]``, without building it.

    Summed left to right: a fixed order of additions, the same whichever way rounds arrive.
    """
    keep = gamma - 1
    total = 0.0
    for j in range(keep):
        total += history[j]
    total += rate
    mean = total / gamma
    sq = 0.0
    for j in range(keep):
        d = history[j] - mean
        sq += d * d
    d = rate - mean
    sq += d * d
    return sq / gamma


@njit(cache=True)
def new_request_run(c_em, c_dr, c_ac, c_ns, start, n, unit, attained0, bound, accepted0,
                    drafted0, generated0, history, seen0, gamma, delta, median, sigma, cap,
                    max_spread):
    """LAPS-SD, non-perceptible request: run until demotion, perceptibility, or ``n`` rounds.

    ``history`` holds the running acceptance rates after the request's last ``gamma - 1``
    rounds (oldest first; only the last ``min(seen0, gamma - 1)`` are valid, ``seen0`` being the
    rounds run so far); it is updated in place. ``bound`` < 0 means no demotion (last queue).
    A request becomes perceptible when its acceptance rate is stable and (unless
    ``max_spread`` is infinite) its remaining-length belief is narrow (:func:`spread`).

    Returns
    -------
    (taken, perceptible)
    """
    for i in range(n):
        accepted = accepted0 + c_ac[start + i + 1] - c_ac[start]
        drafted = drafted0 + c_dr[start + i + 1] - c_dr[start]
        rate = accepted / drafted if drafted > 0 else 0.0
        seen = seen0 + i + 1
        if (seen >= gamma and window_var(history, rate, gamma) <= delta
                and (max_spread == math.inf or spread(
                    median, sigma, cap, float(generated0 + c_em[start + i + 1] - c_em[start]))
                     <= max_spread)):
            _push(history, rate)
            return i + 1, True
        _push(history, rate)
        if bound >= 0 and attained0 + _unit_total(unit, c_em, c_ns, start, i + 1) >= bound:
            return i + 1, False
    return n, False


@njit(cache=True)
def _push(history: np.ndarray, value: float) -> None:
    for j in range(history.shape[0] - 1):
        history[j] = history[j + 1]
    if history.shape[0] > 0:
        history[history.shape[0] - 1] = value


@njit(cache=True)
def _band(bounds: np.ndarray, value: float) -> int:
    """Index of the queue whose band holds ``value`` (bounds are the upper edges)."""
    q = 0
    while q < bounds.shape[0] and bounds[q] <= value:
        q += 1
    return q


#: How LAPS-SD estimates the remaining length: the paper's ``L_hat - g`` (with the
#: conditional mean past L_hat), the belief's conditional mean, or a conditional quantile.
PAPER, MEAN, QUANTILE = 0, 1, 2


@njit(cache=True)
def remaining_by(mode, q, median, sigma, cap, generated):
    """The remaining tokens LAPS-SD uses after ``generated`` tokens (``mode``: see above)."""
    if mode == MEAN:
        return conditional_mean(median, sigma, cap, generated)
    if mode == QUANTILE:
        return conditional_quantile(median, sigma, cap, generated, q)
    return remaining_tokens(median, sigma, cap, generated)


@njit(cache=True)
def spread(median, sigma, cap, generated):
    """Relative width of the remaining length's 80% interval: ``(q90 - q10) / q50``."""
    lo = conditional_quantile(median, sigma, cap, generated, 0.1)
    hi = conditional_quantile(median, sigma, cap, generated, 0.9)
    return (hi - lo) / conditional_quantile(median, sigma, cap, generated, 0.5)


@njit(cache=True)
def estimate(unit, rounds, generated, service_ns, median, sigma, cap, mode, q, bounds):
    """LAPS-SD's estimates after ``rounds`` rounds: (queue, T_remaining, T_total, T_total_s).

    ``T = tokens * c / (k A_hat + 1)``, with ``k A_hat + 1`` the observed tokens per round and
    ``c`` the mean round cost in the unit (seconds: measured mean round time; rounds: 1;
    tokens: the tokens per round, so that T is in tokens); the remaining tokens come from
    :func:`remaining_by`.
    """
    tpr = generated / rounds
    mean_ns = service_ns / rounds
    if unit == SECONDS:
        cost = mean_ns
    elif unit == ROUNDS:
        cost = 1.0
    else:
        cost = tpr
    rem = remaining_by(mode, q, median, sigma, cap, float(generated))
    t_rem = rem * cost / tpr
    t_total = (generated + rem) * cost / tpr
    return _band(bounds, t_total), t_rem, t_total, (generated + rem) * (mean_ns / 1e9) / tpr


@njit(cache=True)
def perceptible_run(c_em, c_ns, start, n, unit, rounds0, generated0, service0, median, sigma,
                    cap, mode, q, bounds, cls, seq, has_rival, r_queue, r_cls, r_x, r_seq):
    """LAPS-SD, perceptible request: run while its key stays ahead of the rival's.

    The key is ``(queue, cls, T_rem, seq)``; returns ``(taken, queue, T_rem)`` after the rounds
    taken.
    """
    queue, t_rem = 0, 0.0
    for i in range(n):
        queue, t_rem, _, _ = estimate(
            unit, rounds0 + i + 1, generated0 + c_em[start + i + 1] - c_em[start],
            service0 + c_ns[start + i + 1] - c_ns[start], median, sigma, cap, mode, q, bounds)
        if has_rival and _after(queue, cls, t_rem, seq, r_queue, r_cls, r_x, r_seq):
            return i + 1, queue, t_rem
    return n, queue, t_rem


@njit(cache=True)
def _after(q, c, x, s, rq, rc, rx, rs) -> bool:
    """Whether key ``(q, c, x, s)`` sorts after ``(rq, rc, rx, rs)``."""
    if q != rq:
        return q > rq
    if c != rc:
        return c > rc
    if x != rx:
        return x > rx
    return s > rs


@njit(cache=True)
def srpt_predicted_run(c_em, start, n, generated0, median, sigma, cap, seq, has_rival, r_x,
                       r_seq):
    """lp-srpt: run while ``(remaining predicted tokens, seq)`` stays ahead of the rival's."""
    if not has_rival:
        return n
    for i in range(n):
        rem = remaining_tokens(median, sigma, cap,
                               float(generated0 + c_em[start + i + 1] - c_em[start]))
        if rem > r_x or (rem == r_x and seq > r_seq):
            return i + 1
    return n


@njit(cache=True)
def gittins_rank(median, sigma, cap, generated, service_ns, r0_ns, prior, h, arg):
    """Expected nanoseconds of work per unit of completion probability: ``t / G(g)``.

    ``t`` is the request's time per token: its observed service over its tokens, with
    ``prior`` tokens' worth of the typical time per token ``r0_ns`` mixed in (so the first
    rounds do not swing it); ``G`` is the Gittins index of its length belief, per token.
    Smaller runs first.
    """
    weight = generated + prior
    # Nothing observed yet, or an infinite prior: the typical cost alone.
    per_token = (r0_ns if weight <= 0 or np.isinf(prior)
                 else (service_ns + prior * r0_ns) / weight)
    return per_token / gittins_index(median, sigma, cap, float(generated), h, arg)


@njit(cache=True)
def gittins_run(c_em, c_ns, start, n, generated0, service0, context0, median, sigma, cap, r0_ns,
                prior, c0_ns, c1_ns, weight, h, arg, seq, has_rival, r_rank, r_seq):
    """Gittins: run while the rival's rank plus the switch cost does not beat the running one's.

    The running request keeps the server while ``rival + weight * (c0 + c1 * context) >= its
    rank`` (ties by admission order). Returns ``(taken, rank after the rounds taken)``.
    """
    rank = 0.0
    for i in range(n):
        emitted = c_em[start + i + 1] - c_em[start]
        generated = generated0 + emitted
        rank = gittins_rank(median, sigma, cap, generated,
                            service0 + c_ns[start + i + 1] - c_ns[start], r0_ns, prior, h, arg)
        if has_rival:
            held = rank - weight * (c0_ns + c1_ns * (context0 + emitted))
            if r_rank < held or (r_rank == held and r_seq < seq):
                return i + 1, rank
    return n, rank


# ----------------------------------------------------------------- time-sharing, batch size one
# A policy whose decision changes every round or two (LAS; MLFQ's levels) serves a span of
# arrivals in one call of these kernels (Policy.share): the very decisions the driver would ask
# for one by one (admitting each arrival at the first round boundary at or after it, then
# Policy.step, then Policy.advance on the chosen request's offered run), taken in a compiled
# loop over the requests' recorded rounds. Members are the admitted requests in admission order
# and then the span's ``fresh`` arrivals, so a member's index is in sequence-number order (ties
# go to the smaller). ``c`` is the trace's prefix sums stacked (emitted, drafted, accepted, ns),
# ``meta`` the executor's per-request first round, end, prompt tokens and arrival, ``pos`` its
# positions. A kernel serves until the first decision at or after ``until`` (the arrival after
# the span; < 0: none) once the span's arrivals are in, or until no request is left, and returns
# ``(now, the request running at the end or -1, decisions, preemptions, switch ns, rows)``: a
# row per member that ran or arrived, ``SHARED_COLUMNS`` and then the policy's own.

#: The rows of the stacked prefix sums.
EMITTED, DRAFTED, ACCEPTED, NS = 0, 1, 2, 3
#: The columns of a kernel's rows: request, rounds run, what they added to each prefix sum,
#: completion time (-1: still running or waiting).
SHARED_COLUMNS = ("request", "rounds", "emitted", "drafted", "accepted", "ns", "done_at")


@njit(cache=True)
def _unit_row(unit: int) -> int:
    """The stacked row that measures attained service in ``unit`` (rounds count themselves)."""
    return EMITTED if unit == TOKENS else NS


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
def _offer(c_ns: np.ndarray, a: int, b: int, now: int, pay: int, until: int) -> int:
    """End of the run the executor offers from round ``a`` (the rounds before ``until``).

    At least one round; all of them when ``until`` < 0.
    """
    if until < 0:
        return b
    b = _bisect_left(c_ns, c_ns[a] + (until - now - pay), a, b)
    return b if b > a else a + 1


@njit(cache=True)
def _switch_ns(c_em: np.ndarray, p: int, start: int, prompt: int, c0_ns: int,
               c1_ns: float) -> int:
    """What preempting a request at round ``p`` costs: ``c0 + c1 * context`` (ns)."""
    return c0_ns + int(np.rint(c1_ns * (prompt + c_em[p] - c_em[start])))


@njit(cache=True)
def _members(c, unit, meta, pos, ids, run, p, att):
    """Fill in the members' positions ``p`` and attained service ``att``.

    Returns the member index of request ``run`` (-1: none).
    """
    c_unit = c[_unit_row(unit)]
    member = -1
    for i in range(ids.shape[0]):
        j = ids[i]
        p[i] = pos[j]
        att[i] = p[i] - meta[0, j] if unit == ROUNDS else c_unit[p[i]] - c_unit[meta[0, j]]
        if j == run:
            member = i
    return member


@njit(cache=True)
def _rows(c, pos, ids, fresh, p, done_at, extra):
    """The kernel's rows (see above), ``extra`` columns left to fill.

    Returns ``(rows, the member of each row)``.
    """
    m = ids.shape[0]
    ran = np.flatnonzero((p != pos[ids]) | (np.arange(m) >= m - fresh))
    rows = np.empty((ran.shape[0], 7 + extra), dtype=np.int64)
    for r in range(ran.shape[0]):
        i = ran[r]
        j = ids[i]
        a, e = pos[j], p[i]
        rows[r, 0] = j
        rows[r, 1] = e - a
        for f in range(4):
            rows[r, 2 + f] = c[f, e] - c[f, a]
        rows[r, 6] = done_at[i]
    return rows, ran


@njit(cache=True)
def _before(x: int, y: int, i: int, k: int) -> bool:
    """Whether key ``(x, i)`` sorts before ``(y, k)``."""
    return x < y or (x == y and i < k)


@njit(cache=True)
def las_share(c, unit, meta, pos, ids, fresh, run, now, until, c0_ns, c1_ns):
    """LAS over a span of arrivals (see above).

    The request with the least attained service (in ``unit``) runs until it passes the next
    least, or to the first round that starts after the next arrival. ``run`` is the request
    that ran last (-1: none).
    """
    m = ids.shape[0]
    c_unit, c_em, c_ns = c[_unit_row(unit)], c[EMITTED], c[NS]
    p = np.empty(m, dtype=np.int64)
    att = np.empty(m, dtype=np.int64)
    done_at = np.full(m, -1, dtype=np.int64)
    run = _members(c, unit, meta, pos, ids, run, p, att)
    active = np.empty(m, dtype=np.int64)  # members in, unfinished: active[:na]
    na = 0
    for i in range(m - fresh):
        if p[i] < meta[1, ids[i]]:
            active[na] = i
            na += 1
    nxt = m - fresh  # the next member to arrive
    decisions = preemptions = switched = 0
    while True:
        while nxt < m and meta[3, ids[nxt]] <= now:
            active[na] = nxt
            na += 1
            nxt += 1
        arrival = meta[3, ids[nxt]] if nxt < m else until
        if nxt == m and 0 <= until <= now:
            break
        if na == 0:
            if nxt == m:
                break
            now = arrival  # idle until it arrives
            continue
        best = second = -1
        for r in range(na):
            i = active[r]
            if best < 0 or _before(att[i], att[best], i, best):
                second, best = best, i
            elif second < 0 or _before(att[i], att[second], i, second):
                second = i
        decisions += 1
        pay = 0
        if run >= 0 and run != best:
            preemptions += 1
            j = ids[run]
            pay = _switch_ns(c_em, p[run], meta[0, j], meta[2, j], c0_ns, c1_ns)
            switched += pay
        a = p[best]
        n = _offer(c_ns, a, meta[1, ids[best]], now, pay, arrival) - a
        if second >= 0:
            # Keep the server while (attained, seq) stays below the rival's: attained values
            # are integers, so "passes" is "reaches the rival's + 1" for an earlier request.
            k = _rounds_until(unit, c_unit, a, n,
                              att[second] - att[best] + (1 if best < second else 0))
            if k < n:
                n = k
        now += pay + c_ns[a + n] - c_ns[a]
        att[best] += n if unit == ROUNDS else c_unit[a + n] - c_unit[a]
        p[best] = a + n
        run = best
        if p[best] >= meta[1, ids[best]]:
            done_at[best] = now
            run = -1
            na = _drop(active, na, best)
    rows, _ = _rows(c, pos, ids, fresh, p, done_at, 0)
    return now, ids[run] if run >= 0 else -1, decisions, preemptions, switched, rows


@njit(cache=True)
def _drop(active: np.ndarray, na: int, i: int) -> int:
    """Remove member ``i`` from ``active[:na]``; the new count."""
    for r in range(na):
        if active[r] == i:
            active[r] = active[na - 1]
            return na - 1
    return na


@njit(cache=True)
def mlfq_share(c, unit, meta, pos, ids, fresh, run, now, until, c0_ns, c1_ns, level, entry,
               entries, bounds, cut_first):
    """MLFQ over a span of arrivals (see above).

    The request with the least ``(level, entry, seq)`` (``level`` and ``entry`` per member; a
    fresh member's level is its entry level, and its entry is taken as it arrives) runs to the
    end of its level's quantum (``bounds``: the levels' upper edges in ``unit``; the last level
    has none), then enters the back of the level its attained service has reached
    (``entries`` counts entries). An arrival cuts a run short at the first round after it
    unless the run is on the first level and ``cut_first`` is off (there arrivals queue
    behind it). The rest is :func:`las_share`'s; the rows end with each member's level and
    entry, and the entry count is returned after them.
    """
    m = ids.shape[0]
    c_unit, c_em, c_ns = c[_unit_row(unit)], c[EMITTED], c[NS]
    last_level = bounds.shape[0]
    p = np.empty(m, dtype=np.int64)
    att = np.empty(m, dtype=np.int64)
    done_at = np.full(m, -1, dtype=np.int64)
    run = _members(c, unit, meta, pos, ids, run, p, att)
    active = np.empty(m, dtype=np.int64)
    na = 0
    for i in range(m - fresh):
        if p[i] < meta[1, ids[i]]:
            active[na] = i
            na += 1
    nxt = m - fresh
    decisions = preemptions = switched = 0
    while True:
        while nxt < m and meta[3, ids[nxt]] <= now:
            entries += 1
            entry[nxt] = entries
            active[na] = nxt
            na += 1
            nxt += 1
        arrival = meta[3, ids[nxt]] if nxt < m else until
        if nxt == m and 0 <= until <= now:
            break
        if na == 0:
            if nxt == m:
                break
            now = arrival
            continue
        best = active[0]
        for r in range(1, na):
            i = active[r]
            if level[i] < level[best] or (level[i] == level[best] and entry[i] < entry[best]):
                best = i
        decisions += 1
        pay = 0
        if run >= 0 and run != best:
            preemptions += 1
            j = ids[run]
            pay = _switch_ns(c_em, p[run], meta[0, j], meta[2, j], c0_ns, c1_ns)
            switched += pay
        a = p[best]
        q = level[best]
        n = _offer(c_ns, a, meta[1, ids[best]], now, pay,
                   arrival if cut_first or q > 0 else -1) - a
        if q < last_level:
            k = _rounds_until(unit, c_unit, a, n, bounds[q] - att[best])
            if k < n:
                n = k
        now += pay + c_ns[a + n] - c_ns[a]
        att[best] += n if unit == ROUNDS else c_unit[a + n] - c_unit[a]
        if q < last_level and att[best] >= bounds[q]:
            # The quantum is used up: to the back of the level the service has reached.
            level[best] = max(q, np.searchsorted(bounds, att[best], side="right"))
            entries += 1
            entry[best] = entries
        p[best] = a + n
        run = best
        if p[best] >= meta[1, ids[best]]:
            done_at[best] = now
            run = -1
            na = _drop(active, na, best)
    rows, ran = _rows(c, pos, ids, fresh, p, done_at, 2)
    rows[:, 7] = level[ran]
    rows[:, 8] = entry[ran]
    return now, ids[run] if run >= 0 else -1, decisions, preemptions, switched, rows, entries
