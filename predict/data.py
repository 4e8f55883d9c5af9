"""Training and evaluation data for the length predictor: prompts with their output lengths.

Inputs, all turned into a :class:`LengthData`:

* a lapsd trace folder (``requests`` table: ``prompt``, ``output_tokens``, ``target_model``,
  ``category``, and ``response`` with per-round ``response_chars`` when the trace kept the
  text): the lengths a user's own server produced, in tokens;
* alpaca_eval ``model_outputs.json`` files (a JSON array of ``instruction``, ``output``,
  ``generator``, ``dataset``), or a folder of them: lengths are counted with a tokenizer;
* answer files in the FastChat layout (``question_id``, ``model_id``, ``choices[0].turns``):
  Spec-Bench answers (``new_tokens`` and ``accept_lengths`` per turn), MT-bench answers
  (``new_tokens`` and ``idxs``, no accept lengths) and Arena-style answers (hex-string ids,
  turns as ``{"content": ..., "token_len": ...}`` objects). The prompts come from the
  ``question.jsonl`` given with ``--questions`` or, when none is given, found beside the answers
  (``BENCH/question.jsonl`` above ``BENCH/model_answer/``, or a ``*question*.jsonl`` in the
  answers' own folder), read with :func:`lapsd.replay.importers.specbench.read_questions`.
  Lengths are the recorded ``new_tokens`` (or ``token_len``); turns without a count are counted
  like alpaca_eval outputs.

Without a tokenizer, text lengths are estimated as characters / :data:`CHARS_PER_TOKEN`
(3.7: LLaMA-family tokenizers on English answers, measured on the Spec-Bench answers; Llama-3 is
nearer 4.4 and Qwen2.5 4.7), and the estimate is announced and recorded in the model card.

Every example belongs to a *prompt set* (``prompt_sets``: the alpaca_eval folder, the questions
file's folder, the trace's folder): cross-dataset evaluation trains on some sets and evaluates on
another (:func:`lapsd.predict.evaluate.cross_dataset`).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lapsd.errors import LapsdError
from lapsd.io import read_jsonl, sha256_file
from lapsd.replay.arrays import TraceArrays
from lapsd.replay.trace import MANIFEST_FILE, Trace, TraceError, read_trace, trace_digest

CHARS_PER_TOKEN = 3.7

#: Per-example text offsets: ``(tokens after each round, characters after each round)``.
Offsets = tuple[np.ndarray, np.ndarray]


@dataclass
class LengthData:
    """Prompts with known output lengths.

    Attributes
    ----------
    prompts, categories, target_models
        One entry per example; ``categories`` holds ``None`` where unknown.
    output_tokens
        Output length in tokens (int64).
    sources
        ``{"path", "sha256"}`` of every file read (for the model card).
    token_count
        How output tokens were obtained (``"recorded"``, ``"tokenizer:PATH"`` or
        ``"chars/3.7 estimate"``).
    responses
        The generated text of each example, or ``None`` (re-prediction trains on it).
    offsets
        Exact text offsets per round (:data:`Offsets`) where a trace recorded them, else
        ``None``: the text is then cut in proportion to tokens.
    prompt_sets
        The prompt set each example comes from (see the module docstring).
    """

    prompts: list[str]
    categories: list[str | None]
    output_tokens: np.ndarray
    target_models: list[str]
    sources: list[dict[str, str]] = field(default_factory=list)
    token_count: str = "recorded"
    responses: list[str | None] = field(default_factory=list)
    offsets: list[Offsets | None] = field(default_factory=list)
    prompt_sets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Fill the optional per-example columns and check that every column has ``n`` rows."""
        n = len(self.prompts)
        self.output_tokens = np.asarray(self.output_tokens, dtype=np.int64)
        if not self.responses:
            self.responses = [None] * n
        if not self.offsets:
            self.offsets = [None] * n
        if not self.prompt_sets:
            self.prompt_sets = ["data"] * n
        sizes = {len(self.categories), self.output_tokens.size, len(self.target_models),
                 len(self.responses), len(self.offsets), len(self.prompt_sets)}
        if sizes != {n}:
            raise LapsdError(f"LengthData columns have different lengths ({n} prompts, "
                             f"{sorted(sizes)}): pass one value per example in every column")

    def __len__(self) -> int:
        """The number of examples."""
        return len(self.prompts)

    @property
    def models(self) -> list[str]:
        """The distinct target models, sorted."""
        return sorted(set(self.target_models))

    @property
    def sets(self) -> list[str]:
        """The distinct prompt sets, in order of appearance."""
        return list(dict.fromkeys(self.prompt_sets))

    @property
    def n_with_text(self) -> int:
        """How many examples carry their response text."""
        return sum(r is not None for r in self.responses)

    def subset(self, index: Sequence[int] | np.ndarray) -> LengthData:
        """The examples at ``index`` (same provenance)."""
        idx = np.asarray(index, dtype=np.int64)
        pick = idx.tolist()
        return LengthData([self.prompts[i] for i in pick], [self.categories[i] for i in pick],
                          self.output_tokens[idx], [self.target_models[i] for i in pick],
                          self.sources, self.token_count, [self.responses[i] for i in pick],
                          [self.offsets[i] for i in pick], [self.prompt_sets[i] for i in pick])

    def for_model(self, name: str) -> LengthData:
        """The examples of one target model; a clear error when it is absent."""
        idx = [i for i, m in enumerate(self.target_models) if m == name]
        if not idx:
            raise LapsdError(f"target model {name!r} is not in the data; it has "
                             f"{self.models}: pass one of these to --target-model")
        return self.subset(idx)

    def for_sets(self, names: Sequence[str]) -> LengthData:
        """The examples of the named prompt sets; a clear error for a set that is absent."""
        missing = sorted(set(names) - set(self.prompt_sets))
        if missing:
            raise LapsdError(f"prompt set(s) {missing} are not in the data; it has "
                             f"{self.sets}")
        wanted = set(names)
        return self.subset([i for i, s in enumerate(self.prompt_sets) if s in wanted])

    def with_models(self, names: dict[str, str]) -> LengthData:
        """A copy with target models renamed (``{old: new}``; others kept)."""
        out = self.subset(np.arange(len(self)))
        out.target_models = [names.get(m, m) for m in self.target_models]
        return out

    def with_set(self, name: str) -> LengthData:
        """A copy whose examples all belong to the prompt set ``name``."""
        out = self.subset(np.arange(len(self)))
        out.prompt_sets = [name] * len(self)
        return out

    @staticmethod
    def concat(parts: Sequence[LengthData]) -> LengthData:
        """Several data sets as one (their token counting is recorded side by side)."""
        counts = {p.token_count for p in parts}
        return LengthData(
            [x for p in parts for x in p.prompts], [x for p in parts for x in p.categories],
            np.concatenate([p.output_tokens for p in parts]) if parts else np.zeros(0),
            [x for p in parts for x in p.target_models],
            [s for p in parts for s in p.sources], " + ".join(sorted(counts)),
            [x for p in parts for x in p.responses], [x for p in parts for x in p.offsets],
            [x for p in parts for x in p.prompt_sets],
        )


