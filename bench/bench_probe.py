"""The hidden-state probe on prompt sets it never saw, beside the prompt-only predictor.

Issue 22's evaluation (section 5, first goal) on traces collected with ``--states``:

1. ``leave-one-set-out``: requests are grouped into prompt sets (:func:`prompt_set`: the
   requests table's ``dataset``; Spec-Bench's 480 questions split into ``specbench-mtbench``,
   its 8 MT-bench categories, and one set per other category: translation, summarization, qa,
   math_reasoning, rag). For each set: train on all the others (prompts also in the held-out
   set removed, counted), test on it. Per set: Kendall tau at admission; Kendall tau of the
   remaining length after 64 generated tokens (requests longer than 64); the 80% interval's
   coverage at both points; MAE in tokens at both points. The beliefs scored are what the
   policies get (:class:`~lapsd.replay.estimate.LengthPrediction`, capped at
   ``max_new_tokens``; after 64 tokens the remaining length's median and interval given
   L > 64).
2. Beside each, the prompt-only predictor (:func:`lapsd.predict.train.fit_predictor`, no
   embeddings, no re-predictor) trained on the same requests, its belief conditioned on L > 64
   for the remaining length.
3. ``deployment``: one set split by request order, the first 60% trains and the rest tests (a
   server training on its own past traffic); the set is ``--deployment-set`` (default: the
   largest).

Run: ``OMP_NUM_THREADS=1 python bench/bench_probe.py TRACE [TRACE ...] --json OUT.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from scipy.stats import ConstantInputWarning

from lapsd.predict.metrics import belief_metrics
from lapsd.predict.probe import StateData, evaluate_probe, fit_probe, load_state_data
from lapsd.predict.split import normalize_prompt
from lapsd.predict.train import fit_predictor

#: MT-bench's categories, inside Spec-Bench's questions.
MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem",
            "humanities")
AFTER = 64
#: Metric columns of the table: (key, header, format).
COLUMNS = (("n", "n", "{:.0f}"), ("tau0", "tau adm", "{:.3f}"), ("tau64", "tau @64", "{:.3f}"),
           ("cov0", "cov80 adm", "{:.2f}"), ("cov64", "cov80 @64", "{:.2f}"),
           ("mae0", "MAE adm", "{:.1f}"), ("mae64", "MAE @64", "{:.1f}"))


def prompt_set(dataset: str | None, category: str | None) -> str:
    """A request's prompt set: its dataset, Spec-Bench split into MT-bench and its categories."""
    name = dataset or "unknown"
    if "specbench" in name.lower().replace("-", "").replace("_", ""):
        return "specbench-mtbench" if category in MT_BENCH else f"specbench-{category}"
    return name


def _row(result: dict[str, Any]) -> dict[str, float | None]:
    adm, rem = result["admission"], result["remaining"].get(AFTER, {})
    return {"n": adm["n"], "tau0": adm["kendall_tau"], "tau64": rem.get("kendall_tau"),
            "cov0": adm["coverage_80"], "cov64": rem.get("coverage_80"),
            "mae0": adm["mae_tokens"], "mae64": rem.get("mae_tokens"), "n64": rem.get("n")}


def _prompt_only(train: StateData, test: StateData, seed: int) -> dict[str, Any]:
    """The prompt-only predictor, trained on ``train``'s requests, scored like the probe."""
    predictor = fit_predictor(train.length_data(), seed=seed, embeddings=False,
                              continuation=False, folds=5)
    beliefs = predictor.predictions(test.prompts, cap=test.cap)
    longer = np.flatnonzero(test.output_tokens > AFTER)
    remaining = ({AFTER: belief_metrics([beliefs[i] for i in longer],
                                        test.output_tokens[longer], AFTER)}
                 if longer.size >= 2 else {})
    return {"admission": belief_metrics(beliefs, test.output_tokens), "remaining": remaining}


