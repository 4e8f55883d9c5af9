"""Load-banded LAPS-SD: the simulator's fast path against the round-by-round reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_reference import reference_simulate, synthetic_trace

from lapsd.errors import LapsdError
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.engine import simulate
from lapsd.replay.policies.banded import BandedLapsSD, LoadBand
from lapsd.replay.policies.laps_sd import LapsSDParams
from lapsd.replay.workload import build_workload


def _bands(limit: int, sup_a: float, sup_b: float, k_a: int, k_b: int) -> list[LoadBand]:
    return [LoadBand(limit, LapsSDParams(K=k_a, sup1=sup_a, gamma=3, delta=1e-3)),
            LoadBand(None, LapsSDParams(K=k_b, sup1=sup_b, M=3.0, gamma=3, delta=1e-2))]


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), limit=st.integers(1, 6), k_a=st.integers(1, 6),
       k_b=st.integers(1, 6), wl=st.sampled_from(["burst:n=15,seed={s}",
                                                   "poisson:load=1.1,n=25,seed={s}"]))
def test_banded_matches_reference(seed, limit, k_a, k_b, wl):
    arrays = TraceArrays.from_trace(synthetic_trace(seed, n_requests=15))
    workload = build_workload(wl.format(s=seed), arrays, "oracle:sigma=0.5")
    bands = _bands(limit, 0.1, 0.5, k_a, k_b)
    fast = simulate(arrays, workload, BandedLapsSD(bands))
    ref = reference_simulate(arrays, workload, BandedLapsSD(bands))
    np.testing.assert_array_equal(fast.completion_ns, ref)


def test_bands_must_share_gamma():
    with pytest.raises(LapsdError, match="same gamma"):
        BandedLapsSD([LoadBand(3, LapsSDParams(gamma=3)), LoadBand(None, LapsSDParams(gamma=4))])