TokenCounter = Callable[[list[str]], np.ndarray]

#: A decoding method or run setting in an answer file's ``model_id``: the name before it is the
#: target model (``vicuna-7b-v1.3-eagle-float16-temperature-0.0`` -> ``vicuna-7b-v1.3``).
_RUN_SUFFIX = re.compile(r"-(?:eagle\d?|sps|medusa|hydra|recycling|vanilla|lookahead|pld|"
                         r"ea-in|base-in|float16|fp16|bf16|float32|temperature|temp)(?:-|$)",
                         re.IGNORECASE)
_RUN_PREFIX = re.compile(r"^(?:medusa|eagle\d?|hydra)-", re.IGNORECASE)


def canonical_model(model_id: str) -> str:
    """The target model of a benchmark ``model_id``: run settings and the SD method removed.

    Length depends on the target model, not on the drafter, so Spec-Bench's EAGLE, Medusa and
    vanilla answers of Vicuna-7B all calibrate ``vicuna-7b-v1.3``. A ``model_id`` that names the
    wrong model (CALISPEC's Llama-3 answers say ``vicuna-7b-v1.3-eagle2``) needs
    :meth:`LengthData.with_models`.
    """
    name = _RUN_PREFIX.sub("", model_id)
    match = _RUN_SUFFIX.search(name)
    return name[: match.start()] if match and match.start() > 0 else name


