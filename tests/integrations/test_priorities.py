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
    BELIEF_TTL_S,
    MAP_FILE,
    MAX_BELIEF_MEDIAN,
    MAX_BELIEF_SIGMA,
    MAX_PROMPT_CHARS,
    PREDICTOR_FILE,
    SERVERS,
    XARG_BELIEF_ID,
    XARG_ISSUED_AT,
    XARG_MEDIAN,
    XARG_SIGMA,
    XARG_SIGNATURE,
    BeliefRefused,
    BeliefVerifier,
    PriorityMapper,
    RankScale,
    _signature,
    sign_belief,
)
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.config import PolicySection, policy_section
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
    assert mapper.target_model and mapper.max_new_tokens == read_trace(
        TRACE).manifest["collector"]["max_new_tokens"]
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


# ---------------------------------------------------------------------- untrusted requests
@pytest.mark.parametrize(("prompt", "kwargs", "match"), [
    ("40", {"max_tokens": -1}, "max_tokens -1: expected"),
    ("40", {"max_tokens": 0}, "max_tokens 0: expected"),
    ("40", {"max_tokens": 0.5}, "max_tokens 0.5: expected"),
    ("40", {"max_tokens": math.nan}, "max_tokens nan: expected"),
    ("40", {"max_tokens": math.inf}, "max_tokens inf: expected"),
    ("40", {"max_tokens": "64"}, "max_tokens '64': expected"),
    ("40", {"max_tokens": True}, "max_tokens True: expected"),
    ("40", {"prompt_tokens": -3}, r"prompt_tokens=-3: expected"),
    ("40", {"prompt_tokens": 2.5}, r"prompt_tokens=2.5: expected"),
    (None, {}, "prompt of type NoneType: expected the prompt text"),
    (["a", "b"], {}, "prompt of type list"),
    (b"bytes", {}, "prompt of type bytes"),
    (123, {}, "prompt of type int"),
])
def test_a_request_that_would_jump_the_queue_is_refused(prompt, kwargs, match):
    mapper = _mapper("lp-sjf", "vllm", [20.0, 50.0, 100.0])
    for call in (mapper.priority_for, mapper.request_fields):
        with pytest.raises(LapsdError, match=match):
            call(prompt, **kwargs)
    assert mapper.priority_for("40", max_tokens=64) == mapper.priority_for("40")


def test_a_huge_prompt_is_predicted_from_its_first_characters(srpt_config: Path):
    mapper = PriorityMapper.from_config(srpt_config, "vllm")
    prefix = ("Say yes or no: is the sea salty? " * 1000)[:MAX_PROMPT_CHARS]
    huge = prefix + ("Write a long essay on every port of the Baltic sea, in detail. " * 40_000)
    assert len(huge) > 2_000_000
    assert mapper.predictions([huge], [None]) == mapper.predictions([prefix], [None])
    # The predictor itself never reads past the cut.
    seen: list[int] = []
    real = mapper.predictor.predictions
    mapper.predictor.predictions = lambda prompts, *a: seen.extend(map(len, prompts)) or real(
        prompts, *a)
    mapper.priority_for(huge)
    assert seen == [MAX_PROMPT_CHARS]


def test_a_config_whose_predictor_changed_is_refused(tmp_path: Path, predictor_file: Path):
    copy = tmp_path / "model.skops"
    copy.write_bytes(predictor_file.read_bytes())
    cfg = write_test_config(tmp_path / "c.json", "lp-srpt", copy)
    copy.write_bytes(predictor_file.read_bytes() + b"\0")
    with pytest.raises(LapsdError, match=r"is not the one .* was made with"):
        PriorityMapper.from_config(cfg, "vllm")


# ---------------------------------------------------------------------- signed beliefs
SECRET = "0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_signed_belief_is_taken_once_within_its_lifetime():
    clock = Clock()
    verifier = BeliefVerifier(SECRET, clock=clock)
    xargs = json.loads(json.dumps(sign_belief(SECRET, 120, 0.7, issued_at=int(clock.now))))
    assert verifier.verify(xargs) == (120.0, 0.7)
    with pytest.raises(BeliefRefused, match="used before") as refused:
        verifier.verify(xargs)
    assert refused.value.kind == "replayed"
    late = sign_belief(SECRET, 120, 0.7, issued_at=int(clock.now - BELIEF_TTL_S - 1))
    with pytest.raises(BeliefRefused, match="more than 60 s") as refused:
        verifier.verify(late)
    assert refused.value.kind == "expired"
    # Taken ids are forgotten once they could no longer verify anyway.
    clock.now += 3 * BELIEF_TTL_S
    assert verifier.verify(sign_belief(SECRET, 5, 0.0, issued_at=int(clock.now))) == (5.0, 0.0)
    assert len(verifier._taken) == 1


