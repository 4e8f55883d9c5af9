"""Greedy speculative decoding on a static KV cache, with CUDA graphs on a GPU.

Hugging Face's eager forward of a small model is bound by Python and kernel-launch overhead
(about 30 ms per token for SmolLM2-135M on an H100), so :class:`StaticRunner` runs the target's
own modules over preallocated per-layer key/value buffers with fixed shapes, and on CUDA replays
each fixed-shape step as one captured :class:`torch.cuda.CUDAGraph`.

Two ideas keep it cheap:

* No cropping. A query at position ``p`` attends to cache slots ``<= p`` only, and a round writes
  every slot it reads, so entries left by rejected drafts are masked until they are overwritten.
* ``layers:N`` drafts share the target's first ``N`` layers *and* their cache (LayerSkip-style
  reuse): each drafted token's layer-``N`` hidden state is kept, so verification runs layers
  ``0..N-1`` on the last draft token only and layers ``N..L-1`` on ``[pending, drafts]``.

The host talks to the device once each way per round: one small copy in (position, pending
token, prompt-lookup drafts) and one ``tolist`` out (drafts and the target's argmaxes).

Several requests share one runner (the live server keeps every admitted request's cache): the
graphs are captured once, over one *working* cache, and a request's cache is copied into it when
the request runs (:meth:`StaticRunner.load`) and out of it when another one takes its place
(:meth:`StaticRunner.save`). All layers' keys and values are one tensor, so either copy is one
strided copy of the request's cached positions, whatever the number of layers.

Prefill. A prompt is prefilled into a one-row *staging* cache by a step of a fixed length (the
prompt padded to a multiple of :data:`PREFILL_BUCKET` tokens, one graph per length) and its
positions are then copied into the request's row: the padding's entries are never copied, and
an eager prefill would launch each of the model's few hundred kernels from Python, tens of
milliseconds on a GPU that stall every request of a batch.

Batches. The working cache has ``rows`` rows, one request each, and a step runs its first ``b``
rows together (a graph per ``(b, d)``): every row has its own position, pending token and
drafts, so each query attends to its own row's slots only. Rows that draft fewer than the
step's ``d`` tokens (prompt lookup found fewer, or the token budget is near) are padded; what
the target computes for a row's first ``d_row + 1`` positions depends on that row's slots up to
them only, so its verdicts are those of the row run alone, and the padding's cache entries lie
past its kept tokens, masked until overwritten. Batch size one is the first row.

Hidden states (``states``, :mod:`lapsd.collect.states`). The steps write the chosen layers'
outputs into buffers of their own as they pass them: the prefill step the prompt's last token
and its mean (over the first :attr:`StaticRunner.prompt_len` positions, a device tensor, so
one captured step serves every prompt length of its bucket), the draft and verify steps every
position's state at the decode layer. The values come from the same kernels either way; the
host reads only the positions it keeps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from lapsd.collect.states import StatesSpec

#: Called with ``(l, x)`` after the ``l``-th layer of a pass: the layer's output (see _layers).
Tap = Callable[[int, torch.Tensor], None]

# rope types whose inverse frequencies are fixed at load time (no data-dependent update)
_STATIC_ROPE = {"default", "linear", "llama3"}
#: Prefill lengths are padded to a multiple of this (one prefill step per multiple).
PREFILL_BUCKET = 64


def supports(model: nn.Module) -> bool:
    """Whether :class:`StaticRunner` can run ``model`` (a Llama-architecture causal LM)."""
    cfg = getattr(model, "config", None)
    rope = getattr(getattr(getattr(model, "model", None), "rotary_emb", None), "rope_type", None)
    return (getattr(cfg, "model_type", None) == "llama" and rope in _STATIC_ROPE
            and hasattr(model, "lm_head"))


class StaticRunner:
    """A Llama target on a static KV cache of ``rows`` rows, drafting with its first layers.

    Parameters
    ----------
    model
        The target (``supports(model)`` must hold), on its device, in eval mode.
    split
        ``N`` of a ``layers:N`` draft, or 0 for prompt lookup (drafts come from the host).
    k
        Most tokens drafted per round; one draft and one verify step is built for each count.
    capacity
        Cache slots (positions) per row and layer; :meth:`ensure` grows it.
    rows
        Requests a step can run together (the largest batch).
    sizes
        The batch sizes to build steps for (default: every one up to ``rows``).
    states
        Hidden states to record (module docstring), or ``None``.

    Attributes
    ----------
    owners
        The request whose cache each row holds (set by the caller; ``None``: none).
    prompt_states
        With ``states``: the last prefill's states, ``[j, 0]`` at the prompt's last token and
        ``[j, 1]`` its mean, at layer ``states.layers[j]`` (float32).
    decode_states
        With ``states``: the last draft and verify steps' states at ``states.decode_layer``,
        ``[row, i]`` at the row's ``i``-th position fed (the pending token, then the drafts).
    """

    def __init__(self, model: Any, split: int, k: int, capacity: int = 512,
                 rows: int = 1, sizes: tuple[int, ...] | None = None,
                 states: StatesSpec | None = None) -> None:
        # transformers' modules: their attributes (config, layers, ...) are not typed by nn.Module.
        self.model: Any = model
        self.base: Any = model.model
        self.layers: list[Any] = list(self.base.layers)
        self.split = split
        self.k = k
        self.rows = rows
        self.sizes = sizes or tuple(range(1, rows + 1))
        if not all(1 <= b <= rows for b in self.sizes):
            raise ValueError(f"batch sizes {self.sizes} must lie in 1..{rows}")
        self.cfg: Any = model.config
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.graphed = self.device.type == "cuda"
        self.n_kv = self.cfg.num_key_value_heads
        self.head_dim = self.layers[0].self_attn.head_dim
        rot = self.base.rotary_emb
        self.inv_freq = rot.inv_freq.to(self.device, torch.float32)
        self.rope_scale = float(rot.attention_scaling)
        # per row: inp = [position of the pending token, pending token, drafts...];
        # out = [drafts, best]
        self.inp = torch.zeros((rows, k + 2), dtype=torch.long, device=self.device)
        self.out = torch.zeros((rows, 2 * k + 1), dtype=torch.long, device=self.device)
        self.hidden = torch.zeros((rows, k + 1, self.cfg.hidden_size), dtype=self.dtype,
                                  device=self.device)
        self.states = states
        # (empty buffers without states)
        n_layers, n_rows = (0, 0) if states is None else (len(states.layers), rows)
        self.prompt_states = torch.zeros((n_layers, 2, self.cfg.hidden_size),
                                         dtype=torch.float32, device=self.device)
        self.decode_states = torch.zeros((n_rows, k + 1, self.cfg.hidden_size),
                                         dtype=self.dtype, device=self.device)
        #: Positions of the prompt the last prefill ran (for the prompt states' mean).
        self.prompt_len = torch.ones((), dtype=torch.long, device=self.device)
        self.capacity = 0
        self.owners: list[object | None] = [None] * rows
        self._alloc(capacity)

    # ------------------------------------------------------------------------ cache and graphs
    def _alloc(self, capacity: int) -> None:
        # (layer, key/value, row, kv head, position, head dim): a request's cache in row r is
        # kv[:, :, r, :, :n]
        self.kv = torch.zeros((len(self.layers), 2, self.rows, self.n_kv, capacity,
                               self.head_dim), dtype=self.dtype, device=self.device)
        self.staging = torch.zeros((len(self.layers), 2, 1, self.n_kv, capacity, self.head_dim),
                                   dtype=self.dtype, device=self.device)
        self.prompt = torch.zeros(capacity, dtype=torch.long, device=self.device)
        self.slots = torch.arange(capacity, device=self.device)
        self.capacity = capacity
        self.steps: dict[tuple[str, int, int], Callable[[], None]] = {}

    def ensure(self, positions: int) -> None:
        """Make room for ``positions`` cache slots (rounded up to 512; graphs are rebuilt).

        The cached positions are kept (capturing a graph runs its step, which writes slots, so
        they are copied into the new cache after the capture).
        """
        if positions > self.capacity:
            old = self.kv
            self._alloc(-(-positions // 512) * 512)
            self._build()
            self.kv[..., :old.shape[4], :].copy_(old)
        if not self.steps:
            self._build()

    def _build(self) -> None:
        plain: dict[tuple[str, int, int], Callable[[], None]] = {}
        for b in self.sizes:
            for d in range(self.k + 1):
                plain[("verify", b, d)] = functools.partial(self._verify_step, b, d)
                if self.split and d:
                    plain[("draft", b, d)] = functools.partial(self._draft_step, b, d)
        for t in range(PREFILL_BUCKET, self.capacity + 1, PREFILL_BUCKET):
            plain[("prefill", 1, t)] = functools.partial(self._prefill_step, t)
        if not self.graphed:
            self.steps = plain
            return
        self.inp.zero_()
        pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for fn in plain.values():  # warm-up outside capture (allocator, kernel choice)
                fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        for key, fn in plain.items():
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                fn()
            self.steps[key] = graph.replay

    # --------------------------------------------------------------------------------- model
    def _layers(self, x: torch.Tensor, pos: torch.Tensor, lo: int, hi: int,
                rows: slice, cache: torch.Tensor | None = None, tap: Tap | None = None
                ) -> torch.Tensor:
        """Layers ``lo..hi-1`` on hidden states ``x`` (b, T, H) at positions ``pos`` (b, T).

        Row ``i`` of ``x`` reads and writes row ``rows.start + i`` of ``cache`` (default: the
        working cache). ``tap(i + 1, x)`` is called after layer ``i``.
        """
        kv = self.kv if cache is None else cache
        b, t = pos.shape
        freqs = pos[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.rope_scale).to(x.dtype)[:, None]  # (b, 1, T, hd)
        sin = (emb.sin() * self.rope_scale).to(x.dtype)[:, None]
        mask = (self.slots <= pos[..., None])[:, None, None]  # (b, 1, 1, T, capacity)
        where = pos[:, None, :, None].expand(b, self.n_kv, t, self.head_dim)
        for i in range(lo, hi):
            layer = self.layers[i]
            att = layer.self_attn
            keys, values = kv[i, 0, rows], kv[i, 1, rows]  # (b, n_kv, capacity, hd)
            h = layer.input_layernorm(x)
            q = att.q_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)
            k = att.k_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)
            v = att.v_proj(h).view(b, t, -1, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys.scatter_(2, where, k)
            values.scatter_(2, where, v)
            # grouped-query attention: fold each key/value head's query heads into rows
            qg = q.reshape(b, self.n_kv, -1, self.head_dim)  # (b, n_kv, groups * T, hd)
            scores = torch.matmul(qg, keys.transpose(2, 3)) * att.scaling
            scores = scores.view(b, self.n_kv, -1, t, self.capacity).masked_fill(
                ~mask, float("-inf"))
            w = torch.softmax(scores, dim=-1, dtype=torch.float32).to(x.dtype)
            o = torch.matmul(w.view(b, self.n_kv, -1, self.capacity), values)
            o = o.view(b, -1, t, self.head_dim).transpose(1, 2).reshape(b, t, -1)
            x = x + att.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            if tap is not None:
                tap(i + 1, x)
        return x

    def _state(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """``hidden_states[layer]`` as Hugging Face has it: the last layer's after the norm."""
        return self.base.norm(x) if layer == len(self.layers) else x

    def _prompt_tap(self, layer: int, x: torch.Tensor) -> None:
        """Keep ``layer``'s state at the prompt's last token and its mean (x: (1, T, H))."""
        assert self.states is not None
        if layer not in self.states.layers:
            return
        j, n = self.states.layers.index(layer), self.prompt_len
        h = self._state(layer, x)[0].float()
        self.prompt_states[j, 0] = h.index_select(0, (n - 1).view(1))[0]
        valid = (self.slots[:h.shape[0]] < n)[:, None]
        self.prompt_states[j, 1] = torch.where(valid, h, 0.0).sum(0) / n

    def _decode_tap(self, b: int, start: int) -> Tap | None:
        """A tap keeping the decode layer's states of ``b`` rows at positions from ``start``."""
        if self.states is None:
            return None
        layer = self.states.decode_layer

        def tap(i: int, x: torch.Tensor) -> None:
            if i == layer:
                self.decode_states[:b, start:start + x.shape[1]] = self._state(layer, x)
        return tap

    def _argmax(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(self.base.norm(x)).argmax(-1)

    def _prefill_step(self, t: int) -> None:
        """The first ``t`` tokens of ``prompt`` into the staging cache's positions ``0..t-1``."""
        self._layers(self.base.embed_tokens(self.prompt[None, :t]), self.slots[None, :t], 0,
                     len(self.layers), slice(0, 1), self.staging,
                     None if self.states is None else self._prompt_tap)

    def _draft_step(self, b: int, d: int) -> None:
        """Draft ``d`` tokens after each of the first ``b`` rows' pending token."""
        p, toks = self.inp[:b, :1], self.inp[:b, 1:]
        for i in range(d):
            x = self._layers(self.base.embed_tokens(toks[:, i:i + 1]), p + i, 0, self.split,
                             slice(0, b), tap=self._decode_tap(b, i))
            self.hidden[:b, i:i + 1] = x
            toks[:, i + 1:i + 2] = self._argmax(x)

    def _verify_step(self, b: int, d: int) -> None:
        """The target's argmax after each of ``[pending, drafts[:d]]`` of ``b`` rows, to ``out``."""
        rows = slice(0, b)
        pos = self.inp[:b, :1] + torch.arange(d + 1, device=self.device)
        toks = self.inp[:b, 1:d + 2]
        if self.split:
            x = self._layers(self.base.embed_tokens(toks[:, d:]), pos[:, d:], 0, self.split,
                             rows, tap=self._decode_tap(b, d))
            self.hidden[:b, d:d + 1] = x
            x = self._layers(self.hidden[:b, :d + 1], pos, self.split, len(self.layers), rows,
                             tap=self._decode_tap(b, 0))
        else:
            x = self._layers(self.base.embed_tokens(toks), pos, 0, len(self.layers), rows,
                             tap=self._decode_tap(b, 0))
        self.out[:b, :d] = toks[:, 1:]
        self.out[:b, d:2 * d + 1] = self._argmax(x)

    # ----------------------------------------------------------------------------- interface
    def prefill(self, ids: list[int], row: int = 0, keep: int | None = None) -> None:
        """Run ``ids`` through the staging cache; fill slots ``0..keep-1`` of ``row``.

        ``keep`` defaults to all of ``ids``; with states, :attr:`prompt_states` are ``ids``'.
        """
        n = len(ids)
        keep = n if keep is None else keep
        if n:
            self.prompt[:n].copy_(torch.tensor(ids, dtype=torch.long), non_blocking=True)
            if self.states is not None:
                self.prompt_len.fill_(n)
            self.steps[("prefill", 1, -(-n // PREFILL_BUCKET) * PREFILL_BUCKET)]()
            self.kv[:, :, row, :, :keep].copy_(self.staging[:, :, 0, :, :keep])

    def start_round(self, rounds: list[tuple[int, int, list[int]]]) -> None:
        """Set each of the first ``len(rounds)`` rows' pending position, token and drafts.

        ``rounds[i] = (position, pending, drafts)``; drafts are given for prompt lookup only
        (rows with fewer than the longest are padded). One host-to-device copy.
        """
        width = max(len(r[2]) for r in rounds)
        vals = [[p, tok, *drafts, *[0] * (width - len(drafts))] for p, tok, drafts in rounds]
        self.inp[:len(rounds), :width + 2].copy_(torch.tensor(vals, dtype=torch.long),
                                                 non_blocking=True)

    def draft(self, d: int, b: int = 1) -> None:
        """Draft ``d >= 1`` tokens in the first ``b`` rows (``layers:N`` only; on the device)."""
        self.steps[("draft", b, d)]()

    def verify(self, d: int, b: int = 1) -> None:
        """Run the target over the pending token and ``d`` drafts of ``b`` rows (no host sync)."""
        self.steps[("verify", b, d)]()

    def result(self, d: int, b: int = 1) -> list[tuple[list[int], list[int]]]:
        """Each row's ``(drafts, best)`` of the last verify: ``d`` drafts, ``d + 1`` argmaxes."""
        return [(row[:d], row[d:]) for row in self.out[:b, :2 * d + 1].tolist()]

    # ------------------------------------------------------------------- requests' own caches
    def cache_shape(self, positions: int) -> tuple[int, ...]:
        """Shape of one request's cache of ``positions`` positions, as :meth:`save` writes it."""
        return (len(self.layers), 2, self.n_kv, positions, self.head_dim)

    def save(self, dest: torch.Tensor, row: int = 0) -> None:
        """Copy ``row``'s first ``dest.shape[3]`` positions into ``dest`` (async)."""
        dest.copy_(self.kv[:, :, row, :, :dest.shape[3]], non_blocking=True)

    def load(self, src: torch.Tensor, row: int = 0) -> None:
        """Copy a request's cache (from :meth:`save`) into ``row`` (async)."""
        self.kv[:, :, row, :, :src.shape[3]].copy_(src, non_blocking=True)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
