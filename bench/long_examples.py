"""The long-output example traces in ``examples/``, from the long collections' Apache-2.0 part.

Usage: ``python bench/long_examples.py COLLECTION OUT``

``COLLECTION`` is a trace collected from the prompt file of :mod:`long_prompts` (its requests
name their ``dataset``). ``OUT`` gets the requests whose prompts may be shipped: the Spec-Bench
questions and their MT-bench turns (Apache-2.0); AlpacaEval (CC BY-NC) and the e-commerce
prompts (licence unknown) stay out. Also left out: the generated text and its per-round
offsets (the examples carry no generated text) and the hidden states (tens of MB). Every other
column, the rounds' times and the manifest's collector block and round profile are kept as
collected; the manifest says what was kept and from which trace (its SHA-256).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import polars as pl

from lapsd.replay.trace import read_trace, trace_digest, write_trace

#: Prompt sets whose text may be committed (``../shared/data/README.md``).
SHIPPED = ("specbench", "mtbench")


def main(argv: list[str]) -> int:
    """Write the shippable part of a long collection."""
    if len(argv) != 2:
        print(__doc__.splitlines()[2], file=sys.stderr)
        return 2
    source, out = Path(argv[0]), Path(argv[1])
    trace = read_trace(source)
    requests = trace.requests.filter(pl.col("dataset").is_in(SHIPPED)).drop(
        "response", strict=False)
    rounds = trace.rounds.filter(pl.col("request_id").is_in(requests["request_id"].to_list())).drop(
        "response_chars", strict=False)
    manifest = {k: v for k, v in trace.manifest.items()
                if k not in ("states", "response_offsets", "merged_from")}
    manifest["subset"] = {
        "of": {"path": source.name, "sha256": trace_digest(source)},
        "datasets": list(SHIPPED), "requests": requests.height,
        "dropped": "other prompt sets (licences), generated text and its offsets, hidden "
                   "states"}
    write_trace(dataclasses.replace(trace, requests=requests, rounds=rounds, states=None,
                                    manifest=manifest), out, overwrite=True)
    capped = int((requests["output_tokens"] >= trace.manifest["collector"]["max_new_tokens"]).sum())
    print(f"{out}: {requests.height} requests, {rounds.height} rounds, {capped} at the cap, "
          f"median output {requests['output_tokens'].median():.0f} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
