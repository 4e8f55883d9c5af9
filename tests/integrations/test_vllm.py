"""lapsd's vLLM scheduler against vLLM's real ``Scheduler`` (no GPU, no model weights).

As vLLM's own scheduler tests do, a ``Scheduler`` is built from a small ``VllmConfig`` (a
config-only model folder) and ``KVCacheConfig``; steps are driven by hand with made-up model
outputs. Run by ``bash tests/vllm.sh`` in .venv-vllm; skipped where vLLM is not installed,
except with ``LAPSD_REQUIRE_VLLM=1`` (tests/vllm.sh sets it), where that is a failure.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

if os.environ.get("LAPSD_REQUIRE_VLLM") == "1":
    import vllm  # noqa: F401  (an import error fails the run)
else:
    pytest.importorskip("vllm", reason="vLLM is not installed here; bash tests/vllm.sh runs "
                                       "these tests in .venv-vllm")

import torch
from vllm.config import (
    CacheConfig,
    ModelConfig,
    SchedulerConfig,
    SpeculativeConfig,
    VllmConfig,
)
from vllm.sampling_params import SamplingParams
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.kv_cache_interface import (
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
)
from vllm.v1.outputs import DraftTokenIds, ModelRunnerOutput
from vllm.v1.request import Request, RequestStatus
from vllm.v1.structured_output import StructuredOutputManager

from lapsd.errors import LapsdError
from lapsd.integrations.priorities import SECRET_ENV, sign_belief
from lapsd.integrations.vllm import (
    CLIENT_BELIEFS_KEY,
    SUPPORTED_VLLM,
    LapsdAsyncScheduler,
    LapsdScheduler,
    check_vllm_version,
)
from lapsd.replay.policies import create

from .conftest import write_test_config

#: The belief-signing secret of the tests' server and gateway.
SECRET = "lapsd-tests-secret-0123456789abcdef"

#: A config-only OPT model: ModelConfig reads it, nothing is downloaded or loaded.
TINY_OPT = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "vocab_size": 50272,
            "hidden_size": 64, "num_hidden_layers": 2, "ffn_dim": 128,
            "num_attention_heads": 2, "max_position_embeddings": 2048,
            "word_embed_proj_dim": 64, "do_layer_norm_before": True, "torch_dtype": "float16",
            "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1,
            "activation_function": "relu", "enable_bias": True,
            "layer_norm_elementwise_affine": True}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-opt")
    (path / "config.json").write_text(json.dumps(TINY_OPT))
    return path


@pytest.fixture(autouse=True)
def belief_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's secret, as its environment holds it."""
    monkeypatch.setenv(SECRET_ENV, SECRET)


def make_scheduler(model_dir: Path, cls: type = LapsdScheduler, *, max_num_seqs: int = 16,
                   num_blocks: int = 10_000, block_size: int = 16, spec_tokens: int = 0,
                   async_scheduling: bool = False, additional_config: dict | None = None,
                   client_beliefs: bool = True, tokenizer: bool = False,
                   **kwargs: Any) -> Any:
    """A scheduler that takes the signed beliefs of :func:`requests` (``client_beliefs``)."""
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs, max_num_batched_tokens=8192, max_model_len=8192,
        enable_chunked_prefill=True, async_scheduling=async_scheduling, policy="fcfs",
        is_encoder_decoder=False)
    model_config = ModelConfig(model=str(model_dir), dtype="float16", seed=42,
                               skip_tokenizer_init=not tokenizer)
    cache_config = CacheConfig(block_size=block_size, enable_prefix_caching=False)
    speculative = (SpeculativeConfig(method="ngram", num_speculative_tokens=spec_tokens)
                   if spec_tokens else None)
    vllm_config = VllmConfig(scheduler_config=scheduler_config, model_config=model_config,
                             cache_config=cache_config, speculative_config=speculative,
                             additional_config={CLIENT_BELIEFS_KEY: client_beliefs,
                                                **(additional_config or {})})
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks, kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer"], FullAttentionSpec(
            block_size=block_size, num_kv_heads=1, head_size=1, dtype=torch.float32))])
    cache_config.num_gpu_blocks = num_blocks
    return cls(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
               block_size=block_size, log_stats=True,
               structured_output_manager=StructuredOutputManager(vllm_config), **kwargs)


