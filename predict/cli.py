"""``lapsd predict`` subcommands: train, eval, cv, calibrate, apply.

The commands only parse arguments and print; the work is done by functions that tests call
directly (:func:`lapsd.predict.train.train_predictor`, :func:`lapsd.predict.probe.fit_probe`,
:func:`lapsd.predict.probe.evaluate_probe`,
:func:`lapsd.predict.evaluate.evaluate_predictor`, :func:`lapsd.predict.evaluate.cross_validate`,
:func:`lapsd.predict.evaluate.cross_model`, :func:`lapsd.predict.evaluate.cross_dataset`,
:func:`lapsd.predict.train.calibrate_predictor`,
:func:`lapsd.predict.apply.apply_to_trace`).
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.table import Table

from lapsd.console import add_json, emit, out
from lapsd.errors import LapsdError, require_extra
from lapsd.io import check_output

_COLUMNS = (("mae_tokens", "MAE tok", "{:.1f}"), ("median_rel_error", "med rel err", "{:.3f}"),
            ("spearman", "Spearman", "{:.3f}"), ("kendall_tau", "Kendall τ", "{:.3f}"),
            ("bucket_accuracy", "bucket acc", "{:.3f}"), ("p90_coverage", "p90 cover", "{:.3f}"),
            ("coverage_80", "80% cover", "{:.3f}"))


def _add_data_args(p: argparse.ArgumentParser, *, target_help: str) -> None:
    p.add_argument("--data", action="extend", nargs="+", required=True, metavar="PATH",
                   help="trace folder(s), alpaca_eval JSON file(s)/folder, or answer *.jsonl "
                        "files (Spec-Bench, MT-bench, Arena; questions from --questions or "
                        "found beside them)")
    p.add_argument("--questions", action="append", metavar="FILE",
                   help="question.jsonl with the prompts of answer files (repeatable)")
    p.add_argument("--tokenizer", help="Hugging Face tokenizer folder or .gguf file to count "
                                       "response tokens (default: characters / 3.7 estimate)")
    p.add_argument("--target-model", help=target_help)


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="static sentence-embedding features (default: on when the 'embed' "
                        "extra is installed)")
    p.add_argument("--tfidf", action="store_true",
                   help="add word TF-IDF features (helps prompts like the training ones only)")
    p.add_argument("--seed", type=int, default=0)


def _needs_extra(command: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        require_extra("predict", "sklearn", "skops")
        return int(command(args))

    return run


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the `lapsd` parser."""
    parser = subparsers.add_parser("predict", help="output-length predictor: train, evaluate, "
                                                   "calibrate, apply to traces")
    sub = parser.add_subparsers(dest="predict_command", required=True)

    p = sub.add_parser("train", help="train a predictor on every target model's answers",
                       description="Train one predictor on all the data's target models "
                                   "(pooled, a verbosity offset per model), calibrated per "
                                   "model, with a re-predictor when the data keeps the text. "
                                   "With --probe: a probe of the target's hidden states, from "
                                   "traces collected with --states.")
    _add_data_args(p, target_help="the model beliefs are calibrated for by default (default: "
                                  "the only model, or pooled)")
    p.add_argument("--out", required=True, help="predictor file to write (.skops)")
    p.add_argument("--cv-folds", type=int, default=5,
                   help="folds of the cross-fitting whose out-of-fold metrics the card records")
    p.add_argument("--probe", action="store_true",
                   help="train a hidden-state probe (--data: traces with states; for a server "
                        "that runs the target, e.g. `lapsd live --states`)")
    p.add_argument("--cues", action=argparse.BooleanOptionalAction, default=True,
                   help="with --probe: also read the prompt's instruction cues (default: on)")
    _add_fit_args(p)
    p.set_defaults(func=_needs_extra(cmd_train))

    p = sub.add_parser("eval", help="evaluate a trained predictor against the baselines (a "
                                    "probe: at admission and on the remaining length)")
    p.add_argument("--model", required=True, help="predictor file (.skops)")
    _add_data_args(p, target_help="evaluate this model's answers with its own calibration "
                                  "(default: the predictor's target model)")
    add_json(p, "the metrics")
    p.set_defaults(func=_needs_extra(cmd_eval))

    p = sub.add_parser("cv", help="cross-validate by prompt, across models, or across prompt "
                                  "sets (no file saved)")
    _add_data_args(p, target_help="the model to cross-validate within --data")
    p.add_argument("--eval-data", action="extend", nargs="+", metavar="PATH",
                   help="cross-dataset mode: train on --data, evaluate on these (another prompt "
                        "set; prompts also in --data are removed from training and counted)")
    p.add_argument("--eval-questions", action="append", metavar="FILE",
                   help="question.jsonl of --eval-data answer files (repeatable)")
    p.add_argument("--cross-model", action="append", default=[], metavar="NAME",
                   help="also train on the other models and rank NAME's lengths (repeatable)")
    p.add_argument("--cv-folds", type=int, default=5)
    _add_fit_args(p)
    add_json(p, "the metrics")
    p.set_defaults(func=_needs_extra(cmd_cv))

    p = sub.add_parser("calibrate", help="calibrate a predictor for a target model from its "
                                         "own answers (no retraining)")
    p.add_argument("--model", required=True, help="predictor file (.skops)")
    _add_data_args(p, target_help="the model to calibrate (default: every model in --data); "
                                  "it becomes the predictor's default")
    p.add_argument("--out", required=True, help="calibrated predictor file to write")
    p.set_defaults(func=_needs_extra(cmd_calibrate))

    p = sub.add_parser("apply", help="add predicted_tokens(_p90) columns to a trace")
    p.add_argument("--model", required=True, help="predictor file (.skops)")
    p.add_argument("trace", metavar="TRACE_DIR")
    p.add_argument("--out", help="write the result here instead of in place")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out (folder or file)")
    p.add_argument("--target-model", help="use this model's calibration (default: each "
                                          "request's own target model where calibrated)")
    p.set_defaults(func=_needs_extra(cmd_apply))


