"""Saving and loading predictors: skops files with an explicit trusted-type list and a model card.

A predictor file is a skops archive (never pickle) holding a dict with ``format``
(:data:`FORMAT`), ``format_version`` (:data:`FORMAT_VERSION`), ``kind`` (absent: the
prompt-only predictor; :data:`PROBE_KIND`: the hidden-state probe of
:mod:`lapsd.predict.probe`), the model card and the calibration as JSON, and the kind's fitted
parts (the prompt-only predictor's length model, re-predictor, baseline and training mean).
Loading first lists the file's types without building any object; a file with types outside
:data:`TRUSTED_TYPES`, a skops file that is not a lapsd predictor, or another format version
(an older lapsd's file included) is refused with a message saying how to retrain.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from skops import io as sio

from lapsd.errors import LapsdError
from lapsd.io import atomic_path
from lapsd.predict.calibrate import Calibration
from lapsd.predict.model import LengthPredictor

FORMAT = "lapsd-predictor"
#: ``kind`` of a hidden-state probe's file (:mod:`lapsd.predict.probe`).
PROBE_KIND = "probe"
#: 4: training prompts hashed in their normalised form (:func:`lapsd.predict.split.prompt_hashes`);
#: 3: pooled length model with calibration and re-predictor; 2: TF-IDF quantile stack.
FORMAT_VERSION = 4
#: Module prefixes of lapsd 0.1's predictor types (before the ``lapsd.`` namespace).
_OLD_MODULES = ("predict.",)
#: Types only older predictor formats hold, with their format version.
_OLD_TYPES = {"lapsd.predict.model.LengthRegressor": 2,
              "lapsd.predict.features.prompt_stats": 2,
              "lapsd.predict.features.SentenceEmbedder": 2}
_RETRAIN = ("retrain it with `lapsd predict train --data ... --out FILE` (the training data "
            "of the old file is listed in its model card)")

#: The types of a lapsd predictor that skops does not trust by default (its own defaults cover
#: the standard scikit-learn and numpy types); a file with any other type is refused.
TRUSTED_TYPES = [
    "lapsd.predict.continuation.ContinuationModel",
    "lapsd.predict.features.log_chars",
    "lapsd.predict.model.LengthModel",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]

_VERSIONED = ("numpy", "scipy", "scikit-learn", "skops", "polars", "lapsd")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a predictor depends on (for the model card)."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def new_card(**fields: Any) -> dict[str, Any]:
    """A model card with the format, creation time and library versions filled in."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "libraries": library_versions(), **fields}


def write_payload(payload: dict[str, Any], path: str | Path) -> Path:
    """Write a predictor file's payload, with the format and its version, atomically.

    A temporary file in the same folder, then a rename.
    """
    with atomic_path(path) as tmp:
        sio.dump({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, tmp)
    return Path(path)


def save_predictor(predictor: LengthPredictor, path: str | Path) -> Path:
    """Write a predictor atomically (temporary file in the same folder, then rename)."""
    return write_payload({
        "card": json.dumps(predictor.card, sort_keys=True),
        "calibration": json.dumps(predictor.calibration.to_dict(), sort_keys=True),
        "model": predictor.model,
        "continuation": predictor.continuation,
        "length_baseline": predictor.length_baseline,
        "train_mean_tokens": float(predictor.train_mean_tokens),
    }, path)


def read_payload(path: str | Path) -> dict[str, Any]:
    """The payload of a predictor file of any kind, checked before any object is built.

    Raises
    ------
    LapsdError
        When the file is missing, is not a skops file, holds types outside
        :data:`TRUSTED_TYPES`, is not a lapsd predictor, or has another format version.
    """
    p = Path(path)
    if not p.is_file():
        raise LapsdError(f"predictor {p} not found: train one with `lapsd predict train "
                         "--data ... --out model.skops`")
    try:
        untrusted = sio.get_untrusted_types(file=p)
    except (zipfile.BadZipFile, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise LapsdError(f"{p} is not a lapsd predictor (not a skops file: {exc}); pass a "
                         "file written by `lapsd predict train`") from None
    unexpected = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if unexpected and all(name.startswith(_OLD_MODULES) for name in unexpected):
        raise LapsdError(f"{p} was written by lapsd 0.1 (predictor format 1), which this lapsd "
                         f"no longer reads: {_RETRAIN}")
    old = sorted({_OLD_TYPES[name] for name in unexpected if name in _OLD_TYPES})
    if old:
        raise LapsdError(f"{p} is a predictor of an older lapsd (format {old[0]}); this lapsd "
                         f"reads format {FORMAT_VERSION}: {_RETRAIN}")
    if unexpected:
        raise LapsdError(f"{p} holds types a lapsd predictor never contains ({unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''}); refusing to load it. Retrain "
                         "with this lapsd version if it is your own file")
    payload = sio.load(p, trusted=TRUSTED_TYPES)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise LapsdError(f"{p} is a skops file but not a lapsd predictor (no "
                         f"format={FORMAT!r}); pass a file written by `lapsd predict train`")
    got = payload.get("format_version")
    if got != FORMAT_VERSION:
        raise LapsdError(f"{p} is a lapsd predictor of format version {got}, but this lapsd "
                         f"reads version {FORMAT_VERSION}: {_RETRAIN}")
    return payload


def predictor_from_payload(payload: dict[str, Any]) -> LengthPredictor:
    """The prompt-only predictor of a payload read by :func:`read_payload`."""
    return LengthPredictor(payload["model"],
                           Calibration.from_dict(json.loads(payload["calibration"])),
                           payload["continuation"], payload["length_baseline"],
                           float(payload["train_mean_tokens"]), json.loads(payload["card"]))


def load_predictor(path: str | Path) -> LengthPredictor:
    """Load a prompt-only predictor written by :func:`save_predictor`.

    Raises
    ------
    LapsdError
        As :func:`read_payload`, and for a probe's file (it needs hidden states).
    """
    payload = read_payload(path)
    if payload.get("kind") == PROBE_KIND:
        raise LapsdError(f"{path} is a hidden-state probe: it predicts from traces with states "
                         "(`lapsd predict eval/apply` take it), not from prompts alone")
    return predictor_from_payload(payload)
