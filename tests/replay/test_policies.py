"""The online policy API as a server drives it, and LAPS-SD's rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapsd.errors import LapsdError
from lapsd.replay import kernels
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies import available, create, parameters
from lapsd.replay.policies.base import Policy, RequestInfo
from lapsd.replay.policies.params import ParamsError


def info(rid, median=100.0, sigma=0.0):
    return RequestInfo(rid, 0.0, 10, LengthPrediction(median, sigma))


def test_registry_has_every_policy():
    assert set(available()) == {"fcfs", "las", "mlfq", "lp-sjf", "lp-srpt", "srpt-oracle",
                                "laps-sd", "gittins", "static-priority"}
    assert set(parameters("laps-sd")) == {"K", "sup1", "M", "gamma", "delta", "unit",
                                          "perceptible_first", "length_estimate", "quantile",
                                          "max_spread"}
    with pytest.raises(LapsdError, match="unknown policy 'sjf'"):
        create("sjf")
    with pytest.raises(ParamsError, match="policy 'laps-sd': Q: unknown field; its parameters: K"):
        create("laps-sd", Q=3)
    with pytest.raises(ParamsError, match=r"M: Input should be greater than 1 \(got 1.0\)"):
        create("laps-sd", M=1.0)
    with pytest.raises(ParamsError, match="takes no parameters"):
        create("fcfs", K=3)


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


@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.booleans(),
       st.integers(0, 39), st.sampled_from([2.0, 64.0]))
def test_laps_sd_arrival_test_is_the_floor_comparison(accepted, perceptible_first, arrive_at,
                                                      sup1):
    """LAPS-SD's solved arrival test agrees with the base class's key comparison.

    The runs cover both classes in queue 0 (Sup_1 = 64 rounds) and beyond it (2 rounds).
    """
    p = create("laps-sd", unit="rounds", sup1=sup1, K=4, gamma=2, delta=1e-3,
               perceptible_first=perceptible_first)
    p.admit(info("a", median=30))
    for i, a in enumerate(accepted):
        if i == arrive_at:
            p.admit(info("b", median=5))
        rid = p.pick()
        assert p.arrivals_may_preempt() == Policy.arrivals_may_preempt(p)
        p.observe(rid, a + 1, 4, a, 0.03)


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


def test_laps_sd_reports_estimates_and_keeps_no_history():
    """A long-running server's scheduler holds only the requests in the system."""
    p = create("laps-sd", unit="rounds", sup1=100, K=2, gamma=2, delta=1e-9)
    seen: dict[str, float] = {}
    p.on_estimate = seen.__setitem__
    for i in range(200):
        rid = f"r{i}"
        p.admit(info(rid, median=10))
        assert p.pick() == rid
        for _ in range(3):
            p.observe(rid, 3, 4, 2, 0.03)
        p.finish(rid)
    assert len(seen) == 200 and seen["r0"] == pytest.approx(10 / 3 * 0.03)
    assert p.waiting == 0
    leftovers = [v for v in vars(p).values() if isinstance(v, dict | list | set) and v]
    assert leftovers == [], leftovers


def test_order_for_batches():
    p = create("srpt-oracle")
    for rid, s in (("a", 3.0), ("b", 1.0), ("c", 2.0)):
        p.reveal(rid, s)
        p.admit(info(rid))
    assert p.order(2) == ["b", "c"]
    assert p.pick() == "b"
    assert p.order(3) == ["b", "c", "a"]


@pytest.mark.parametrize("name", available())
def test_order_never_returns_finished_requests(name):
    p = create(name)
    for rid, s in (("a", 3.0), ("b", 1.0), ("c", 2.0), ("d", 4.0)):
        if p.needs_oracle:
            p.reveal(rid, s)
        p.admit(info(rid, median=100 * s))
    first = p.pick()
    p.observe(first, 2, 4, 1, 0.03)
    for rid in ("c", first):
        if rid in p.order(4):
            p.finish(rid)
    left = p.order(4)
    assert sorted(left) == sorted({"a", "b", "d"} - {first}), left
    assert p.waiting == len(left)


def test_a_policy_needs_only_its_key():
    """Look-ahead is optional: a policy with a key and no _consume runs round by round."""
    from lapsd.replay.policies.base import Policy

    class ShortestPromptFirst(Policy):
        name = "test-shortest-prompt"

        def _key(self, st):
            return (st.info.prompt_tokens, st.seq)

    p = ShortestPromptFirst()
    p.admit(RequestInfo("long", 0.0, 50))
    p.admit(RequestInfo("short", 0.0, 5))
    assert p.pick() == "short"
    assert p.advance("short", __import__("lapsd.replay.policies.base",
                                         fromlist=["Rounds"]).Rounds.single(2, 4, 1, 0.03)) == 1


