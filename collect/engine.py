"""The speculative-decoding loop, batch size one, with a KV cache for each model.

Token bookkeeping: ``seq[:n]`` holds the prompt and the tokens produced so far. The target's
cache holds ``seq[:n-1]``; the last token ``seq[n-1]`` is *pending*. A round drafts up to ``k``
tokens, runs the target once over ``[pending, drafts]`` and appends ``accepted + 1`` tokens (the
accepted draft prefix and the target's own token after it), then crops both caches back to what
is still valid. Every output token therefore comes from a round, and with greedy decoding the
output is the target's own greedy output.

Greedy runs of a Llama target with a ``layers:N`` or prompt-lookup draft take the static-cache
path of :mod:`lapsd.collect.static` (CUDA graphs on a GPU, the draft's layers and cache reused
by the verification); the same rounds, tokens and records, only faster. Everything else (sampling,
separate draft models, other architectures) uses the DynamicCache loop below.

Sampling (``temperature > 0``) uses speculative rejection sampling (Leviathan et al. 2023; Chen
et al. 2023): draft token ``x`` is kept with probability ``min(1, p(x) / q(x))``; the first
rejected position is resampled from ``max(0, p - q)`` normalised; after ``k`` acceptances a bonus
token is drawn from ``p``. Prompt-lookup drafts have a one-hot ``q``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from lapsd.collect.models import DraftSpec, cache_arg
from lapsd.collect.static import StaticRunner, supports


# ------------------------------------------------------------------------------------- clocks
class Clock(Protocol):
    """Marks points in time; :meth:`seconds` turns two marks into seconds once work is done."""

    def mark(self) -> Any:
        """A point in time (cheap; may be resolved only later)."""

    def seconds(self, a: Any, b: Any) -> float | None:
        """Seconds from mark ``a`` to mark ``b`` (after :meth:`sync`)."""

    def sync(self) -> None:
        """Wait until every mark so far can be resolved."""


class CudaClock:
    """CUDA events on the current stream: device-side timestamps, no host sync per mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> torch.cuda.Event:
        """A CUDA event recorded on the current stream."""
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def seconds(self, a: torch.cuda.Event, b: torch.cuda.Event) -> float:
        """Seconds between two recorded events."""
        return a.elapsed_time(b) / 1000.0

    def sync(self) -> None:
        """Wait for the device."""
        torch.cuda.synchronize(self.device)


class HostClock:
    """``time.perf_counter`` for the CPU, where work is synchronous."""

    def mark(self) -> float:
        """``time.perf_counter()``."""
        return time.perf_counter()

    def seconds(self, a: float, b: float) -> float:
        """``b - a``."""
        return b - a

    def sync(self) -> None:
        """Nothing to wait for on the CPU."""


class NullClock:
    """Recording switched off: marks cost nothing and give no times."""

    def mark(self) -> None:
        """No mark."""
        return None

    def seconds(self, a: None, b: None) -> None:  # noqa: ARG002 (the Clock signature)
        """No time."""
        return None

    def sync(self) -> None:
        """No marks, nothing to resolve."""


def make_clock(device: torch.device, record: bool) -> Clock:
    """The clock for ``device``: CUDA events on a GPU, perf_counter elsewhere; or none."""
    return timing_clock(device) if record else NullClock()


def timing_clock(device: torch.device) -> CudaClock | HostClock:
    """A clock that records: CUDA events on a GPU, perf_counter elsewhere."""
    return CudaClock(device) if device.type == "cuda" else HostClock()


# ------------------------------------------------------------------------------------ results
@dataclass
class RoundRecord:
    """One round as it goes into the trace (times filled in after the request)."""

    drafted: int
    accepted: int
    emitted: int
    context_tokens: int
    marks: tuple[Any, Any, Any, Any] = (None, None, None, None)
    draft_s: float | None = None
    verify_s: float | None = None
    round_s: float | None = None


@dataclass
class Generation:
    """The output of one request."""

    prompt_tokens: int
    tokens: list[int]
    finish_reason: str
    prefill_s: float | None
    total_s: float
    rounds: list[RoundRecord] = field(default_factory=list)


