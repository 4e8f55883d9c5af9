"""The target's hidden states, recorded while it runs: which, when, and their side table.

Issue 22's features for a length probe (``lapsd collect --states LAYERS --states-every G``).
Layer ``l`` is what Hugging Face's ``output_hidden_states`` calls ``hidden_states[l]``: the
residual stream after the target's first ``l`` decoder layers (for the last one, ``l = L``,
after the final norm, as there). Per request:

``prompt_last`` and ``prompt_mean``, at every chosen layer
    The state at the prompt's last token, and the mean over the prompt's tokens.
``decode``, at one layer (the middle chosen one)
    The state at the G-th, 2G-th, ... generated token (``generated_tokens`` = G, 2G, ...).

No extra forward pass
    The engine's prefill caches the prompt but its last token, which the first round feeds as
    the pending token. With states on, the prefill runs over the whole prompt (one position
    more; the static path's prefill step is padded to 64 positions anyway) and keeps the cache
    of all but the last token, so cache, rounds and tokens are those of a run without states.
    A verification pass computes the state of every position it is fed: the pending token and
    the drafts. The pending token's and the kept accepted drafts' are states of the request's
    final sequence, so the G-th generated token's state is taken from the first verification
    that feeds it. Deviation from "the latest accepted token's state every G tokens": the
    state of exactly the G-th token (the same positions whatever the drafts accepted, so
    requests and runs compare), at most one round after the token came out (the token a round's
    target adds is fed by the next round). A request's last token is never fed: a multiple of
    G at its very end may have no state.

Static path (:mod:`lapsd.collect.static`)
    The steps write the chosen layers' outputs into buffers of their own from inside the step
    (captured in the CUDA graphs like the rest), the prompt's mean masked by a device-side
    prompt length; the session copies out the positions it keeps after the round.

Storage
    ``states.parquet`` beside the trace's tables (schema in :mod:`lapsd.replay.trace`), one row
    per state, the vector as a fixed-size list of float16 (float32 where polars has no
    Float16). Values beyond float16's range saturate at +-65504; the manifest counts them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lapsd.errors import LapsdError
from lapsd.replay.trace import STATES_SCHEMA_VERSION

if TYPE_CHECKING:
    import polars as pl
    import torch

#: ``--states`` without layer numbers: the quarter points of the model's depth.
AUTO = "auto"
#: ``--states-every`` when not given.
DEFAULT_EVERY = 16
_FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class StatesSpec:
    """What a run records: ``layers`` (ascending, 1..L), every ``every`` generated tokens."""

    layers: tuple[int, ...]
    every: int
    hidden_size: int

    @property
    def decode_layer(self) -> int:
        """The layer of the decode states: the middle chosen one (the lower of two middles)."""
        return self.layers[(len(self.layers) - 1) // 2]

    def manifest_block(self, dtype: str, saturated: int) -> dict[str, Any]:
        """The trace manifest's ``states`` block (:mod:`lapsd.replay.trace`)."""
        return {"schema_version": STATES_SCHEMA_VERSION, "layers": list(self.layers),
                "decode_layer": self.decode_layer, "every": self.every,
                "hidden_size": self.hidden_size, "dtype": dtype, "saturated": saturated,
                "layer": "hidden_states[layer] of Hugging Face's output_hidden_states: after "
                         "that many decoder layers (the last one after the final norm)"}


@dataclass
class RequestStates:
    """One request's recorded states (host memory, float32).

    ``prompt[j]`` holds layer ``layers[j]``'s state at the last prompt token (``[j, 0]``) and
    its mean over the prompt (``[j, 1]``); ``decode[i]`` is the state at generated token
    ``decode_tokens[i]``.
    """

    prompt: torch.Tensor
    decode_tokens: list[int]
    decode: torch.Tensor