def load_token_counter(path: str | Path | None) -> tuple[TokenCounter, str]:
    """A function counting tokens of texts, and its description for the model card.

    Parameters
    ----------
    path
        A local Hugging Face tokenizer folder, a ``.gguf`` file (its tokenizer is read with
        ``transformers``), or ``None`` for the characters-per-token estimate (announced with a
        warning).

    Raises
    ------
    LapsdError
        When the tokenizer cannot be loaded.
    """
    if path is None:
        warnings.warn(f"no --tokenizer given: output tokens are estimated as characters / "
                      f"{CHARS_PER_TOKEN} (LLaMA-family tokenizers on English text); pass "
                      "--tokenizer DIR or --tokenizer FILE.gguf for exact counts", stacklevel=2)

        def estimate(texts: list[str]) -> np.ndarray:
            chars = np.fromiter((len(t) for t in texts), np.float64, len(texts))
            return np.maximum(np.ceil(chars / CHARS_PER_TOKEN), 1).astype(np.int64)

        return estimate, f"chars/{CHARS_PER_TOKEN} estimate"
    p = Path(path)
    if not p.exists():
        raise LapsdError(f"tokenizer {p} not found: pass a Hugging Face tokenizer folder "
                         "(with tokenizer.json or tokenizer_config.json) or a .gguf file")
    try:
        from transformers import AutoTokenizer

        if p.is_file():
            tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name,
                                                local_files_only=True)
        else:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # transformers raises many types for unusable folders/files
        raise LapsdError(
            f"cannot load a tokenizer from {p} ({type(exc).__name__}: {exc}); pass a Hugging "
            "Face tokenizer folder (tokenizer.json / tokenizer_config.json) or a GGUF model "
            "file with tokenizer metadata (needs the 'gguf' package), or leave --tokenizer out "
            f"to estimate tokens as characters / {CHARS_PER_TOKEN}") from None

    def count(texts: list[str]) -> np.ndarray:
        ids = tok(texts, add_special_tokens=False)["input_ids"]
        return np.maximum(np.fromiter((len(x) for x in ids), np.int64, len(texts)), 1)

    return count, f"tokenizer:{p}"


def check_prompts(prompts: Sequence[Any], where: Path | str) -> None:
    """Refuse empty or missing prompts, naming the first one."""
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise LapsdError(f"{where}: example {i} has an empty or missing prompt "
                             f"({p!r}); remove it or fill in its text")


