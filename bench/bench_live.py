"""Live runs for ``lapsd validate``: one draft, several policies and loads, the models loaded once.

Each run is ``lapsd live`` (:func:`lapsd.collect.live.serve`) with the same prompts, the same
Poisson arrivals for a load (the capacity is measured in the first run's warm-up and reused by
all the others, so every policy sees the same arrival times), and the same predictions for every
length-aware policy. The runs go loads first, in the order given, so a deadline cuts the least
wanted ones; a run that would not end before ``--deadline-s`` (estimated from the measured
capacity) is skipped and listed as such.

Usage::

    python bench/bench_live.py --target M.gguf --draft ngram:4 --prompts q.jsonl \
        --max-new-tokens 64 --n 200 --loads 0.9,0.5 \
        --runs fcfs,lp-srpt,srpt-oracle,config=lapsd-config.json \
        --predictor model.skops --oracle-trace oracle/ --out runs/live-ngram4

then ``lapsd validate runs/live-ngram4/*-load0.9`` (and the same for each load).

``--probe PROBE.skops`` loads the engine with the probe's hidden states and serves a run written
``NAME@probe`` (``lp-srpt@probe``, ``config=PATH@probe``) with the probe as its predictor: each
request prefilled on arrival, re-predicted every ``G`` tokens (:mod:`lapsd.collect.live`). Every
run of the matrix then records states (measured to cost no round time, issue 22), so runs with
and without the probe serve alike.

``--batch-size B`` serves every run at batch size ``B`` (``lapsd live --batch-size``); loads stay
relative to the batch-1 capacity, so a batched server needs loads above 1 to be busy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lapsd.collect.live import LiveConfig, serve
from lapsd.collect.loading import check_models, load_engine, resolve_device, resolve_dtype
from lapsd.collect.run import states_spec
from lapsd.replay.live_run import read_info


def main() -> None:
    """Run the matrix and print one line per run."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--draft", required=True)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--prompts", type=Path, required=True)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1, help="arrival seed")
    ap.add_argument("--loads", default="0.9,0.5")
    ap.add_argument("--runs", default="fcfs,lp-srpt,srpt-oracle",
                    help="policy names, or config=PATH for an exported config")
    ap.add_argument("--predictor", type=Path, help="for the length-aware policies and configs")
    ap.add_argument("--probe", type=Path, help="a probe, for the runs named NAME@probe")
    ap.add_argument("--oracle-trace", type=Path, help="a collection of the prompts (srpt-oracle)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--warmup", type=int, default=8, help="requests of the capacity warm-up")
    ap.add_argument("--batch-size", type=int, default=1, help="requests per step (default 1)")
    ap.add_argument("--capacity-from", type=Path,
                    help="a live run whose measured capacity to reuse, or a collection of the "
                         "prompts on this GPU (lapsd live --capacity-from; default: the first "
                         "run's warm-up)")
    ap.add_argument("--deadline-s", type=float, default=float("inf"),
                    help="skip a run that would end after this many seconds from the start")
    args = ap.parse_args()
    start = time.monotonic()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    spec, tok = check_models(args.target, args.draft)
    states = None
    if args.probe is not None:
        from lapsd.predict.probe import load_probe

        features = load_probe(args.probe).card["features"]
        states = states_spec(args.target, ",".join(map(str, features["layers"])),
                             int(features["every"]))
    loaded = load_engine(args.target, spec, tok, k=args.k, dtype=dtype, device=device,
                         temperature=0.0, max_new_tokens=args.max_new_tokens, seed=0, chat=True,
                         states=states)
    print(f"models loaded in {time.monotonic() - start:.1f} s on {device}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    first: Path | None = args.capacity_from
    service: float | None = (read_info(first)["capacity"]["mean_service_s"]
                             if first is not None and (first / "live.json").is_file() else None)
    done: list[dict[str, object]] = []
    for load in [float(x) for x in args.loads.split(",")]:
        for run in args.runs.split(","):
            run, _, source = run.partition("@")
            policy, _, config = run.partition("=")
            name = f"{'config' if config else policy}{'-' + source if source else ''}-load{load:g}"
            if service is not None:
                need = args.n * service / load * 1.15 + 10
                if time.monotonic() - start + need > args.deadline_s:
                    print(f"{name}: skipped (needs ~{need:.0f} s; deadline)", flush=True)
                    done.append({"run": name, "skipped": True})
                    continue
            length_aware = policy not in ("fcfs", "las", "mlfq", "srpt-oracle")
            cfg = LiveConfig(
                target=args.target, draft=args.draft, prompts=args.prompts,
                workload=f"poisson:load={load:g},n={args.n},seed={args.seed}",
                out=args.out / name, policy=None if config else policy,
                config=Path(config) if config else None,
                predictor=(args.probe if source == "probe" else args.predictor)
                if length_aware else None,
                oracle_trace=args.oracle_trace if policy == "srpt-oracle" else None,
                k=args.k, max_new_tokens=args.max_new_tokens, device=device, dtype=dtype,
                warmup=args.warmup, capacity_from=first, force=True, batch_size=args.batch_size)
            t0 = time.monotonic()
            info = serve(cfg, loaded=loaded, log=lambda _: None)
            first = first or cfg.out
            service = info["capacity"]["mean_service_s"]
            lat = info["latency"]
            row = {"run": name, "wall_s": round(time.monotonic() - t0, 1),
                   "mean_latency_s": lat["mean_s"], "p90_latency_s": lat["p90_s"],
                   "scheduler_overhead": info["scheduler"]["overhead_ratio"],
                   "preemptions": info["run"]["preemptions"], "steps": info["run"]["steps"],
                   "rounds": info["run"]["rounds"]}
            done.append(row)
            print(json.dumps(row), flush=True)
    (args.out / "matrix.json").write_text(json.dumps(done, indent=1))
    print(f"all done in {time.monotonic() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
