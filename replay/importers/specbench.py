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
from lapsd.replay.trace import Trace, TraceError, make_trace, new_manifest

from lapsd.io import read_jsonl

#: Characters per token used to estimate prompt tokens when no tokenizer is at hand
#: (LLaMA-family tokenizers on English text, measured on the Spec-Bench answers).
CHARS_PER_TOKEN = 3.7


@dataclass
class ImportReport:
    """What an import kept and what it skipped, and why."""

    records: int = 0
    turns: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, file: str, line: int, question_id: Any, reason: str) -> None:
        self.skipped.append({"file": file, "line": line, "question_id": question_id,
                             "reason": reason})


def read_questions(path: Path | str) -> dict[int, dict[str, Any]]:
    """Spec-Bench questions by ``question_id`` (``turns`` = the user messages)."""
    questions: dict[int, dict[str, Any]] = {}
    p = Path(path)
    for lineno, q in read_jsonl(p, what="Spec-Bench question"):
        try:
            questions[int(q["question_id"])] = q
            if not isinstance(q["turns"], list):
                raise TypeError("turns is not a list")
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"line {lineno}: not a Spec-Bench question ({exc})",
                             path=p, row=lineno - 1) from None
    return questions


def _record_problem(rec: dict[str, Any], steps: list[int], tokens: list[int],
                    walls: list[float], accepts: list[int], max_mismatch: int) -> str | None:
    n_turns = len(steps)
    if not (len(tokens) == n_turns == len(walls)):
        return "new_tokens, decoding_steps and wall_time have different numbers of turns"
    if n_turns == 0:
        return "no turns"
    if len(accepts) != sum(steps):
        return f"len(accept_lengths)={len(accepts)} != sum(decoding_steps)={sum(steps)}"
    if any(a < 1 for a in accepts):
        return "an accept length below 1"
    start = 0
    for t in range(n_turns):
        if steps[t] < 1 or tokens[t] < 1:
            return f"turn {t}: no steps or no tokens (an ERROR record)"
        if not (isinstance(walls[t], int | float) and math.isfinite(walls[t]) and walls[t] > 0):
            return f"turn {t}: wall_time {walls[t]!r} is not a positive number"
        emitted = sum(accepts[start:start + steps[t]])
        if abs(emitted - tokens[t]) > max_mismatch:
            return (f"turn {t}: accept lengths add up to {emitted} tokens but new_tokens is "
                    f"{tokens[t]} (raise --max-token-mismatch to keep such records)")
        start += steps[t]
    return None


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
        Draft length per round: an integer, ``None`` for variable (drafted left null), or
        ``"infer"``: the largest accept length of the file minus one.
    target_model, draft_model
        Model names for the requests table (default: the answers' ``model_id``).
    max_token_mismatch
        Largest allowed difference per turn between the accept lengths' sum and ``new_tokens``
        (Token Recycling counts the last step's overshoot: 2 keeps its records).
    """
    qs = read_questions(questions) if questions is not None else {}
    report = ImportReport()
    req_rows: list[dict[str, Any]] = []
    rnd_cols: dict[str, list] = {c: [] for c in
                                 ("request_id", "round", "drafted", "accepted", "emitted",
                                  "round_s", "context_tokens")}
    seen: set[str] = set()
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise TraceError("answer file not found", path=path)
        records = list(read_jsonl(path, what="Spec-Bench answer", on_error=lambda lineno, msg,
                                  name=path.name: report.skip(name, lineno, None, msg)))
        if not records:
            raise TraceError("no records in the answer file", path=path)
        file_k = k
        if k == "infer":
            longest = max((max(r["choices"][0].get("accept_lengths") or [1])
                           for _, r in records if r.get("choices")), default=1)
            file_k = int(longest) - 1
        for lineno, rec in records:
            report.records += 1
            qid = rec.get("question_id")
            try:
                choice = rec["choices"][0]
                steps = [int(x) for x in choice["decoding_steps"]]
                tokens = [int(x) for x in choice["new_tokens"]]
                walls = [float(x) for x in choice["wall_time"]]
                accepts = [int(x) for x in choice["accept_lengths"]]
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                report.skip(path.name, lineno, qid, f"missing or malformed field: {exc}")
                continue
            problem = _record_problem(rec, steps, tokens, walls, accepts, max_token_mismatch)
            if problem is None and file_k is not None and max(accepts) - 1 > file_k:
                problem = f"an accept length of {max(accepts)} exceeds k + 1 = {file_k + 1}"
            if problem is not None:
                report.skip(path.name, lineno, qid, problem)
                continue
            question = qs.get(int(qid)) if qid is not None else None
            start = 0
            model = rec.get("model_id") or path.stem
            for t in range(len(steps)):
                rid = f"{path.stem}:{qid}:{t}"
                if rid in seen:
                    report.skip(path.name, lineno, qid, f"duplicate of an earlier record ({rid})")
                    break
                seen.add(rid)
                prompt = None
                if question is not None and t < len(question["turns"]):
                    prompt = question["turns"][t]
                prompt_tokens = (math.ceil(len(prompt) / CHARS_PER_TOKEN)
                                 if prompt is not None else None)
                turn_accepts = accepts[start:start + steps[t]]
                start += steps[t]
                round_s = walls[t] / steps[t]
                req_rows.append({
                    "request_id": rid, "source": "specbench", "dataset": path.stem,
                    "category": rec.get("category"), "prompt": prompt,
                    "prompt_tokens": prompt_tokens, "target_model": target_model or model,
                    "draft_model": draft_model or model, "k": file_k,
                    "finish_reason": "length" if tokens[t] >= 1024 else "stop",
                    "total_s": walls[t], "prefill_s": None,
                })
                context = prompt_tokens or 0
                for i, a in enumerate(turn_accepts):
                    rnd_cols["request_id"].append(rid)
                    rnd_cols["round"].append(i)
                    rnd_cols["drafted"].append(file_k)
                    rnd_cols["accepted"].append(a - 1)
                    rnd_cols["emitted"].append(a)
                    rnd_cols["round_s"].append(round_s)
                    rnd_cols["context_tokens"].append(context)
                    context += a
                report.turns += 1
    if not req_rows:
        raise TraceError("no usable records: every record was skipped "
                         f"({report.skipped[0]['reason'] if report.skipped else 'empty input'})",
                         path=Path(files[0]))
    manifest = new_manifest(
        timing="per_turn_mean",
        sources=[*files, *([questions] if questions is not None else [])],
        notes=("Imported from Spec-Bench answer files. round_s is the turn's wall_time divided "
               "by its decoding steps; prompt_tokens are estimated as characters / "
               f"{CHARS_PER_TOKEN}."),
        importer={"format": "specbench", "k": k if k != "infer" else "inferred",
                  "max_token_mismatch": max_token_mismatch,
                  "skipped": len(report.skipped)},
    )
    rounds = pl.DataFrame(rnd_cols, schema={
        "request_id": pl.String, "round": pl.Int64, "drafted": pl.Int64, "accepted": pl.Int64,
        "emitted": pl.Int64, "round_s": pl.Float64, "context_tokens": pl.Int64})
    requests = pl.DataFrame(req_rows, infer_schema_length=None)
    return make_trace(requests, rounds, manifest), report
