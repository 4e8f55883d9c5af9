"""Two checks on the long-output collections of ``bench/collect_long.sh`` (issue 22, sections 1-2).

1. ``profiled``: a batched collection's round times come from a batch-1 profile
   (``timing: profiled_per_round``). The batch-1 sample of the same draft runs some of the same
   prompts greedily, so the same rounds, each timed as it ran. Per request: profiled total
   (sum of ``round_s`` in the batched trace) over measured total (the sample's); and over all
   matched rounds, the median relative error of one round's profiled time.
2. ``states``: what recording hidden states costs. Two batch-1 samples of the same prompts, one
   with ``--states``: the same rounds (greedy), so the ratio of their mean round times, and of
   the prefill times, is the overhead.

Run: ``python bench/long_checks.py DIR --json OUT.json`` with ``DIR`` holding the merged traces
``m-coll-ngram4``, ``m-one-ngram4``, ``m-one-ngram4-states`` (and the ``layers28`` pair).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lapsd.replay.trace import read_trace


def _rounds(path: Path) -> pl.DataFrame:
    return read_trace(path).rounds.select("request_id", "round", "emitted", "round_s")


def _same_rounds(a: pl.DataFrame, b: pl.DataFrame) -> pl.DataFrame:
    """Rounds of the requests both traces ran with the same emitted tokens in every round."""
    joined = a.join(b, on=["request_id", "round"], suffix="_b")
    same = joined.group_by("request_id").agg(
        (pl.col("emitted") == pl.col("emitted_b")).all().alias("same"), pl.len().alias("n"))
    counts = (a.group_by("request_id").len().join(b.group_by("request_id").len(),
                                                  on="request_id", suffix="_b"))
    keep = same.join(counts, on="request_id").filter(
        pl.col("same") & (pl.col("n") == pl.col("len")) & (pl.col("len") == pl.col("len_b")))
    return joined.filter(pl.col("request_id").is_in(keep["request_id"].implode()))


def profiled_vs_measured(batched: Path, single: Path) -> dict[str, Any]:
    """How the batched trace's profiled round times compare with batch-1 measured ones."""
    j = _same_rounds(_rounds(batched), _rounds(single))
    if j.is_empty():
        return {"requests": 0}
    per = j.group_by("request_id").agg(pl.col("round_s").sum().alias("profiled"),
                                       pl.col("round_s_b").sum().alias("measured"))
    ratio = (per["profiled"] / per["measured"]).to_numpy()
    rel = (np.abs(j["round_s"] - j["round_s_b"]) / j["round_s_b"]).to_numpy()
    return {"requests": per.height, "rounds": j.height,
            "total_ratio": {"median": float(np.median(ratio)), "min": float(ratio.min()),
                            "max": float(ratio.max())},
            "round_rel_error_median": float(np.median(rel)),
            "round_rel_error_p90": float(np.quantile(rel, 0.9))}


def states_overhead(plain: Path, with_states: Path) -> dict[str, Any]:
    """Mean round and prefill time with states over without, on the same greedy rounds."""
    j = _same_rounds(_rounds(plain), _rounds(with_states))
    if j.is_empty():
        return {"requests": 0}
    req = (read_trace(plain).requests.select("request_id", "prefill_s")
           .join(read_trace(with_states).requests.select("request_id", "prefill_s"),
                 on="request_id", suffix="_b")
           .filter(pl.col("request_id").is_in(j["request_id"].unique().implode())))
    return {"requests": req.height, "rounds": j.height,
            "round_ratio": float(j["round_s_b"].mean() / j["round_s"].mean()),
            "prefill_ratio": float(req["prefill_s_b"].mean() / req["prefill_s"].mean()),
            "every": read_trace(with_states).manifest["states"]["every"]}


def main() -> None:
    """Run the checks on what is there and print (and write) them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    d = args.dir
    out: dict[str, Any] = {}
    for draft in ("ngram4", "layers28"):
        if (d / f"m-coll-{draft}").is_dir() and (d / f"m-one-{draft}").is_dir():
            out[f"profiled_{draft}"] = profiled_vs_measured(d / f"m-coll-{draft}",
                                                            d / f"m-one-{draft}")
    if (d / "m-one-ngram4").is_dir() and (d / "m-one-ngram4-states").is_dir():
        out["states_ngram4"] = states_overhead(d / "m-one-ngram4", d / "m-one-ngram4-states")
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
