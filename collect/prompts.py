"""Prompt files: JSON Lines, including the Spec-Bench question format.

Each line is a JSON object. The prompt text is taken from the first present key of
``prompt``, ``text``, ``instruction`` or ``turns`` (Spec-Bench: the first turn); the id from
``id``, ``question_id`` or ``request_id`` (else the line number); ``category`` is kept when present,
and ``dataset`` (the prompt set a line comes from, for files that mix sets) names the set, else
the file's folder does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lapsd.errors import LapsdError
from lapsd.io import read_jsonl

_TEXT_KEYS = ("prompt", "text", "instruction", "turns")
_ID_KEYS = ("id", "question_id", "request_id")


class PromptError(LapsdError):
    """A prompt file that does not parse; the message names the file and line."""


@dataclass(frozen=True)
class Prompt:
    """One request to run: ``request_id`` is unique within a prompt file."""

    request_id: str
    text: str
    category: str | None
    dataset: str


def load_prompts(path: Path | str) -> list[Prompt]:
    """Parse every line of a prompt file (blank lines are skipped).

    Raises
    ------
    PromptError
        On the first line that is not a JSON object with a prompt, or on a repeated id.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"prompt file {path} does not exist")
    dataset = path.parent.name or path.stem
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    for lineno, obj in read_jsonl(path, what="prompt"):
        where = f"{path}:{lineno}"
        if not isinstance(obj, dict):
            raise PromptError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        text = _text(obj, where)
        rid = next((str(obj[k]) for k in _ID_KEYS if obj.get(k) is not None), str(lineno))
        if rid in seen:
            raise PromptError(f"{where}: id {rid!r} already used on line {seen[rid]}")
        seen[rid] = lineno
        category, own = obj.get("category"), obj.get("dataset")
        if own is not None and (not isinstance(own, str) or not own.strip()):
            raise PromptError(f"{where}: 'dataset' must be a non-empty string, got {own!r}")
        prompts.append(Prompt(rid, text, None if category is None else str(category),
                              own or dataset))
    if not prompts:
        raise PromptError(f"{path}: no prompts")
    return prompts


def _text(obj: dict[str, Any], where: str) -> str:
    for key in _TEXT_KEYS:
        if key not in obj:
            continue
        value = obj[key]
        if key == "turns":
            if not isinstance(value, list) or not value or not isinstance(value[0], str):
                raise PromptError(f"{where}: 'turns' must be a non-empty list of strings")
            value = value[0]
        if not isinstance(value, str) or not value.strip():
            raise PromptError(f"{where}: {key!r} must be a non-empty string")
        return value
    raise PromptError(f"{where}: no prompt text (expected one of {', '.join(_TEXT_KEYS)})")


def encode(tokenizer: Any, text: str, *, chat: bool = True) -> list[int]:
    """Token ids of a prompt, through the chat template when the tokenizer has one."""
    if chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # BatchEncoding in transformers 5
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer(text)["input_ids"])


def select(prompts: list[Prompt], *, shard: tuple[int, int] = (0, 1),
           limit: int | None = None) -> list[Prompt]:
    """The prompts of shard ``i`` of ``n`` (every n-th, from i), then the first ``limit``."""
    i, n = shard
    chosen = prompts[i::n]
    return chosen if limit is None else chosen[:limit]


def parse_shard(value: str) -> tuple[int, int]:
    """Parse ``i/n`` (0 <= i < n)."""
    try:
        i_s, n_s = value.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise LapsdError(f"--shard must look like i/n (e.g. 0/4), got {value!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise LapsdError(f"--shard {value}: need 0 <= i < n")
    return i, n
