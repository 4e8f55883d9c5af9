"""Import Spec-Bench answer files (per-step accept lengths) as lapsd traces.

A Spec-Bench answer record holds, per turn, the generated text, ``new_tokens``, ``decoding_steps``
and ``wall_time``, and a flat ``accept_lengths`` list with the tokens appended by each verification
step over all turns. Each turn becomes one request whose rounds are its steps:
``emitted = accept_length``, ``accepted = emitted - 1``, ``drafted = k``. Per-step times were not
recorded, so a round's time is its turn's wall time spread evenly over the turn's steps; the
manifest says so (``timing: per_turn_mean``).

Records with errors or broken invariants are reported and skipped, never kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from lapsd.io import read_jsonl
from lapsd.replay.trace import Trace, TraceError, make_trace, new_manifest

#: Characters per token used to estimate prompt tokens when no tokenizer is at hand
#: (LLaMA-family tokenizers on English text, measured on the Spec-Bench answers).
CHARS_PER_TOKEN = 3.7


@dataclass
class ImportReport:
    """What an import kept and what it skipped, and why."""

    records: int = 0
    turns: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, file: str, line: int, question_id: Any, reason: str) -> None:
        """Record a skipped record or turn and why."""
        self.skipped.append({"file": file, "line": line, "question_id": question_id,
                             "reason": reason})


def read_questions(path: Path | str) -> dict[str, dict[str, Any]]:
    """Questions by ``question_id`` (as a string), with ``turns`` as a list of user messages.

    Reads Spec-Bench and MT-bench ``question.jsonl`` (integer ids, turns as strings) and
    Arena-style files (hex-string ids, turns as ``{"content": ...}`` objects).
    """
    questions: dict[str, dict[str, Any]] = {}
    p = Path(path)
    for lineno, q in read_jsonl(p, what="question"):
        try:
            qid = q["question_id"]
            turns = q["turns"]
            if not isinstance(turns, list) or isinstance(qid, dict | list):
                raise TypeError("expected a question_id and a list of turns")
            texts = [x["content"] if isinstance(x, dict) else x for x in turns]
            if not all(isinstance(x, str) for x in texts):
                raise TypeError("a turn is neither a string nor an object with 'content'")
        except (KeyError, TypeError) as exc:
            raise TraceError(f"line {lineno}: not a question record ({exc}); expected "
                             '{"question_id": ..., "turns": ["..."]}', path=p,
                             row=lineno - 1) from None
        questions[str(qid)] = {**q, "turns": texts}
    return questions


#: The largest token or step count a record may hold: far above any real one, and small enough
#: that a trace's sums of them stay exact in int64.
MAX_COUNT = 10**9


def _number(value: Any, key: str) -> float:
    """A JSON number of a record (not a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key}: {value!r} is not a number")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{key}: {value} is beyond a float's range") from None


def _counts(choice: dict[str, Any], key: str) -> list[int]:
    """``choice[key]``: whole numbers from 0 to :data:`MAX_COUNT` (``5.0`` counts as 5)."""
    out = []
    for value in choice[key]:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
            raise ValueError(f"{key}: {value!r} is not a whole number from 0 to {MAX_COUNT}")
        out.append(value)
    return out


def _record_problem(steps: list[int], tokens: list[int], walls: list[float],
                    accepts: list[int]) -> str | None:
    """What makes a whole record unusable (its turns cannot be told apart), or ``None``."""
    n_turns = len(steps)
    if not (len(tokens) == n_turns == len(walls)):
        return "new_tokens, decoding_steps and wall_time have different numbers of turns"
    if n_turns == 0:
        return "no turns"
    if any(s < 0 for s in steps) or len(accepts) != sum(steps):
        return f"len(accept_lengths)={len(accepts)} != sum(decoding_steps)={sum(steps)}"
    if any(a < 1 for a in accepts):
        return "an accept length below 1"
    return None


