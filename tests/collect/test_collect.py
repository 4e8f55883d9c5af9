"""The collector: greedy equivalence, drafts, sampling, trace writing, resume, shards, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")

from lapsd.collect.engine import NgramDrafter, SpeculativeEngine  # noqa: E402
from lapsd.collect.models import ModelError, layers_draft, parse_draft  # noqa: E402
from lapsd.collect.prompts import PromptError, load_prompts, parse_shard, select  # noqa: E402
from lapsd.collect.run import CollectConfig, chunk_dirs, collect, merge  # noqa: E402
from lapsd.errors import LapsdError  # noqa: E402
from lapsd.replay.trace import TraceError, read_trace  # noqa: E402
from tests.collect.conftest import interrupt_request, tiny_llama  # noqa: E402


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module")
def target():
    model = tiny_llama(0)
    model.generation_config.eos_token_id = None  # run to the token budget
    return model


@pytest.mark.parametrize("draft", ["layers:1", "layers:3", "ngram:3", "model"])
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_equals_target_greedy(target, draft: str, k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    # a repetitive prompt so prompt lookup finds matches
    prompt = torch.randint(3, 64, (6,), generator=gen).tolist() * 3
    if draft == "model":
        eng = SpeculativeEngine(target, draft=tiny_llama(7, layers=2), k=k)
    elif draft.startswith("layers"):
        eng = SpeculativeEngine(target, draft=layers_draft(target, int(draft[7:])), k=k)
    else:
        eng = SpeculativeEngine(target, ngram=3, k=k)
    g = eng.generate(prompt, 50)
    assert g.tokens == _greedy(target, prompt, 50)
    assert sum(r.emitted for r in g.rounds) == 50 and g.finish_reason == "length"
    assert all(0 <= r.accepted <= r.drafted <= k for r in g.rounds)
    assert all(r.emitted <= r.accepted + 1 for r in g.rounds)
    assert g.rounds[0].context_tokens == len(prompt)
    assert all(r.round_s is not None and r.round_s >= r.verify_s for r in g.rounds)
    if draft == "layers:3":
        assert sum(r.accepted for r in g.rounds) > 0


@pytest.mark.parametrize("draft", ["layers:2", "ngram:3"])
def test_static_path_matches_dynamic_cache_loop(target, draft: str) -> None:
    """The static-cache path (layer reuse for ``layers:N``) makes the same rounds and tokens."""
    def engine(static: bool) -> SpeculativeEngine:
        if draft == "ngram:3":
            return SpeculativeEngine(target, ngram=3, k=3, static=static)
        return SpeculativeEngine(target, draft=layers_draft(target, 2), k=3, static=static)

    fast, slow = engine(True), engine(False)
    assert fast.static_split is not None and slow.static_split is None
    gen = torch.Generator().manual_seed(5)
    # a short request, then one longer than the first cache allocation (it must grow)
    for prompt, n in (([7, 8, 9, 7, 8], 20), (torch.randint(3, 64, (9,), generator=gen).tolist()
                                                * 40, 200)):
        a, b = fast.generate(prompt, n), slow.generate(prompt, n)
        assert a.tokens == b.tokens == _greedy(target, prompt, n)
        assert [(r.drafted, r.accepted, r.emitted, r.context_tokens) for r in a.rounds] == \
            [(r.drafted, r.accepted, r.emitted, r.context_tokens) for r in b.rounds]
    assert fast.runner is not None and fast.runner.capacity >= 9 * 40 + 200


def test_static_path_only_where_it_applies(target) -> None:
    assert SpeculativeEngine(target, draft=layers_draft(target, 3)).static_split == 3
    assert SpeculativeEngine(target, ngram=2).static_split == 0
    assert SpeculativeEngine(target, draft=tiny_llama(7, layers=2)).static_split is None
    assert SpeculativeEngine(target, ngram=2, temperature=0.5).static_split is None


def test_eos_stops_and_no_recording(target) -> None:
    prompt = [5, 6, 7, 8]
    ref = _greedy(target, prompt, 30)
    stop = ref[9]
    eng = SpeculativeEngine(target, draft=layers_draft(target, 2), k=3, eos_ids={stop})
    g = eng.generate(prompt, 30, record=False)
    assert g.tokens == ref[: ref.index(stop) + 1] and g.finish_reason == "stop"
    assert g.prefill_s is None and all(r.round_s is None for r in g.rounds)


def test_layers_draft_shares_weights(target) -> None:
    draft = layers_draft(target, 2)
    assert draft.model.layers[1] is target.model.layers[1]
    assert draft.lm_head.weight.data_ptr() == target.lm_head.weight.data_ptr()
    assert len(draft.model.layers) == 2
    with pytest.raises(ModelError, match="N must be"):
        layers_draft(target, 4)


def test_ngram_lookup() -> None:
    d = NgramDrafter(3)
    assert d.lookup([1, 2, 3, 9, 9, 1, 2, 3], 2) == [9, 9]
    assert d.lookup([5, 1, 2, 7, 1, 2], 3) == [7, 1, 2]
    assert d.lookup([1, 2, 3, 4], 4) == []


def test_rejection_sampling_keeps_target_distribution(target) -> None:
    """Speculative sampling's first token must be distributed as the target's own."""
    eng = SpeculativeEngine(target, ngram=1, k=2, temperature=1.0)
    gen = torch.Generator().manual_seed(0)
    p_logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]] * 3)
    q = torch.softmax(torch.tensor([[0.0, 2.0, 1.0, 0.0]] * 2), -1)
    p0 = torch.softmax(p_logits[0], -1)
    counts = torch.zeros(4)
    trials = 4000
    for _ in range(trials):
        drafts = torch.multinomial(q[0], 1, generator=gen).repeat(2)
        _, new = eng._accept(p_logits, drafts, q, gen)
        counts[new[0]] += 1
    assert torch.allclose(counts / trials, p0, atol=0.03)
    counts.zero_()
    for _ in range(trials):  # one-hot q (prompt lookup)
        _, new = eng._accept(p_logits, torch.tensor([1, 1]), None, gen)
        counts[new[0]] += 1
    assert torch.allclose(counts / trials, p0, atol=0.03)


def test_sampling_run_is_seeded(target) -> None:
    eng = SpeculativeEngine(target, draft=layers_draft(target, 2), k=3, temperature=0.8)
    a, b = eng.generate([4, 5, 6], 20, seed=3), eng.generate([4, 5, 6], 20, seed=3)
    assert a.tokens == b.tokens and len(a.tokens) == 20


# ------------------------------------------------------------------------ runs and traces
def _cfg(tiny_dir: Path, prompts: Path, out: Path, **kw) -> CollectConfig:
    base = dict(target=tiny_dir, draft="layers:2", prompts=prompts, out=out, k=3,
                max_new_tokens=12, device="cpu", dtype="float32", chunk_size=2)
    base.update(kw)
    return CollectConfig(**base)


def test_sampled_requests_do_not_depend_on_sharding(tiny_dir, prompts_file, tmp_path) -> None:
    """A request's sampling seed comes from its id: shards and resumes draw the same tokens."""
    def responses(out: Path, **kw) -> dict[str, str]:
        t = read_trace(collect(_cfg(tiny_dir, prompts_file, out, temperature=1.0, seed=7, **kw),
                               log=lambda *_: None))
        return dict(zip(t.requests["request_id"], t.requests["response"], strict=True))

    whole = responses(tmp_path / "whole", limit=4)
    second = responses(tmp_path / "shard1", shard=(1, 2), limit=2)
    assert second and all(whole[rid] == second[rid] for rid in second)
    assert len(set(whole.values())) == len(whole)  # sampled: every request draws its own


