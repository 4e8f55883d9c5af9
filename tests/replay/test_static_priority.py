"""A priority fixed at admission (what vLLM, SGLang and TensorRT-LLM run of a policy).

The engine's ``static-priority`` is checked against the plain reference of
``tests/helpers/spec_reference.py`` (the wrapped policy's key of a request that has not run,
never recomputed), at batch size one and above; and each policy's ``admission_rank`` against
the key the policy itself gives a request on admission.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_reference import random_updates, synthetic_trace
from spec_reference import make, spec_simulate, spec_simulate_batched

from lapsd.replay.arrays import TraceArrays
from lapsd.replay.batch import simulate_batched
from lapsd.replay.costs import BatchCost, SwitchCost
from lapsd.replay.engine import simulate
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies import create
from lapsd.replay.policies.base import NS_PER_S, RequestInfo
from lapsd.replay.policies.params import ParamsError
from lapsd.replay.workload import build_workload

WRAPPED = ["gittins", "lp-srpt", "lp-sjf", "laps-sd", "mlfq", "fcfs", "las"]
#: Parameters of the wrapped policy that change its admission rank.
INNER = {"laps-sd": [{}, {"length_estimate": "mean"},
                     {"length_estimate": "quantile", "quantile": 0.8}],
         "mlfq": [{}, {"skip_join": True, "prefill_s_per_token": 5e-4, "q1": 0.02}],
         "gittins": [{}, {"prior_tokens": 0.0}]}
WORKLOADS = ["burst:n={n},seed={s}", "poisson:load=0.9,n={n},seed={s}",
             "gamma:load=1.2,cv=3,n={n},seed={s}"]
COST = BatchCost((1, 2, 4, 8), (1.0, 1.15, 1.4, 2.0), "test")


def _static(arrays: TraceArrays, policy: str, variant: int, preemptive: bool):
    inner = INNER.get(policy, [{}])
    engine = create("static-priority", arrays.scale, policy=policy,
                    parameters=inner[variant % len(inner)], preemptive=preemptive)
    reference = make("static-priority", **dataclasses.asdict(engine.params))
    return engine, reference


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), policy=st.sampled_from(WRAPPED),
       variant=st.integers(0, 2), preemptive=st.booleans(), wl=st.sampled_from(WORKLOADS),
       c0=st.sampled_from([0.0, 0.002]), sigma=st.sampled_from([0.0, 0.7]),
       every=st.sampled_from([0, 3]))
def test_static_priority_follows_the_reference(seed, policy, variant, preemptive, wl, c0, sigma,
                                               every):
    arrays = TraceArrays.from_trace(synthetic_trace(seed))
    workload = build_workload(wl.format(n=15, s=seed), arrays, f"oracle:sigma={sigma}")
    if every:
        # Re-predictions reach the policy; a priority fixed at admission ignores them.
        workload.updates = random_updates(arrays, workload, seed, every)
    engine, reference = _static(arrays, policy, variant, preemptive)
    switch = SwitchCost(c0, 1e-5)
    fast = simulate(arrays, workload, engine, switch=switch)
    np.testing.assert_array_equal(fast.completion_ns,
                                  spec_simulate(arrays, workload, reference, switch))
    if not preemptive:
        assert fast.preemptions == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), policy=st.sampled_from(WRAPPED),
       variant=st.integers(0, 2), preemptive=st.booleans(), wl=st.sampled_from(WORKLOADS),
       batch=st.sampled_from([2, 4, 8]))
def test_static_priority_follows_the_reference_in_batches(seed, policy, variant, preemptive, wl,
                                                          batch):
    arrays = TraceArrays.from_trace(synthetic_trace(seed, n_requests=14))
    workload = build_workload(wl.format(n=18, s=seed), arrays, "oracle:sigma=0.7")
    engine, reference = _static(arrays, policy, variant, preemptive)
    switch = SwitchCost(0.002, 0.0)
    fast = simulate_batched(arrays, workload, engine, batch, cost=COST, switch=switch)
    ref = spec_simulate_batched(arrays, workload, reference, batch, COST.factor, switch)
    np.testing.assert_array_equal(fast.completion_ns, ref)


@pytest.mark.parametrize("policy", ["gittins", "lp-srpt", "laps-sd"])
@pytest.mark.parametrize("preemptive", [False, True])
def test_static_priority_follows_the_reference_on_an_example_trace(eagle_arrays, policy,
                                                                   preemptive):
    workload = build_workload("poisson:load=0.9,n=150,seed=5", eagle_arrays, "oracle:sigma=0.5")
    engine, reference = _static(eagle_arrays, policy, 0, preemptive)
    switch = SwitchCost(0.001, 1e-6)
    fast = simulate(eagle_arrays, workload, engine, switch=switch)
    np.testing.assert_array_equal(fast.completion_ns,
                                  spec_simulate(eagle_arrays, workload, reference, switch))


def test_fixed_admission_keys_are_the_policies_themselves(eagle_arrays):
    """lp-sjf already ranks by a fixed key, non-preemptively; FCFS and LAS know nothing."""
    workload = build_workload("poisson:load=0.9,n=150,seed=2", eagle_arrays, "oracle:sigma=0.5")
    for wrapped, same in (("lp-sjf", "lp-sjf"), ("fcfs", "fcfs"), ("las", "fcfs")):
        static = simulate(eagle_arrays, workload, create("static-priority", policy=wrapped))
        plain = simulate(eagle_arrays, workload, create(same))
        np.testing.assert_array_equal(static.completion_ns, plain.completion_ns)


beliefs = st.builds(LengthPrediction, st.floats(1.0, 4000.0), st.floats(0.0, 2.0),
                    st.sampled_from([float("inf"), 256.0, 2048.0]))


@given(belief=beliefs, prompt=st.integers(0, 4000))
def test_admission_rank_is_the_key_on_admission(belief, prompt):
    info = RequestInfo("r", 0.0, prompt, belief)
    for name, scale in (("lp-sjf", 1.0), ("lp-srpt", 1.0), ("gittins", NS_PER_S),
                        ("mlfq", 1.0)):
        params = {"skip_join": True, "prefill_s_per_token": 5e-4} if name == "mlfq" else {}
        policy = create(name, **params)
        rank = policy.admission_rank(info)
        policy.admit(info)
        assert policy._states["r"].key[0] == pytest.approx(rank * scale, rel=1e-12)
    for name in ("fcfs", "las"):
        assert create(name).admission_rank(info) == 0.0


@given(belief=beliefs, estimate=st.sampled_from(["paper", "mean", "quantile"]))
def test_laps_sd_ranks_by_the_remaining_length_of_its_estimate(belief, estimate):
    policy = create("laps-sd", length_estimate=estimate, quantile=0.7)
    expected = {"paper": belief.remaining_one(0), "mean": belief.mean_remaining(0),
                "quantile": belief.quantile_remaining(0, 0.7)}[estimate]
    assert policy.admission_rank(RequestInfo("r", 0.0, 10, belief)) == pytest.approx(expected)


def test_wrapping_is_checked():
    with pytest.raises(ParamsError, match="policy: cannot be fixed at admission"):
        create("static-priority", policy="srpt-oracle")
    with pytest.raises(ParamsError, match=r"parameters\.K: Input should be less than"):
        create("static-priority", policy="laps-sd", parameters={"K": 100})
    with pytest.raises(ParamsError, match="takes none"):
        create("static-priority", policy="fcfs", parameters={"K": 3})
    # Missing parameters of the wrapped policy come from its defaults, spelled out.
    p = create("static-priority", policy="laps-sd", parameters={"K": 3}).params
    assert p.parameters["K"] == 3 and p.parameters["length_estimate"] == "paper"