def requests(prompt_lens: list[int], medians: list[float] | None = None, max_tokens: int = 16,
             start: int = 0, xargs: list[dict[str, Any]] | None = None) -> list[Request]:
    """Requests ``r<start>``, ... with the signed length belief a lapsd gateway sends
    (``medians``), or the ``vllm_xargs`` given."""
    now = time.time()
    out = []
    for i, n in enumerate(prompt_lens):
        extra = (xargs[i] if xargs is not None else
                 None if medians is None else sign_belief(SECRET, medians[i], 0.5))
        params = SamplingParams(max_tokens=max_tokens, extra_args=extra)
        out.append(Request(request_id=f"r{start + i}", prompt_token_ids=[start + i + 3] * n,
                           sampling_params=params, pooling_params=None,
                           arrival_time=now + 1e-3 * i))
    return out


def model_output(scheduled: Any, accept: dict[str, int] | None = None) -> ModelRunnerOutput:
    """One sampled token per scheduled request, plus ``accept[id]`` accepted drafts."""
    ids = list(scheduled.num_scheduled_tokens)
    sampled = []
    for rid in ids:
        drafts = scheduled.scheduled_spec_decode_tokens.get(rid, [])
        sampled.append([7] * (1 + min((accept or {}).get(rid, 0), len(drafts))))
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                             sampled_token_ids=sampled)


def step(scheduler: Any, accept: dict[str, int] | None = None) -> tuple[Any, list[str]]:
    """One step; the output and the ids of the requests it started."""
    scheduled = scheduler.schedule()
    scheduler.update_from_output(scheduled, model_output(scheduled, accept))
    return scheduled, [r.req_id for r in scheduled.scheduled_new_reqs]


def run_to_completion(scheduler: Any, limit: int = 500) -> None:
    for _ in range(limit):
        if not scheduler.has_requests():
            return
        step(scheduler)
    raise AssertionError("requests still unfinished")


def test_a_version_mismatch_is_one_clear_message() -> None:
    check_vllm_version(SUPPORTED_VLLM)
    check_vllm_version(f"{SUPPORTED_VLLM}+cpu")
    with pytest.raises(LapsdError, match=r"works with vLLM 0\.32\.0 only .* this is vLLM 0\.31"):
        check_vllm_version("0.31.2")


def test_the_policy_orders_the_waiting_queue(model_dir: Path) -> None:
    stock = make_scheduler(model_dir, Scheduler, max_num_seqs=2)
    lapsd = make_scheduler(model_dir, max_num_seqs=2, lapsd_policy=create("lp-sjf"))
    for scheduler in (stock, lapsd):
        for r in requests([40, 10, 30, 20], medians=[400, 300, 20, 10]):
            scheduler.add_request(r)
    assert step(stock)[1] == ["r0", "r1"]  # first come, first served
    assert step(lapsd)[1] == ["r3", "r2"]  # shortest predicted first


def test_a_preemptive_policy_preempts_for_a_better_arrival(model_dir: Path) -> None:
    scheduler = make_scheduler(model_dir, max_num_seqs=2, lapsd_policy=create("lp-srpt"))
    for r in requests([64, 48], medians=[500, 400], max_tokens=600):
        scheduler.add_request(r)
    assert step(scheduler)[1] == ["r1", "r0"]  # shorter predicted first
    scheduler.add_request(requests([8], medians=[5], start=2)[0])
    scheduled, started = step(scheduler)
    assert started == ["r2"]
    assert set(scheduled.preempted_req_ids) == {"r0"} and scheduler.lapsd_preempted == ["r0"]
    assert scheduler.requests["r0"].status == RequestStatus.PREEMPTED


def test_a_non_preemptive_policy_keeps_its_running_requests(model_dir: Path) -> None:
    scheduler = make_scheduler(model_dir, max_num_seqs=2, lapsd_policy=create("lp-sjf"))
    for r in requests([64, 48], medians=[500, 400], max_tokens=600):
        scheduler.add_request(r)
    step(scheduler)
    scheduler.add_request(requests([8], medians=[5], start=2)[0])
    scheduled, started = step(scheduler)
    assert started == [] and not scheduled.preempted_req_ids
    assert scheduler.lapsd_preempted == []