def check_options(layers: str | None, every: int | None) -> None:
    """Check ``--states`` and ``--states-every`` as far as they go without the model."""
    if layers is None:
        if every is not None:
            raise LapsdError(f"--states-every {every}: states are recorded only with --states "
                             "(add --states, or --states 8,16,24 for chosen layers)")
        return
    parse_layers(layers)
    if every is not None and every < 1:
        raise LapsdError(f"--states-every must be >= 1 generated tokens, got {every}")


def parse_layers(text: str) -> tuple[int, ...] | None:
    """``--states``'s layers, ascending; ``None`` for ``auto`` (resolved with the depth)."""
    if text.strip() == AUTO:
        return None
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        layers = []
    if not layers or min(layers) < 1 or len(set(layers)) != len(layers):
        raise LapsdError(f"--states {text!r}: expected distinct layer numbers >= 1 like "
                         f"8,16,24, or {AUTO} (the quarter points of the model's depth)")
    return tuple(sorted(layers))


def quarter_points(depth: int) -> tuple[int, ...]:
    """Layers ``L/4, L/2, 3L/4`` (rounded, at least 1, without repeats)."""
    return tuple(sorted({max(1, (depth * i + 2) // 4) for i in (1, 2, 3)}))


def resolve(layers: str | None, every: int | None, depth: int, hidden_size: int
            ) -> StatesSpec | None:
    """The run's :class:`StatesSpec` for a target of ``depth`` layers (``None``: no states)."""
    check_options(layers, every)
    if layers is None:
        return None
    chosen = parse_layers(layers) or quarter_points(depth)
    if chosen[-1] > depth:
        raise LapsdError(f"--states {layers}: layer {chosen[-1]} is past the target's {depth} "
                         f"layers; choose layers 1..{depth} ({AUTO}: "
                         f"{','.join(map(str, quarter_points(depth)))})")
    return StatesSpec(chosen, DEFAULT_EVERY if every is None else every, hidden_size)


def stored_dtype() -> str:
    """The dtype of stored vectors: float16, or float32 where polars has no Float16."""
    import polars as pl

    return "float16" if hasattr(pl, "Float16") else "float32"


def as_stored(values: np.ndarray, dtype: str | None = None) -> np.ndarray:
    """``values`` as the states table stores them (``dtype``, default :func:`stored_dtype`).

    float16 saturating at +-65504, else float32.
    """
    values = np.asarray(values, dtype=np.float32)
    if (dtype or stored_dtype()) == "float16":
        return np.clip(values, -_FLOAT16_MAX, _FLOAT16_MAX).astype(np.float16)
    return values


def table(items: Iterable[tuple[str, RequestStates]], spec: StatesSpec
          ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The states table of ``(request id, states)`` items and the manifest block for it."""
    import polars as pl

    ids: list[str] = []
    kinds: list[str] = []
    layers: list[int] = []
    generated: list[int] = []
    vectors: list[np.ndarray] = []
    for rid, st in items:
        prompt = st.prompt.numpy()
        for j, layer in enumerate(spec.layers):
            for kind, vec in (("prompt_last", prompt[j, 0]), ("prompt_mean", prompt[j, 1])):
                ids.append(rid)
                kinds.append(kind)
                layers.append(layer)
                generated.append(0)
                vectors.append(vec)
        for g, vec in zip(st.decode_tokens, st.decode.numpy(), strict=True):
            ids.append(rid)
            kinds.append("decode")
            layers.append(spec.decode_layer)
            generated.append(g)
            vectors.append(vec)
    matrix = (np.stack(vectors) if vectors else np.zeros((0, spec.hidden_size))).astype(np.float32)
    dtype = stored_dtype()
    saturated = int((np.abs(matrix) > _FLOAT16_MAX).sum()) if dtype == "float16" else 0
    matrix = as_stored(matrix, dtype)
    df = pl.DataFrame({"request_id": pl.Series(ids, dtype=pl.String),
                       "kind": pl.Series(kinds, dtype=pl.String),
                       "layer": pl.Series(layers, dtype=pl.Int64),
                       "generated_tokens": pl.Series(generated, dtype=pl.Int64),
                       "state": pl.Series(matrix)})
    return df, spec.manifest_block(dtype, saturated)
