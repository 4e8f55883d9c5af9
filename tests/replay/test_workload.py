"""Workload strings: parsing, determinism, load calibration."""

from __future__ import annotations

import numpy as np
import pytest

from lapsd.replay.workload import build_workload, make_predictions, parse_workload


@pytest.mark.parametrize(("text", "message"), [
    ("uniform:n=3", "unknown kind"),
    ("poisson:n=10", "load= is required"),
    ("burst:n=0", "n must be > 0"),
    ("burst:n=ten", "not a int"),
    ("poisson:load=0.9,n=10,rate=3", "not \\['rate'\\]"),
    ("burst:x.csv,n=3", "only trace: takes a path"),
])
def test_bad_workload_strings(text, message):
    with pytest.raises(ValueError, match=message):
        parse_workload(text)


def test_workloads_are_seeded(eagle_arrays):
    a = build_workload("gamma:load=0.9,cv=3,n=300,seed=5", eagle_arrays)
    b = build_workload("gamma:load=0.9,cv=3,n=300,seed=5", eagle_arrays)
    c = build_workload("gamma:load=0.9,cv=3,n=300,seed=6", eagle_arrays)
    np.testing.assert_array_equal(a.arrival_ns, b.arrival_ns)
    np.testing.assert_array_equal(a.index, b.index)
    assert not np.array_equal(a.arrival_ns, c.arrival_ns)
    assert a.name == "gamma:load=0.9,cv=3,n=300,seed=5"


def test_poisson_rate_matches_load(eagle_arrays):
    w = build_workload("poisson:load=0.5,n=20000,seed=1", eagle_arrays)
    mean_gap = np.diff(w.arrival_ns).mean() / 1e9
    mean_service = eagle_arrays.service_ns.mean() / 1e9
    assert mean_service / mean_gap == pytest.approx(0.5, rel=0.03)


def test_trace_arrivals_are_time_scaled(eagle_arrays, shared_data):
    path = shared_data / "arrivals_azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
    w = build_workload(f"trace:{path},load=0.8,n=2000,seed=1", eagle_arrays)
    assert len(w) == 2000
    offered = eagle_arrays.service_ns.mean() * (len(w) - 1) / w.arrival_ns[-1]
    assert offered == pytest.approx(0.8, rel=1e-6)


def test_noisy_oracle_predictions(eagle_arrays):
    index = np.arange(eagle_arrays.n_requests)
    exact = make_predictions("oracle:sigma=0", eagle_arrays, index)
    assert [p.median for p in exact] == eagle_arrays.output_tokens.astype(float).tolist()
    noisy = make_predictions("oracle:sigma=0.5,seed=3", eagle_arrays, index)
    ratio = np.log([p.median for p in noisy]) - np.log(eagle_arrays.output_tokens)
    assert ratio.std() == pytest.approx(0.5, rel=0.15)
    with pytest.raises(ValueError, match="no predicted_tokens column"):
        make_predictions("column", eagle_arrays, index)


def test_column_predictions_refuse_a_request_without_one(eagle_arrays):
    """A null predicted_tokens is no prediction: it once became a NaN rank, silently."""
    from dataclasses import replace

    n = eagle_arrays.n_requests
    predicted = np.full(n, 100.0)
    p90 = np.full(n, 300.0)
    p90[2] = np.nan  # a missing p90 only drops the spread
    arrays = replace(eagle_arrays, predicted=predicted, predicted_p90=p90)
    index = np.arange(n)
    beliefs = make_predictions("column", arrays, index)
    assert beliefs[2].median == beliefs[0].median == 100.0
    assert all(np.isfinite(b.sigma) for b in beliefs)
    predicted[5] = np.nan
    with pytest.raises(ValueError, match=r"1 requests have no predicted_tokens \(null\)"):
        make_predictions("column", arrays, index)
    assert len(make_predictions("column", arrays, index[:5])) == 5
