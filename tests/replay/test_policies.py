"""The online policy API as a server drives it, and LAPS-SD's rules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replay.estimate import LengthPrediction, window_variance
from replay.policies import available, create, parameters
from replay.policies.base import RequestInfo


def info(rid, median=100.0, sigma=0.0):
    return RequestInfo(rid, 0.0, 10, LengthPrediction(median, sigma))


def test_registry_has_every_policy():
    assert set(available()) == {"fcfs", "las", "mlfq", "lp-sjf", "lp-srpt", "srpt-oracle",
                                "laps-sd"}
    assert set(parameters("laps-sd")) == {"K", "sup1", "M", "gamma", "delta", "unit",
                                          "perceptible_first"}
    with pytest.raises(ValueError, match="unknown policy 'sjf'"):
        create("sjf")
    with pytest.raises(ValueError, match="no parameter"):
        create("laps-sd", Q=3)
    with pytest.raises(ValueError, match="M must be > 1"):
        create("laps-sd", M=1.0)


def test_server_loop_las():
    p = create("las", unit="rounds")
    p.admit(info("a"))
    p.admit(info("b"))
    order = []
    for _ in range(4):
        rid = p.pick()
        order.append(rid)
        p.observe(rid, emitted=2, drafted=4, accepted=1, seconds=0.03)
    assert order == ["a", "b", "a", "b"]
    with pytest.raises(ValueError, match="not the one picked"):
        p.observe("b" if order[-1] == "a" else "a", 1, 4, 0, 0.03)
    p.finish(p.pick())
    assert p.waiting == 1


def test_laps_sd_new_request_is_not_preempted_by_peers():
    p = create("laps-sd", unit="rounds", sup1=4, K=3, gamma=3, delta=0.0)
    p.admit(info("a"))
    assert p.pick() == "a"
    p.observe("a", 2, 4, 1, 0.03)
    p.admit(info("b"))  # a peer in queue 0 with less service: no preemption
    assert p.pick() == "a"


def test_laps_sd_becomes_perceptible_and_orders_by_estimate():
    p = create("laps-sd", unit="rounds", sup1=100, K=2, gamma=3, delta=1e-9)
    p.admit(info("long", median=1000))
    p.admit(info("short", median=20))
    assert p.pick() == "long"
    for _ in range(3):  # constant acceptance: variance 0 after gamma rounds
        p.observe("long", 3, 4, 2, 0.03)
    assert p._states["long"].perceptible
    # long's estimated total (1000 tokens at 3 per round) is past Sup_1: it drops to queue 1,
    # so the new request in queue 0 runs.
    assert p._states["long"].queue == 1
    assert p.pick() == "short"
    assert "long" in p.estimates


def test_order_for_batches():
    p = create("srpt-oracle")
    for rid, s in (("a", 3.0), ("b", 1.0), ("c", 2.0)):
        p.reveal(rid, s)
        p.admit(info(rid))
    assert p.order(2) == ["b", "c"]
    assert p.pick() == "b"
    assert p.order(3) == ["b", "c", "a"]


def test_only_the_oracle_sees_true_service():
    with pytest.raises(TypeError, match="not an oracle"):
        create("laps-sd").reveal("a", 1.0)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(1, 39),
       st.integers(2, 8))
def test_window_variance_does_not_depend_on_batching(values, split, gamma):
    x = np.array(values)
    split = min(split, x.size)
    whole = window_variance(np.empty(0), x, gamma)
    first = window_variance(np.empty(0), x[:split], gamma)
    second = window_variance(x[:split], x[split:], gamma)
    np.testing.assert_array_equal(whole, np.concatenate((first, second)))
    for i in range(gamma - 1, x.size):
        assert whole[i] == pytest.approx(np.var(x[i - gamma + 1 : i + 1]), abs=1e-12)
    assert np.isinf(whole[: gamma - 1]).all()


@given(st.floats(1, 5000), st.floats(0, 2), st.integers(0, 20000))
def test_remaining_length_is_at_least_one_and_consistent(median, sigma, g):
    pred = LengthPrediction(median, sigma)
    r = pred.remaining(np.array([g]))[0]
    assert r >= 1.0
    assert pred.remaining_one(g) == r
    if g + 1 <= median:
        assert r == median - g
