"""Loading target and draft models: a Hugging Face folder, a GGUF file, or a built-in draft.

Drafts are given as a string:

``PATH``
    Another model (folder or ``.gguf``) with the target's vocabulary.
``layers:N``
    Self-speculative: the target's first ``N`` decoder layers followed by its final norm and
    head. The modules are the target's own (no weight copy), only the KV cache is separate.
``ngram:N``
    Prompt lookup: propose the tokens that followed the latest earlier occurrence of the
    context's last ``n``-gram, ``n = N .. 1``. No model.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lapsd.errors import LapsdError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelError(LapsdError):
    """A model or draft specification that cannot be used (raised before any GPU work)."""


@dataclass(frozen=True)
class DraftSpec:
    """A parsed ``--draft`` value: ``kind`` is ``model``, ``layers`` or ``ngram``."""

    kind: str
    path: Path | None = None
    n: int = 0

    @property
    def model_path(self) -> Path:
        """The draft model's path (``kind == "model"`` only)."""
        if self.path is None:
            raise ValueError(f"draft {self.name} is not a model file")
        return self.path

    @property
    def name(self) -> str:
        """The draft's name for the manifest (file name, ``layers:N`` or ``ngram:N``)."""
        if self.kind == "model" and self.path is not None:
            return self.path.name
        return f"{self.kind}:{self.n}"


@dataclass
class LoadedModel:
    """A model with its tokenizer and provenance (name and file hash for the manifest)."""

    model: Any
    tokenizer: Any
    name: str
    info: dict[str, Any] = field(default_factory=dict)


_SPEC = re.compile(r"^(layers|ngram):(\d+)$")


def parse_draft(spec: str) -> DraftSpec:
    """Parse a ``--draft`` string; a path must exist."""
    m = _SPEC.match(spec.strip())
    if m:
        n = int(m.group(2))
        if n < 1:
            raise ModelError(f"draft {spec!r}: N must be >= 1")
        return DraftSpec(m.group(1), None, n)
    path = Path(spec)
    check_model_path(path, "draft")
    return DraftSpec("model", path)


def check_model_path(path: Path, role: str) -> None:
    """Fail early, naming the role, when a model path is neither a HF folder nor a GGUF file."""
    if not path.exists():
        raise ModelError(f"{role} model {path} does not exist")
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelError(f"{role} model folder {path} has no config.json (not a Hugging "
                             "Face model folder)")
    elif path.suffix.lower() != ".gguf":
        raise ModelError(f"{role} model {path} is a file but not a .gguf file")


def gguf_cache(path: Path, what: str) -> Path | None:
    """Where the conversion of GGUF file ``path`` (``what``: a dtype, or ``tokenizer``) is kept.

    Transformers converts a GGUF file on every load (dequantizing the weights, rebuilding the
    tokenizer): tens of seconds even for a 135M model. lapsd keeps each conversion as a
    Hugging Face folder under ``$LAPSD_CACHE`` (default ``~/.cache/lapsd``), in ``gguf/``,
    named by the file's SHA-256, so later loads of the same file read that folder.
    ``LAPSD_CACHE=off`` turns the cache off (``None``).
    """
    from lapsd.io import sha256_file

    root = os.environ.get("LAPSD_CACHE", str(Path.home() / ".cache" / "lapsd"))
    if root == "off":
        return None
    return Path(root) / "gguf" / f"{sha256_file(path)[:24]}-{what}"


def _keep(folder: Path | None, save: Callable[[Path], Any]) -> None:
    """Write a conversion into the cache with ``save(tmp_folder)``; a failure only warns."""
    if folder is None:
        return
    from lapsd.io import atomic_dir

    try:
        with atomic_dir(folder, overwrite=True) as tmp:
            save(tmp)
    except OSError as exc:
        warnings.warn(f"could not keep the GGUF conversion in {folder}: {exc} (set "
                      "LAPSD_CACHE to a writable folder, or LAPSD_CACHE=off)", stacklevel=3)


