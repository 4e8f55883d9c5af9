"""Hidden states recorded by the engine and the collector (issue 22, section 2).

The recorded states must be the model's own: Hugging Face's ``forward(output_hidden_states=
True)`` over the request's final sequence, at the prompt's last token, averaged over the prompt,
and at the G-th, 2G-th, ... generated token; on every path (static with ``layers:N`` or prompt
lookup, DynamicCache, a draft model, sampling, batches). Recording changes no token and no
round; collections, resumes and merges carry the states table; bad options are one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")

from one_line import one_line_error  # noqa: E402

from lapsd.cli import main  # noqa: E402
from lapsd.collect.engine import Generation, SpeculativeEngine  # noqa: E402
from lapsd.collect.models import layers_draft  # noqa: E402
from lapsd.collect.prompts import encode, load_prompts  # noqa: E402
from lapsd.collect.run import CollectConfig, chunk_dirs, collect, merge  # noqa: E402
from lapsd.collect.states import StatesSpec, quarter_points  # noqa: E402
from lapsd.errors import LapsdError  # noqa: E402
from lapsd.replay.trace import STATES_FILE, read_states, read_trace  # noqa: E402
from tests.collect.conftest import interrupt_request, tiny_llama  # noqa: E402

HIDDEN = 32  # tiny_llama's
#: Chosen layers of the 4-layer model: the decode layer below, at and above a layers:2 split
#: (the last one is after the final norm, as Hugging Face has it).
LAYER_SETS = [(1,), (1, 2, 4), (1, 3, 4)]


@pytest.fixture(scope="module")
def target():
    model = tiny_llama(0)
    model.generation_config.eos_token_id = None  # run to the token budget
    return model


def reference(model, prompt: list[int], g: Generation) -> tuple[torch.Tensor, ...]:
    """Hugging Face's hidden states over the final sequence ``prompt + g.tokens``."""
    with torch.no_grad():
        return model(torch.tensor([prompt + g.tokens]), output_hidden_states=True).hidden_states


def assert_states_are_the_models(model, prompt: list[int], g: Generation, spec: StatesSpec,
                                 atol: float = 1e-5) -> None:
    hidden, p = reference(model, prompt, g), len(prompt)
    st = g.states
    assert st is not None and st.prompt.shape == (len(spec.layers), 2, HIDDEN)
    for j, layer in enumerate(spec.layers):
        torch.testing.assert_close(st.prompt[j, 0], hidden[layer][0, p - 1], atol=atol, rtol=0)
        torch.testing.assert_close(st.prompt[j, 1], hidden[layer][0, :p].mean(0), atol=atol,
                                   rtol=0)
    # every multiple of G but the last token's (fed only if it was an accepted draft)
    produced, every = len(g.tokens), spec.every
    assert st.decode_tokens == sorted(set(st.decode_tokens))
    assert set(range(every, produced, every)) <= set(st.decode_tokens)
    assert set(st.decode_tokens) <= set(range(every, produced + 1, every))
    assert st.decode.shape == (len(st.decode_tokens), HIDDEN)
    for v, t in zip(st.decode, st.decode_tokens, strict=True):
        torch.testing.assert_close(v, hidden[spec.decode_layer][0, p + t - 1], atol=atol, rtol=0)


def rounds_of(g: Generation) -> list[tuple[int, int, int, int]]:
    return [(r.drafted, r.accepted, r.emitted, r.context_tokens) for r in g.rounds]


def engine(target, draft: str, states: StatesSpec | None) -> SpeculativeEngine:
    kw = {"k": 3, "states": states}
    if draft == "ngram:2":
        return SpeculativeEngine(target, ngram=2, **kw)
    if draft == "model":
        return SpeculativeEngine(target, draft=tiny_llama(7, layers=2), **kw)
    if draft == "sampled":
        return SpeculativeEngine(target, draft=layers_draft(target, 2), temperature=0.8, **kw)
    return SpeculativeEngine(target, draft=layers_draft(target, 2), static=draft != "dynamic",
                             **kw)


PATHS = ["layers:2", "ngram:2", "dynamic", "model", "sampled"]


