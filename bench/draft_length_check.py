"""Derived rounds at k = 2 against real collections at k = 2 (bench/draft_length_gpu.sh's traces).

1. Rounds per request: a batched collection at k = 4 (on the same GPU, and the repository's
   ``examples/smollm2-layers-28``) derived at k = 2, beside the batched collection of the same
   prompts at k = 2, over the requests whose outputs came out the same length in both (greedy
   decoding on another run of the engine can still differ).
2. Round times: the batch-1 sample at k = 4 (measured rounds) derived at k = 2 with the k = 2
   collection's round profile, beside the batch-1 sample at k = 2 (measured), per request.

    python bench/draft_length_check.py DIR [--json OUT]   (DIR: the unpacked m-* traces)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl

from lapsd.replay.draft_length import at_draft_length
from lapsd.replay.trace import Trace, read_trace

ROOT = Path(__file__).resolve().parents[1]


def per_request(derived: pl.DataFrame, real: pl.DataFrame, field: str) -> dict[str, float]:
    """Per-request ``field`` of derived over real, on requests of the same output length."""
    both = derived.join(real, on="request_id", suffix="_real")
    same = both.filter(pl.col("output_tokens") == pl.col("output_tokens_real"))
    ratio = (same[field] / same[f"{field}_real"]).to_numpy()
    return {"requests": both.height, "same_output": same.height,
            "mean_ratio": float(ratio.mean()), "mean_abs_error": float(np.abs(ratio - 1).mean()),
            "p90_abs_error": float(np.quantile(np.abs(ratio - 1), 0.9))}


def _with_service(trace: Trace) -> pl.DataFrame:
    """Requests with ``service_s``, the sum of their rounds' times (what a replay serves).

    A collection's ``total_s`` also holds its own overheads (the first request's warm-up).
    """
    sums = trace.rounds.group_by("request_id").agg(pl.col("round_s").sum().alias("service_s"))
    return trace.requests.join(sums, on="request_id", maintain_order="left")


def main() -> None:
    """Print the two comparisons (and write them as JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="folder with m-coll-k2, m-coll-k4, m-one-k2, m-one-k4")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    coll = read_trace(args.dir / "m-coll-k2")
    profile = coll.manifest["round_profile"]
    batched = {}
    for name, source in (("same_gpu", read_trace(args.dir / "m-coll-k4")),
                         ("example", read_trace(ROOT / "examples" / "smollm2-layers-28"))):
        d = at_draft_length(source, 2, profile=profile)
        batched[name] = {"gpu_k4": source.manifest["collector"].get("gpu"),
                         "modelled": d.modelled / d.positions,
                         "k4_rounds_vs_k2": per_request(source.requests, coll.requests,
                                                        "n_rounds"),
                         **per_request(d.trace.requests, coll.requests, "n_rounds")}
    one4, one2 = read_trace(args.dir / "m-one-k4"), read_trace(args.dir / "m-one-k2")
    d1 = at_draft_length(one4, 2, profile=profile)
    derived1, real1 = _with_service(d1.trace), _with_service(one2)
    service = {f: per_request(derived1, real1, f) for f in ("service_s", "n_rounds")}
    result = {"gpu": coll.manifest["collector"].get("gpu"),
              "rounds_batched": batched,
              "batch1_service": service["service_s"], "batch1_rounds": service["n_rounds"],
              "modelled_batch1": d1.modelled / max(d1.positions, 1)}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