# ------------------------------------------------------------------------------------ drafters
def crop_cache(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions of a DynamicCache.

    A negative argument to ``crop`` means "remove that many" in every transformers 5 release,
    whereas a positive one is a length in some releases and an error in others.
    """
    remove = cache.get_seq_length() - length
    if remove > 0:
        cache.crop(-remove)


class ModelDrafter:
    """A draft model with its own KV cache, kept in step with the committed sequence."""

    def __init__(self, model: Any) -> None:
        self.model: Any = model
        self.cache: Any = None
        self.cached = 0

    def reset(self, seq: torch.Tensor, n: int) -> None:
        """Start a request: prefill ``seq[:n-1]`` (the pending token is fed with the drafts)."""
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)
        self.cached = 0
        if n > 1:
            self.model(input_ids=seq[:, : n - 1], **cache_arg(self.model, self.cache),
                       use_cache=True,
                       logits_to_keep=1)
            self.cached = n - 1

    def propose(self, seq: torch.Tensor, n: int, k: int, temperature: float,
                gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draft ``k`` tokens after ``seq[:n]``: ``(tokens (k,), probs (k, V) or None)``."""
        inp = seq[:, self.cached:n]
        tokens, probs = [], []
        for _ in range(k):
            logits = self.model(input_ids=inp, **cache_arg(self.model, self.cache),
                                use_cache=True,
                                logits_to_keep=1).logits[0, -1]
            if temperature > 0:
                q = torch.softmax(logits.float() / temperature, dim=-1)
                tok = torch.multinomial(q, 1, generator=gen)
                probs.append(q)
            else:
                tok = logits.argmax(-1, keepdim=True)
            tokens.append(tok)
            inp = tok.view(1, 1)
        self.cached = n + k - 1
        return torch.cat(tokens), (torch.stack(probs) if probs else None)

    def commit(self, n_old: int, accepted: int, k: int) -> None:
        """Drop cache entries past the draft tokens that the target kept."""
        self.cached = min(self.cached, n_old + min(accepted, k - 1))
        crop_cache(self.cache, self.cached)


class NgramDrafter:
    """Prompt lookup: continue the latest earlier match of the context's last n-gram."""

    def __init__(self, max_n: int) -> None:
        self.max_n = max_n

    def reset(self, seq: torch.Tensor, n: int) -> None:
        """Stateless: nothing to prefill."""

    def lookup(self, context: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the last earlier match of the longest suffix n-gram.

        ``n`` goes from ``max_n`` down to 1; empty when no n-gram occurs earlier.
        """
        size = len(context)
        for n in range(min(self.max_n, size - 1), 0, -1):
            tail = context[size - n:]
            for start in range(size - n - 1, -1, -1):
                if context[start:start + n] == tail:
                    return context[start + n:start + n + k]
        return []

    def commit(self, n_old: int, accepted: int, k: int) -> None:
        """Stateless: nothing to crop."""


# -------------------------------------------------------------------------------------- engine
class SpeculativeEngine:
    """Runs requests one at a time with a target and a draft (model, ``layers:N`` or ``ngram:N``).

    Parameters
    ----------
    target
        The target causal LM, already on ``device`` and in eval mode.
    draft
        A draft model (sharing the target's vocabulary) or ``None`` with ``ngram`` set.
    k
        Tokens drafted per round (fewer near ``max_new_tokens`` or when a lookup finds fewer).
    eos_ids
        Token ids that end a request.
    static
        Take the static-cache path (:mod:`lapsd.collect.static`) where it applies; ``False`` forces
        the DynamicCache loop (for comparisons).
    """

    def __init__(self, target: Any, *, draft: Any = None, ngram: int = 0,
                 k: int = 4, eos_ids: set[int] | None = None, temperature: float = 0.0,
                 device: torch.device | str = "cpu", static: bool = True) -> None:
        if (draft is None) == (ngram == 0):
            raise ValueError("give exactly one of draft (a model) or ngram (N >= 1)")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.target = target
        self.drafter: ModelDrafter | NgramDrafter = (
            ModelDrafter(draft) if draft is not None else NgramDrafter(ngram))
        self.k = k
        self.eos_ids = set(eos_ids or ())
        self.temperature = temperature
        self.device = torch.device(device)
        split = 0 if draft is None else shared_layers(target, draft)
        self.static_split = split if (static and temperature <= 0 and supports(target)
                                      and (draft is None or split > 0)) else None
        self.runner: StaticRunner | None = None

    @torch.inference_mode()
    def generate(self, prompt: list[int], max_new_tokens: int, *, record: bool = True,
                 seed: int = 0) -> Generation:
        """Run one request to EOS or ``max_new_tokens``; time its rounds when ``record``."""
        from transformers import DynamicCache

        if not prompt:
            raise ValueError("empty prompt")
        if self.static_split is not None:
            return self._generate_static(prompt, max_new_tokens, record)
        clock = make_clock(self.device, record)
        gen = None
        if self.temperature > 0:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
        t_start = time.perf_counter()
        n = len(prompt)
        seq = torch.zeros((1, n + max_new_tokens + self.k + 1), dtype=torch.long,
                          device=self.device)
        seq[0, :n] = torch.tensor(prompt, dtype=torch.long)
        tokens = list(prompt)
        p0 = clock.mark()
        cache = DynamicCache(config=self.target.config)
        if n > 1:
            self.target(input_ids=seq[:, : n - 1], **cache_arg(self.target, cache),
                        use_cache=True,
                        logits_to_keep=1)
        self.drafter.reset(seq, n)
        p1 = clock.mark()

        def step(n: int, d: int) -> tuple[int, int, list[int], Any, Any]:
            drafts, q = self._draft(seq, tokens, n, d, gen)
            d = int(drafts.numel())
            m1 = clock.mark()
            logits = self.target(input_ids=seq[:, n - 1:n + d], **cache_arg(self.target, cache),
                                 use_cache=True).logits[0]
            m2 = clock.mark()
            accepted, proposed = self._accept(logits, drafts, q, gen)
            return d, accepted, proposed, m1, m2

        def commit(n: int, new: list[int], accepted: int, d: int) -> None:
            seq[0, n:n + len(new)] = torch.tensor(new, dtype=torch.long)
            crop_cache(cache, n + len(new) - 1)
            self.drafter.commit(n, accepted, max(d, 1))

        rounds, finish = self._rounds(clock, tokens, max_new_tokens, step, commit)
        return _finish(clock, t_start, prompt, tokens, finish, (p0, p1), rounds)

    def _generate_static(self, prompt: list[int], max_new_tokens: int,
                         record: bool) -> Generation:
        """:meth:`generate` on :class:`StaticRunner`: greedy, same rounds and records."""
        if self.runner is None:
            self.runner = StaticRunner(self.target, self.static_split or 0, self.k)
        runner = self.runner
        ngram = self.drafter if isinstance(self.drafter, NgramDrafter) else None
        clock = make_clock(self.device, record)
        t_start = time.perf_counter()
        n = len(prompt)
        tokens = list(prompt)
        runner.ensure(n + max_new_tokens + self.k)
        p0 = clock.mark()
        runner.prefill(prompt[:-1])
        p1 = clock.mark()
        def step(n: int, d: int) -> tuple[int, int, list[int], Any, Any]:
            found = ngram.lookup(tokens, d) if ngram is not None and d else []
            runner.start_round(n - 1, tokens[-1], found)
            if ngram is not None:
                d = len(found)
            elif d:
                runner.draft(d)
            m1 = clock.mark()
            runner.verify(d)
            m2 = clock.mark()
            drafts, best = runner.result(d)
            return (d, *greedy_accept(drafts, best), m1, m2)

        rounds, finish = self._rounds(clock, tokens, max_new_tokens, step)
        return _finish(clock, t_start, prompt, tokens, finish, (p0, p1), rounds)

    def _rounds(self, clock: Clock, tokens: list[int], max_new_tokens: int,
                step: Callable[[int, int], tuple[int, int, list[int], Any, Any]],
                commit: Callable[[int, list[int], int, int], None] | None = None,
                ) -> tuple[list[RoundRecord], str]:
        """The round loop both paths share: bookkeeping, clipping and records.

        ``step(n, k)`` drafts up to ``k`` tokens after ``tokens[:n]`` and verifies them,
        returning ``(drafted, accepted, proposed tokens, draft-end mark, verify-end mark)``;
        ``commit(n, new, accepted, drafted)`` updates the path's caches with the kept tokens.
        ``tokens`` (prompt first) is extended in place.
        """
        rounds: list[RoundRecord] = []
        n = len(tokens)
        produced, finish = 0, "length"
        while produced < max_new_tokens:
            remaining = max_new_tokens - produced
            m0 = clock.mark()
            d, accepted, proposed, m1, m2 = step(n, min(self.k, remaining - 1))
            new, finish = self._clip(proposed, remaining)
            tokens.extend(new)
            if commit is not None:
                commit(n, new, accepted, d)
            m3 = clock.mark()
            rounds.append(RoundRecord(d, accepted, len(new), n, (m0, m1, m2, m3)))
            n += len(new)
            produced += len(new)
            if finish == "stop":
                break
        return rounds, finish

    def _clip(self, new: list[int], remaining: int) -> tuple[list[int], str]:
        """Cut a round's tokens at the budget and after the first EOS: ``(tokens, finish)``."""
        new = new[:remaining]
        for i, tok in enumerate(new):
            if tok in self.eos_ids:
                return new[:i + 1], "stop"
        return new, "length"

    def _draft(self, seq: torch.Tensor, tokens: list[int], n: int, k: int,
               gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if k <= 0:
            return seq.new_empty(0), None
        if isinstance(self.drafter, NgramDrafter):
            found = self.drafter.lookup(tokens, k)
            drafts = torch.tensor(found, dtype=torch.long, device=self.device)
            if found:
                seq[0, n:n + len(found)] = drafts
            return drafts, None
        drafts, q = self.drafter.propose(seq, n, k, self.temperature, gen)
        seq[0, n:n + k] = drafts
        return drafts, q

    def _accept(self, logits: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor | None,
                gen: torch.Generator | None) -> tuple[int, list[int]]:
        """Accepted draft count and the tokens to append (accepted drafts + one more)."""
        d = int(drafts.numel())
        if self.temperature <= 0:
            both = torch.cat([logits.argmax(-1), drafts]).tolist()
            return greedy_accept(both[d + 1:], both[:d + 1])
        p = torch.softmax(logits.float() / self.temperature, dim=-1)
        if d:
            idx = torch.arange(d, device=p.device)
            p_x = p[idx, drafts]
            q_x = q[idx, drafts] if q is not None else torch.ones_like(p_x)
            u = torch.rand(d, device=p.device, generator=gen)
            keep = (u * q_x < p_x).tolist()
        else:
            keep = []
        a = 0
        while a < d and keep[a]:
            a += 1
        if a < d:
            if q is not None:
                resid = torch.clamp(p[a] - q[a], min=0)
            else:
                resid = p[a].clone()
                resid[drafts[a]] = 0
            total = resid.sum()
            dist = resid / total if float(total) > 0 else p[a]
        else:
            dist = p[a]
        extra = int(torch.multinomial(dist, 1, generator=gen))
        return a, [*drafts[:a].tolist(), extra]


def greedy_accept(drafts: list[int], best: list[int]) -> tuple[int, list[int]]:
    """Greedy verification: the drafts that match the target's choices, then its next token.

    ``best[i]`` is the target's argmax after the pending token and ``drafts[:i]``
    (``len(best) == len(drafts) + 1``). Returns ``(accepted, tokens to append)``.
    """
    a = 0
    while a < len(drafts) and drafts[a] == best[a]:
        a += 1
    return a, [*drafts[:a], best[a]]


def _finish(clock: Clock, t_start: float, prompt: list[int], tokens: list[int], finish: str,
            prefill: tuple[Any, Any], rounds: list[RoundRecord]) -> Generation:
    """Wait for the device, turn the marks into times and build the :class:`Generation`."""
    clock.sync()
    total_s = time.perf_counter() - t_start
    for r in rounds:
        a, b, c, e = r.marks
        r.draft_s, r.verify_s, r.round_s = (clock.seconds(a, b), clock.seconds(b, c),
                                            clock.seconds(a, e))
        r.marks = (None, None, None, None)
    return Generation(len(prompt), tokens[len(prompt):], finish, clock.seconds(*prefill),
                      total_s, rounds)


def shared_layers(target: nn.Module, draft: nn.Module) -> int:
    """``N`` when ``draft`` is the target's own first ``N`` layers, norm and head, else 0."""
    t_base, d_base = getattr(target, "model", None), getattr(draft, "model", None)
    t_layers = getattr(t_base, "layers", None)
    d_layers = getattr(d_base, "layers", None)
    if t_layers is None or d_layers is None or len(d_layers) >= len(t_layers):
        return 0
    same = (all(a is b for a, b in zip(d_layers, t_layers, strict=False))
            and getattr(draft, "lm_head", None) is getattr(target, "lm_head", None)
            and getattr(d_base, "norm", None) is getattr(t_base, "norm", None)
            and getattr(d_base, "embed_tokens", None) is getattr(t_base, "embed_tokens", None))
    return len(d_layers) if same else 0


def eos_ids_of(model: nn.Module, tokenizer: Any) -> set[int]:
    """End-of-sequence ids from the generation config and the tokenizer."""
    ids: set[int] = set()
    cfg_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (cfg_eos, getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def build_engine(target: nn.Module, spec: DraftSpec, draft_model: nn.Module | None, *, k: int,
                 eos_ids: set[int], temperature: float, device: torch.device | str
                 ) -> SpeculativeEngine:
    """An engine for a parsed draft spec (``draft_model`` for ``model`` drafts)."""
    from lapsd.collect.models import layers_draft

    if spec.kind == "ngram":
        return SpeculativeEngine(target, ngram=spec.n, k=k, eos_ids=eos_ids,
                                 temperature=temperature, device=device)
    draft = layers_draft(target, spec.n) if spec.kind == "layers" else draft_model
    return SpeculativeEngine(target, draft=draft, k=k, eos_ids=eos_ids, temperature=temperature,
                             device=device)
