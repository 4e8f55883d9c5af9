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
from lapsd.integrations.vllm import (
    SUPPORTED_VLLM,
    LapsdAsyncScheduler,
    LapsdScheduler,
    check_vllm_version,
)
from lapsd.replay.policies import create

from .conftest import write_test_config

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


def make_scheduler(model_dir: Path, cls: type = LapsdScheduler, *, max_num_seqs: int = 16,
                   num_blocks: int = 10_000, block_size: int = 16, spec_tokens: int = 0,
                   async_scheduling: bool = False, additional_config: dict | None = None,
                   **kwargs: Any) -> Any:
    scheduler_config = SchedulerConfig(
        max_num_seqs=max_num_seqs, max_num_batched_tokens=8192, max_model_len=8192,
        enable_chunked_prefill=True, async_scheduling=async_scheduling, policy="fcfs",
        is_encoder_decoder=False)
    model_config = ModelConfig(model=str(model_dir), dtype="float16", seed=42,
                               skip_tokenizer_init=True)
    cache_config = CacheConfig(block_size=block_size, enable_prefix_caching=False)
    speculative = (SpeculativeConfig(method="ngram", num_speculative_tokens=spec_tokens)
                   if spec_tokens else None)
    vllm_config = VllmConfig(scheduler_config=scheduler_config, model_config=model_config,
                             cache_config=cache_config, speculative_config=speculative,
                             additional_config=additional_config or {})
    kv_cache_config = KVCacheConfig(
        num_blocks=num_blocks, kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer"], FullAttentionSpec(
            block_size=block_size, num_kv_heads=1, head_size=1, dtype=torch.float32))])
    cache_config.num_gpu_blocks = num_blocks
    return cls(vllm_config=vllm_config, kv_cache_config=kv_cache_config,
               block_size=block_size, log_stats=True,
               structured_output_manager=StructuredOutputManager(vllm_config), **kwargs)


def requests(prompt_lens: list[int], medians: list[float] | None = None, max_tokens: int = 16,
             start: int = 0) -> list[Request]:
    """Requests ``r<start>``, ... with the length belief a lapsd gateway sends (``medians``)."""
    now = time.time()
    out = []
    for i, n in enumerate(prompt_lens):
        extra = None if medians is None else {"lapsd_median": medians[i], "lapsd_sigma": 0.5}
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
