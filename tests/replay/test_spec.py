"""The engine runs each policy as the design page specifies it.

The differential test of ``test_engine.py`` proves that batched replay equals round-by-round
replay of the same policy objects; it cannot catch a policy that misreads its specification.
Here the references are written from the design page (``tests/helpers/spec_reference.py``):
every request's key recomputed from its history at every round boundary, the smallest runs.
The engine, with its heaps, compiled kernels and look-ahead, must give every request the same
completion time, and LAPS-SD the same execution-time estimates.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_reference import random_updates, synthetic_trace
from spec_reference import make, spec_simulate

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.costs import SwitchCost
from lapsd.replay.engine import simulate
from lapsd.replay.policies import available, create
from lapsd.replay.workload import build_workload

WORKLOADS = ["burst:n={n},seed={s}", "poisson:load=0.9,n={n},seed={s}",
             "gamma:load=1.2,cv=3,n={n},seed={s}", "poisson:load=0.5,n={n},seed={s}"]


def laps_params() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "K": st.integers(1, 6), "sup1": st.sampled_from([0.05, 0.2, 0.48, 1.0]),
        "M": st.sampled_from([1.5, 2.0, 4.0]), "gamma": st.integers(2, 6),
        "delta": st.sampled_from([0.0, 1e-4, 1e-3, 1e-2, 0.1]),
        "unit": st.sampled_from(["seconds", "rounds", "tokens"]),
        "perceptible_first": st.booleans(),
        "length_estimate": st.sampled_from(["paper", "mean", "quantile"]),
        "quantile": st.sampled_from([0.3, 0.5, 0.8]),
        "max_spread": st.sampled_from([None, 1.0, 3.0]),
    }).map(_scale_sup1)


def _scale_sup1(p: dict) -> dict:
    # sup1 is drawn in seconds; in rounds or tokens the same draws mean a few rounds.
    if p["unit"] != "seconds":
        p = {**p, "sup1": p["sup1"] * 20}
    return p


def mlfq_params() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({
        "K": st.integers(1, 6), "q1": st.sampled_from([0.05, 0.2, 0.5]),
        "M": st.sampled_from([1.0, 2.0, 3.0]),
        "unit": st.sampled_from(["seconds", "rounds", "tokens"]),
        "skip_join": st.booleans(),
        "prefill_s_per_token": st.sampled_from([2e-5, 5e-4]),
    }).map(lambda p: p if p["unit"] == "seconds" else {**p, "q1": p["q1"] * 20})


def params_for(policy: str) -> st.SearchStrategy[dict]:
    if policy == "laps-sd":
        return laps_params()
    if policy == "mlfq":
        return mlfq_params()
    if policy == "gittins":
        return st.fixed_dictionaries({
            "prior_tokens": st.sampled_from([0.0, 0.5, 16.0, 200.0, float("inf")]),
            "switch_weight": st.sampled_from([0.0, 1.0, 3.0]),
            "c0": st.sampled_from([0.0, 0.002]), "c1": st.sampled_from([0.0, 1e-5])})
    if policy == "las":
        return st.fixed_dictionaries({"unit": st.sampled_from(["seconds", "rounds", "tokens"])})
    return st.just({})


def _check(arrays: TraceArrays, wl: str, policy: str, params: dict, switch: SwitchCost,
           sigma: float, every: int = 0) -> None:
    workload = build_workload(wl, arrays, f"oracle:sigma={sigma}")
    if every:
        workload.updates = random_updates(arrays, workload, len(wl), every)
    engine_policy = create(policy, arrays.scale, **params)
    # Defaults that depend on the trace (queue bounds) are resolved once, for both.
    resolved = dataclasses.asdict(engine_policy.params) if hasattr(engine_policy, "params") \
        else {}
    fast = simulate(arrays, workload, engine_policy, switch=switch)
    reference = make(policy, **resolved)
    completion = spec_simulate(arrays, workload, reference, switch)
    np.testing.assert_array_equal(fast.completion_ns, completion)
    if policy == "laps-sd":
        assert fast.estimates == reference.estimates


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 10_000), policy=st.sampled_from(available()),
       wl=st.sampled_from(WORKLOADS), c0=st.sampled_from([0.0, 0.002]),
       c1=st.sampled_from([0.0, 1e-5]), sigma=st.sampled_from([0.0, 0.7]),
       every=st.sampled_from([0, 2, 5]))
def test_engine_follows_the_specification_on_random_traces(data, seed, policy, wl, c0, c1,
                                                           sigma, every):
    arrays = TraceArrays.from_trace(synthetic_trace(seed))
    params = data.draw(params_for(policy))
    _check(arrays, wl.format(n=15, s=seed), policy, params, SwitchCost(c0, c1), sigma, every)


@pytest.mark.parametrize("trace", ["specbench-vicuna7b-eagle", "smollm2-layers-28",
                                   "specbench-vicuna7b-sps68m"])
@pytest.mark.parametrize("policy", ["las", "mlfq", "lp-srpt", "srpt-oracle", "laps-sd",
                                    "gittins"])
def test_engine_follows_the_specification_on_example_traces(examples_dir, trace, policy):
    from lapsd.replay.trace import read_trace

    arrays = TraceArrays.from_trace(read_trace(examples_dir / trace))
    variants = {"laps-sd": [{}, {"K": 6, "gamma": 3, "delta": 1e-2, "unit": "tokens",
                                 "sup1": 40, "perceptible_first": False},
                            {"length_estimate": "quantile", "quantile": 0.7, "max_spread": 2.0}],
                "mlfq": [{}, {"skip_join": True, "unit": "rounds", "q1": 4, "K": 5}],
                "las": [{"unit": "rounds"}],
                "gittins": [{}, {"c0": 0.001, "c1": 1e-6, "prior_tokens": 2.0},
                            {"prior_tokens": float("inf")}]}.get(policy, [{}])
    for params in variants:
        _check(arrays, "poisson:load=0.9,n=120,seed=5", policy, params,
               SwitchCost(0.001, 1e-6), 0.5)
        _check(arrays, "burst:n=25,seed=6", policy, params, SwitchCost(), 0.0)
