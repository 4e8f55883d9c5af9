"""Using a trained predictor on traces: prediction columns and the replay's prediction source."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from lapsd.errors import LapsdError
from lapsd.io import sha256_file
from lapsd.predict.persist import load_predictor
from lapsd.replay.engine import TraceArrays
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.trace import Trace, TraceError, read_trace, write_trace


def apply_to_trace(model: str | Path, trace_dir: str | Path, out: str | Path | None = None,
                   ) -> Path:
    """Add ``predicted_tokens`` and ``predicted_tokens_p90`` to a trace's requests.

    Writes ``out`` (default: ``trace_dir`` in place) atomically: a reader sees the old trace or
    the new one, never a mix. Existing prediction columns are replaced.

    Raises
    ------
    TraceError
        When the trace is unusable or a request has no prompt text.
    LapsdError
        When the predictor cannot be loaded.
    """
    predictor = load_predictor(model)
    trace = read_trace(trace_dir)
    req = trace.requests
    prompts = req["prompt"].to_list()
    missing = [i for i, p in enumerate(prompts) if p is None]
    if missing:
        raise TraceError(f"{len(missing)} of {len(prompts)} requests have no prompt text, so "
                         "nothing can be predicted for them; re-import the trace with prompts",
                         path=Path(trace_dir), column="prompt", row=missing[0])
    target = predictor.card.get("target_model")
    models = {m for m in req["target_model"].to_list() if m is not None}
    if target and models and models != {target}:
        warnings.warn(f"the predictor was trained for {target!r} but the trace serves "
                      f"{sorted(models)}", stacklevel=2)
    p50, p90 = predictor.predict_lengths(prompts, req["category"].to_list())
    requests = req.with_columns(pl.Series("predicted_tokens", p50, pl.Float64),
                                pl.Series("predicted_tokens_p90", p90, pl.Float64))
    manifest = dict(trace.manifest)
    manifest["predictions"] = {"model": str(model), "sha256": sha256_file(model),
                               "target_model": target}
    dest = Path(out) if out is not None else Path(trace_dir)
    same = dest.resolve() == Path(trace_dir).resolve()
    return write_trace(Trace(requests, trace.rounds, manifest), dest, overwrite=same)


def predictor_source(model_path: str | Path,
                     ) -> Callable[[TraceArrays, np.ndarray], list[LengthPrediction]]:
    """A prediction source for :func:`lapsd.replay.workload.make_predictions` (``--predictor``).

    The predictor is loaded once; each call predicts every distinct trace request it is asked
    about once and returns one :class:`~lapsd.replay.estimate.LengthPrediction` per entry of
    ``index``.
    """
    predictor = load_predictor(model_path)

    def source(arrays: TraceArrays, index: np.ndarray) -> list[LengthPrediction]:
        unique, inverse = np.unique(np.asarray(index, dtype=np.int64), return_inverse=True)
        prompts = [arrays.prompts[i] for i in unique]
        missing = [int(unique[j]) for j, p in enumerate(prompts) if p is None]
        if missing:
            raise LapsdError(f"--predictor {model_path}: request "
                             f"{arrays.request_ids[missing[0]]!r} (and {len(missing) - 1} more) "
                             "has no prompt text; use a trace with prompts or "
                             "--predictions oracle:sigma=...")
        beliefs = predictor.predictions(prompts, [arrays.categories[i] for i in unique])
        return [beliefs[j] for j in inverse.ravel()]

    return source
