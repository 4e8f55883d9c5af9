"""Split a trace's requests into a tuning set and a held-out set by prompt.

A prompt's side is decided by a hash of the prompt (its normalised text,
:func:`lapsd.predict.split.normalize_prompt`, and a seed), not by position: every request with
the same prompt lands on the same side, in every trace. The example traces share
their Spec-Bench prompts, so tuning on several of them never leaks a held-out prompt. Requests
without a prompt are keyed by their request id.
"""

from __future__ import annotations

import hashlib

import numpy as np

from lapsd.errors import LapsdError
from lapsd.predict.split import normalize_prompt
from lapsd.replay.arrays import TraceArrays


def _unit_hash(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_prompt(arrays: TraceArrays, holdout: float = 0.3, seed: int = 0,
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the tuning and held-out requests (about ``holdout`` of the prompts held out).

    Raises
    ------
    LapsdError
        When ``holdout`` is not in (0, 1) or a side would be empty.
    """
    if not 0 < holdout < 1:
        raise LapsdError(f"holdout must be in (0, 1), got {holdout}")
    keys = [normalize_prompt(p) if p is not None else f"id:{rid}"
            for p, rid in zip(arrays.prompts, arrays.request_ids, strict=True)]
    held = np.array([_unit_hash(k, seed) < holdout for k in keys], dtype=bool)
    tune_idx, held_idx = np.flatnonzero(~held), np.flatnonzero(held)
    if tune_idx.size == 0 or held_idx.size == 0:
        raise LapsdError(f"splitting {arrays.n_requests} requests by prompt with holdout="
                         f"{holdout} leaves one side empty; use a trace with more prompts")
    return tune_idx, held_idx
