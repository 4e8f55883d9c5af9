"""The capped log-normal length belief, compiled (numba) for the policies' inner loops.

A request's output length is believed to be ``L = min(X, cap)`` with ``log X ~ Normal(mu,
sigma)``, ``mu = log(median)``: the predictor's distribution, cut at the server's
``max_new_tokens``. Once ``g`` tokens are out the request is known to have ``L > g``; every
quantity here is conditional on that. ``sigma = 0`` is a point prediction.

All functions work in log space where the tail probabilities underflow, so a request far past
its prediction still gets a finite, sensible answer.
"""

from __future__ import annotations

import math

import numpy as np

from lapsd.jit import njit

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT2 = math.sqrt(2.0)
#: Below this survival probability a belief is treated as exhausted (the request outlived it).
_TINY = -700.0


@njit(cache=True)
def log_ndtr(x: float) -> float:
    """``log Phi(x)`` of the standard normal, accurate far into the lower tail."""
    if x > -20.0:
        return math.log(0.5 * math.erfc(-x / _SQRT2))
    # Asymptotic expansion of the Mills ratio for very negative x.
    x2 = x * x
    series = 1.0 - 1.0 / x2 + 3.0 / (x2 * x2) - 15.0 / (x2 * x2 * x2)
    return -0.5 * x2 - _LOG_SQRT_2PI - math.log(-x) + math.log(series)