def test_collect_writes_valid_trace(tiny_dir, prompts_file, tmp_path) -> None:
    path = collect(_cfg(tiny_dir, prompts_file, tmp_path / "run"), log=lambda *_: None)
    t = read_trace(path)
    assert t.requests["request_id"].to_list() == [str(100 + i) for i in range(6)]
    assert len(chunk_dirs(tmp_path / "run")) == 3
    c = t.manifest["collector"]
    assert c["k"] == 3 and c["draft"] == "layers:2" and c["dtype"] == "float32"
    assert c["versions"]["torch"] and c["timer"] == "perf_counter"
    assert all(c["target_sha256"].values())
    assert t.manifest["timing"] == "measured_per_round"
    # The generated text, and how much of it each round added.
    chars = t.rounds.group_by("request_id", maintain_order=True).agg(pl.col("response_chars"))
    for text, offsets in zip(t.requests["response"], chars["response_chars"].to_list(),
                             strict=True):
        assert offsets[-1] == len(text) and offsets == sorted(offsets)
    assert t.rounds["round_s"].min() > 0 and t.requests["prefill_s"].min() > 0
    assert set(t.requests["category"].to_list()) == {"qa", "writing"}


@pytest.mark.parametrize("draft", ["layers:2", "ngram:2"])
def test_batched_collection_equals_one_at_a_time(tiny_dir, prompts_file, tmp_path,
                                                 draft: str) -> None:
    """``--batch-size``: the same tokens and rounds as a batch-1 collection (float32); each
    round timed by the run's batch-1 profile, the measured step kept beside it."""
    opts = dict(draft=draft, max_new_tokens=20, states="auto", states_every=4)
    alone = read_trace(collect(_cfg(tiny_dir, prompts_file, tmp_path / "one", **opts),
                               log=lambda *_: None))
    path = collect(_cfg(tiny_dir, prompts_file, tmp_path / "b4", batch_size=4, **opts),
                   log=lambda *_: None)
    batched = read_trace(path)
    cols = ["request_id", "round", "drafted", "accepted", "emitted", "context_tokens"]
    assert batched.rounds.sort("request_id", "round")[cols].equals(
        alone.rounds.sort("request_id", "round")[cols])
    by_id = pl.col("request_id")
    assert batched.requests.sort(by_id)["response"].equals(alone.requests.sort(by_id)["response"])
    assert batched.states is not None and alone.states is not None
    key = ["request_id", "kind", "layer", "generated_tokens"]
    a, b = batched.states.sort(key), alone.states.sort(key)
    assert a[key].equals(b[key])
    assert np.allclose(np.stack(a["state"].to_numpy()), np.stack(b["state"].to_numpy()),
                       atol=2e-3)
    m = batched.manifest
    assert m["timing"] == "profiled_per_round" and m["collector"]["batch_size"] == 4
    profile = m["round_profile"]
    assert {r["drafted"] for r in profile} == set(range(4))
    assert all(r["round_s"] > 0 for r in profile)
    # every round: the profile's time at its draft count and context; its step measured
    from lapsd.replay.costs import profiled_round

    r = batched.rounds
    assert r["batch"].min() >= 1 and r["batch"].max() == 4 and r["step_s"].min() > 0
    for row in r.sample(10, seed=0).iter_rows(named=True):
        assert row["round_s"] == pytest.approx(
            profiled_round(profile, row["drafted"], row["context_tokens"])[2])
    assert alone.manifest["timing"] == "measured_per_round" and "batch" not in alone.rounds.columns
    with pytest.raises(LapsdError, match="greedy"):
        collect(_cfg(tiny_dir, prompts_file, tmp_path / "t", batch_size=2, temperature=0.5),
                log=lambda *_: None)


