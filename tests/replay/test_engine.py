"""The engine against the plain reference simulator, and scheduling invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_reference import random_updates, reference_simulate, synthetic_trace

from lapsd.replay import driver
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.costs import SwitchCost
from lapsd.replay.driver import drive
from lapsd.replay.engine import simulate
from lapsd.replay.executor import TraceExecutor
from lapsd.replay.policies import available, create
from lapsd.replay.policies.banded import BandedLapsSD, LoadBand
from lapsd.replay.policies.laps_sd import LapsSDParams
from lapsd.replay.workload import build_workload

ALL = available()
WORKLOADS = ["burst:n={n},seed={s}", "poisson:load=0.9,n={n},seed={s}",
             "gamma:load=1.2,cv=3,n={n},seed={s}", "poisson:load=0.5,n={n},seed={s}"]
PARAMS = {
    "laps-sd": [{}, {"K": 2, "gamma": 2, "delta": 0.0}, {"unit": "rounds", "sup1": 3, "K": 6},
                {"unit": "tokens", "perceptible_first": False, "delta": 0.05}],
    "las": [{}, {"unit": "rounds"}, {"unit": "tokens"}],
    "mlfq": [{}, {"unit": "rounds", "q1": 2, "K": 5}, {"skip_join": True}],
    "gittins": [{}, {"switch_weight": 0.0}, {"c0": 0.002, "c1": 1e-5, "prior_tokens": 0.5}],
    "static-priority": [{}, {"preemptive": True, "policy": "gittins"}],
}


def _cases(name: str) -> list[dict]:
    return PARAMS.get(name, [{}])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), policy=st.sampled_from(ALL), wl=st.sampled_from(WORKLOADS),
       variant=st.integers(0, 3), c0=st.sampled_from([0.0, 0.002]),
       c1=st.sampled_from([0.0, 1e-5]), sigma=st.sampled_from([0.0, 0.7]),
       every=st.sampled_from([0, 1, 4]))
def test_engine_matches_reference_on_random_traces(seed, policy, wl, variant, c0, c1, sigma,
                                                   every):
    arrays = TraceArrays.from_trace(synthetic_trace(seed))
    params = _cases(policy)[variant % len(_cases(policy))]
    workload = build_workload(wl.format(n=15, s=seed), arrays, f"oracle:sigma={sigma}")
    if every:
        workload.updates = random_updates(arrays, workload, seed, every)
    switch = SwitchCost(c0, c1)
    fast = simulate(arrays, workload, create(policy, arrays.scale, **params), switch=switch)
    ref = reference_simulate(arrays, workload, create(policy, arrays.scale, **params), switch)
    np.testing.assert_array_equal(fast.completion_ns, ref)


@pytest.mark.parametrize("policy", ALL)
@pytest.mark.parametrize("wl", ["burst:n=40,seed=3", "poisson:load=0.9,n=150,seed=4"])
def test_engine_matches_reference_on_real_trace(eagle_arrays, policy, wl):
    for params in _cases(policy):
        workload = build_workload(wl, eagle_arrays, "oracle:sigma=0.5")
        fast = simulate(eagle_arrays, workload, create(policy, eagle_arrays.scale, **params))
        ref = reference_simulate(eagle_arrays, workload,
                                 create(policy, eagle_arrays.scale, **params))
        np.testing.assert_array_equal(fast.completion_ns, ref)
        one = simulate(eagle_arrays, workload, create(policy, eagle_arrays.scale, **params),
                       max_chunk=1)
        np.testing.assert_array_equal(one.completion_ns, ref)
        assert fast.decisions <= one.decisions


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), wl=st.sampled_from(WORKLOADS))
def test_invariants_hold_for_every_policy(seed, wl):
    arrays = TraceArrays.from_trace(synthetic_trace(seed, n_requests=20))
    workload = build_workload(wl.format(n=25, s=seed), arrays, "oracle:sigma=0.5")
    service = arrays.service_ns[workload.index]
    makespans = set()
    for policy in ALL:
        r = simulate(arrays, workload, create(policy, arrays.scale))
        # Each request completes exactly once, after it arrived and received its service.
        assert (r.completion_ns > 0).all() or (service == 0).any()
        assert (r.completion_ns - workload.arrival_ns >= service).all()
        assert r.rounds == int((arrays.offsets[workload.index + 1]
                                - arrays.offsets[workload.index]).sum())
        makespans.add(int(r.completion_ns.max()))
    # Work conservation with free switches: every policy's busy periods, hence its last
    # completion, are the same.
    assert len(makespans) == 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 30))
def test_srpt_oracle_is_best_on_a_burst(seed, n):
    arrays = TraceArrays.from_trace(synthetic_trace(seed, n_requests=20))
    workload = build_workload(f"burst:n={n},seed={seed}", arrays, "oracle:sigma=1.0")
    means = {p: simulate(arrays, workload, create(p, arrays.scale)).latency_s.mean()
             for p in ALL}
    best = means.pop("srpt-oracle")
    assert all(best <= m + 1e-12 for m in means.values()), means


def test_fcfs_burst_matches_closed_form(eagle_arrays):
    workload = build_workload("burst:n=50,seed=9", eagle_arrays)
    r = simulate(eagle_arrays, workload, create("fcfs"))
    expected = np.cumsum(eagle_arrays.service_ns[workload.index])
    np.testing.assert_array_equal(r.completion_ns, expected)
    assert r.preemptions == 0


def test_switch_costs_are_charged_per_preemption(eagle_arrays):
    workload = build_workload("poisson:load=0.9,n=200,seed=2", eagle_arrays)
    free = simulate(eagle_arrays, workload, create("las", eagle_arrays.scale))
    paid = simulate(eagle_arrays, workload, create("las", eagle_arrays.scale),
                    switch=SwitchCost(0.001, 0.0))
    assert free.preemptions > 0 and free.switch_ns == 0
    assert paid.switch_ns == paid.preemptions * 1_000_000
    assert paid.latency_s.mean() > free.latency_s.mean()


def test_laps_sd_reports_estimation_error(eagle_arrays):
    workload = build_workload("burst:n=30,seed=1", eagle_arrays, "oracle:sigma=0.0")
    r = simulate(eagle_arrays, workload, create("laps-sd", eagle_arrays.scale))
    assert 0 < len(r.estimates) <= 30
    est = np.array(list(r.estimates.values()))
    true = eagle_arrays.service_ns[workload.index[list(r.estimates)]] / 1e9
    # Exact lengths: the error left comes from the acceptance and round-time estimates only.
    assert np.median(np.abs(est - true) / true) < 0.25


def test_length_policies_need_predictions(eagle_arrays):
    workload = build_workload("burst:n=5", eagle_arrays)
    with pytest.raises(ValueError, match="needs length predictions"):
        simulate(eagle_arrays, workload, create("lp-sjf"))


@pytest.mark.parametrize("batch, kv", [(1, None), (1, 4000), (4, None), (4, 4000)])
def test_only_the_driver_runs_a_policy(eagle_arrays, monkeypatch, batch, kv):
    from lifecycle import lifecycle_callers

    from lapsd.replay.batch import simulate_batched

    workload = build_workload("poisson:load=0.9,n=60,seed=5", eagle_arrays, "oracle:sigma=0.5")
    workload.updates = random_updates(eagle_arrays, workload, 5, every=4)
    with lifecycle_callers(monkeypatch) as callers:
        for name in ("srpt-oracle", "laps-sd", "fcfs", "las"):
            simulate_batched(eagle_arrays, workload, create(name, eagle_arrays.scale), batch,
                             switch=SwitchCost(0.001, 1e-6), kv_tokens=kv)
    assert callers == {"lapsd.replay.driver"}


def _stepwise(arrays, workload, policy, switch):
    """The replay with every decision asked of :meth:`Policy.step` (no lookahead)."""
    executor = TraceExecutor(arrays, workload, policy, switch=switch)
    executor.lookahead = None
    return drive(policy, workload.arrival_ns.tolist(), executor)


SHARING = [(name, params) for name in ALL if create(name).shares for params in _cases(name)]


def test_every_policy_time_shares_but_load_bands():
    """Every registered policy serves spans in one call; banded LAPS-SD a decision at a time."""
    assert all(create(name).shares for name in ALL)
    bands = [LoadBand(4, LapsSDParams()), LoadBand(None, LapsSDParams(K=2))]
    assert not BandedLapsSD(bands).shares


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), case=st.sampled_from(SHARING),
       wl=st.sampled_from(WORKLOADS), n=st.integers(1, 40),
       c0=st.sampled_from([0.0, 0.002]), c1=st.sampled_from([0.0, 1e-5]))
def test_time_sharing_makes_the_decisions_of_the_step_loop(seed, case, wl, n, c0, c1):
    """:meth:`Policy.share` over spans of arrivals: the very schedule and counts of the loop
    that asks :meth:`Policy.step` at every decision."""
    name, params = case
    arrays = TraceArrays.from_trace(synthetic_trace(seed))
    workload = build_workload(wl.format(n=n, s=seed), arrays, "oracle:sigma=0.7")
    switch = SwitchCost(c0, c1)
    shared = simulate(arrays, workload, create(name, arrays.scale, **params), switch=switch)
    step = _stepwise(arrays, workload, create(name, arrays.scale, **params), switch)
    np.testing.assert_array_equal(shared.completion_ns, step.completion_ns)
    assert (shared.preemptions, shared.switch_ns, shared.decisions) == (
        step.preemptions, step.switch_ns, step.decisions)


@pytest.mark.parametrize("name, params", SHARING)
def test_time_sharing_spans_many_arrivals_on_a_real_trace(eagle_arrays, monkeypatch, name,
                                                          params):
    """Spans that end inside bursts and idle spells: a short span, the real trace."""
    monkeypatch.setattr(driver, "SHARE_SPAN", 3)
    switch = SwitchCost(0.001, 2e-6)
    for wl in ("burst:n=50,seed=3", "poisson:load=0.9,n=300,seed=4",
               "poisson:load=0.3,n=100,seed=5"):
        workload = build_workload(wl, eagle_arrays, "oracle:sigma=0.5")
        policy = create(name, eagle_arrays.scale, **params)
        shared = simulate(eagle_arrays, workload, policy, switch=switch)
        assert policy.waiting == 0 and not policy._running
        step = _stepwise(eagle_arrays, workload, create(name, eagle_arrays.scale, **params),
                         switch)
        np.testing.assert_array_equal(shared.completion_ns, step.completion_ns)
        assert (shared.preemptions, shared.decisions) == (step.preemptions, step.decisions)


class _Stop(Exception):
    pass


class _StopAt(TraceExecutor):
    """An executor whose replay stops as request ``stop`` arrives."""

    def __init__(self, *args, stop: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop = stop

    def request(self, j):
        if j == self.stop:
            raise _Stop
        return super().request(j)


def test_time_sharing_leaves_the_policy_as_the_step_loop_does(eagle_arrays, monkeypatch):
    """Stopped as the same request arrives, shared and stepped replays hold the same states."""
    monkeypatch.setattr(driver, "SHARE_SPAN", 30)
    workload = build_workload("poisson:load=1.5,n=40,seed=6", eagle_arrays, "oracle:sigma=0.5")
    running = 0
    for name, params in SHARING:
        seen = []
        for ahead in (True, False):
            policy = create(name, eagle_arrays.scale, **params)
            executor = _StopAt(eagle_arrays, workload, policy, switch=SwitchCost(0.001, 0.0),
                               stop=30)
            if not ahead:
                executor.lookahead = None
            with pytest.raises(_Stop):
                drive(policy, workload.arrival_ns.tolist(), executor)
            seen.append(({rid: (st.rounds, st.generated, st.drafted, st.accepted,
                                st.service_ns, st.key, st.running)
                          for rid, st in policy._states.items()},
                         list(executor._pos)))
        assert seen[0] == seen[1]
        running += any(st[-1] for st in seen[0][0].values())
    assert running  # the test stops some mid-run