def compare(train: StateData, test: StateData, seed: int) -> dict[str, Any]:
    """Probe and prompt-only predictor trained on ``train``, scored on ``test``."""
    start = time.perf_counter()
    probe = fit_probe(train, seed=seed)
    fit_s = time.perf_counter() - start
    probe_result = evaluate_probe(probe, test, (AFTER,))
    return {"n_train": len(train), "probe": _row(probe_result),
            "prompt_only": _row(_prompt_only(train, test, seed)),
            "probe_heads": [probe.card["metrics"]["admission_head"],
                            probe.card["metrics"].get("decode_head")],
            "probe_fit_s": round(fit_s, 1)}


def set_folds(data: StateData, sets: list[str]) -> Iterator[tuple[str, np.ndarray, np.ndarray,
                                                                   int]]:
    """Per prompt set, in name order: ``(set, its requests, the training requests, dropped)``.

    The training requests are the other sets' less those whose prompt is also in the set
    (``dropped`` counts them).
    """
    for held in sorted(set(sets)):
        test = np.flatnonzero([s == held for s in sets])
        prompts = {normalize_prompt(data.prompts[i]) for i in test}
        others = [i for i, s in enumerate(sets) if s != held]
        train = [i for i in others if normalize_prompt(data.prompts[i]) not in prompts]
        yield held, test, np.array(train, dtype=np.int64), len(others) - len(train)


def leave_one_set_out(data: StateData, sets: list[str], seed: int) -> dict[str, Any]:
    """Per prompt set: trained on the others (prompts also in it removed), tested on it."""
    return {held: {**compare(data.subset(train), data.subset(test), seed),
                   "dropped_seen": dropped}
            for held, test, train, dropped in set_folds(data, sets)}


def deployment(data: StateData, sets: list[str], name: str, seed: int) -> dict[str, Any]:
    """One set by request order: the first 60% trains, the rest tests."""
    idx = np.flatnonzero([s == name for s in sets])
    cut = round(0.6 * idx.size)
    return {"set": name, **compare(data.subset(idx[:cut]), data.subset(idx[cut:]), seed)}


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        fmt.format(value))


def table(results: dict[str, Any]) -> str:
    """The plain-text table: one line per held-out set and system, then the deployment case."""
    head = f"{'held-out set':<26} {'system':<12} " + " ".join(f"{h:>9}" for _, h, _ in COLUMNS)
    lines = [head, "-" * len(head)]

    def add(name: str, part: dict[str, Any]) -> None:
        for system in ("probe", "prompt_only"):
            row = part[system]
            lines.append(f"{name:<26} {system:<12} " + " ".join(
                f"{_fmt(row[k], f):>9}" for k, _, f in COLUMNS))

    for name, part in results["leave_one_set_out"].items():
        add(name, part)
    dep = results["deployment"]
    lines.append("")
    lines.append(f"deployment: {dep['set']}, first 60% of requests train ({dep['n_train']}), "
                 "the rest test")
    add(dep["set"], dep)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation, print the table and write the JSON."""
    # a held-out set whose outputs all hit the cap has no ranking (tau None, said "-")
    warnings.filterwarnings("ignore", category=ConstantInputWarning)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+", help="trace folders collected with --states")
    parser.add_argument("--json", required=True, help="write the results here")
    parser.add_argument("--deployment-set", help="prompt set of the deployment case "
                                                 "(default: the largest)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    data = load_state_data(args.traces)
    sets = [prompt_set(d, c) for d, c in zip(data.datasets, data.categories, strict=True)]
    counts = {s: sets.count(s) for s in sorted(set(sets))}
    name = args.deployment_set or max(counts, key=lambda s: counts[s])
    if name not in counts:
        parser.error(f"--deployment-set {name!r} is not among the prompt sets {sorted(counts)}")
    results = {"traces": list(args.traces), "n": len(data), "cap": data.cap,
               "n_censored": int(data.censored.sum()), "features": data.features,
               "sets": counts, "after": AFTER,
               "leave_one_set_out": leave_one_set_out(data, sets, args.seed),
               "deployment": deployment(data, sets, name, args.seed)}
    results["seconds"] = round(time.perf_counter() - start, 1)
    text = table(results)
    print(f"{len(data)} requests ({results['n_censored']} at the cap of {data.cap:g} tokens), "
          f"prompt sets {counts}")
    print(text)
    print(f"{results['seconds']} s")
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