def _turn_problem(steps: int, tokens: int, wall: float, accepts: list[int],
                  max_mismatch: int, k: int | None) -> str | None:
    """What makes one turn unusable, or ``None``; the record's other turns are kept."""
    if steps < 1 or tokens < 1:
        return "no steps or no tokens (an ERROR turn)"
    if not (math.isfinite(wall) and wall > 0):
        return f"wall_time {wall!r} is not a positive number"
    emitted = sum(accepts)
    if abs(emitted - tokens) > max_mismatch:
        return (f"accept lengths add up to {emitted} tokens but new_tokens is {tokens} (raise "
                "--max-token-mismatch to keep such turns)")
    if k is not None and max(accepts) - 1 > k:
        return f"an accept length of {max(accepts)} exceeds k + 1 = {k + 1}"
    return None


#: Largest draft length ``k="infer"`` takes as fixed. Longer accept lengths come from adaptive
#: drafters (Hugging Face assisted generation drafts up to 20 tokens and stops early when
#: unsure), whose per-round draft count the answer files do not record.
MAX_FIXED_K = 16


def infer_k(records: list[tuple[int, Any]]) -> int | None:
    """The draft length of a file: its largest accept length minus one.

    ``None`` (variable) when that exceeds :data:`MAX_FIXED_K`.
    """
    longest = 1
    for _, rec in records:
        try:
            longest = max(longest, *_counts(rec["choices"][0], "accept_lengths"))
        except (KeyError, IndexError, TypeError, ValueError):
            continue  # a malformed record is skipped (and reported) by the import
    return longest - 1 if longest - 1 <= MAX_FIXED_K else None


def _char_offsets(text: str, accepts: list[int]) -> list[int]:
    """Estimated length of ``text`` after each round: characters in proportion to tokens."""
    total, produced, out = sum(accepts), 0, []
    for a in accepts:
        produced += a
        out.append(round(len(text) * produced / total))
    return out


