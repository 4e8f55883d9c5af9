"""Training and evaluation data for the length predictor: prompts with their output lengths.

Three inputs, all turned into a :class:`LengthData`:

* a lapsd trace folder (``requests`` table: ``prompt``, ``output_tokens``, ``target_model``,
  ``category``): the lengths a user's own server produced, in tokens;
* alpaca_eval ``model_outputs.json`` files (a JSON array of ``instruction``, ``output``,
  ``generator``, ``dataset``), or a folder of them: lengths are counted with a tokenizer;
* Spec-Bench answer files plus the ``question.jsonl`` with the prompts (imported with
  :func:`lapsd.replay.importers.specbench.import_specbench`; lengths are the recorded
  ``new_tokens``).

Without a tokenizer, alpaca_eval lengths are estimated as characters / :data:`CHARS_PER_TOKEN`
(3.7: LLaMA-family tokenizers on English answers, measured on the Spec-Bench answers; Llama-3 is
nearer 4.4 and Qwen2.5 4.7), and the estimate is announced on stderr and in the model card.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lapsd.errors import LapsdError
from lapsd.io import sha256_file
from lapsd.replay.trace import MANIFEST_FILE, Trace, TraceError, read_trace, trace_digest

CHARS_PER_TOKEN = 3.7


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
    """

    prompts: list[str]
    categories: list[str | None]
    output_tokens: np.ndarray
    target_models: list[str]
    sources: list[dict[str, str]] = field(default_factory=list)
    token_count: str = "recorded"

    def __len__(self) -> int:
        """The number of examples."""
        return len(self.prompts)

    @property
    def models(self) -> list[str]:
        """The distinct target models, sorted."""
        return sorted(set(self.target_models))

    def subset(self, index: Sequence[int] | np.ndarray) -> LengthData:
        """The examples at ``index`` (same provenance)."""
        idx = np.asarray(index, dtype=np.int64)
        return LengthData([self.prompts[i] for i in idx], [self.categories[i] for i in idx],
                          self.output_tokens[idx], [self.target_models[i] for i in idx],
                          self.sources, self.token_count)

    def for_model(self, name: str) -> LengthData:
        """The examples of one target model; a clear error when it is absent."""
        idx = [i for i, m in enumerate(self.target_models) if m == name]
        if not idx:
            raise LapsdError(f"target model {name!r} is not in the data; it has "
                             f"{self.models}: pass one of these to --target-model")
        return self.subset(idx)

    @staticmethod
    def concat(parts: Sequence[LengthData]) -> LengthData:
        """Several data sets as one (their token counting must agree)."""
        counts = {p.token_count for p in parts}
        return LengthData(
            [x for p in parts for x in p.prompts], [x for p in parts for x in p.categories],
            np.concatenate([p.output_tokens for p in parts]),
            [x for p in parts for x in p.target_models],
            [s for p in parts for s in p.sources], " + ".join(sorted(counts)),
        )


TokenCounter = Callable[[list[str]], np.ndarray]


def load_token_counter(path: str | Path | None) -> tuple[TokenCounter, str]:
    """A function counting tokens of texts, and its description for the model card.

    Parameters
    ----------
    path
        A local Hugging Face tokenizer folder, a ``.gguf`` file (its tokenizer is read with
        ``transformers``), or ``None`` for the characters-per-token estimate (announced on stderr).

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


def _check_prompts(prompts: list[Any], where: Path) -> None:
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
        _check_prompts(prompts, f)
        parts.append(LengthData(
            prompts, [r.get("dataset") for r in rows],
            counter([r["output"] for r in rows]),
            [str(r.get("generator") or f.stem) for r in rows],
            [{"path": str(f), "sha256": sha256_file(f)}], token_count,
        ))
    return LengthData.concat(parts)


def from_trace(trace: Trace, where: Path | str) -> LengthData:
    """The requests of a trace as training data; every request needs its prompt text."""
    req = trace.requests
    prompts = req["prompt"].to_list()
    missing = [i for i, p in enumerate(prompts) if p is None]
    if missing:
        raise TraceError(
            f"{len(missing)} of {len(prompts)} requests have no prompt text (first: row "
            f"{missing[0]}); the predictor needs prompts: re-import with the questions file "
            "(Spec-Bench: --questions question.jsonl) or collect with prompt logging on",
            path=Path(where), column="prompt", row=missing[0])
    _check_prompts(prompts, Path(where))
    models = [m or "unknown" for m in req["target_model"].to_list()]
    return LengthData(prompts, req["category"].to_list(),
                      req["output_tokens"].to_numpy().astype(np.int64), models)


def load_trace_data(path: str | Path) -> LengthData:
    """A trace folder as training data (see :func:`from_trace`)."""
    data = from_trace(read_trace(path), path)
    data.sources = [{"path": str(path), "sha256": trace_digest(path)}]
    return data


def load_specbench(files: Sequence[str | Path], questions: str | Path) -> LengthData:
    """Spec-Bench answer files joined to their questions (one example per turn)."""
    from lapsd.replay.importers.specbench import import_specbench

    trace, report = import_specbench(list(files), questions, max_token_mismatch=2)
    if report.skipped:
        warnings.warn(f"skipped {len(report.skipped)} Spec-Bench records (first: "
                      f"{report.skipped[0]['reason']})", stacklevel=2)
    data = from_trace(trace, Path(files[0]))
    data.sources = [{"path": str(f), "sha256": sha256_file(f)} for f in [*files, questions]]
    return data


def load_data(paths: Sequence[str | Path], *, questions: str | Path | None = None,
              tokenizer: str | Path | None = None) -> LengthData:
    """Load ``--data`` inputs of any supported kind and put them together.

    A folder with a ``manifest.json`` is a trace; ``*.jsonl`` files are Spec-Bench answers (and
    need ``questions``); ``*.json`` files and other folders are alpaca_eval outputs.
    """
    if not paths:
        raise LapsdError("no --data given: pass a trace folder, alpaca_eval JSON file(s) or "
                         "Spec-Bench answer files with --questions")
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
        if questions is None:
            raise LapsdError(f"{answers[0]}: Spec-Bench answers need the prompts: pass "
                             "--questions .../specbench_questions/question.jsonl")
        parts.append(load_specbench(answers, questions))
    if alpaca:
        counter, how = load_token_counter(tokenizer)
        parts.extend(load_alpaca_eval(p, counter, how) for p in alpaca)
    return LengthData.concat(parts)
