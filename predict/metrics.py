"""Error, ranking and coverage metrics of length predictions against true lengths."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import kendalltau, spearmanr

from lapsd.replay.estimate import LengthPrediction

#: Upper edges (tokens) of the length buckets for bucket accuracy: <=64, <=128, ..., >1024.
BUCKET_EDGES = (64, 128, 256, 512, 1024)


def _rank_stat(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def metrics(true_tokens: np.ndarray, p50: np.ndarray, p90: np.ndarray | None = None,
            p10: np.ndarray | None = None) -> dict[str, float | None]:
    """Error, ranking and coverage metrics of predictions against true output lengths.

    Returns ``n``, ``mae_tokens``, ``median_rel_error`` (median of ``|pred - true| / true``),
    ``spearman``, ``kendall_tau`` (tau-b), ``bucket_accuracy`` (same bucket of
    :data:`BUCKET_EDGES`), given ``p90`` the ``p90_coverage`` (share of true lengths <= p90)
    and given ``p10`` too the ``coverage_80`` (share within ``[p10, p90]``).
    """
    true = np.asarray(true_tokens, dtype=np.float64)
    pred = np.asarray(p50, dtype=np.float64)
    constant = true.size < 2 or np.ptp(pred) == 0.0
    out: dict[str, float | None] = {
        "n": float(true.size),
        "mae_tokens": float(np.mean(np.abs(pred - true))),
        "median_rel_error": float(np.median(np.abs(pred - true) / np.maximum(true, 1.0))),
        "spearman": None if constant else _rank_stat(spearmanr(pred, true)[0]),
        "kendall_tau": None if constant else _rank_stat(kendalltau(pred, true)[0]),
        "bucket_accuracy": float(np.mean(np.digitize(pred, BUCKET_EDGES, right=True)
                                         == np.digitize(true, BUCKET_EDGES, right=True))),
    }
    if p90 is not None:
        out["p90_coverage"] = float(np.mean(true <= np.asarray(p90)))
        if p10 is not None:
            out["coverage_80"] = float(np.mean((true >= np.asarray(p10))
                                               & (true <= np.asarray(p90))))
    return out


def belief_metrics(beliefs: Sequence[LengthPrediction], true_tokens: np.ndarray,
                   generated: int = 0) -> dict[str, float | None]:
    """:func:`metrics` of beliefs as the policies read them, on the length still to come.

    Each belief's median and 0.1/0.9 quantiles of ``L - generated`` given ``L > generated``
    (capped, at least one token) against ``true_tokens - generated``; ``generated = 0`` is the
    whole output.
    """
    def q(level: float) -> np.ndarray:
        return np.array([b.quantile_remaining(generated, level) for b in beliefs])

    true = np.asarray(true_tokens, dtype=np.float64) - generated
    return metrics(true, q(0.5), q(0.9), q(0.1))