def test_profiled_round_interpolates_in_context() -> None:
    from lapsd.replay.costs import profiled_round

    rows = [{"drafted": d, "context": c, "draft_s": 0.0, "verify_s": t, "round_s": t + d}
            for d in (0, 1) for c, t in ((100, 1.0), (300, 3.0))]
    assert profiled_round(rows, 1, 200) == pytest.approx((0.0, 2.0, 3.0))
    assert profiled_round(rows, 0, 50) == (0.0, 1.0, 1.0)  # held flat outside
    assert profiled_round(rows, 0, 900) == (0.0, 3.0, 3.0)
    with pytest.raises(LapsdError, match="drafted 2"):
        profiled_round(rows, 2, 100)


def test_resume_after_kill_neither_duplicates_nor_drops(tiny_dir, prompts_file, tmp_path,
                                                        monkeypatch) -> None:
    out = tmp_path / "run"
    undo = interrupt_request(monkeypatch, 4)  # Ctrl-C during the 4th request
    with pytest.raises(KeyboardInterrupt):
        collect(_cfg(tiny_dir, prompts_file, out, chunk_size=5), log=lambda *_: None)
    # the 3 finished requests were flushed although the chunk was not full
    assert [read_trace(c).n_requests for c in chunk_dirs(out)] == [3]
    undo()
    with pytest.raises(LapsdError, match="--resume"):
        collect(_cfg(tiny_dir, prompts_file, out), log=lambda *_: None)
    path = collect(_cfg(tiny_dir, prompts_file, out, resume=True), log=lambda *_: None)
    ids = read_trace(path).requests["request_id"].to_list()
    assert sorted(ids) == [str(100 + i) for i in range(6)]
    again = collect(_cfg(tiny_dir, prompts_file, out, resume=True), log=lambda *_: None)
    assert read_trace(again).n_requests == 6


def test_shards_merge_to_the_whole(tiny_dir, prompts_file, tmp_path) -> None:
    for i in range(2):
        collect(_cfg(tiny_dir, prompts_file, tmp_path / f"s{i}", shard=(i, 2)),
                log=lambda *_: None)
    merged = read_trace(merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "all"))
    assert sorted(merged.requests["request_id"].to_list()) == [str(100 + i) for i in range(6)]
    with pytest.raises(TraceError, match="occurs in"):  # a shard and a trace that holds it
        merge([tmp_path / "s0", tmp_path / "all"], tmp_path / "dup")


