"""Training a predictor for one target model, with its cross-validated metrics in the card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lapsd.errors import LapsdError
from lapsd.predict.data import LengthData
from lapsd.predict.evaluate import cross_validate
from lapsd.predict.model import QUANTILES, LengthPredictor, fit_predictor
from lapsd.predict.persist import new_card, prompt_hashes, save_predictor


def select_target(data: LengthData, target_model: str | None) -> tuple[LengthData, str]:
    """The examples of the target model: the one named, or the only one in the data."""
    if target_model is not None:
        return data.for_model(target_model), target_model
    if len(data.models) > 1:
        raise LapsdError(f"the data holds responses of {len(data.models)} target models "
                         f"({', '.join(data.models)}); a predictor is trained per target model: "
                         "pass --target-model NAME")
    return data, data.models[0]


def train_predictor(data: LengthData, out: str | Path | None = None, *,
                    target_model: str | None = None, cv_folds: int = 5, seed: int = 0,
                    embeddings: bool = False, **regressor: Any) -> LengthPredictor:
    """Cross-validate by prompt, fit on all examples, and save (when ``out`` is given).

    Parameters
    ----------
    data
        Training examples (:func:`lapsd.predict.data.load_data`).
    out
        Where to write the predictor (atomically); ``None`` keeps it in memory only.
    target_model
        The model whose lengths to learn (required when ``data`` holds several).
    cv_folds
        Folds of the prompt-grouped cross-validation recorded in the card (0 skips it).
    embeddings
        Add sentence-embedding features (the ``embed`` extra).
    regressor
        :class:`lapsd.predict.model.LengthRegressor` settings.
    """
    data, target = select_target(data, target_model)
    if len(data) < 10:
        raise LapsdError(f"only {len(data)} examples for {target!r}: a predictor needs at "
                         "least 10 (a few hundred for useful rankings)")
    fit: dict[str, Any] = {"embeddings": embeddings, "random_state": seed, **regressor}
    cv = cross_validate(data, cv_folds, seed, **fit) if cv_folds else None
    card = new_card(
        target_model=target,
        n_train=len(data),
        token_count=data.token_count,
        training_data=data.sources,
        features={"tfidf_word": "1-2", "tfidf_char_wb": "2-5", "prompt_stats": True,
                  "category": True, "embeddings": embeddings},
        quantiles=list(QUANTILES),
        settings={k: v for k, v in fit.items() if k != "embeddings"},
        metrics={"cross_validation": cv, "cv_folds": cv_folds, "split": "GroupKFold by prompt"},
        train_prompt_hashes=sorted(set(prompt_hashes(data.prompts))),
    )
    predictor = fit_predictor(data.prompts, data.categories, data.output_tokens, card=card, **fit)
    if out is not None:
        save_predictor(predictor, out)
    return predictor
