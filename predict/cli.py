"""``lapsd predict`` subcommands: train, eval, cv, apply.

The commands only parse arguments and print; the work is done by functions that tests call
directly (:func:`lapsd.predict.train.train_predictor`,
:func:`lapsd.predict.evaluate.evaluate_predictor`, :func:`lapsd.predict.evaluate.cross_validate`,
:func:`lapsd.predict.evaluate.cross_model`, :func:`lapsd.predict.apply.apply_to_trace`).
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from lapsd.console import add_json, emit, out
from lapsd.errors import require_extra

_COLUMNS = (("mae_tokens", "MAE tok", "{:.1f}"), ("median_rel_error", "med rel err", "{:.3f}"),
            ("spearman", "Spearman", "{:.3f}"), ("kendall_tau", "Kendall τ", "{:.3f}"),
            ("bucket_accuracy", "bucket acc", "{:.3f}"), ("p90_coverage", "p90 cover", "{:.3f}"))


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="extend", nargs="+", required=True, metavar="PATH",
                   help="trace folder(s), alpaca_eval JSON file(s)/folder, or Spec-Bench answer "
                        "*.jsonl files (with --questions)")
    p.add_argument("--questions", help="Spec-Bench question.jsonl (prompts of answer files)")
    p.add_argument("--tokenizer", help="Hugging Face tokenizer folder or .gguf file to count "
                                       "response tokens (default: characters / 3.7 estimate)")
    p.add_argument("--target-model", help="the target model whose lengths to use")


def _needs_extra(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        require_extra("predict", "sklearn", "skops")
        return int(command(args))

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `lapsd` parser."""
    parser = subparsers.add_parser("predict", help="output-length predictor: train, evaluate, "
                                                   "apply to traces")
    sub = parser.add_subparsers(dest="predict_command", required=True)

    p = sub.add_parser("train", help="train a predictor for one target model")
    _add_data_args(p)
    p.add_argument("--out", required=True, help="predictor file to write (.skops)")
    p.add_argument("--cv-folds", type=int, default=5,
                   help="prompt-grouped cross-validation folds for the model card (0: skip)")
    p.add_argument("--embeddings", action="store_true",
                   help="add sentence-embedding features (needs the 'embed' extra)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_needs_extra(cmd_train))

    p = sub.add_parser("eval", help="evaluate a trained predictor against the baselines")
    p.add_argument("--model", required=True, help="predictor file (.skops)")
    _add_data_args(p)
    add_json(p, "the metrics")
    p.set_defaults(func=_needs_extra(cmd_eval))

    p = sub.add_parser("cv", help="cross-validate by prompt and across models (no file saved)")
    _add_data_args(p)
    p.add_argument("--cross-model", action="append", default=[], metavar="NAME",
                   help="also train on the other models and rank NAME's lengths (repeatable)")
    p.add_argument("--cv-folds", type=int, default=5)
    p.add_argument("--embeddings", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    add_json(p, "the metrics")
    p.set_defaults(func=_needs_extra(cmd_cv))

    p = sub.add_parser("apply", help="add predicted_tokens(_p90) columns to a trace")
    p.add_argument("--model", required=True, help="predictor file (.skops)")
    p.add_argument("trace", metavar="TRACE_DIR")
    p.add_argument("--out", help="write the result here instead of in place")
    p.set_defaults(func=_needs_extra(cmd_apply))


def metrics_table(title: str, result: dict[str, Any]) -> Table:
    """A rich table of one evaluation (rows: model and baselines)."""
    table = Table(title=title)
    table.add_column("system")
    for _, header, _ in _COLUMNS:
        table.add_column(header, justify="right")
    from lapsd.predict.evaluate import SYSTEMS

    for system in SYSTEMS:
        row = result[system]
        table.add_row(system, *("–" if row.get(key) is None else fmt.format(row[key])
                                for key, _, fmt in _COLUMNS))
    return table


def _load(args: argparse.Namespace):
    from lapsd.predict.data import load_data

    return load_data(args.data, questions=args.questions, tokenizer=args.tokenizer)


def cmd_train(args: argparse.Namespace) -> int:
    """``lapsd predict train``."""
    from lapsd.predict.train import train_predictor

    with out.status("training"):
        predictor = train_predictor(_load(args), args.out, target_model=args.target_model,
                                    cv_folds=args.cv_folds, seed=args.seed,
                                    embeddings=args.embeddings)
    card = predictor.card
    cv = card["metrics"]["cross_validation"]
    if cv is not None:
        out.print(metrics_table(f"{card['target_model']}: {args.cv_folds}-fold cross-"
                                f"validation by prompt (n={card['n_train']})", cv))
    out.print(f"wrote {args.out} (target model {card['target_model']!r}, "
                  f"{card['n_train']} examples, tokens: {card['token_count']})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``lapsd predict eval``."""
    from lapsd.predict.evaluate import evaluate_predictor
    from lapsd.predict.persist import load_predictor

    predictor = load_predictor(args.model)
    data = _load(args)
    target = args.target_model or predictor.card.get("target_model")
    if target in data.models:
        data = data.for_model(target)
    elif args.target_model:
        data = data.for_model(args.target_model)  # raises with the models present
    result = evaluate_predictor(predictor, data)

    def show() -> None:
        out.print(metrics_table(f"{args.model} on {len(data)} examples "
                                f"({', '.join(data.models)})", result))
        overlap = result["train_prompt_overlap"]
        if overlap:
            out.print(f"[yellow]warning: {overlap:.0%} of these prompts were in the training "
                      "data; the numbers are optimistic[/yellow]")

    emit(args.json, {"model": args.model, "card": _card_summary(predictor.card),
                     "result": result}, show)
    return 0


def _card_summary(card: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in card.items() if k != "train_prompt_hashes"}


def cmd_cv(args: argparse.Namespace) -> int:
    """``lapsd predict cv``."""
    from lapsd.predict.evaluate import cross_model, cross_validate
    from lapsd.predict.train import select_target

    data = _load(args)
    fit = {"embeddings": args.embeddings, "random_state": args.seed}
    results: dict[str, Any] = {}
    if args.target_model or len(data.models) == 1:
        own, target = select_target(data, args.target_model)
        with out.status(f"cross-validating {target}"):
            results["within_model"] = {"target_model": target,
                                       **cross_validate(own, args.cv_folds, args.seed, **fit)}
    results["cross_model"] = {}
    for name in args.cross_model:
        with out.status(f"cross-model: held out {name}"):
            results["cross_model"][name] = cross_model(data, name, args.cv_folds, args.seed,
                                                       **fit)

    def show() -> None:
        if "within_model" in results:
            out.print(metrics_table(f"{results['within_model']['target_model']}: "
                                    f"{args.cv_folds}-fold CV by prompt",
                                    results["within_model"]))
        for name, result in results["cross_model"].items():
            out.print(metrics_table(f"trained on the other models, ranking {name} "
                                    "(held-out prompts)", result))

    emit(args.json, results, show)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """``lapsd predict apply``."""
    from lapsd.predict.apply import apply_to_trace

    dest = apply_to_trace(args.model, args.trace, args.out)
    out.print(f"wrote predicted_tokens and predicted_tokens_p90 to {dest}")
    return 0