def rows_table(title: str, rows: dict[str, dict[str, Any]], first: str = "system") -> Table:
    """A rich table of metrics (:func:`lapsd.predict.metrics.metrics`), one row per entry."""
    table = Table(title=title)
    table.add_column(first)
    for _, header, _ in _COLUMNS:
        table.add_column(header, justify="right")
    for name, row in rows.items():
        table.add_row(name, *("–" if row.get(key) is None else fmt.format(row[key])
                              for key, _, fmt in _COLUMNS))
    return table


def metrics_table(title: str, result: dict[str, Any]) -> Table:
    """A rich table of one evaluation (rows: model and baselines)."""
    from lapsd.predict.evaluate import SYSTEMS

    return rows_table(title, {system: result[system] for system in SYSTEMS})


def _load(args: argparse.Namespace, paths: list[str] | None = None,
          questions: list[str] | None = None):
    from lapsd.predict.data import load_data

    return load_data(paths or args.data, questions=questions or args.questions,
                     tokenizer=args.tokenizer)


def _fit(args: argparse.Namespace) -> dict[str, Any]:
    return {"embeddings": args.embeddings, "tfidf": args.tfidf}


#: Options of prompt-only training that a probe does not take.
_NOT_PROBE = (("questions", "--questions"), ("tokenizer", "--tokenizer"),
              ("target_model", "--target-model"), ("embeddings", "--embeddings"),
              ("tfidf", "--tfidf"))


