"""Re-predictions a trace records (belief round columns) reach the policy after their round."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from sim_reference import synthetic_trace

from lapsd.errors import LapsdError
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.engine import simulate
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies import create
from lapsd.replay.trace import TraceError, validate
from lapsd.replay.workload import build_workload, recorded_updates


def _with_beliefs(seed: int, every: int = 3):
    """A synthetic trace whose every ``every``-th round of each request records a belief."""
    trace = synthetic_trace(seed)
    rnd = trace.rounds.with_columns(
        pl.when(pl.col("round") % every == every - 1)
        .then(10.0 + pl.col("round").cast(pl.Float64)).otherwise(None).alias("belief_median"),
        pl.when(pl.col("round") % every == every - 1)
        .then(0.25).otherwise(None).alias("belief_sigma"))
    return dataclasses.replace(trace, rounds=rnd)


def test_recorded_beliefs_become_updates_after_their_round() -> None:
    trace = _with_beliefs(0)
    validate(trace)
    arrays = TraceArrays.from_trace(trace)
    index = np.array([0, 3, 0])
    updates = recorded_updates(arrays, index)
    for j, i in enumerate(index.tolist()):
        n = int(arrays.offsets[i + 1] - arrays.offsets[i])
        expected = [(r + 1, LengthPrediction(10.0 + r, 0.25, arrays.max_new_tokens))
                    for r in range(2, n, 3)]
        assert updates[j] == expected


def test_the_replay_delivers_them_to_the_policy() -> None:
    arrays = TraceArrays.from_trace(_with_beliefs(1))
    workload = build_workload("burst:n=8,seed=2", arrays, "oracle:sigma=0.3", recorded_updates)
    policy = create("lp-srpt")
    heard: list[tuple[int, LengthPrediction]] = []
    update = policy.update_prediction

    def spy(request_id, prediction):  # type: ignore[no-untyped-def]
        heard.append((request_id, prediction))
        update(request_id, prediction)

    policy.update_prediction = spy  # type: ignore[method-assign]
    simulate(arrays, workload, policy)
    assert workload.updates is not None
    # every recorded belief, in order, but one after a request's last round (it has finished)
    expected = [(j, p) for j, u in enumerate(workload.updates) for r, p in u
                if r < arrays.offsets[workload.index[j] + 1] - arrays.offsets[workload.index[j]]]
    assert sorted(heard, key=lambda x: x[0]) == sorted(expected, key=lambda x: x[0])
    assert heard


def test_a_trace_without_beliefs_says_how_to_add_them() -> None:
    arrays = TraceArrays.from_trace(synthetic_trace(0))
    with pytest.raises(LapsdError, match="lapsd predict apply"):
        recorded_updates(arrays, np.array([0]))


@pytest.mark.parametrize(("median", "sigma", "message"), [
    (0.0, 0.1, "belief_median must be a finite number of tokens > 0"),
    (float("nan"), 0.1, "belief_median must be"),
    (5.0, -1.0, "belief_sigma must be a finite number >= 0"),
    (5.0, None, "both set or both null"),
])
def test_bad_beliefs_are_refused(median, sigma, message) -> None:
    trace = synthetic_trace(0)
    rnd = trace.rounds.with_columns(pl.lit(median, pl.Float64).alias("belief_median"),
                                    pl.lit(sigma, pl.Float64).alias("belief_sigma"))
    with pytest.raises(TraceError, match=message):
        validate(dataclasses.replace(trace, rounds=rnd))


def test_a_belief_column_needs_its_pair() -> None:
    trace = synthetic_trace(0)
    rnd = trace.rounds.with_columns(pl.lit(5.0).alias("belief_median"))
    with pytest.raises(TraceError, match="without its pair"):
        validate(dataclasses.replace(trace, rounds=rnd))