@pytest.mark.parametrize("layers", LAYER_SETS)
@pytest.mark.parametrize("draft", PATHS)
def test_states_are_the_models_own(target, draft: str, layers: tuple[int, ...]) -> None:
    spec = StatesSpec(layers, 2, HIDDEN)
    gen = torch.Generator().manual_seed(len(layers))
    prompt = torch.randint(3, 64, (7,), generator=gen).tolist() * 3  # lookup finds matches
    with_states, plain = engine(target, draft, spec), engine(target, draft, None)
    assert (with_states.static_split is None) == (draft in ("dynamic", "model", "sampled"))
    g = with_states.generate(prompt, 40, seed=5)
    ref = plain.generate(prompt, 40, seed=5)
    assert g.tokens == ref.tokens and rounds_of(g) == rounds_of(ref) and ref.states is None
    assert_states_are_the_models(target, prompt, g, spec)
    # the second request reuses the runner's buffers; a one-token prompt has no cached prefix
    for again in ([9, 8, 7, 6, 5, 4, 3] * 10, [5]):
        assert_states_are_the_models(target, again, with_states.generate(again, 17, seed=1),
                                     spec)


def test_batched_states_equal_batch_one(target) -> None:
    """Each row of a batched step records what its request records alone."""
    spec = StatesSpec((1, 3, 4), 3, HIDDEN)
    eng = engine(target, "layers:2", spec)
    prompts = [[5, 6, 7, 5, 6, 7, 8], list(range(3, 40)), [9, 9, 10, 11] * 5]
    budgets = [25, 11, 30]
    alone = [eng.generate(p, n) for p, n in zip(prompts, budgets, strict=True)]
    eng.reserve(max(len(p) for p in prompts) + max(budgets) + 4, batch=3)
    sessions = [eng.start(p, n) for p, n in zip(prompts, budgets, strict=True)]
    while running := [s for s in sessions if not s.done]:
        eng.step_batch(running)
    for s, a, p in zip(sessions, alone, prompts, strict=True):
        g = s.result()
        assert g.tokens == a.tokens and rounds_of(g) == rounds_of(a)
        assert g.states is not None and a.states is not None
        assert g.states.decode_tokens == a.states.decode_tokens
        torch.testing.assert_close(g.states.prompt, a.states.prompt, atol=1e-5, rtol=0)
        torch.testing.assert_close(g.states.decode, a.states.decode, atol=1e-5, rtol=0)
        assert_states_are_the_models(target, p, g, spec)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device: the captured graphs exist only there")
def test_graphed_states_equal_the_eager_loop() -> None:
    """On a GPU the static path replays CUDA graphs: same states as the DynamicCache loop."""
    model = tiny_llama(0).to("cuda")
    model.generation_config.eos_token_id = None
    spec = StatesSpec((1, 3, 4), 2, HIDDEN)
    prompt = [5, 6, 7, 5, 6, 7, 8] * 4
    graphed = SpeculativeEngine(model, draft=layers_draft(model, 2), k=3, states=spec,
                                device="cuda")
    eager = SpeculativeEngine(model, draft=layers_draft(model, 2), k=3, states=spec,
                              device="cuda", static=False)
    a, b = graphed.generate(prompt, 40), eager.generate(prompt, 40)
    assert graphed.runner is not None and graphed.runner.graphed
    assert a.tokens == b.tokens and a.states is not None and b.states is not None
    assert a.states.decode_tokens == b.states.decode_tokens
    torch.testing.assert_close(a.states.prompt, b.states.prompt, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.states.decode, b.states.decode, atol=1e-4, rtol=0)


def test_quarter_points() -> None:
    assert quarter_points(30) == (8, 15, 23) and quarter_points(4) == (1, 2, 3)
    assert quarter_points(2) == (1, 2) and quarter_points(1) == (1,)
    assert StatesSpec((8, 15, 23), 16, 1).decode_layer == 15
    assert StatesSpec((8, 15), 16, 1).decode_layer == 8


# ------------------------------------------------------------------------------ collections
def _cfg(tiny_dir: Path, prompts: Path, out: Path, **kw) -> CollectConfig:
    base = dict(target=tiny_dir, draft="layers:2", prompts=prompts, out=out, k=3,
                max_new_tokens=14, device="cpu", dtype="float32", chunk_size=2,
                states="1,3,4", states_every=3)
    base.update(kw)
    return CollectConfig(**base)


def _quiet(*_: object) -> None:
    pass