@njit(cache=True)
def ndtri(p: float) -> float:
    """The standard normal quantile ``Phi^-1(p)``, for ``0 < p < 1``.

    Acklam's rational approximation, refined by one Halley step (about 1e-15 relative error).
    """
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    a = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
         1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00)
    b = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
         6.680131188771972e+01, -1.328068155288572e+01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
         -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
         3.754408661907416e+00)
    if p < 0.02425:
        q = math.sqrt(-2.0 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    elif p > 1.0 - 0.02425:
        q = math.sqrt(-2.0 * math.log(1.0 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0)
    else:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0)
    # One Halley step on Phi(x) - p.
    e = 0.5 * math.erfc(-x / _SQRT2) - p
    u = e * math.sqrt(2.0 * math.pi) * math.exp(0.5 * x * x)
    return x - u / (1.0 + 0.5 * x * u)


@njit(cache=True)
def log_survival(median: float, sigma: float, x: float) -> float:
    """``log P(X > x)`` of the uncapped belief."""
    if x <= 0.0:
        return 0.0
    if sigma <= 1e-9:
        return 0.0 if x < median else -math.inf
    return log_ndtr((math.log(median) - math.log(x)) / sigma)


@njit(cache=True)
def _log_upper_mean(median: float, sigma: float, x: float) -> float:
    """``log E[X ; X > x]`` (the partial first moment above ``x``) of the uncapped belief."""
    mu = math.log(median)
    if x <= 0.0:
        return mu + 0.5 * sigma * sigma
    return mu + 0.5 * sigma * sigma + log_ndtr((mu + sigma * sigma - math.log(x)) / sigma)


@njit(cache=True)
def conditional_mean(median: float, sigma: float, cap: float, generated: float) -> float:
    """``E[L - g | L > g]``: expected tokens still to come, at least 1.

    ``L = min(X, cap)``; ``E[min(X, cap) | X > g] = (E[X; g < X <= cap] + cap P(X > cap)) /
    P(X > g)``. A point prediction (``sigma = 0``) gives ``min(median, cap) - g``.
    """
    target = min(median, cap)
    if sigma <= 1e-9 or generated >= cap:
        return max(target - generated, 1.0)
    log_den = log_survival(median, sigma, generated)
    if log_den < _TINY:
        return 1.0
    inside = math.exp(_log_upper_mean(median, sigma, generated) - log_den)
    if math.isfinite(cap):
        inside -= math.exp(_log_upper_mean(median, sigma, cap) - log_den)
        inside += cap * math.exp(log_survival(median, sigma, cap) - log_den)
    return _work_left(inside, cap, generated)


@njit(cache=True)
def _work_left(inside: float, cap: float, generated: float) -> float:
    """``E[min(X, cap) | X > g] - g`` from the conditional mean ``inside``, at least 1."""
    rem = min(inside, cap) - generated  # a mean of min(X, cap) is at most cap, past rounding
    return rem if math.isfinite(rem) and rem > 1.0 else 1.0


@njit(cache=True)
def conditional_quantile(median: float, sigma: float, cap: float, generated: float,
                         q: float) -> float:
    """The ``q``-quantile of ``L - g`` given ``L > g`` (at least 1 token)."""
    if sigma <= 1e-9:
        return max(min(median, cap) - generated, 1.0)
    log_s = log_survival(median, sigma, generated)
    if log_s < _TINY:
        return 1.0
    # P(X > x | X > g) = 1 - q  <=>  Phi((mu - log x) / sigma) = (1 - q) S(g).
    # in logs: a wide belief's tiny median times a huge factor is a finite x
    x = math.exp(min(math.log(median) - sigma * ndtri((1.0 - q) * math.exp(log_s)), 700.0))
    return max(min(x, cap) - generated, 1.0)


@njit(cache=True)
def remaining_tokens(median: float, sigma: float, cap: float, generated: float) -> float:
    """The remaining length the paper's estimate uses, never below 1.

    Before the (capped) median: ``min(median, cap) - g``, the paper's ``max(L_hat - g, 1)``.
    Past it, the belief's conditional mean (:func:`conditional_mean`), so that an
    under-predicted request is not taken to be one token from done forever.
    """
    rem = min(median, cap) - generated
    if rem >= 1.0:
        return rem
    return conditional_mean(median, sigma, cap, generated)


# ------------------------------------------------------------------------------ Gittins index
# For a request of age g (tokens out) whose length L has the belief above, the Gittins index
#     G(g) = sup_{d > 0} P(L - g <= d | L > g) / E[min(L - g, d) | L > g]     (per token)
# is the best completion probability per unit of expected work over any next quantum d. Serving
# the request with the highest index minimises mean response time when sizes are known only in
# distribution (Gittins; Scully and Harchol-Balter's SOAP covers it). The log-normal is a scale
# family, so G(g) = h(log(g / median), sigma) / median: h is tabulated once on a grid and
# interpolated. The cap adds one more quantum, "until the cap", which completes for certain.

_X_LO, _X_HI, _X_STEP = -12.0, 6.0, 0.05
_S_LO, _S_HI, _S_STEP = 0.02, 3.0, 0.04
_N_X = round((_X_HI - _X_LO) / _X_STEP) + 1
_N_S = round((_S_HI - _S_LO) / _S_STEP) + 1
#: Quanta tried per entry: log-spaced ends ``v`` of the quantum, from ``u`` up to far in the tail.
_N_V = 64


@njit(cache=True)
def _mean_min(sigma: float, c: float) -> float:
    """``E[min(Y, c)]`` for ``log Y ~ N(0, sigma)``."""
    lc = math.log(c)
    return (math.exp(0.5 * sigma * sigma + log_ndtr((lc - sigma * sigma) / sigma))
            + c * math.exp(log_ndtr(-lc / sigma)))


@njit(cache=True)
def _ratio_sup(sigma: float, u: float, v_max: float) -> tuple[float, float]:
    """``sup`` over quanta ending at ``v <= v_max`` of ``P(u < Y <= v) / int_u^v S``.

    For ``log Y ~ N(0, sigma)``; also returns the best ``log(v / u)`` (0: the hazard rate at
    ``u``).
    """
    lu = math.log(u)
    log_s_u = log_ndtr(-lu / sigma)
    # The limit d -> 0: the hazard rate f(u) / S(u).
    z = lu / sigma
    best = math.exp(-0.5 * z * z - _LOG_SQRT_2PI - math.log(sigma * u) - log_s_u)
    arg = 0.0
    m_u = _mean_min(sigma, u)
    # Up to far in the tail of Y (the median is 1), however young the request.
    top = min(math.log(v_max), 6.0 * sigma + 2.0) - lu
    for i in range(1, _N_V + 1):
        step = top * i / _N_V
        v = u * math.exp(step)
        p = math.exp(log_ndtr(-lu / sigma)) - math.exp(log_ndtr(-math.log(v) / sigma))
        work = _mean_min(sigma, v) - m_u
        if work > 0.0 and p > 0.0 and p / work > best:
            best = p / work
            arg = step
    return best, arg


@njit(cache=True)
def _build_table() -> tuple[np.ndarray, np.ndarray]:
    h = np.empty((_N_S, _N_X))
    arg = np.empty((_N_S, _N_X))
    for i in range(_N_S):
        sigma = _S_LO + i * _S_STEP
        for j in range(_N_X):
            h[i, j], arg[i, j] = _ratio_sup(sigma, math.exp(_X_LO + j * _X_STEP), math.inf)
    return h, arg


_TABLE: list[np.ndarray] = []


def gittins_table() -> tuple[np.ndarray, np.ndarray]:
    """The tabulated ``h`` and its best quantum, built on first use (a fraction of a second)."""
    if not _TABLE:
        _TABLE.extend(_build_table())
    return _TABLE[0], _TABLE[1]


#: ``log`` of the youngest age the index is looked up at (a request with no token out yet).
_LOG_MIN_AGE = math.log(1e-3)


#: Where :func:`gittins_index_of` leaves plain probabilities for log space: ``Phi(-20)`` is
#: about 3e-89, far above underflow, and :func:`log_ndtr` switches to its asymptotic form there.
_Z_DIRECT = -20.0

Belief = tuple[float, float, float, float, float, float, float]


@njit(cache=True)
def gittins_belief(median: float, sigma: float, cap: float) -> Belief:
    """The parts of a belief's Gittins index that do not change as the request runs.

    ``(log median, log cap, log E[X; X > cap], log P(X > cap), E[X], E[X; X > cap],
    P(X > cap))``: computed once per run, so that each round's index
    (:func:`gittins_index_of`) costs two ``erfc`` and a ``log``. An infinite cap (or a point
    belief) needs only the first and fifth.
    """
    mu = math.log(median)
    s2 = sigma * sigma
    mean = math.exp(mu + 0.5 * s2)
    if not math.isfinite(cap) or sigma < _S_LO:
        return mu, math.inf, 0.0, 0.0, mean, 0.0, 0.0
    lum_cap = _log_upper_mean(median, sigma, cap)
    ls_cap = log_survival(median, sigma, cap)
    return mu, math.log(cap), lum_cap, ls_cap, mean, math.exp(lum_cap), math.exp(ls_cap)


@njit(cache=True)
def gittins_beliefs(median: np.ndarray, sigma: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """:func:`gittins_belief` of each of several beliefs, a row each."""
    out = np.empty((median.shape[0], 7))
    for i in range(median.shape[0]):
        terms = gittins_belief(median[i], sigma[i], cap[i])
        for k in range(7):
            out[i, k] = terms[k]
    return out


@njit(cache=True)
def gittins_index_of(belief: Belief, median: float, sigma: float, cap: float,
                     generated: float, h: np.ndarray, arg: np.ndarray) -> float:
    """:func:`gittins_index` from the belief's fixed parts (:func:`gittins_belief`)."""
    mu, lcap, lum_cap, ls_cap, mean, upper_cap, surv_cap = belief
    left = max(min(median, cap) - generated, 1.0)
    if sigma < _S_LO or generated >= cap:
        return 1.0 / left  # a (nearly) known length: one quantum to the end
    lg = _LOG_MIN_AGE
    z = math.inf  # (log median - log g) / sigma: P(X > g) = Phi(z)
    if generated > 0.0:
        lg = max(math.log(generated), _LOG_MIN_AGE)
        z = (mu - lg) / sigma
    direct = z > _Z_DIRECT
    log_s = 0.0
    if not direct:
        log_s = log_ndtr(z)
        if log_s < _TINY:
            return 1.0  # outlived its belief entirely: one token at a time
    x = lg - mu  # log(age / median)
    s = min(sigma, _S_HI)
    # Bilinear interpolation in (log u, sigma).
    fx = (min(max(x, _X_LO), _X_HI) - _X_LO) / _X_STEP
    fs = (s - _S_LO) / _S_STEP
    j = min(int(fx), _N_X - 2)
    i = min(int(fs), _N_S - 2)
    tx, ts = fx - j, fs - i
    value = ((1 - ts) * ((1 - tx) * h[i, j] + tx * h[i, j + 1])
             + ts * ((1 - tx) * h[i + 1, j] + tx * h[i + 1, j + 1]))
    index = value / median
    if math.isfinite(cap):
        # Quanta ending at or past the cap all complete for certain: their ratio is one over
        # the expected work left, which beats every uncapped ratio ending there. So when the
        # best uncapped quantum ends past the cap (the ratio rises up to it), that is the index.
        best_step = min(arg[i, j], arg[i, j + 1], arg[i + 1, j], arg[i + 1, j + 1])
        # The expected work left, E[L - g | L > g] = (E[X; g < X <= cap] + cap P(X > cap))
        # / P(X > g) (conditional_mean's terms): plain probabilities while P(X > g) is far
        # from underflow, in logs beyond.
        if not direct:
            inside = (math.exp(_log_upper_mean(median, sigma, generated) - log_s)
                      - math.exp(lum_cap - log_s) + cap * math.exp(ls_cap - log_s))
        elif generated > 0.0:
            inside = (mean * 0.5 * math.erfc(-(z + sigma) / _SQRT2) - upper_cap
                      + cap * surv_cap) / (0.5 * math.erfc(-z / _SQRT2))
        else:
            inside = mean - upper_cap + cap * surv_cap
        certain = 1.0 / _work_left(inside, cap, generated)
        index = certain if x + best_step + mu > lcap else max(index, certain)
    return index


@njit(cache=True)
def gittins_index(median: float, sigma: float, cap: float, generated: float,
                  h: np.ndarray, arg: np.ndarray) -> float:
    """The Gittins index of a request ``generated`` tokens in, per token (see above).

    ``h`` and ``arg`` come from :func:`gittins_table`.
    """
    return gittins_index_of(gittins_belief(median, sigma, cap), median, sigma, cap, generated,
                            h, arg)