def import_specbench(files: list[Path | str], questions: Path | str | None = None, *,
                     k: int | str | None = "infer", target_model: str | None = None,
                     draft_model: str | None = None, max_token_mismatch: int = 0,
                     ) -> tuple[Trace, ImportReport]:
    """Convert Spec-Bench answer files to one trace.

    Parameters
    ----------
    files
        Answer files (JSON Lines).
    questions
        The ``question.jsonl`` that gives prompt texts (optional; prompts are null without it).
    k
        Draft length per round: an integer; ``None`` for a variable draft length (``k`` and
        ``drafted`` left null: the files do not say how many tokens each round drafted); or
        ``"infer"``: the largest accept length of the file minus one, or variable when that
        exceeds :data:`MAX_FIXED_K`.
    target_model, draft_model
        Model names for the requests table (default: the answers' ``model_id``).
    max_token_mismatch
        Largest allowed difference per turn between the accept lengths' sum and ``new_tokens``
        (Token Recycling counts the last step's overshoot: 2 keeps its turns).

    A record whose fields are malformed or whose turns cannot be told apart is skipped whole; a
    turn with no steps, a bad wall time or accept lengths that disagree with its ``new_tokens``
    is skipped alone. Both are reported.
    """
    qs = read_questions(questions) if questions is not None else {}
    report = ImportReport()
    req_rows: list[dict[str, Any]] = []
    rnd_cols: dict[str, list] = {c: [] for c in
                                 ("request_id", "round", "drafted", "accepted", "emitted",
                                  "round_s", "context_tokens", "response_chars")}
    seen: set[str] = set()
    variable: list[str] = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise TraceError("answer file not found", path=path)
        def bad_line(lineno: int, message: str, name: str = path.name) -> None:
            report.skip(name, lineno, None, message)

        records = list(read_jsonl(path, what="Spec-Bench answer", on_error=bad_line))
        if not records:
            raise TraceError("no records in the answer file", path=path)
        file_k = infer_k(records) if k == "infer" else k
        if not isinstance(file_k, int | None):
            raise TraceError(f"k must be an integer, None or 'infer', got {k!r}", path=path)
        if file_k is None:
            variable.append(path.name)
        for lineno, rec in records:
            report.records += 1
            qid = rec.get("question_id")
            try:
                choice = rec["choices"][0]
                steps, tokens, accepts = (_counts(choice, key) for key in (
                    "decoding_steps", "new_tokens", "accept_lengths"))
                walls = [_number(x, "wall_time") for x in choice["wall_time"]]
                texts = choice.get("turns") or []
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                report.skip(path.name, lineno, qid, f"missing or malformed field: {exc}")
                continue
            problem = _record_problem(steps, tokens, walls, accepts)
            if problem is not None:
                report.skip(path.name, lineno, qid, problem)
                continue
            question = qs.get(str(qid)) if qid is not None else None
            start = 0
            model = rec.get("model_id") or path.stem
            for t in range(len(steps)):
                turn_accepts = accepts[start:start + steps[t]]
                start += steps[t]
                rid = f"{path.stem}:{qid}:{t}"
                problem = (f"duplicate of an earlier record ({rid})" if rid in seen else
                           _turn_problem(steps[t], tokens[t], walls[t], turn_accepts,
                                         max_token_mismatch, file_k))
                if problem is not None:
                    report.skip(path.name, lineno, qid, f"turn {t}: {problem}")
                    continue
                seen.add(rid)
                prompt = None
                if question is not None and t < len(question["turns"]):
                    prompt = question["turns"][t]
                prompt_tokens = (math.ceil(len(prompt) / CHARS_PER_TOKEN)
                                 if prompt is not None else None)
                text = texts[t] if t < len(texts) and isinstance(texts[t], str) else None
                round_s = walls[t] / steps[t]
                req_rows.append({
                    "request_id": rid, "source": "specbench", "dataset": path.stem,
                    "category": rec.get("category"), "prompt": prompt,
                    "prompt_tokens": prompt_tokens, "target_model": target_model or model,
                    "draft_model": draft_model or model, "k": file_k,
                    "finish_reason": "length" if tokens[t] >= 1024 else "stop",
                    "total_s": walls[t], "prefill_s": None, "response": text,
                })
                offsets = (_char_offsets(text, turn_accepts) if text is not None
                           else [None] * len(turn_accepts))
                context = prompt_tokens or 0
                for i, (a, chars) in enumerate(zip(turn_accepts, offsets, strict=True)):
                    rnd_cols["request_id"].append(rid)
                    rnd_cols["round"].append(i)
                    rnd_cols["drafted"].append(file_k)
                    rnd_cols["accepted"].append(a - 1)
                    rnd_cols["emitted"].append(a)
                    rnd_cols["round_s"].append(round_s)
                    rnd_cols["context_tokens"].append(context)
                    rnd_cols["response_chars"].append(chars)
                    context += a
                report.turns += 1
    if not req_rows:
        raise TraceError("no usable records: every record was skipped "
                         f"({report.skipped[0]['reason'] if report.skipped else 'empty input'})",
                         path=Path(files[0]))
    if variable:
        report.notes.append(
            f"{', '.join(variable)}: accept lengths above {MAX_FIXED_K + 1} mean an adaptive "
            "draft length; recorded as variable (k and drafted null). Pass --k N to force a "
            "fixed k.")
    manifest = new_manifest(
        timing="per_turn_mean",
        sources=[*files, *([questions] if questions is not None else [])],
        notes=("Imported from Spec-Bench answer files. round_s is the turn's wall_time divided "
               "by its decoding steps; prompt_tokens are estimated as characters / "
               f"{CHARS_PER_TOKEN}."),
        response_offsets="estimated: the turn's characters in proportion to its tokens",
        draft_length=("variable: drafted per round unknown" if variable else "fixed"),
        importer={"format": "specbench", "k": k if k != "infer" else "inferred",
                  "max_token_mismatch": max_token_mismatch,
                  "skipped": len(report.skipped), "variable_k_files": variable},
    )
    rounds = pl.DataFrame(rnd_cols, schema={
        "request_id": pl.String, "round": pl.Int64, "drafted": pl.Int64, "accepted": pl.Int64,
        "emitted": pl.Int64, "round_s": pl.Float64, "context_tokens": pl.Int64,
        "response_chars": pl.Int64})
    requests = pl.DataFrame(req_rows, infer_schema_length=None)
    return make_trace(requests, rounds, manifest), report