def test_kv_pressure_preempts_the_request_the_policy_ranks_last(model_dir: Path) -> None:
    def victims(scheduler: Any) -> list[str]:
        for r in requests([30, 14, 20], medians=[10, 900, 50], max_tokens=40):
            scheduler.add_request(r)
        for _ in range(30):
            scheduled, _ = step(scheduler)
            if scheduled.preempted_req_ids:
                return sorted(scheduled.preempted_req_ids)
        raise AssertionError("no preemption")

    # 5 usable blocks of 16 tokens for three growing requests.
    assert victims(make_scheduler(model_dir, Scheduler, num_blocks=6)) == ["r2"]  # the latest
    lapsd = make_scheduler(model_dir, num_blocks=6, lapsd_policy=create("lp-sjf"))
    assert victims(lapsd) == ["r1"]  # the longest predicted
    assert lapsd.lapsd_preempted == []  # vLLM's own KV preemption, by the policy's rank


def test_the_policy_sees_drafted_and_accepted_tokens(model_dir: Path) -> None:
    policy = create("laps-sd")
    scheduler = make_scheduler(model_dir, spec_tokens=3, lapsd_policy=policy)
    for r in requests([12, 20], medians=[50, 60], max_tokens=50):
        scheduler.add_request(r)
    step(scheduler)  # prefill: one token each, no drafts
    scheduler.update_draft_token_ids(DraftTokenIds(["r0", "r1"], [[5, 6, 7], [5, 6, 7]]))
    scheduled, _ = step(scheduler, accept={"r0": 2, "r1": 0})
    assert {r: len(t) for r, t in scheduled.scheduled_spec_decode_tokens.items()} == {
        "r0": 3, "r1": 3}
    r0, r1 = policy._states["r0"], policy._states["r1"]
    assert (r0.rounds, r0.generated, r0.drafted, r0.accepted) == (2, 4, 3, 2)
    assert (r1.rounds, r1.generated, r1.drafted, r1.accepted) == (2, 2, 3, 0)
    assert r0.service_ns > 0


def test_finished_and_aborted_requests_leave_the_policy(model_dir: Path) -> None:
    policy = create("gittins")
    scheduler = make_scheduler(model_dir, max_num_seqs=2, lapsd_policy=policy)
    for r in requests([5, 6, 7, 8], medians=[3, 30, 3, 30], max_tokens=3):
        scheduler.add_request(r)
    step(scheduler)
    scheduler.finish_requests("r1", RequestStatus.FINISHED_ABORTED)
    run_to_completion(scheduler)
    assert policy.waiting == 0
    for rid in ("r0", "r2", "r3"):
        assert rid not in scheduler.requests


@pytest.mark.parametrize("policy", ["laps-sd", "gittins", "lp-srpt", "mlfq", "fcfs"])
def test_every_request_completes_under_async_scheduling(model_dir: Path, policy: str) -> None:
    """vLLM's default: step t+1 is scheduled before step t's output arrives."""
    scheduler = make_scheduler(model_dir, LapsdAsyncScheduler, max_num_seqs=3, num_blocks=40,
                               async_scheduling=True, lapsd_policy=create(policy))
    reqs = requests([40, 10, 30, 25, 12, 50], medians=[30, 5, 20, 8, 12, 3], max_tokens=12)
    emitted = {r.request_id: 0 for r in reqs}
    for r in reqs[:3]:
        scheduler.add_request(r)
    pending = []
    for i in range(400):
        if i == 2:
            for r in reqs[3:]:
                scheduler.add_request(r)
        if scheduler.has_requests():
            pending.append(scheduler.schedule())
        if len(pending) == 2 or (pending and not scheduler.has_requests()):
            scheduled = pending.pop(0)
            outputs = scheduler.update_from_output(scheduled, model_output(scheduled))
            for eco in outputs.values():
                for out in eco.outputs:
                    emitted[out.request_id] += len(out.new_token_ids)
        if not pending and not scheduler.has_requests() and i > 2:
            break
    assert emitted == {r.request_id: 12 for r in reqs}
    assert scheduler.lapsd.waiting == 0