def _sorted(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort("request_id", "kind", "layer", "generated_tokens")


def test_collect_records_the_models_states(tiny_dir, prompts_file, tmp_path) -> None:
    from transformers import AutoTokenizer

    from lapsd.collect.models import load_model

    path = collect(_cfg(tiny_dir, prompts_file, tmp_path / "s"), log=_quiet)
    plain = read_trace(collect(_cfg(tiny_dir, prompts_file, tmp_path / "p", states=None,
                                    states_every=None), log=_quiet))
    trace, states = read_trace(path), read_states(path)
    assert states is not None and (path / STATES_FILE).is_file()
    assert read_states(tmp_path / "p") is None
    # recording changes no token and no round
    assert trace.requests["response"].equals(plain.requests["response"])
    cols = ["request_id", "round", "drafted", "accepted", "emitted", "context_tokens",
            "response_chars"]
    assert trace.rounds.select(cols).equals(plain.rounds.select(cols))
    block = trace.manifest["states"]
    assert {k: block[k] for k in ("layers", "decode_layer", "every", "hidden_size", "dtype",
                                  "saturated")} == {
        "layers": [1, 3, 4], "decode_layer": 3, "every": 3, "hidden_size": HIDDEN,
        "dtype": "float16", "saturated": 0}
    assert states.schema["state"] == pl.Array(pl.Float16, HIDDEN)
    # the stored values: the model's own over the request's final sequence, within float16
    model = load_model(tiny_dir, dtype="float32", device="cpu").model
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    eng = SpeculativeEngine(model, draft=layers_draft(model, 2), k=3, eos_ids={2})
    for prompt in load_prompts(prompts_file):
        ids = encode(tok, prompt.text)
        g = eng.generate(ids, 14)
        hidden, p = reference(model, ids, g), len(ids)
        mine = states.filter(pl.col("request_id") == prompt.request_id)
        assert (mine["kind"] != "decode").sum() == 6
        for kind, layer, t, vec in mine.select("kind", "layer", "generated_tokens",
                                               "state").iter_rows():
            h = hidden[layer][0]
            want = {"prompt_last": h[p - 1], "prompt_mean": h[:p].mean(0)}.get(kind, h[p + t - 1])
            np.testing.assert_allclose(np.asarray(vec, np.float32), want.numpy(), rtol=2e-3,
                                       atol=2e-3)
        decode = mine.filter(pl.col("kind") == "decode")["generated_tokens"].to_list()
        assert set(range(3, len(g.tokens), 3)) <= set(decode)


def test_resume_and_merge_keep_the_states(tiny_dir, prompts_file, tmp_path,
                                          monkeypatch) -> None:
    whole = read_states(collect(_cfg(tiny_dir, prompts_file, tmp_path / "whole"), log=_quiet))
    assert whole is not None
    out = tmp_path / "run"
    undo = interrupt_request(monkeypatch, 4)  # Ctrl-C during the 4th request
    with pytest.raises(KeyboardInterrupt):
        collect(_cfg(tiny_dir, prompts_file, out, chunk_size=5), log=_quiet)
    undo()
    assert [read_states(c).height for c in chunk_dirs(out)] == [
        whole.filter(pl.col("request_id").is_in(["100", "101", "102"])).height]
    resumed = read_states(collect(_cfg(tiny_dir, prompts_file, out, resume=True), log=_quiet))
    assert resumed is not None and _sorted(resumed).equals(_sorted(whole))
    for i in range(2):
        collect(_cfg(tiny_dir, prompts_file, tmp_path / f"s{i}", shard=(i, 2)), log=_quiet)
    merged = read_trace(merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "all"))
    assert merged.states is not None and _sorted(merged.states).equals(_sorted(whole))
    assert merged.manifest["states"]["saturated"] == 0


@pytest.mark.parametrize("states", ["1,3,4", None])
def test_publish_replaces_the_states_table(tiny_dir, prompts_file, tmp_path, states) -> None:
    """A collection folder's top-level trace is its chunks' merge: their states, or none."""
    out = tmp_path / "run"
    every = None if states is None else 3
    collect(_cfg(tiny_dir, prompts_file, out, limit=2, states=states, states_every=every),
            log=_quiet)
    (out / STATES_FILE).write_bytes(b"stale")  # as a killed publish or another tool left it
    collect(_cfg(tiny_dir, prompts_file, out, limit=3, resume=True, states=states,
                 states_every=every), log=_quiet)
    found = read_states(out)
    assert (found is None) == (states is None) and read_trace(out).n_requests == 3


