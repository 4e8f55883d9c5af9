"""Priorities at admission: the map is monotone, in the server's range and type, calibrated on
the config's prompts, and ranks requests as the ``static-priority`` replay does."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapsd.errors import LapsdError
from lapsd.integrations.priorities import (
    MAP_FILE,
    PREDICTOR_FILE,
    SERVERS,
    PriorityMapper,
    RankScale,
)
from lapsd.replay.config import PolicySection, policy_section
from lapsd.replay.engine import TraceArrays
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.policies import create
from lapsd.replay.policies.base import RequestInfo
from lapsd.replay.trace import read_trace

from .conftest import TRACE, write_test_config


class LengthInPrompt:
    """A stand-in predictor: the prompt is its predicted median length."""

    def __init__(self, sigma: float = 0.5) -> None:
        self.sigma = sigma

    def predictions(self, prompts, target_model=None):
        return [LengthPrediction(float(p), self.sigma) for p in prompts]


def _mapper(policy: str, server: str, calibration: list[float], levels: int = 1000,
            sigma: float = 0.5, **params) -> PriorityMapper:
    made = create(policy, **params)
    section = PolicySection.model_validate(policy_section(policy, getattr(made, "params", None)))
    predictor = LengthInPrompt(sigma)
    ranks = [made.admission_rank(RequestInfo(0, 0.0, 0, b))
             for b in predictor.predictions([str(m) for m in calibration])]
    return PriorityMapper(SERVERS[server], section, RankScale.fit(ranks, "test"), levels,
                          predictor, None, math.inf, {})


def _runs_no_later(server: str, a: float, b: float) -> bool:
    """Whether priority ``a`` is served no later than ``b`` on ``server``."""
    return a >= b if SERVERS[server].higher_first else a <= b


ranks = st.floats(0.0, 1e4, allow_nan=False)


@given(calibration=st.lists(ranks, min_size=1, max_size=200), a=ranks, b=ranks,
       levels=st.sampled_from([1, 2, 7, 1000]), server=st.sampled_from(sorted(SERVERS)))
def test_the_map_is_monotone_within_range_and_typed(calibration, a, b, levels, server):
    spec = SERVERS[server]
    mapper = PriorityMapper(spec, PolicySection(name="fcfs", parameters={}, units={}),
                            RankScale.fit(calibration, "test"), levels, None, None, math.inf, {})
    lo, hi = min(a, b), max(a, b)
    p_lo, p_hi = mapper.priority_of_rank(lo), mapper.priority_of_rank(hi)
    # A request the policy ranks first never gets a priority that serves it later.
    assert _runs_no_later(server, p_lo, p_hi)
    low, high = spec.value_range(levels)
    for p in (p_lo, p_hi):
        assert low <= p <= high
        assert isinstance(p, int) if spec.integer else isinstance(p, float)
    # Equal ranks, equal priorities: the server serves them in arrival order.
    assert mapper.priority_of_rank(a) == mapper.priority_of_rank(a + 0.0)


@given(medians=st.lists(st.floats(1.0, 5000.0), min_size=2, max_size=30),
       setup=st.sampled_from([("lp-srpt", {}), ("lp-sjf", {}), ("gittins", {}),
                              ("laps-sd", {}), ("laps-sd", {"length_estimate": "mean"}),
                              ("laps-sd", {"length_estimate": "quantile", "quantile": 0.8})]),
       server=st.sampled_from(sorted(SERVERS)))
def test_a_longer_predicted_request_never_runs_earlier(medians, setup, server):
    policy, params = setup
    mapper = _mapper(policy, server, [20.0, 50.0, 100.0, 300.0, 1000.0, 3000.0], **params)
    ordered = sorted(medians)
    values = mapper.priorities([str(m) for m in ordered])
    for shorter, longer in itertools.pairwise(values):
        assert _runs_no_later(server, shorter, longer)


def test_levels_are_evenly_used_by_calibration_like_requests():
    calibration = [float(x) for x in range(1, 1001)]
    mapper = _mapper("lp-sjf", "vllm", calibration, levels=10, sigma=0.0)
    counts = [0] * 10
    for p in mapper.priorities([str(x) for x in calibration]):
        counts[int(p)] += 1
    assert counts == [100] * 10
    # Outside the calibration range: the ends.
    assert mapper.priorities(["0.5", "1e6"]) == [0, 9]


def test_calibrated_export_round_trip_and_replay_agree(srpt_config: Path, tmp_path: Path):
    mapper = PriorityMapper.from_config(srpt_config, "sglang")
    assert mapper.target_model and mapper.max_new_tokens == 96
    files = {f.name for f in mapper.export(tmp_path)}
    assert {MAP_FILE, PREDICTOR_FILE, "server-args.txt", "gateway.py"} <= files
    loaded = PriorityMapper.load(tmp_path)
    arrays = TraceArrays.from_trace(read_trace(TRACE))
    prompts = [p for p in arrays.prompts if p is not None][:80]
    values = mapper.priorities(prompts)
    assert loaded.priorities(prompts) == values
    # SGLang: higher first, and the calibration prompts spread over the range.
    assert min(values) < 300 and max(values) > 700
    # The replay policy the map names ranks the requests as their priorities do.
    data = json.loads((tmp_path / MAP_FILE).read_text())
    static = create(data["replay"]["policy"], **data["replay"]["parameters"])
    assert static.params.preemptive  # SGLang preempts for arrivals of better priority
    beliefs = mapper.predictions(prompts, [None] * len(prompts))
    keys = [static.admission_rank(RequestInfo(i, 0.0, 0, b)) for i, b in enumerate(beliefs)]
    for i in range(len(prompts)):
        for j in range(len(prompts)):
            if keys[i] < keys[j]:
                assert values[i] >= values[j]
    # The gateway module written beside the map gives the same numbers.
    spec = importlib.util.spec_from_file_location("gateway", tmp_path / "gateway.py")
    assert spec is not None and spec.loader is not None
    gateway = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gateway)
    assert gateway.priority_for(prompts[0]) == values[0]
    assert gateway.request_fields(prompts[0]) == {"priority": values[0]}


def test_a_changed_predictor_copy_is_refused(srpt_config: Path, tmp_path: Path):
    PriorityMapper.from_config(srpt_config, "vllm").export(tmp_path)
    (tmp_path / PREDICTOR_FILE).write_bytes(b"not the predictor")
    with pytest.raises(LapsdError, match="not the predictor the map was calibrated with"):
        PriorityMapper.load(tmp_path)


def test_what_cannot_be_mapped_says_how_to_fix_it(tmp_path: Path, predictor_file: Path):
    no_predictor = write_test_config(tmp_path / "a.json", "gittins", None)
    with pytest.raises(LapsdError, match=r"pass --predictor model\.skops"):
        PriorityMapper.from_config(no_predictor, "vllm")
    with pytest.raises(LapsdError, match="--server 'tgi'"):
        PriorityMapper.from_config(no_predictor, "tgi", predictor=predictor_file)
    oracle = write_test_config(tmp_path / "b.json", "srpt-oracle", None)
    with pytest.raises(LapsdError, match="true service time"):
        PriorityMapper.from_config(oracle, "vllm")
    with pytest.raises(LapsdError, match="no such priority map"):
        PriorityMapper.load(tmp_path / "nowhere")


def test_a_policy_blind_at_admission_gives_one_priority(tmp_path: Path):
    """FCFS knows nothing before a request runs: every request gets the same priority."""
    cfg = write_test_config(tmp_path / "fcfs.json", "fcfs", None)
    mapper = PriorityMapper.from_config(cfg, "trtllm")
    assert mapper.predictor is None
    assert len(set(mapper.priorities(["a", "bb", "ccc"]))) == 1


def test_vllm_requests_carry_the_belief_for_the_scheduler_plugin(srpt_config: Path):
    mapper = PriorityMapper.from_config(srpt_config, "vllm")
    fields = mapper.request_fields("Write a haiku about the sea.", max_tokens=64)
    belief = mapper.predictions(["Write a haiku about the sea."], [64])[0]
    assert fields["priority"] == mapper.priority_for("Write a haiku about the sea.",
                                                     max_tokens=64)
    assert fields["vllm_xargs"] == {"lapsd_median": belief.median,
                                    "lapsd_sigma": belief.sigma}
    assert "vllm_xargs" not in PriorityMapper.from_config(srpt_config, "sglang").request_fields(
        "Write a haiku about the sea.")
