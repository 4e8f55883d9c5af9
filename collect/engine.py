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

A request in progress is a :class:`Session`: prefilled once, then run one round per
:meth:`Session.step`, so a server can interleave requests round by round (``lapsd live``);
:meth:`SpeculativeEngine.generate` (the collector) is one session stepped to its end. Each session
keeps its own KV cache while others run, and can move it to host memory and back
(:meth:`Session.offload`, :meth:`Session.activate`):

* DynamicCache path: every session has its own caches (target, and draft model if any);
  switching between resident sessions is a pointer change, offloading moves their tensors.
* Static path: the captured steps read one working cache (:class:`~lapsd.collect.static.
  StaticRunner`); the session that runs is copied into it, and the one it replaces is first
  copied out into a device tensor of its own (*parked*), or straight to host memory when
  offloaded.

Batches (static path): :meth:`SpeculativeEngine.step_batch` runs one round of each of several
sessions in one drafting and one verification pass, each session in a row of the working cache
(:meth:`SpeculativeEngine.place`). Each session drafts, accepts and appends exactly as it would
alone, so its greedy tokens and rounds are those of its batch-1 run.

Hidden states (``states``): every path records the target's states that
:mod:`lapsd.collect.states` describes, from the passes it runs anyway (the prefill, now over the
whole prompt, and the verifications), into the :class:`Generation`'s ``states``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from typing_extensions import override

from lapsd.collect.models import DraftSpec, cache_arg
from lapsd.collect.states import RequestStates, StatesSpec
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
    #: Requests in the step that ran the round, and the step's measured time where a batched
    #: collection re-times ``round_s`` as at batch size one (``lapsd collect --batch-size``).
    batch: int = 1
    step_s: float | None = None

    def resolve(self, clock: Clock) -> None:
        """Turn the marks into times (after ``clock.sync()``); a second call does nothing."""
        a, b, c, e = self.marks
        if a is None:
            return
        self.draft_s, self.verify_s, self.round_s = (clock.seconds(a, b), clock.seconds(b, c),
                                                     clock.seconds(a, e))
        self.marks = (None, None, None, None)


@dataclass
class Generation:
    """The output of one request."""

    prompt_tokens: int
    tokens: list[int]
    finish_reason: str
    prefill_s: float | None
    total_s: float
    rounds: list[RoundRecord] = field(default_factory=list)
    states: RequestStates | None = None


# ------------------------------------------------------------------------------------ drafters
def crop_cache(cache: Any, length: int) -> None:
    """Keep the first ``length`` positions of a DynamicCache.

    A negative argument to ``crop`` means "remove that many" in every transformers 5 release,
    whereas a positive one is a length in some releases and an error in others.
    """
    remove = cache.get_seq_length() - length
    if remove > 0:
        cache.crop(-remove)


def cache_layers(cache: Any) -> list[Any]:
    """The initialised layers of a DynamicCache (each has ``keys`` and ``values`` tensors)."""
    return [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]