def load_alpaca_eval(path: str | Path, counter: TokenCounter, token_count: str) -> LengthData:
    """alpaca_eval ``model_outputs.json`` files: one file or every ``*.json`` of a folder."""
    base = Path(path)
    files = sorted(base.glob("*.json")) if base.is_dir() else [base]
    if not files:
        raise LapsdError(f"{base}: no *.json files (expected alpaca_eval model_outputs files)")
    name = base.name if base.is_dir() else base.parent.name
    parts = []
    for f in files:
        try:
            rows = json.loads(f.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LapsdError(f"{f}: not readable JSON ({exc})") from None
        if not isinstance(rows, list) or not rows:
            raise LapsdError(f"{f}: expected a non-empty JSON array of alpaca_eval records "
                             "(instruction, output, generator)")
        for i, r in enumerate(rows):
            missing = [k for k in ("instruction", "output") if not isinstance(r, dict)
                       or not isinstance(r.get(k), str)]
            if missing:
                raise LapsdError(f"{f}: record {i} lacks the text field(s) {missing} of the "
                                 "alpaca_eval format (instruction, output, generator)")
        prompts = [r["instruction"] for r in rows]
        check_prompts(prompts, f)
        outputs = [r["output"] for r in rows]
        parts.append(LengthData(
            prompts, [r.get("dataset") for r in rows], counter(outputs),
            [str(r.get("generator") or f.stem) for r in rows],
            [{"path": str(f), "sha256": sha256_file(f)}], token_count, list(outputs),
            prompt_sets=[name] * len(rows),
        ))
    return LengthData.concat(parts)


def _round_offsets(arrays: TraceArrays, i: int) -> Offsets | None:
    """Request ``i``'s (tokens, characters) after each round, when the trace recorded them."""
    if arrays.response_chars is None or not arrays.responses or arrays.responses[i] is None:
        return None
    lo, hi = int(arrays.offsets[i]), int(arrays.offsets[i + 1])
    chars = arrays.response_chars[lo:hi]
    if chars.size == 0 or np.any(chars < 0):
        return None
    return arrays.cum["emitted"][lo + 1:hi + 1] - arrays.cum["emitted"][lo], chars


def from_arrays(arrays: TraceArrays, name: str = "trace",
                index: Sequence[int] | np.ndarray | None = None) -> LengthData:
    """Requests of a compiled trace (all, or those at ``index``) as training data.

    Keeps each request's response text and its exact per-round offsets when the trace has them.

    Raises
    ------
    LapsdError
        When a request has no prompt text.
    """
    idx = (np.arange(arrays.n_requests) if index is None
           else np.asarray(index, dtype=np.int64)).tolist()
    prompts = [arrays.prompts[i] for i in idx]
    missing = [j for j, p in enumerate(prompts) if p is None]
    if missing:
        raise LapsdError(f"{name}: {len(missing)} of {len(prompts)} requests have no prompt "
                         f"text (first: {arrays.request_ids[idx[missing[0]]]!r}); the "
                         "predictor needs prompts: re-import with the questions file "
                         "(Spec-Bench: --questions question.jsonl) or collect with prompts")
    check_prompts(prompts, name)
    responses = [arrays.responses[i] if arrays.responses else None for i in idx]
    models = [(arrays.target_models[i] if arrays.target_models else None) or "unknown"
              for i in idx]
    return LengthData([str(p) for p in prompts], [arrays.categories[i] for i in idx],
                      arrays.output_tokens[idx], models, responses=responses,
                      offsets=[_round_offsets(arrays, i) for i in idx],
                      prompt_sets=[name] * len(idx))


def from_trace(trace: Trace, where: Path | str) -> LengthData:
    """The requests of a trace as training data; every request needs its prompt text."""
    prompts = trace.requests["prompt"].to_list()
    missing = [i for i, p in enumerate(prompts) if p is None]
    if missing:
        raise TraceError(
            f"{len(missing)} of {len(prompts)} requests have no prompt text (first: row "
            f"{missing[0]}); the predictor needs prompts: re-import with the questions file "
            "(Spec-Bench: --questions question.jsonl) or collect with prompt logging on",
            path=Path(where), column="prompt", row=missing[0])
    return from_arrays(TraceArrays.from_trace(trace), Path(where).name)


def load_trace_data(path: str | Path) -> LengthData:
    """A trace folder as training data (see :func:`from_trace`)."""
    data = from_trace(read_trace(path), path)
    data.sources = [{"path": str(path), "sha256": trace_digest(path)}]
    return data


def find_questions(answers: Path) -> Path | None:
    """The questions file of an answer file laid out as benchmarks ship them, or ``None``.

    ``BENCH/question.jsonl`` for ``BENCH/model_answer/FILE.jsonl`` (FastChat, Spec-Bench,
    Arena-Hard), else the only ``*question*.jsonl`` in the answer file's own folder.
    """
    folder = answers.resolve().parent
    candidates = [folder.parent / "question.jsonl"] if folder.name == "model_answer" else []
    candidates += sorted(p for p in folder.glob("*question*.jsonl") if p != answers.resolve())
    found = [p for p in candidates if p.is_file()]
    return found[0] if found else None


def _merge_questions(files: Sequence[Path]) -> dict[str, dict[str, Any]]:
    from lapsd.replay.importers.specbench import read_questions

    merged: dict[str, dict[str, Any]] = {}
    for f in files:
        for qid, q in read_questions(f).items():
            if qid in merged and merged[qid]["turns"] != q["turns"]:
                raise LapsdError(f"{f}: question_id {qid} also appears, with other text, in "
                                 "another questions file; pass the answer files of each "
                                 "benchmark in a separate --data run or with its own folder "
                                 "layout")
            merged[qid] = q
    return merged


def _turn_text(turn: Any) -> str | None:
    if isinstance(turn, dict):
        turn = turn.get("content")
    return turn if isinstance(turn, str) else None


def _turn_tokens(choice: dict[str, Any], turn: Any, t: int) -> int | None:
    """Recorded tokens of turn ``t``: ``new_tokens[t]`` or the turn's ``token_len``."""
    counts = choice.get("new_tokens")
    if isinstance(counts, list) and t < len(counts):
        return int(counts[t])
    if isinstance(turn, dict) and turn.get("token_len") is not None:
        return int(turn["token_len"])
    return None


def load_answers(files: Sequence[str | Path], questions: Sequence[str | Path] = (),
                 tokenizer: str | Path | None = None) -> LengthData:
    """Answer files (Spec-Bench, MT-bench, Arena-style) joined to their prompts, one per turn.

    Turns with no recorded length are counted with ``tokenizer`` (or the characters estimate);
    turns whose recorded length is 0 (an error or a logging quirk) or whose question is unknown
    are skipped and reported in a warning.

    Raises
    ------
    LapsdError
        When no questions file is given or found, a file is unreadable, or no turn is usable.
    """
    paths = [Path(f) for f in files]
    parts = []
    counter: tuple[TokenCounter, str] | None = None
    for path in paths:
        q_files = [Path(q) for q in questions] or [q for q in [find_questions(path)] if q]
        if not q_files:
            raise LapsdError(f"{path}: answer files need their prompts: pass --questions "
                             "question.jsonl (Spec-Bench/MT-bench/Arena), or keep the answers "
                             "in BENCH/model_answer/ beside BENCH/question.jsonl")
        qs = _merge_questions(q_files)
        prompts: list[str] = []
        categories: list[str | None] = []
        tokens: list[int | None] = []
        texts: list[str | None] = []
        models: list[str] = []
        skipped: dict[str, int] = {}

        def skip(reason: str, skipped: dict[str, int] = skipped) -> None:
            skipped[reason] = skipped.get(reason, 0) + 1

        for _, rec in read_jsonl(path, what="answer record",
                                 on_error=lambda _n, _m: skip("not JSON")):
            try:
                choice = rec["choices"][0]
                turns = choice["turns"]
                if not isinstance(turns, list):
                    raise TypeError("turns is not a list")
            except (KeyError, IndexError, TypeError):
                skip("no choices[0].turns")
                continue
            question = qs.get(str(rec.get("question_id")))
            if question is None:
                skip("question_id not in the questions file")
                continue
            for t, turn in enumerate(turns):
                if t >= len(question["turns"]):
                    skip("more answer turns than question turns")
                    continue
                n = _turn_tokens(choice, turn, t)
                text = _turn_text(turn)
                if (n is not None and n < 1) or (n is None and not text):
                    skip("no tokens (an error turn, or new_tokens logged as 0)")
                    continue
                prompts.append(question["turns"][t])
                categories.append(question.get("category"))
                tokens.append(n)
                texts.append(text)
                models.append(canonical_model(str(rec.get("model_id") or path.stem)))
        if skipped:
            warnings.warn(f"{path.name}: skipped " + ", ".join(
                f"{v} turn(s): {k}" for k, v in skipped.items()), stacklevel=2)
        if not prompts:
            raise LapsdError(f"{path}: no usable answer turns (expected records with "
                             "question_id and choices[0].turns matching the questions file)")
        check_prompts(prompts, path)
        how = "recorded"
        unknown = [i for i, n in enumerate(tokens) if n is None]
        if unknown:
            counter = counter or load_token_counter(tokenizer)
            counted = counter[0]([texts[i] or "" for i in unknown])
            for i, n in zip(unknown, counted, strict=True):
                tokens[i] = int(n)
            how = counter[1] if len(unknown) == len(tokens) else f"recorded + {counter[1]}"
        parts.append(LengthData(
            prompts, categories, np.array(tokens, dtype=np.int64), models,
            [{"path": str(f), "sha256": sha256_file(f)} for f in [path, *q_files]], how,
            texts, prompt_sets=[q_files[0].resolve().parent.name] * len(prompts)))
    return LengthData.concat(parts)


def load_data(paths: Sequence[str | Path], *,
              questions: str | Path | Sequence[str | Path] | None = None,
              tokenizer: str | Path | None = None) -> LengthData:
    """Load ``--data`` inputs of any supported kind and put them together.

    A folder with a ``manifest.json`` is a trace; ``*.jsonl`` files are answer files (their
    questions from ``questions`` or found beside them); ``*.json`` files and other folders are
    alpaca_eval outputs.
    """
    if not paths:
        raise LapsdError("no --data given: pass a trace folder, alpaca_eval JSON file(s) or "
                         "answer files (Spec-Bench, MT-bench, Arena) with --questions")
    q_list = ([] if questions is None else [questions] if isinstance(questions, str | Path)
              else list(questions))
    traces, alpaca, answers = [], [], []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise LapsdError(f"--data {p}: no such file or folder")
        if p.is_dir() and (p / MANIFEST_FILE).exists():
            traces.append(p)
        elif p.suffix == ".jsonl":
            answers.append(p)
        else:
            alpaca.append(p)
    parts = [load_trace_data(p) for p in traces]
    if answers:
        parts.append(load_answers(answers, q_list, tokenizer))
    if alpaca:
        counter, how = load_token_counter(tokenizer)
        parts.extend(load_alpaca_eval(p, counter, how) for p in alpaca)
    return LengthData.concat(parts)