def cmd_train(args: argparse.Namespace) -> int:
    """``lapsd predict train``."""
    from lapsd.predict.train import train_predictor

    check_output(args.out, "--out")
    if args.probe:
        return _train_probe(args)
    if not args.cues:
        raise LapsdError("--no-cues applies to --probe only (the prompt-only predictor always "
                         "reads the cues)")
    with out.status("training"):
        predictor = train_predictor(_load(args), args.out, target_model=args.target_model,
                                    cv_folds=args.cv_folds, seed=args.seed, **_fit(args))
    card = predictor.card
    for model, m in card["metrics"]["cross_validation"].items():
        tau = "–" if m["kendall_tau"] is None else f"{m['kendall_tau']:.3f}"
        out.print(f"{model}: {card['metrics']['cv_folds']}-fold out-of-fold "
                  f"({card['metrics']['split']}) Kendall τ {tau}, 80% interval covers "
                  f"{m['coverage_80']:.1%}, n={m['n']:.0f}")
    out.print(f"wrote {args.out} ({len(card['models'])} target model(s), default "
              f"{card['target_model'] or 'pooled'}; {card['n_train']} examples, tokens: "
              f"{card['token_count']}; re-predictor: "
              f"{'yes' if predictor.continuation is not None else 'no (no response text)'}; "
              f"{card['train_seconds']} s)")
    return 0


def _train_probe(args: argparse.Namespace) -> int:
    from lapsd.predict.probe import fit_probe, load_state_data, save_probe

    given = [flag for attr, flag in _NOT_PROBE if getattr(args, attr) not in (None, False)]
    if given:
        raise LapsdError(f"--probe trains on traces with hidden states and takes no "
                         f"{', '.join(given)}: leave {'them' if len(given) > 1 else 'it'} out")
    data = load_state_data(args.data)
    with out.status("training the probe"):
        probe = fit_probe(data, folds=args.cv_folds, seed=args.seed, cues=args.cues)
    save_probe(probe, args.out)
    card, cal = probe.card, probe.calibration
    out.print(f"wrote {args.out}: probe of {card['features']['target']} (layers "
              f"{card['features']['layers']}, decode layer {card['features']['decode_layer']}, "
              f"hidden size {card['features']['hidden_size']}); {card['n_train']} requests "
              f"({card['n_censored']} at the cap); admission head "
              f"{card['metrics']['admission_head']}, sigma {cal['sigma']:.3f}; re-predictor: "
              f"{card['metrics'].get('decode_head', 'none (too few decode states)')}; "
              f"{card['train_seconds']} s")
    return 0


def seen_warning(seen: dict[str, Any]) -> str | None:
    """The warning for evaluated prompts the predictor was trained on, or ``None``."""
    if not seen["seen"]:
        return None
    return (f"{seen['seen']} of {seen['distinct']} distinct prompts ({seen['share']:.2%}) were "
            "in the training data; on those the numbers are optimistic")


def cmd_eval(args: argparse.Namespace) -> int:
    """``lapsd predict eval``."""
    from lapsd.predict.evaluate import evaluate_predictor
    from lapsd.predict.probe import ProbePredictor, load_any

    predictor = load_any(args.model)
    if isinstance(predictor, ProbePredictor):
        return _eval_probe(args, predictor)
    data = _load(args)
    target = args.target_model or predictor.default_target
    if args.target_model:
        predictor.calibration.resolve(args.target_model, strict=True)
        data = data.for_model(args.target_model)
    elif target in data.models:
        data = data.for_model(target)
    result = evaluate_predictor(predictor, data, target)

    def show() -> None:
        out.print(metrics_table(f"{args.model} on {len(data)} examples "
                                f"({', '.join(data.models)})", result))
        warning = seen_warning(result["seen_prompts"])
        out.print(f"[yellow]warning: {warning}[/yellow]" if warning else
                  f"none of the {result['seen_prompts']['distinct']} distinct prompts was in "
                  "the training data")

    emit(args.json, {"model": args.model, "card": _card_summary(predictor.card),
                     "result": result}, show)
    return 0


