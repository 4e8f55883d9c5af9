"""Hidden states recorded by the engine and the collector (issue 22, section 2).

The recorded states must be the model's own: Hugging Face's ``forward(output_hidden_states=
True)`` over the request's final sequence, at the prompt's last token, averaged over the prompt,
and at the G-th, 2G-th, ... generated token; on every path (static with ``layers:N`` or prompt
lookup, DynamicCache, a draft model, sampling, batches). Recording changes no token and no
round; collections, resumes and merges carry the states table; bad options are one line.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from lapsd.collect.engine import Generation, SpeculativeEngine  # noqa: E402
from lapsd.collect.models import layers_draft  # noqa: E402
from lapsd.collect.states import StatesSpec, quarter_points  # noqa: E402
from tests.collect.conftest import tiny_llama  # noqa: E402

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

