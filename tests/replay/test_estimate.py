"""The capped log-normal length belief: its conditional answers against sampling and theory."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.lognormal import ndtri

CASES = [(120.0, 0.6, math.inf, 0), (120.0, 0.6, math.inf, 300), (300.0, 1.0, 512.0, 100),
         (80.0, 0.3, 96.0, 90), (50.0, 1.5, 1024.0, 0), (700.0, 0.8, 1024.0, 900)]


def _sample(pred: LengthPrediction, g: int, n: int = 400_000) -> np.ndarray:
    """Tokens still to come, given L > g, by rejection sampling."""
    rng = np.random.default_rng(0)
    x = np.minimum(pred.median * np.exp(pred.sigma * rng.standard_normal(n)), pred.cap)
    return x[x > g] - g


@pytest.mark.parametrize(("median", "sigma", "cap", "g"), CASES)
def test_conditional_mean_and_quantiles_match_sampling(median, sigma, cap, g):
    pred = LengthPrediction(median, sigma, cap)
    rem = _sample(pred, g)
    assert rem.size > 1000
    assert pred.mean_remaining(g) == pytest.approx(max(rem.mean(), 1.0), rel=0.02)
    for q in (0.1, 0.5, 0.9):
        assert pred.quantile_remaining(g, q) == pytest.approx(
            max(np.quantile(rem, q), 1.0), rel=0.03, abs=1.0)
    assert pred.survival(g) == pytest.approx(np.mean(np.minimum(
        median * np.exp(sigma * np.random.default_rng(0).standard_normal(400_000)), cap) > g),
        abs=0.003)


def test_the_cap_bounds_what_is_left():
    pred = LengthPrediction(2000.0, 1.0, 96.0)
    assert pred.mean_remaining(50) <= 46.0
    assert pred.quantile_remaining(50, 0.99) <= 46.0
    assert pred.remaining_one(0) == 96.0  # the paper's L_hat - g, with L_hat capped
    assert pred.survival(96) == 0.0


def test_point_predictions():
    pred = LengthPrediction(100.0)
    assert pred.mean_remaining(30) == 70.0 == pred.quantile_remaining(30, 0.9)
    assert pred.mean_remaining(150) == 1.0  # outlived: one token at a time


@given(st.floats(1e-12, 1 - 1e-12))
def test_normal_quantile_inverts_the_cdf(p):
    x = ndtri(p)
    assert 0.5 * math.erfc(-x / math.sqrt(2)) == pytest.approx(p, rel=1e-12, abs=1e-300)


@given(median=st.floats(1, 5000), sigma=st.floats(0, 2.5), g=st.integers(0, 20000),
       cap=st.sampled_from([math.inf, 128.0, 1024.0]))
def test_conditional_answers_are_finite_and_ordered(median, sigma, g, cap):
    assume(g < cap)
    pred = LengthPrediction(median, sigma, cap)
    qs = [pred.quantile_remaining(g, q) for q in (0.1, 0.5, 0.9)]
    assert all(math.isfinite(x) and x >= 1.0 for x in [*qs, pred.mean_remaining(g)])
    assert qs == sorted(qs)
    assert pred.mean_remaining(g) <= max(cap - g, 1.0)


def _brute_gittins(median: float, sigma: float, cap: float, g: int) -> float:
    """``sup_d P(L - g <= d | L > g) / E[min(L - g, d) | L > g]`` on a fine grid of ``d``.

    With survival ``S`` of ``X`` relative to ``S(g)`` (in logs, so far tails work): the ratio
    is ``(1 - S(g + d)) / int_0^d S(g + t) dt``, and the quantum to the cap completes for sure.
    """
    from scipy.stats import norm

    top = min(cap, median * math.exp(9 * sigma) + g + 10.0)
    t = g + np.concatenate([np.linspace(0, 1, 400)[1:], np.geomspace(1, top - g, 6000)])
    t = t[t <= top]
    rel = np.exp(norm.logsf((np.log(t) - math.log(median)) / sigma)
                 - (norm.logsf((math.log(g) - math.log(median)) / sigma) if g > 0 else 0.0))
    grid = np.concatenate([[g], t])
    surv = np.concatenate([[1.0], rel])
    work = np.concatenate([[0.0], np.cumsum(np.diff(grid) * (surv[1:] + surv[:-1]) / 2)])
    ratios = (1 - surv[1:]) / work[1:]
    if math.isfinite(cap) and top == cap:
        ratios[-1] = 1 / work[-1]  # everything is done at the cap
    return float(ratios.max())


# Beliefs as predictors give them: narrower ones put a request's end within a token, where the
# tabulated index (log-age steps of 0.05) cannot resolve the hazard's peak.
@given(median=st.floats(20, 2000), sigma=st.floats(0.2, 2.5),
       cap=st.sampled_from([math.inf, 1024.0, 512.0]), age=st.floats(0, 6))
@example(median=20.0, sigma=0.2, cap=1024.0, age=40.0)  # P(L > g) ~ 1e-111: in log space
@example(median=20.0, sigma=0.2, cap=math.inf, age=60.0)
def test_gittins_index_is_the_sup_over_quanta(median, sigma, cap, age):
    g = int(median * age)  # from a fresh request to far past its median (log-space tails)
    assume(g < cap - 2)
    pred = LengthPrediction(median, sigma, cap)
    assume(pred.survival(g) > 0)
    # The index is tabulated (log-age steps 0.05, sigma steps 0.04): a few percent.
    assert pred.gittins_index(g) == pytest.approx(_brute_gittins(median, sigma, cap, g),
                                                  rel=0.05)
