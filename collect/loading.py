"""Loading a target/draft pair to run: the device and dtype, the model checks, the engine.

What a collection, a live server and a profile share before their first request: ``auto``
resolved to a device and dtype, the target path and draft vocabulary checked without loading
weights, then the models loaded and the engine built with the manifest's ``collector`` block.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from lapsd.collect import states as hidden


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` -> ``bfloat16`` on a GPU, ``float32`` elsewhere (bf16 on a CPU is slow)."""
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def check_models(target: Path, draft: str) -> tuple[Any, Any]:
    """Check the target path and the draft (vocabulary too): ``(draft_spec, tokenizer)``."""
    from lapsd.collect.models import check_model_path, check_vocab, load_tokenizer, parse_draft

    check_model_path(target, "target")
    spec = parse_draft(draft)
    tok = load_tokenizer(target)
    if spec.kind == "model":
        check_vocab(tok, load_tokenizer(spec.model_path), spec.name)
    return spec, tok


def versions() -> dict[str, str]:
    """Versions of Python, torch, transformers, CUDA and lapsd (for manifests)."""
    import torch
    import transformers

    from lapsd import __version__

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "lapsd": __version__}
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    return out


def load_engine(target_path: Path, spec: Any, tok: Any, *, k: int, dtype: str, device: str,
                temperature: float, max_new_tokens: int, seed: int, chat: bool,
                states: hidden.StatesSpec | None = None,
                ) -> tuple[Any, Any, dict[str, Any]]:
    """Load the models and build the engine: ``(engine, target, collector block)``.

    The collector block is what a trace manifest records of the run (``manifest["collector"]``).
    ``states``: the hidden states the engine records (:func:`lapsd.collect.run.states_spec`).
    """
    import torch

    from lapsd.collect.engine import build_engine, eos_ids_of
    from lapsd.collect.models import load_model

    target = load_model(target_path, dtype=dtype, device=device)
    draft_model = None
    if spec.kind == "model":
        draft_model = load_model(spec.model_path, dtype=dtype, device=device)
    engine = build_engine(target.model, spec, draft_model.model if draft_model else None,
                          k=k, eos_ids=eos_ids_of(target.model, tok),
                          temperature=temperature, device=device, states=states)
    collector = {
        "target": target.name, "target_sha256": target.info["sha256"],
        "draft": spec.name, "draft_sha256": draft_model.info["sha256"] if draft_model else None,
        "k": k, "dtype": dtype, "device": device,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
        "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed,
        "chat_template": bool(chat and tok.chat_template), "versions": versions(),
        "timer": "cuda_events" if device.startswith("cuda") else "perf_counter",
        "engine_path": "static" if engine.static_split is not None else "dynamic-cache",
    }
    return engine, target, collector