def test_observe_creates_no_arrays(monkeypatch):
    """A server calls observe every round: it must not allocate numpy arrays."""
    import lapsd.replay.policies.base as base

    created = []

    class Counting:
        def __getattr__(self, name):
            attr = getattr(np, name)
            if name in ("array", "zeros", "empty", "asarray", "concatenate", "full", "ones"):
                def wrapped(*a, **kw):
                    created.append(name)
                    return attr(*a, **kw)
                return wrapped
            return attr

    for name in available():
        p = create(name)
        for rid in ("a", "b"):
            if p.needs_oracle:
                p.reveal(rid, 1.0)
            p.admit(info(rid))
        rid = p.pick()
        p.observe(rid, 2, 4, 1, 0.03)  # warm up (first call may build buffers)
        monkeypatch.setattr(base, "np", Counting())
        for _ in range(50):
            rid = p.pick()
            p.observe(rid, 2, 4, 1, 0.03)
        monkeypatch.undo()
    assert created == []


def test_only_the_oracle_sees_true_service():
    with pytest.raises(TypeError, match="not an oracle"):
        create("laps-sd").reveal("a", 1.0)


@given(st.lists(st.integers(0, 4), min_size=1, max_size=60), st.integers(1, 59),
       st.integers(2, 8), st.sampled_from([0.0, 1e-3, 1e-2]))
def test_stability_test_does_not_depend_on_batching(accepted, split, gamma, delta):
    """The stability kernel gives the same answer on a whole run as on the run split in two."""
    acc = np.array(accepted)
    c_ac = np.concatenate(([0], np.cumsum(acc)))
    c_dr = 4 * np.arange(acc.size + 1)
    c_em = c_ac + np.arange(acc.size + 1)
    c_ns = 30_000_000 * np.arange(acc.size + 1)
    h1 = np.zeros(gamma - 1)
    belief = (100.0, 0.5, math.inf, math.inf)  # median, sigma, cap, no spread condition
    whole = kernels.new_request_run(c_em, c_dr, c_ac, c_ns, 0, acc.size, kernels.ROUNDS, 0, -1,
                                    0, 0, 0, h1, 0, gamma, delta, *belief)
    h2 = np.zeros(gamma - 1)
    split = min(split, acc.size)
    first = kernels.new_request_run(c_em, c_dr, c_ac, c_ns, 0, split, kernels.ROUNDS, 0, -1, 0,
                                    0, 0, h2, 0, gamma, delta, *belief)
    if first[1] or first[0] == acc.size:
        parts = first
    else:
        n = first[0]
        second = kernels.new_request_run(c_em, c_dr, c_ac, c_ns, n, acc.size - n, kernels.ROUNDS,
                                         n, -1, int(c_ac[n]), int(c_dr[n]), int(c_em[n]), h2, n,
                                         gamma, delta, *belief)
        parts = (n + second[0], second[1])
    assert parts == whole
    np.testing.assert_array_equal(h1, h2)
    # And it is the variance of the running acceptance rates, as specified.
    rates = c_ac[1:] / c_dr[1:]
    taken, stable = whole
    if stable:
        assert np.var(rates[taken - gamma : taken]) <= delta + 1e-12
    for end in range(gamma, taken):
        assert np.var(rates[end - gamma : end]) > delta - 1e-12


@given(st.floats(1, 5000), st.floats(0, 2), st.integers(0, 20000))
def test_remaining_length_is_at_least_one_and_consistent(median, sigma, g):
    pred = LengthPrediction(median, sigma)
    r = pred.remaining_one(g)
    assert r >= 1.0
    if g + 1 <= median:
        assert r == median - g
    else:
        assert r == pred.mean_remaining(g)


def test_gittins_infinite_prior_ignores_observed_acceptance():
    # prior_tokens = inf: every request costs the typical time per token (ranks stay finite).
    pred = LengthPrediction.from_quantiles(40.0, 90.0)
    slow, fast = (create("gittins", prior_tokens=math.inf) for _ in range(2))
    ranks = []
    for policy, seconds in ((slow, 0.5), (fast, 0.001)):
        policy.admit(RequestInfo("a", 0.0, 10, pred))
        assert math.isfinite(policy.admission_rank(RequestInfo("b", 0.0, 10, pred)))
        assert policy.pick() == "a"
        policy.observe("a", emitted=4, drafted=4, accepted=3, seconds=seconds)
        ranks.append(policy._rank(policy._states["a"]))
    assert math.isfinite(ranks[0]) and ranks[0] == ranks[1]