def test_the_policy_comes_from_the_config(model_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_test_config(tmp_path / "lapsd-config.json", "lp-srpt", None)
    scheduler = make_scheduler(model_dir, additional_config={"lapsd_config": str(config)})
    assert scheduler.lapsd.name == "lp-srpt"
    monkeypatch.setenv("LAPSD_CONFIG", str(config))
    assert make_scheduler(model_dir, LapsdAsyncScheduler).lapsd.name == "lp-srpt"
    monkeypatch.delenv("LAPSD_CONFIG")
    with pytest.raises(LapsdError, match=r"--additional-config .*LAPSD_CONFIG"):
        make_scheduler(model_dir)
    # A request without a belief is ranked as if it used all its max_tokens.
    scheduler.add_request(requests([4], max_tokens=30)[0])
    assert scheduler.lapsd._states["r0"].belief.median == 30


# ---------------------------------------------------------------------- beliefs
CHARS = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;?!'-\n"))


@pytest.fixture(scope="module")
def tokenized_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The config-only model with a character-level tokenizer (one token per character)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path = tmp_path_factory.mktemp("tiny-opt-tok")
    (path / "config.json").write_text(json.dumps(TINY_OPT))
    vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2} | {c: 3 + i for i, c in enumerate(CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
        "pad_token": "<pad>", "eos_token": "</s>"}))
    return path


def _prompt_request(text: str, request_id: str = "r0", max_tokens: int = 64,
                    xargs: dict[str, Any] | None = None) -> Request:
    ids = [3 + CHARS.index(c) for c in text]
    return Request(request_id=request_id, prompt_token_ids=ids, pooling_params=None,
                   sampling_params=SamplingParams(max_tokens=max_tokens, extra_args=xargs),
                   arrival_time=time.time())


def test_the_server_predicts_from_the_prompt_and_ignores_client_claims(
        tokenized_model_dir: Path, tmp_path: Path, predictor_file: Path) -> None:
    from lapsd.integrations.priorities import MAX_PROMPT_CHARS, predict_beliefs
    from lapsd.predict.persist import load_predictor

    config = write_test_config(tmp_path / "lapsd-config.json", "lp-srpt", predictor_file)
    scheduler = make_scheduler(tokenized_model_dir, tokenizer=True, client_beliefs=False,
                               additional_config={"lapsd_config": str(config)})
    predictor = load_predictor(predictor_file)
    text = "Write a haiku about the sea."
    scheduler.add_request(_prompt_request(text, xargs={"lapsd_median": 1, "lapsd_sigma": 0}))
    expected = predict_beliefs(predictor, None, [text], [64.0])[0]
    assert scheduler.lapsd._states["r0"].belief == expected
    assert expected is not None and expected.median > 1
    assert scheduler.lapsd_beliefs.refused == {"off": 1}
    # A huge prompt costs what its first MAX_PROMPT_CHARS characters do.
    prefix = ("Answer yes or no: is the sea salty? " * 1000)[:MAX_PROMPT_CHARS]
    scheduler.add_request(_prompt_request(prefix + "Then write an essay. " * 3000, "r1"))
    assert scheduler.lapsd._states["r1"].belief == predict_beliefs(
        predictor, None, [prefix], [64.0])[0]
    # The predictor the config names must be the one it was tuned with.
    copy = tmp_path / "model.skops"
    copy.write_bytes(predictor_file.read_bytes())
    changed = write_test_config(tmp_path / "changed.json", "lp-srpt", copy)
    copy.write_bytes(predictor_file.read_bytes() + b"\0")
    with pytest.raises(LapsdError, match=r"is not the one .* was made with"):
        make_scheduler(tokenized_model_dir, tokenizer=True,
                       additional_config={"lapsd_config": str(changed)})
    # Without the tokenizer there is no prompt text to predict from.
    with pytest.raises(LapsdError, match="without --skip-tokenizer-init"):
        make_scheduler(tokenized_model_dir, additional_config={"lapsd_config": str(config)})


def test_a_server_without_the_predict_extra_says_which_to_install(
        tokenized_model_dir: Path, tmp_path: Path, predictor_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    config = write_test_config(tmp_path / "lapsd-config.json", "lp-srpt", predictor_file)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "skops" else find_spec(name, *a))
    with pytest.raises(LapsdError, match=r"needs the 'predict' extra .*lapsd\[predict\]"):
        make_scheduler(tokenized_model_dir, tokenizer=True,
                       additional_config={"lapsd_config": str(config)})