def to_host(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in host memory, pinned when ``t`` is on a GPU (the copy is async there)."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda)
    host.copy_(t, non_blocking=True)
    return host


class ModelDrafter:
    """A draft model with its own KV cache, kept in step with the committed sequence.

    One per session: the model is shared, the cache is the request's.
    """

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
        self.rollback(n_old + min(accepted, k - 1))

    def rollback(self, length: int) -> None:
        """Keep at most the first ``length`` cached positions."""
        self.cached = min(self.cached, length)
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

    def rollback(self, length: int) -> None:
        """Stateless: nothing to crop."""


# -------------------------------------------------------------------------------------- engine
class SpeculativeEngine:
    """Runs requests with a target and a draft (model, ``layers:N`` or ``ngram:N``).

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
    states
        The target's hidden states to record (:mod:`lapsd.collect.states`), or ``None``.
    """

    def __init__(self, target: Any, *, draft: Any = None, ngram: int = 0,
                 k: int = 4, eos_ids: set[int] | None = None, temperature: float = 0.0,
                 device: torch.device | str = "cpu", static: bool = True,
                 states: StatesSpec | None = None) -> None:
        if (draft is None) == (ngram == 0):
            raise ValueError("give exactly one of draft (a model) or ngram (N >= 1)")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.target = target
        self.draft: Any = draft
        self.ngram = NgramDrafter(ngram) if draft is None else None
        self.k = k
        self.eos_ids = set(eos_ids or ())
        self.temperature = temperature
        self.device = torch.device(device)
        self.states = states
        split = 0 if draft is None else shared_layers(target, draft)
        self.static_split = split if (static and temperature <= 0 and supports(target)
                                      and (draft is None or split > 0)) else None
        self.runner: StaticRunner | None = None
        self.rows = 1
        self.sizes: tuple[int, ...] | None = None

    def start(self, prompt: list[int], max_new_tokens: int, *, record: bool = True,
              seed: int = 0) -> Session:
        """A new session for one request (the model runs when it is prefilled or stepped).

        ``record``: time its rounds; ``seed``: its sampling seed (``temperature > 0``).
        """
        if not prompt:
            raise ValueError("empty prompt")
        runner = self._static_runner()
        if runner is not None:
            return StaticSession(self, runner, prompt, max_new_tokens, record)
        return DynamicSession(self, prompt, max_new_tokens, record, seed)

    @torch.inference_mode()
    def reserve(self, positions: int, batch: int = 1, sizes: tuple[int, ...] | None = None
                ) -> int | None:
        """Size the static path's working cache: ``positions`` per row, ``batch`` rows.

        Returns the positions per row. The steps (for the batch ``sizes``, default every one up
        to ``batch``) are captured now, not while requests wait; other rows or sizes build a new
        working cache (call it before any session starts). ``None`` on the DynamicCache path,
        whose caches grow as they go (and which runs batch size one only).
        """
        if self.static_split is not None and (self.rows, self.sizes) != (batch, sizes):
            self.rows, self.sizes, self.runner = batch, sizes, None
        runner = self._static_runner()
        if runner is None:
            if batch > 1:
                raise ValueError("batch sizes above one need the static path (greedy decoding, "
                                 "a Llama target, a layers:N or ngram:N draft)")
            return None
        runner.ensure(positions)
        return runner.capacity

    def _static_runner(self) -> StaticRunner | None:
        if self.static_split is not None and self.runner is None:
            self.runner = StaticRunner(self.target, self.static_split, self.k, rows=self.rows,
                                       sizes=self.sizes, states=self.states)
        return self.runner

    @torch.inference_mode()
    def place(self, sessions: list[StaticSession]) -> bool:
        """Put the sessions' caches in the working cache's first ``len(sessions)`` rows.

        A session already in one of those rows stays; the others take the remaining rows,
        whose holders are parked. Returns whether a cache came back from host memory.
        """
        b = len(sessions)
        if self.runner is None or b > self.runner.rows:
            raise ValueError(f"{b} sessions do not fit the working cache "
                             f"({0 if self.runner is None else self.runner.rows} rows; "
                             "reserve(positions, batch) first)")
        staying = {id(s) for s in sessions if s.row is not None and s.row < b}
        free = [r for r in range(b) if id(self.runner.owners[r]) not in staying]
        swapped = False
        for s in sessions:
            if id(s) not in staying:
                swapped |= s.activate(free.pop(0))
        return swapped

    @torch.inference_mode()
    def step_batch(self, sessions: list[StaticSession]) -> list[RoundRecord]:
        """One round of each session, in one drafting and one verification pass (static path).

        The sessions are placed in rows (:meth:`place`; time that call apart to time the
        switch) and prefilled where not yet; every record shares the step's marks.
        """
        if any(s.done for s in sessions):
            raise RuntimeError("a request in the batch has finished")
        by_row, results, marks = self._batch_round(sessions, None)
        records = {id(s): s.complete(len(s.tokens), *res, marks)
                   for s, res in zip(by_row, results, strict=True)}
        return [records[id(s)] for s in sessions]

    @torch.inference_mode()
    def probe_batch(self, sessions: list[StaticSession], d: int) -> RoundRecord:
        """Time one batched round with exactly ``d`` drafts in every row, then undo it.

        For profiling, as :meth:`Session.probe`: nothing is appended; the record's
        ``context_tokens`` is the batch's total.
        """
        _, _, marks = self._batch_round(sessions, d)
        return RoundRecord(d, 0, 0, sum(len(s.tokens) for s in sessions),
                           (*marks, sessions[0].clock.mark()))

    def _batch_round(self, sessions: list[StaticSession], exact: int | None
                     ) -> tuple[list[StaticSession], list[tuple[int, int, list[int]]],
                                tuple[Any, Any, Any]]:
        """Place, prefill and run one round of ``sessions``.

        Each drafts up to its own budget, or exactly ``exact``. Returns the sessions by row,
        their results and the marks.
        """
        self.place(sessions)
        for s in sessions:
            s.prefill()
        by_row = sorted(sessions, key=lambda s: s.row if s.row is not None else -1)
        clock = by_row[0].clock
        m0 = clock.mark()
        plans = [(s.tokens, len(s.tokens), s.draft_budget() if exact is None else exact,
                  exact is not None) for s in by_row]
        results, m1, m2 = _static_round(by_row[0].runner, self.ngram, clock, plans)
        return by_row, results, (m0, m1, m2)

    def generate(self, prompt: list[int], max_new_tokens: int, *, record: bool = True,
                 seed: int = 0) -> Generation:
        """Run one request to EOS or ``max_new_tokens``; time its rounds when ``record``."""
        session = self.start(prompt, max_new_tokens, record=record, seed=seed)
        session.prefill()
        while not session.done:
            session.step()
        return session.result()

    def _clip(self, new: list[int], remaining: int) -> tuple[list[int], str]:
        """Cut a round's tokens at the budget and after the first EOS: ``(tokens, finish)``."""
        new = new[:remaining]
        for i, tok in enumerate(new):
            if tok in self.eos_ids:
                return new[:i + 1], "stop"
        return new, "length"

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


# ------------------------------------------------------------------------------------ sessions
#: What a path's one round gives: drafted, accepted, tokens to append, draft-end and verify-end
#: marks.
StepResult = tuple[int, int, list[int], Any, Any]


class Session(ABC):
    """One request in progress: prefilled once, then run one round per :meth:`step`.

    Token bookkeeping as in the module docstring: ``tokens`` holds the prompt and what was
    produced; the cache holds all but the last (pending) token once the session is prefilled.

    Where its cache is: nowhere before :meth:`prefill` and after the last round; else on the
    device (``resident_tokens > 0``) or, after :meth:`offload`, in host memory until
    :meth:`activate` brings it back. :meth:`step` activates the session itself; a server calls
    :meth:`activate` first to time the switch apart from the round.
    """

    def __init__(self, engine: SpeculativeEngine, prompt: list[int], max_new_tokens: int,
                 record: bool) -> None:
        self.engine = engine
        self.prompt = list(prompt)
        self.tokens = list(prompt)
        self.max_new_tokens = max_new_tokens
        self.clock = make_clock(engine.device, record)
        self.rounds: list[RoundRecord] = []
        self.finish_reason: str | None = None if max_new_tokens > 0 else "length"
        self.prefilled = False
        self.offloaded = False
        self._prefill_marks: tuple[Any, Any] = (None, None)
        self._t_start = time.perf_counter()
        #: With states: the prompt's (from the prefill) and the decode ones kept so far.
        self._prompt_states: torch.Tensor | None = None
        self._decode_states: list[tuple[int, torch.Tensor]] = []

    # ----------------------------------------------------------------------------- state
    @property
    def done(self) -> bool:
        """Whether the request has finished (EOS or the token budget)."""
        return self.finish_reason is not None

    @property
    def produced(self) -> int:
        """Tokens produced so far."""
        return len(self.tokens) - len(self.prompt)

    @property
    def cached(self) -> int:
        """Positions in the session's KV cache (wherever it is)."""
        return len(self.tokens) - 1 if self.prefilled and not self.done else 0

    @property
    def resident_tokens(self) -> int:
        """Positions of this session's KV cache held in device memory."""
        return 0 if self.offloaded else self.cached

    @property
    def prefill_s(self) -> float | None:
        """Seconds of the prefill (after the clock's sync; ``None`` unrecorded or not yet)."""
        if not self.prefilled:
            return None
        return self.clock.seconds(*self._prefill_marks)

    # --------------------------------------------------------------------------- running
    @torch.inference_mode()
    def prefill(self) -> None:
        """Fill the cache with the prompt (once; :meth:`step` does it when needed)."""
        if self.prefilled:
            return
        self.activate(None)
        p0 = self.clock.mark()
        self._prefill()
        self._prefill_marks = (p0, self.clock.mark())
        self.prefilled = True

    @torch.inference_mode()
    def step(self) -> RoundRecord:
        """Run exactly one round and return its record (times resolve after the clock syncs).

        The cache is freed when the request finishes.
        """
        if self.done:
            raise RuntimeError("the request has finished")
        self.prefill()
        self.activate()
        n = len(self.tokens)
        m0 = self.clock.mark()
        d, accepted, proposed, m1, m2 = self._step(n, self.draft_budget())
        return self.complete(n, d, accepted, proposed, (m0, m1, m2))

    def draft_budget(self) -> int:
        """Most tokens the next round may draft: ``k``, fewer near the token budget."""
        return min(self.engine.k, self.max_new_tokens - self.produced - 1)

    def complete(self, n: int, d: int, accepted: int, proposed: list[int],
                 marks: tuple[Any, Any, Any]) -> RoundRecord:
        """Append a verified round's tokens (clipped at the budget and EOS) and record it.

        ``marks``: the clock's marks at the round's start, draft end and verify end.
        """
        new, finish = self.engine._clip(proposed, self.max_new_tokens - self.produced)  # noqa: SLF001
        self.tokens.extend(new)
        self._commit(n, new, accepted, d)
        record = RoundRecord(d, accepted, len(new), n, (*marks, self.clock.mark()))
        self.rounds.append(record)
        if self.engine.states is not None:
            self._keep_states(n, min(accepted, len(new)), self.engine.states.every)
        if finish == "stop" or self.produced >= self.max_new_tokens:
            self.finish_reason = finish
            self._release()
        return record

    def _keep_states(self, n: int, fed: int, every: int) -> None:
        """Keep the decode states of the round just verified at context ``n``.

        Its positions ``n - 1 .. n - 1 + fed`` hold tokens of the sequence (the pending token,
        ``fed`` accepted drafts kept); generated token ``g`` sits at ``len(prompt) + g - 1``.
        """
        p = len(self.prompt)
        first = max(every, -(-(n - p) // every) * every)
        wanted = list(range(first, n - p + fed + 1, every))
        if wanted:
            states = self._round_states([p + g - n for g in wanted])
            self._decode_states.extend(zip(wanted, states, strict=True))

    @property
    def prompt_states(self) -> torch.Tensor | None:
        """With states, after the prefill: ``(layers, 2, hidden)`` on the device (last, mean)."""
        return self._prompt_states

    @property
    def decode_states(self) -> list[tuple[int, torch.Tensor]]:
        """With states: ``(generated tokens, state)`` kept so far, ascending (do not modify)."""
        return self._decode_states

    def _recorded(self) -> RequestStates | None:
        """The request's states in host memory (``None``: none recorded)."""
        spec = self.engine.states
        if spec is None or self._prompt_states is None:
            return None
        decode = (torch.stack([v for _, v in self._decode_states]) if self._decode_states
                  else torch.zeros((0, spec.hidden_size)))
        return RequestStates(self._prompt_states.float().cpu(),
                             [g for g, _ in self._decode_states], decode.float().cpu())

    def cancel(self) -> None:
        """Drop the request where it stands and free its cache (nothing more runs)."""
        if not self.done:
            self.finish_reason = "cancelled"
            self._release()

    @torch.inference_mode()
    def probe(self, d: int) -> RoundRecord:
        """Time one round with exactly ``d`` drafts at the current context, then undo it.

        For profiling: nothing is appended (``emitted`` is 0) and the cache is as before.
        """
        self.prefill()
        self.activate()
        n = len(self.tokens)
        m0 = self.clock.mark()
        d, accepted, _, m1, m2 = self._step(n, d, exact=True)
        self._undo(n)
        return RoundRecord(d, accepted, 0, n, (m0, m1, m2, self.clock.mark()))

    def result(self) -> Generation:
        """Wait for the device, resolve the round times and build the :class:`Generation`."""
        self.clock.sync()
        total_s = time.perf_counter() - self._t_start
        for r in self.rounds:
            r.resolve(self.clock)
        return Generation(len(self.prompt), self.tokens[len(self.prompt):],
                          self.finish_reason or "length", self.prefill_s, total_s, self.rounds,
                          self._recorded())

    # ------------------------------------------------------------------------- residency
    @torch.inference_mode()
    def activate(self, row: int | None = 0) -> bool:
        """Make this session's cache the one the next round uses; ``True`` if it came from host.

        ``row``: the static path's working-cache row (``None``: the one it is in, else the
        first); batch size one runs row 0. Copies are queued on the device's stream; sync the
        clock to time them.
        """
        swapped = self._activate(row)
        self.offloaded = False
        return swapped

    @torch.inference_mode()
    def offload(self) -> int:
        """Move the cache to host memory (pinned on a GPU); the bytes moved (0: nothing to do)."""
        if self.offloaded or self.cached == 0:
            return 0
        moved = self._offload()
        self.offloaded = True
        return moved

    # ------------------------------------------------------------------------ for paths
    @abstractmethod
    def _prefill(self) -> None:
        """Fill the cache with ``prompt[:-1]``."""

    @abstractmethod
    def _step(self, n: int, d: int, exact: bool = False) -> StepResult:
        """Draft up to ``d`` tokens after ``tokens[:n]`` and verify them.

        ``exact``: draft exactly ``d`` (prompt lookup pads its drafts with the context's tail).
        """

    @abstractmethod
    def _commit(self, n: int, new: list[int], accepted: int, drafted: int) -> None:
        """Update the caches with the kept tokens."""

    @abstractmethod
    def _round_states(self, index: list[int]) -> torch.Tensor:
        """The last verification's decode-layer states at these of its positions (m, H)."""

    @abstractmethod
    def _undo(self, n: int) -> None:
        """Forget a :meth:`probe` round at context ``n``."""

    @abstractmethod
    def _activate(self, row: int | None) -> bool:
        """See :meth:`activate`."""

    @abstractmethod
    def _offload(self) -> int:
        """See :meth:`offload`."""

    @abstractmethod
    def _release(self) -> None:
        """Free the cache (the request has finished)."""


class DynamicSession(Session):
    """The DynamicCache loop: any target, draft model or prompt lookup, greedy or sampled."""

    def __init__(self, engine: SpeculativeEngine, prompt: list[int], max_new_tokens: int,
                 record: bool, seed: int) -> None:
        super().__init__(engine, prompt, max_new_tokens, record)
        self.gen: torch.Generator | None = None
        if engine.temperature > 0:
            self.gen = torch.Generator(device=engine.device)
            self.gen.manual_seed(seed)
        n = len(prompt)
        self.seq = torch.zeros((1, n + max_new_tokens + engine.k + 1), dtype=torch.long,
                               device=engine.device)
        self.seq[0, :n] = torch.tensor(prompt, dtype=torch.long)
        self.drafter: ModelDrafter | NgramDrafter = (
            ModelDrafter(engine.draft) if engine.ngram is None else engine.ngram)
        self.cache: Any = None
        self._verified: torch.Tensor | None = None

    def _prefill(self) -> None:
        from transformers import DynamicCache

        target, n, spec = self.engine.target, len(self.prompt), self.engine.states
        self.cache = DynamicCache(config=target.config)
        if spec is not None:  # the whole prompt, then the cache without its last token
            hidden = target(input_ids=self.seq[:, :n], **cache_arg(target, self.cache),
                            use_cache=True, logits_to_keep=1,
                            output_hidden_states=True).hidden_states
            crop_cache(self.cache, n - 1)
            self._prompt_states = torch.stack([
                torch.stack((hidden[layer][0, n - 1].float(), hidden[layer][0].float().mean(0)))
                for layer in spec.layers])
        elif n > 1:
            target(input_ids=self.seq[:, : n - 1], **cache_arg(target, self.cache),
                   use_cache=True, logits_to_keep=1)
        self.drafter.reset(self.seq, n)

    def _step(self, n: int, d: int, exact: bool = False) -> StepResult:
        engine = self.engine
        drafts, q = self._draft(n, d, exact)
        d = int(drafts.numel())
        m1 = self.clock.mark()
        out = engine.target(input_ids=self.seq[:, n - 1:n + d],
                            **cache_arg(engine.target, self.cache), use_cache=True,
                            output_hidden_states=engine.states is not None)
        logits = out.logits[0]
        if engine.states is not None:
            self._verified = out.hidden_states[engine.states.decode_layer][0]
        m2 = self.clock.mark()
        accepted, proposed = engine._accept(logits, drafts, q, self.gen)  # noqa: SLF001
        return d, accepted, proposed, m1, m2

    def _draft(self, n: int, k: int, exact: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        seq = self.seq
        if k <= 0:
            return seq.new_empty(0), None
        if isinstance(self.drafter, NgramDrafter):
            found = _lookup(self.drafter, self.tokens, n, k, exact)
            drafts = torch.tensor(found, dtype=torch.long, device=seq.device)
            if found:
                seq[0, n:n + len(found)] = drafts
            return drafts, None
        drafts, q = self.drafter.propose(seq, n, k, self.engine.temperature, self.gen)
        seq[0, n:n + k] = drafts
        return drafts, q

    def _commit(self, n: int, new: list[int], accepted: int, drafted: int) -> None:
        self.seq[0, n:n + len(new)] = torch.tensor(new, dtype=torch.long)
        crop_cache(self.cache, n + len(new) - 1)
        self.drafter.commit(n, accepted, max(drafted, 1))

    def _round_states(self, index: list[int]) -> torch.Tensor:
        assert self._verified is not None  # a verification ran with states on
        return self._verified[index]

    def _undo(self, n: int) -> None:
        crop_cache(self.cache, n - 1)
        self.drafter.rollback(n - 1)

    def _layers(self) -> list[Any]:
        caches = [self.cache]
        if isinstance(self.drafter, ModelDrafter):
            caches.append(self.drafter.cache)
        return [layer for c in caches for layer in cache_layers(c)]

    def _activate(self, row: int | None) -> bool:  # noqa: ARG002 (one cache per session)
        if not self.offloaded:
            return False
        device = self.engine.device
        for layer in self._layers():
            layer.keys = layer.keys.to(device, non_blocking=True)
            layer.values = layer.values.to(device, non_blocking=True)
        return True

    def _offload(self) -> int:
        moved = 0
        for layer in self._layers():
            layer.keys, layer.values = to_host(layer.keys), to_host(layer.values)
            moved += 2 * layer.keys.numel() * layer.keys.element_size()
        return moved

    def _release(self) -> None:
        self.cache = None
        if isinstance(self.drafter, ModelDrafter):
            self.drafter.cache = None


def _lookup(ngram: NgramDrafter, tokens: list[int], n: int, k: int, exact: bool) -> list[int]:
    """Prompt-lookup drafts; ``exact``: padded to ``k`` with the context's tail (profiling)."""
    found = ngram.lookup(tokens, k)
    return [*found, *tokens[n - k:n]][:k] if exact else found


class StaticSession(Session):
    """The static-cache path (greedy, Llama target, ``layers:N`` or prompt lookup)."""

    def __init__(self, engine: SpeculativeEngine, runner: StaticRunner, prompt: list[int],
                 max_new_tokens: int, record: bool) -> None:
        super().__init__(engine, prompt, max_new_tokens, record)
        self.runner = runner
        #: The working-cache row that holds the cache (``None``: none).
        self.row: int | None = None
        #: The cache while not in the working cache: parked on the device, or in host memory.
        self.store: torch.Tensor | None = None

    def _prefill(self) -> None:
        assert self.row is not None  # prefill() activates first
        if self.engine.states is None:
            self.runner.prefill(self.prompt[:-1], self.row)
        else:  # the whole prompt (its states), the cache without its last token
            self.runner.prefill(self.prompt, self.row, keep=len(self.prompt) - 1)
            self._prompt_states = self.runner.prompt_states.clone()

    def _step(self, n: int, d: int, exact: bool = False) -> StepResult:
        [(d, accepted, proposed)], m1, m2 = _static_round(
            self.runner, self.engine.ngram, self.clock, [(self.tokens, n, d, exact)])
        return d, accepted, proposed, m1, m2

    @override
    def _commit(self, n: int, new: list[int], accepted: int, drafted: int) -> None:
        # No cropping: positions past the kept tokens are masked until they are overwritten.
        pass

    def _round_states(self, index: list[int]) -> torch.Tensor:
        assert self.row is not None  # the round ran in this row
        return self.runner.decode_states[self.row, index]

    @override
    def _undo(self, n: int) -> None:
        # A probe round wrote only the pending token (as the next round will) and masked ones.
        pass

    def _activate(self, row: int | None) -> bool:
        runner = self.runner
        runner.ensure(len(self.prompt) + self.max_new_tokens + self.engine.k)
        if row is None:
            row = 0 if self.row is None else self.row
        if self.row == row:
            return False
        if self.row is not None:
            self.park()
        owner = runner.owners[row]
        if isinstance(owner, StaticSession):
            owner.park()
        runner.owners[row], self.row = self, row
        if self.store is not None:
            runner.load(self.store, row)
            self.store = None
        return self.offloaded

    def park(self) -> None:
        """Copy the cache out of its working-cache row into a device tensor of its own."""
        runner, row = self.runner, self.row
        assert row is not None
        self.store = torch.empty(runner.cache_shape(self.cached), dtype=runner.dtype,
                                 device=runner.device)
        runner.save(self.store, row)
        runner.owners[row], self.row = None, None

    def _offload(self) -> int:
        runner, row = self.runner, self.row
        if row is not None:
            host = torch.empty(runner.cache_shape(self.cached), dtype=runner.dtype,
                               pin_memory=runner.device.type == "cuda")
            runner.save(host, row)
            runner.owners[row], self.row = None, None
        else:
            assert self.store is not None  # prefilled, unfinished, in no row: parked
            host = to_host(self.store)
        self.store = host
        return host.numel() * host.element_size()

    def _release(self) -> None:
        if self.row is not None:
            self.runner.owners[self.row], self.row = None, None
        self.store = None


def _static_round(runner: StaticRunner, ngram: NgramDrafter | None, clock: Clock,
                  rows: list[tuple[list[int], int, int, bool]]
                  ) -> tuple[list[tuple[int, int, list[int]]], Any, Any]:
    """One round of the working cache's first ``len(rows)`` rows, drafted and verified together.

    ``rows[i] = (tokens, n, d, exact)`` for row ``i``: its tokens, context length, most
    drafts, and (profiling) whether to draft exactly ``d``. Returns each row's ``(drafted,
    accepted, tokens to append)`` and the draft-end and verify-end marks. The step drafts the
    longest of the rows' drafts; each row accepts among its own only.
    """
    inputs, ds = [], []
    for tokens, n, d, exact in rows:
        found = _lookup(ngram, tokens, n, d, exact) if ngram is not None and d > 0 else []
        inputs.append((n - 1, tokens[n - 1], found))
        ds.append(len(found) if ngram is not None else max(d, 0))
    width, b = max(ds), len(rows)
    runner.start_round(inputs)
    if ngram is None and width:
        runner.draft(width, b)
    m1 = clock.mark()
    runner.verify(width, b)
    m2 = clock.mark()
    out = [(d, *greedy_accept(drafts[:d], best[:d + 1]))
           for d, (drafts, best) in zip(ds, runner.result(width, b), strict=True)]
    return out, m1, m2


def greedy_accept(drafts: list[int], best: list[int]) -> tuple[int, list[int]]:
    """Greedy verification: the drafts that match the target's choices, then its next token.

    ``best[i]`` is the target's argmax after the pending token and ``drafts[:i]``
    (``len(best) == len(drafts) + 1``). Returns ``(accepted, tokens to append)``.
    """
    a = 0
    while a < len(drafts) and drafts[a] == best[a]:
        a += 1
    return a, [*drafts[:a], best[a]]


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
                 eos_ids: set[int], temperature: float, device: torch.device | str,
                 states: StatesSpec | None = None) -> SpeculativeEngine:
    """An engine for a parsed draft spec (``draft_model`` for ``model`` drafts)."""
    from lapsd.collect.models import layers_draft

    if spec.kind == "ngram":
        return SpeculativeEngine(target, ngram=spec.n, k=k, eos_ids=eos_ids,
                                 temperature=temperature, device=device, states=states)
    draft = layers_draft(target, spec.n) if spec.kind == "layers" else draft_model
    return SpeculativeEngine(target, draft=draft, k=k, eos_ids=eos_ids, temperature=temperature,
                             device=device, states=states)