def test_oom_skips_the_request(tiny_dir, prompts_file, tmp_path, monkeypatch) -> None:
    real = SpeculativeEngine.generate

    def oom(self, prompt, *a, **kw):
        if len(prompt) > 0 and oom.n == 1:
            oom.n += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        oom.n += 1
        return real(self, prompt, *a, **kw)

    oom.n = 0
    monkeypatch.setattr(SpeculativeEngine, "generate", oom)
    out = tmp_path / "run"
    t = read_trace(collect(_cfg(tiny_dir, prompts_file, out, limit=3), log=lambda *_: None))
    assert t.requests["request_id"].to_list() == ["100", "102"]
    err = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert err[0]["request_id"] == "101" and "OutOfMemoryError" in err[0]["error"]


def test_cli_collect_and_merge(tiny_dir, prompts_file, tmp_path) -> None:
    from lapsd.cli import main

    out = tmp_path / "cli"
    assert main(["collect", "--target", str(tiny_dir), "--draft", "ngram:2", "--prompts",
                 str(prompts_file), "--out", str(out), "--k", "2", "--max-new-tokens", "5",
                 "--device", "cpu", "--limit", "2"]) == 0
    trace = read_trace(out)  # the trace is at OUT; its chunks are staged in OUT/.chunks
    assert trace.n_requests == 2 and len(chunk_dirs(out)) == 1
    assert trace.manifest["collector"]["dtype"] == "float32"  # --dtype auto on a CPU
    assert main(["inspect", str(out)]) == 0
    assert main(["merge", str(out), "--out", str(tmp_path / "m")]) == 0
    assert read_trace(tmp_path / "m").n_requests == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["collect", "--target", str(tiny_dir), "--draft", "ngram:2", "--prompts",
                 str(prompts_file), "--out", str(tmp_path / "other"), "--device", "cpu"]) == 2
    assert main(["collect", "--target", str(tmp_path / "nope"), "--draft", "ngram:2",
                 "--prompts", str(prompts_file), "--out", str(out)]) == 2


# ------------------------------------------------------------------------------ bad inputs
def test_bad_prompt_file_names_the_line(tmp_path) -> None:
    p = tmp_path / "q.jsonl"
    p.write_text('{"prompt": "hi"}\n\n{"prompt": "x"\n')
    with pytest.raises(LapsdError, match=r"q\.jsonl:3: not JSON"):
        load_prompts(p)
    p.write_text('{"prompt": "hi"}\n{"other": 1}\n')
    with pytest.raises(PromptError, match=r":2: no prompt text"):
        load_prompts(p)
    p.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(PromptError, match="already used on line 1"):
        load_prompts(p)
    p.write_text('{"prompt": "a", "dataset": ""}\n')
    with pytest.raises(PromptError, match=r":1: 'dataset' must be a non-empty string"):
        load_prompts(p)


def test_prompt_sets_mixed_in_one_file(tmp_path) -> None:
    """A line's own ``dataset`` names its set; lines without one take the folder's name."""
    p = tmp_path / "mixed" / "q.jsonl"
    p.parent.mkdir()
    p.write_text('{"id": "a", "prompt": "x", "dataset": "alpaca_eval"}\n'
                 '{"id": "b", "prompt": "y"}\n')
    assert [q.dataset for q in load_prompts(p)] == ["alpaca_eval", "mixed"]


def test_bad_specs(tmp_path, tiny_dir, prompts_file) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        parse_draft(str(tmp_path / "missing"))
    with pytest.raises(ModelError, match="N must be >= 1"):
        parse_draft("layers:0")
    (tmp_path / "m.bin").write_text("x")
    with pytest.raises(ModelError, match=r"not a \.gguf"):
        parse_draft(str(tmp_path / "m.bin"))
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("2")
    with pytest.raises(ValueError, match="0 <= i < n"):
        parse_shard("2/2")
    assert [p.request_id for p in select(load_prompts(prompts_file), shard=(1, 2), limit=2)] \
        == ["101", "103"]


def test_draft_vocab_must_match(tiny_dir, prompts_file, tmp_path) -> None:
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    tiny_llama(1).save_pretrained(other)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    tok.add_tokens(["zz"])
    tok.save_pretrained(other)
    with pytest.raises(ModelError, match="vocabulary differs"):
        collect(_cfg(tiny_dir, prompts_file, tmp_path / "o", draft=str(other)))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("draft", ["layers:2", "ngram:2"])