# ------------------------------------------------------------------------------ bad inputs
def collect_argv(tiny_dir: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["collect", "--target", str(tiny_dir), "--draft", "layers:2", "--prompts",
            str(prompts), "--out", str(out), "--k", "3", "--max-new-tokens", "6", "--device",
            "cpu", "--limit", "2", *extra]


BAD_OPTIONS = [
    (["--states", "x"], "expected distinct layer numbers"),
    (["--states", ""], "expected distinct layer numbers"),
    (["--states", "0"], "expected distinct layer numbers"),
    (["--states", "-1"], "expected distinct layer numbers"),
    (["--states", "2,2"], "expected distinct layer numbers"),
    (["--states", "1,,2"], "expected distinct layer numbers"),
    (["--states", "auto,1"], "expected distinct layer numbers"),
    (["--states", "1.5"], "expected distinct layer numbers"),
    (["--states", "5"], "layer 5 is past the target's 4 layers"),
    (["--states", "1,2,99999999999999999999"], "past the target's 4 layers"),
    (["--states", "--states-every", "0"], "--states-every must be >= 1"),
    (["--states", "1", "--states-every", "-3"], "--states-every must be >= 1"),
    (["--states-every", "3"], "states are recorded only with --states"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_OPTIONS)
def test_bad_states_options(tiny_dir, prompts_file, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "o"
    line = one_line_error(collect_argv(tiny_dir, prompts_file, out, *extra), capsys,
                          tiny_dir, prompts_file)
    assert message in line and not out.exists()


def test_states_every_not_a_number(tiny_dir, prompts_file, tmp_path, capsys) -> None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # argparse's own check
        main(collect_argv(tiny_dir, prompts_file, tmp_path / "o", "--states", "--states-every",
                          "x"))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "--states-every" in err[0]
    assert not (tmp_path / "o").exists()


def test_bad_live_states_options(tiny_dir, prompts_file, tmp_path, capsys) -> None:
    out = tmp_path / "live"
    line = one_line_error(["live", "--target", str(tiny_dir), "--draft", "layers:2",
                           "--prompts", str(prompts_file), "--workload", "burst:n=2",
                           "--policy", "fcfs", "--out", str(out), "--states", "0"],
                          capsys, tiny_dir, prompts_file)
    assert "expected distinct layer numbers" in line and not out.exists()


def test_resume_or_merge_with_other_states_is_refused(tiny_dir, prompts_file, tmp_path,
                                                      capsys) -> None:
    out, plain = tmp_path / "run", tmp_path / "plain"
    collect(_cfg(tiny_dir, prompts_file, out, limit=2), log=_quiet)
    collect(_cfg(tiny_dir, prompts_file, plain, shard=(2, 3), states=None,
                 states_every=None), log=_quiet)
    for extra, message in [(["--states", "1,2"], "states.decode_layer is 3 in"),
                           (["--states", "1,3,4", "--states-every", "5"], "states.every is 3 in"),
                           ([], "states is 'recorded' in"), (["--k", "2"], "k is 3 in")]:
        line = one_line_error(collect_argv(tiny_dir, prompts_file, out, "--resume", "--limit",
                                           "3", *extra), capsys, out)
        assert "--resume" in line and message in line
    line = one_line_error(["merge", str(out), str(plain), "--out", str(tmp_path / "m")],
                          capsys, out, plain)
    assert "states is 'recorded' in the first part and 'none' here" in line
    assert not (tmp_path / "m").exists()
    with pytest.raises(LapsdError, match="states"):
        merge([plain, out], tmp_path / "m2")



@pytest.mark.parametrize("batch", [1, 2])
def test_live_records_the_collections_states(tiny_dir, prompts_file, tmp_path, batch) -> None:
    """``lapsd live --states``: the states of a collection of the same prompts, batched too."""
    from lapsd.collect.live import LiveConfig, serve

    collected = read_states(collect(_cfg(tiny_dir, prompts_file, tmp_path / "c"), log=_quiet))
    serve(LiveConfig(target=tiny_dir, draft="layers:2", prompts=prompts_file,
                     workload="burst:n=4", out=tmp_path / "live", policy="fcfs", k=3,
                     max_new_tokens=14, device="cpu", dtype="float32", warmup=1,
                     batch_size=batch, states="1,3,4", states_every=3), log=_quiet)
    live = read_states(tmp_path / "live" / "trace")
    assert collected is not None and live is not None
    assert read_trace(tmp_path / "live" / "trace").manifest["states"]["layers"] == [1, 3, 4]
    live = live.with_columns(pl.col("request_id").str.split(":").list.get(1))
    keys = ["request_id", "kind", "layer", "generated_tokens"]
    both = _sorted(live).join(collected, on=keys, how="left", suffix="_c")
    assert live.height > 4 * 6 and both["state_c"].null_count() == 0
    assert set(_sorted(live).select(keys).iter_rows()) == set(
        collected.filter(pl.col("request_id").is_in(live["request_id"].implode()))
        .select(keys).iter_rows())
    np.testing.assert_allclose(np.asarray(both["state"].to_numpy(), np.float32),
                               np.asarray(both["state_c"].to_numpy(), np.float32), atol=2e-3)