def _signed(median, sigma, secret=SECRET, **changes):
    """Signed xargs of any numbers (what a gateway with the secret could send)."""
    xargs = {XARG_MEDIAN: median, XARG_SIGMA: sigma, XARG_BELIEF_ID: "id-1",
             XARG_ISSUED_AT: 1_800_000_000}
    xargs[XARG_SIGNATURE] = _signature(secret.encode(), "id-1", 1_800_000_000, float(median),
                                       float(sigma))
    return {**xargs, **changes}


#: Client beliefs the server must not take, with the kind of refusal.
BAD_BELIEFS = [
    ({XARG_MEDIAN: 1, XARG_SIGMA: 0.5}, "unsigned"),
    ({XARG_MEDIAN: math.nan, XARG_SIGMA: 0.5}, "unsigned"),
    ({XARG_MEDIAN: "abc"}, "unsigned"),
    (_signed(400, 0.5, **{XARG_MEDIAN: 1}), "bad signature"),
    (_signed(400, 0.5, **{XARG_SIGMA: 0.0}), "bad signature"),
    (_signed(400, 0.5, **{XARG_BELIEF_ID: "id-2"}), "bad signature"),
    (_signed(400, 0.5, secret="another-secret-of-enough-bytes-0123"), "bad signature"),
    (_signed(400, 0.5, **{XARG_SIGNATURE: "é" * 64}), "bad signature"),
    (_signed(400, 0.5, **{XARG_SIGNATURE: ""}), "bad signature"),
    (_signed(math.nan, 0.5), "invalid"),
    (_signed(math.inf, 0.5), "invalid"),
    (_signed(-5, 0.5), "invalid"),
    (_signed(0, 0.5), "invalid"),
    (_signed(1e300, 0.5), "invalid"),
    (_signed(100, math.nan), "invalid"),
    (_signed(100, -1), "invalid"),
    (_signed(100, 1e300), "invalid"),
    (_signed(100, 0.5, **{XARG_MEDIAN: "abc"}), "invalid"),
    (_signed(100, 0.5, **{XARG_MEDIAN: None}), "invalid"),
    (_signed(100, 0.5, **{XARG_MEDIAN: True}), "invalid"),
    (_signed(100, 0.5, **{XARG_BELIEF_ID: 7}), "invalid"),
    (_signed(100, 0.5, **{XARG_BELIEF_ID: "x" * 129}), "invalid"),
    (_signed(100, 0.5, **{XARG_ISSUED_AT: "now"}), "invalid"),
    (_signed(100, 0.5, **{XARG_SIGNATURE: 12}), "invalid"),
]


@pytest.mark.parametrize(("xargs", "kind"), BAD_BELIEFS)
def test_a_bad_client_belief_is_refused_by_kind(xargs, kind):
    with pytest.raises(BeliefRefused) as refused:
        BeliefVerifier(SECRET, clock=Clock()).verify(xargs)
    assert refused.value.kind == kind


@given(median=st.one_of(st.floats(), st.integers(), st.text(), st.none(), st.booleans()),
       sigma=st.one_of(st.floats(), st.integers(), st.text(), st.none()))
def test_signing_takes_only_beliefs_in_range(median, sigma):
    m, s = (x if isinstance(x, int | float) and not isinstance(x, bool) else None
            for x in (median, sigma))
    valid = (m is not None and s is not None and 1 <= m <= MAX_BELIEF_MEDIAN
             and 0 <= s <= MAX_BELIEF_SIGMA)
    if not valid:
        with pytest.raises(LapsdError):
            sign_belief(SECRET, median, sigma)
        return
    xargs = sign_belief(SECRET, median, sigma, issued_at=1_800_000_000)
    assert BeliefVerifier(SECRET, clock=Clock()).verify(xargs) == (float(m), float(s))


def test_a_short_secret_is_refused_and_the_gateway_signs_with_one(srpt_config: Path):
    with pytest.raises(LapsdError, match="at least 32 random"):
        BeliefVerifier("short")
    mapper = PriorityMapper.from_config(srpt_config, "vllm")
    xargs = mapper.request_fields("Write a haiku.", max_tokens=64, secret=SECRET)["vllm_xargs"]
    belief = mapper.predictions(["Write a haiku."], [64])[0]
    assert BeliefVerifier(SECRET).verify(xargs) == (belief.median, belief.sigma)