def test_client_beliefs_need_an_explicit_opt_in_and_the_secret(
        model_dir: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    scheduler = make_scheduler(model_dir, max_num_seqs=2, client_beliefs=False,
                               lapsd_policy=create("lp-sjf"))
    with caplog.at_level("WARNING", logger="lapsd.integrations.vllm"):
        for r in requests([40, 10, 30, 20], medians=[400, 300, 20, 10]):
            scheduler.add_request(r)
    assert [r.message.count("client belief not taken") for r in caplog.records
            if r.name == "lapsd.integrations.vllm"] == [1]
    assert step(scheduler)[1] == ["r0", "r1"]  # signed or not, the claims are not taken
    assert {s.belief.median for s in scheduler.lapsd._states.values()} == {16}
    assert scheduler.lapsd_beliefs.refused == {"off": 4}
    with pytest.raises(LapsdError, match="expected true or false"):
        make_scheduler(model_dir, additional_config={CLIENT_BELIEFS_KEY: "yes"},
                       lapsd_policy=create("lp-sjf"))
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(LapsdError, match=f"set {SECRET_ENV}"):
        make_scheduler(model_dir, lapsd_policy=create("lp-sjf"))
    monkeypatch.setenv(SECRET_ENV, "short")
    with pytest.raises(LapsdError, match="at least 32 random"):
        make_scheduler(model_dir, lapsd_policy=create("lp-sjf"))


def _signed_now(median: Any, sigma: Any, secret: str = SECRET, age_s: float = 0.0,
                **changes: Any) -> dict[str, Any]:
    """Xargs signed over any numbers (what a gateway holding ``secret`` could send)."""
    from lapsd.integrations.priorities import _signature

    issued = int(time.time() - age_s)
    xargs = {"lapsd_median": median, "lapsd_sigma": sigma, "lapsd_belief_id": "b1",
             "lapsd_issued_at": issued}
    xargs["lapsd_signature"] = _signature(secret.encode(), "b1", issued, float(median),
                                          float(sigma))
    return {**xargs, **changes}


@pytest.mark.parametrize(("xargs", "kind"), [
    ({"lapsd_median": float("nan"), "lapsd_sigma": 0.5}, "unsigned"),
    ({"lapsd_median": "abc", "lapsd_sigma": "abc"}, "unsigned"),
    ({"lapsd_median": 1}, "unsigned"),
    (_signed_now(400, 0.5, lapsd_median=1), "bad signature"),
    (_signed_now(1, 0.5, secret="a-forger's-guess-of-the-secret-0123"), "bad signature"),
    (_signed_now(1, 0.5, lapsd_signature="0" * 64), "bad signature"),
    (_signed_now(float("nan"), 0.5), "invalid"),
    (_signed_now(float("inf"), 0.5), "invalid"),
    (_signed_now(-3, 0.5), "invalid"),
    (_signed_now(1e300, 0.5), "invalid"),
    (_signed_now(5, 1e300), "invalid"),
    (_signed_now(5, 0.5, lapsd_median="abc"), "invalid"),
    (_signed_now(5, 0.5, lapsd_median=None), "invalid"),
    (_signed_now(5, 0.5, age_s=3600), "expired"),
])
def test_a_bad_client_belief_falls_back_to_the_servers_own(model_dir: Path, xargs: dict,
                                                           kind: str) -> None:
    scheduler = make_scheduler(model_dir, max_num_seqs=2, lapsd_policy=create("lp-srpt"))
    bad, good = requests([8, 8], max_tokens=12, xargs=[xargs, sign_belief(SECRET, 5, 0.5)])
    scheduler.add_request(bad)
    scheduler.add_request(good)
    assert scheduler.lapsd._states["r0"].belief.median == 12  # no predictor: max_tokens
    assert scheduler.lapsd._states["r1"].belief.median == 5  # a valid one is taken
    assert scheduler.lapsd_beliefs.refused == {kind: 1}
    run_to_completion(scheduler)


def test_a_signed_belief_is_taken_once(model_dir: Path) -> None:
    scheduler = make_scheduler(model_dir, lapsd_policy=create("lp-srpt"))
    signed = sign_belief(SECRET, 5, 0.5)
    for r in requests([8, 8], max_tokens=12, xargs=[signed, dict(signed)]):
        scheduler.add_request(r)
    assert [scheduler.lapsd._states[r].belief.median for r in ("r0", "r1")] == [5, 12]
    assert scheduler.lapsd_beliefs.refused == {"replayed": 1}