def test_profile_cost_table(tiny_dir, tmp_path, draft: str) -> None:
    """The engine's own path, d = 0..k drafts per context, swaps, resident switches, fits."""
    from lapsd.collect.profile import profile
    from lapsd.errors import LapsdError
    from lapsd.replay.costs import BatchCost, read_cost_table

    table = profile(tiny_dir, draft, k=2, contexts=[8, 16], repeats=1, device="cpu",
                    dtype="float32", out=tmp_path / "cost.json", batches=(3, 2))
    assert table == read_cost_table(tmp_path / "cost.json")
    # batched steps of the live engine, k drafts each: the table batched replays read
    assert [(r["context"], r["batch"], r["drafted"]) for r in table["batch"]] == \
        [(c, b, 2) for c in (8, 16) for b in (1, 2, 3)]
    assert all(0 < r["verify_s"] <= r["round_s"] for r in table["batch"])
    cost = BatchCost.from_profile(tmp_path / "cost.json")
    assert cost.batch_sizes == (1, 2, 3) and cost.slowdown[0] == 1.0
    with pytest.raises(LapsdError, match="--batches"):
        profile(tiny_dir, draft, k=2, contexts=[8], repeats=1, device="cpu", dtype="float32",
                out=tmp_path / "bad.json", batches=(0,))
    assert table["engine_path"] == "static" and table["graphs"] is False  # plain steps on CPU
    assert table["capacity"] == 512 and table["dtype"] == "float32"
    assert [(r["context"], r["drafted"]) for r in table["rounds"]] == \
        [(c, d) for c in (8, 16) for d in range(3)]
    for r in table["rounds"]:
        assert r["batch"] == 1 and r["capacity"] == 512
        assert 0 < r["verify_s"] <= r["round_s"] and r["draft_s"] >= 0
    assert [s["context"] for s in table["swap"]] == [8, 16]
    # one request's cache: layers x (keys, values) x kv heads x positions x head dim x 4 bytes
    assert [s["bytes"] for s in table["swap"]] == [4 * 2 * 2 * c * 8 * 4 for c in (8, 16)]
    assert all(s["out_s"] > 0 and s["in_s"] > 0 for s in table["swap"])
    assert all(r["park_s"] > 0 and r["load_s"] > 0 for r in table["resident"])
    for fit in ("switch_fit", "resident_fit"):
        assert table[fit]["c0"] >= 0 and table[fit]["c1"] >= 0


# ------------------------------------------------------------------------- real SmolLM2
@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    from lapsd.collect.models import load_model

    return load_model(smollm2_gguf, dtype="float32", device="cpu")


def test_gguf_conversion_is_cached_and_identical(smollm2, smollm2_gguf, gguf_cache_dir) -> None:
    from lapsd.collect.models import gguf_cache, load_model, load_tokenizer

    folder = gguf_cache(smollm2_gguf, "float32")
    assert folder is not None and folder.parent.parent == gguf_cache_dir
    assert (folder / "model.safetensors").is_file()  # written by the fixture's first load
    again = load_model(smollm2_gguf, dtype="float32", device="cpu")  # from the cache
    ids = torch.tensor([smollm2.tokenizer("The cache is exact.").input_ids])
    with torch.no_grad():
        assert torch.equal(smollm2.model(ids).logits, again.model(ids).logits)
    assert again.info == smollm2.info and again.name == smollm2.name
    messages = [{"role": "user", "content": "Grüße, 你好"}]
    assert (load_tokenizer(smollm2_gguf).apply_chat_template(messages, add_generation_prompt=True)
            == smollm2.tokenizer.apply_chat_template(messages, add_generation_prompt=True))


def test_gguf_cache_off(smollm2_gguf, monkeypatch) -> None:
    from lapsd.collect.models import gguf_cache

    monkeypatch.setenv("LAPSD_CACHE", "off")
    assert gguf_cache(smollm2_gguf, "float32") is None


def test_smollm2_chat_template_and_greedy(smollm2) -> None:
    from lapsd.collect.engine import eos_ids_of
    from lapsd.collect.prompts import encode

    tok, model = smollm2.tokenizer, smollm2.model
    ids = encode(tok, "What is the capital of France?")
    text = tok.decode(ids)
    assert "<|im_start|>user" in text and text.rstrip().endswith("assistant")
    ref = _greedy(model, ids, 16)
    eos = eos_ids_of(model, tok)
    for eng in (SpeculativeEngine(model, draft=layers_draft(model, 20), k=4, eos_ids=eos),
                SpeculativeEngine(model, ngram=4, k=4, eos_ids=eos)):
        assert eng.generate(ids, 16).tokens == ref