def _eval_probe(args: argparse.Namespace, probe: Any) -> int:
    from lapsd.predict.probe import evaluate_probe, load_state_data

    given = [flag for attr, flag in _NOT_PROBE[:3] if getattr(args, attr) is not None]
    if given:
        raise LapsdError(f"{args.model} is a probe: it is evaluated on traces with hidden "
                         f"states and takes no {', '.join(given)}")
    data = load_state_data(args.data)
    probe.check(data)
    result = evaluate_probe(probe, data)

    def show() -> None:
        rows = {"admission": result["admission"],
                **{f"remaining after {t}": r for t, r in result["remaining"].items()}}
        out.print(rows_table(f"{args.model} (probe) on {len(data)} requests", rows))
        warning = seen_warning(result["seen_prompts"])
        if warning:
            out.print(f"[yellow]warning: {warning}[/yellow]")

    emit(args.json, {"model": args.model, "card": _card_summary(probe.card),
                     "result": result}, show)
    return 0


def _card_summary(card: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in card.items() if k != "train_prompt_hashes"}


def cmd_cv(args: argparse.Namespace) -> int:
    """``lapsd predict cv``."""
    from lapsd.predict.evaluate import cross_dataset, cross_model, cross_validate

    data = _load(args)
    fit = {**_fit(args), "by_source": False}
    results: dict[str, Any] = {}
    if args.eval_data:
        evaluated = _load(args, args.eval_data, args.eval_questions)
        if args.target_model:
            evaluated = evaluated.for_model(args.target_model)
        with out.status("training on --data, evaluating on --eval-data"):
            results["cross_dataset"], _ = cross_dataset(data, evaluated, seed=args.seed,
                                                        **_fit(args))
    elif args.target_model or len(data.models) == 1:
        target = args.target_model or data.models[0]
        with out.status(f"cross-validating {target}"):
            results["within_model"] = {"target_model": target, **cross_validate(
                data.for_model(target), args.cv_folds, args.seed, **fit)}
    results["cross_model"] = {}
    for name in args.cross_model:
        with out.status(f"cross-model: held out {name}"):
            results["cross_model"][name] = cross_model(data, name, args.cv_folds, args.seed,
                                                       **fit)

    def show() -> None:
        if "cross_dataset" in results:
            res = results["cross_dataset"]
            out.print(f"trained on {', '.join(res['train_sets'])} ({res['n_train']} examples; "
                      f"{res['dropped_seen']} removed because their prompt is also evaluated)")
            for model, r in res["per_model"].items():
                out.print(metrics_table(f"{model} on {', '.join(res['eval_sets'])} (unseen "
                                        f"prompts; calibration: {r['calibration']})", r))
        if "within_model" in results:
            out.print(metrics_table(f"{results['within_model']['target_model']}: "
                                    f"{args.cv_folds}-fold CV by prompt",
                                    results["within_model"]))
        for name, result in results["cross_model"].items():
            out.print(metrics_table(f"trained on the other models, ranking {name} "
                                    "(held-out prompts)", result))

    emit(args.json, results, show)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``lapsd predict calibrate``."""
    from lapsd.predict.persist import load_predictor, save_predictor
    from lapsd.predict.train import calibrate_predictor

    check_output(args.out, "--out")
    predictor = calibrate_predictor(load_predictor(args.model), _load(args), args.target_model)
    save_predictor(predictor, args.out)
    cal = predictor.calibration
    for m in sorted(cal.offsets):
        out.print(f"{m}: offset {cal.offsets[m]:+.3f} (log), sigma {cal.sigmas[m]:.3f}, "
                  f"from {cal.counts[m]} answers")
    out.print(f"wrote {args.out} (default target model {predictor.default_target})")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """``lapsd predict apply``."""
    from lapsd.predict.apply import apply_to_trace

    dest = apply_to_trace(args.model, args.trace, args.out, args.target_model,
                          overwrite=args.force)
    out.print(f"wrote predicted_tokens and predicted_tokens_p90 to {dest}")
    return 0
