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

from lapsd.jit import njit
from lapsd.replay.lognormal import (
    conditional_mean,
    conditional_quantile,
    gittins_belief,
    gittins_index_of,
    remaining_tokens,
)

#: Attained-service units as kernel codes.
SECONDS, ROUNDS, TOKENS = 0, 1, 2
#: The kernel code of each unit's name.
UNIT_CODE = {"seconds": SECONDS, "rounds": ROUNDS, "tokens": TOKENS}

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
def gittins_rank_of(belief, median, sigma, cap, generated, service_ns, r0_ns, prior, h, arg):
    """:func:`gittins_rank` from the belief's fixed parts (``lognormal.gittins_belief``)."""
    weight = generated + prior
    # Nothing observed yet, or an infinite prior: the typical cost alone.
    per_token = (r0_ns if weight <= 0 or np.isinf(prior)
                 else (service_ns + prior * r0_ns) / weight)
    return per_token / gittins_index_of(belief, median, sigma, cap, float(generated), h, arg)


@njit(cache=True)
def gittins_rank(median, sigma, cap, generated, service_ns, r0_ns, prior, h, arg):
    """Expected nanoseconds of work per unit of completion probability: ``t / G(g)``.

    ``t`` is the request's time per token: its observed service over its tokens, with
    ``prior`` tokens' worth of the typical time per token ``r0_ns`` mixed in (so the first
    rounds do not swing it); ``G`` is the Gittins index of its length belief, per token.
    Smaller runs first.
    """
    return gittins_rank_of(gittins_belief(median, sigma, cap), median, sigma, cap, generated,
                           service_ns, r0_ns, prior, h, arg)


@njit(cache=True)
def gittins_run(c_em, c_ns, start, n, generated0, service0, context0, median, sigma, cap, r0_ns,
                prior, c0_ns, c1_ns, weight, h, arg, seq, has_rival, r_rank, r_seq):
    """Gittins: run while the rival's rank plus the switch cost does not beat the running one's.

    The running request keeps the server while ``rival + weight * (c0 + c1 * context) >= its
    rank`` (ties by admission order). Returns ``(taken, rank after the rounds taken)``.
    """
    rank = 0.0
    belief = gittins_belief(median, sigma, cap)
    for i in range(n):
        emitted = c_em[start + i + 1] - c_em[start]
        generated = generated0 + emitted
        rank = gittins_rank_of(belief, median, sigma, cap, generated,
                            service0 + c_ns[start + i + 1] - c_ns[start], r0_ns, prior, h, arg)
        if has_rival:
            held = rank - weight * (c0_ns + c1_ns * (context0 + emitted))
            if r_rank < held or (r_rank == held and r_seq < seq):
                return i + 1, rank
    return n, rank