def _save_dequantized(model: Any, folder: Path) -> None:
    """Save a model loaded from GGUF as a plain Hugging Face folder.

    ``save_pretrained`` refuses models loaded from GGUF; the weights are already dequantized,
    so the config without its ``quantization_config`` and the state dict (one copy of tied
    embeddings) make an ordinary checkpoint.
    """
    from safetensors.torch import save_file

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    state = model.state_dict()
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a HF folder or GGUF file (no weights are read)."""
    from transformers import AutoTokenizer

    if path.is_dir():
        return AutoTokenizer.from_pretrained(path)
    cached = gguf_cache(path, "tokenizer")
    if cached is not None and (cached / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(cached)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    _keep(cached, tok.save_pretrained)
    return tok


def load_config(path: Path) -> Any:
    """The config of a HF folder or GGUF file (no weights are read)."""
    from transformers import AutoConfig

    if path.is_dir():
        return AutoConfig.from_pretrained(path)
    return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)


def load_model(path: Path, *, dtype: str, device: str) -> LoadedModel:
    """Load a causal LM from a HF folder or a GGUF file.

    A GGUF file's weights are dequantized once, then read from :func:`gguf_cache`.
    """
    from transformers import AutoModelForCausalLM

    from lapsd.io import sha256_file

    check_model_path(path, "target")
    torch_dtype = DTYPES[dtype]
    model: Any
    if path.is_dir():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        sha = {w.name: sha256_file(w) for w in weights}
    else:
        cached = gguf_cache(path, dtype)
        if cached is not None and (cached / "config.json").exists():
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch_dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                         dtype=torch_dtype)
            _keep(cached, lambda folder: _save_dequantized(model, folder))
        sha = {path.name: sha256_file(path)}
    model.to(device).eval()
    return LoadedModel(model, load_tokenizer(path), path.name,
                       {"path": str(path), "sha256": sha})


def layers_draft(target: Any, n: int) -> Any:
    """A draft made of the target's first ``n`` layers, its final norm and its head.

    The returned model shares every parameter with ``target`` (no memory is copied); it is built
    on the meta device from a config with ``n`` layers and then given the target's modules.
    """
    from transformers import AutoModelForCausalLM

    layers = _decoder_layers(target)
    if not 1 <= n < len(layers):
        raise ModelError(f"layers:{n}: the target has {len(layers)} layers; N must be in "
                         f"1..{len(layers) - 1}")
    cfg = copy.deepcopy(target.config)
    cfg.num_hidden_layers = n
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:n]
    with torch.device("meta"):
        draft = AutoModelForCausalLM.from_config(cfg)
    base, target_base = draft.model, target.model
    for name, child in target_base.named_children():
        if name != "layers":
            setattr(base, name, child)
    base.layers = nn.ModuleList(list(layers[:n]))
    draft.lm_head = target.lm_head
    return draft.eval()


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ModelError(f"layers:N drafts need a decoder with model.layers; "
                         f"{type(model).__name__} has none")
    return layers


def check_vocab(target_tok: Any, draft_tok: Any, draft_name: str) -> None:
    """Raise :class:`ModelError` unless both tokenizers map the same strings to the same ids."""
    a, b = target_tok.get_vocab(), draft_tok.get_vocab()
    if a != b:
        only_t = len(set(a.items()) - set(b.items()))
        only_d = len(set(b.items()) - set(a.items()))
        raise ModelError(f"draft {draft_name}: its vocabulary differs from the target's "
                         f"({len(a)} vs {len(b)} entries; {only_t} target and {only_d} draft "
                         "entries have no identical counterpart)")


def cache_arg(model: Any, cache: Any) -> dict[str, Any]:
    """The keyword that passes a KV cache to ``model``'s forward.

    transformers renamed ``past_key_values`` to ``cache`` (5.2x; the old name goes in 5.40);
    lapsd runs on both sides of the rename (the GPU image has 5.17).
    """
    cls = type(model)
    if cls not in _CACHE_KEYWORDS:
        params = inspect.signature(cls.forward).parameters
        _CACHE_KEYWORDS[cls] = "cache" if "cache" in params else "past_key_values"
    return {_CACHE_KEYWORDS[cls]: cache}


_CACHE_KEYWORDS: dict[type, str] = {}
