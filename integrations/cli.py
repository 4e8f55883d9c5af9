"""``lapsd`` subcommands of the integrations package: ``export-priorities``.

Registering imports argparse-level code only; the command loads the config, the predictor and
the calibration traces when it runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from lapsd.console import add_json, console, emit, out
from lapsd.io import atomic_dir, check_output

SERVER_NAMES = ("vllm", "sglang", "trtllm")


def cmd_export_priorities(args: argparse.Namespace) -> int:
    """``lapsd export-priorities``."""
    from lapsd.integrations.priorities import PriorityMapper, check_max_tokens
    from lapsd.replay.config import config_predictor, config_traces, load_config

    if args.max_new_tokens is not None:
        check_max_tokens(args.max_new_tokens, "--max-new-tokens")
    check_output(args.out, "--out", folder=True, force=args.force)
    config = load_config(args.config)
    # The config's own files, found beside it and checked against their recorded hashes.
    predictor = (config_predictor(args.config, args.predictor, config)
                 if config.scheduler().needs_prediction else None)
    mapper = PriorityMapper.from_config(
        args.config, args.server, predictor=predictor,
        calibration=args.calibration or config_traces(args.config, config),
        levels=args.levels, target_model=args.target_model,
        max_new_tokens=args.max_new_tokens)
    with atomic_dir(args.out, overwrite=args.force) as tmp:
        files = [args.out / f.name for f in mapper.export(tmp)]
    summary = _summary(mapper, files)
    emit(args.json, summary, lambda: _show(summary))
    return 0


def _summary(mapper: Any, files: list[Path]) -> dict[str, Any]:
    """What was written, and where the calibration prompts' priorities fall."""
    data = mapper.to_dict()
    knots, cdf = mapper.scale.knots, mapper.scale.cdf
    quantiles = {}
    for q in (0.1, 0.5, 0.9):
        # The calibration rank nearest to quantile q.
        i = int(np.argmin(np.abs(np.asarray(cdf) - q)))
        quantiles[f"p{round(q * 100)}"] = {"rank": knots[i],
                                           "priority": mapper.priority_of_rank(knots[i])}
    return {"server": data["server"], "server_args": data["server_args"],
            "files": [str(f) for f in files], "policy": data["policy"]["name"],
            "rank": data["rank"], "priority": data["priority"],
            "calibration": {"source": data["calibration"]["source"],
                            "quantiles": quantiles},
            "target_model": data["target_model"], "max_new_tokens": data["max_new_tokens"],
            "replay": data["replay"], "behaviour": data["behaviour"]}


def _show(s: dict[str, Any]) -> None:
    p = s["priority"]
    order = "higher" if p["higher_first"] else "lower"
    kind = "integer" if p["integer"] else "float"
    out.print(f"{s['server']}: start the server with [bold]{' '.join(s['server_args'])}[/]; "
              f"send `priority` ({kind} in [{p['range'][0]}, {p['range'][1]}], {order} runs "
              f"first, {p['levels']} levels) with each request")
    out.print(f"priority = {s['policy']}'s admission rank ({s['rank']}), as its quantile "
              f"among {s['calibration']['source']}")
    table = Table(title="calibration prompts")
    for col in ("quantile", "admission rank", "priority"):
        table.add_column(col, justify="right")
    for q, row in s["calibration"]["quantiles"].items():
        table.add_row(q, f"{row['rank']:.4g}", str(row["priority"]))
    out.print(table)
    out.print(s["behaviour"])
    replay = s["replay"]["parameters"]
    out.print(f"replay it: lapsd replay TRACE --policies {replay['policy']},static-priority "
              f"--set static-priority.policy={replay['policy']} --set "
              f"static-priority.preemptive={str(replay['preemptive']).lower()} --set "
              f"'static-priority.parameters={json.dumps(replay['parameters'])}'",
              soft_wrap=True)
    console.print(f"wrote {', '.join(s['files'])}")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this package's subcommands to the ``lapsd`` parser."""
    p = subparsers.add_parser(
        "export-priorities", help="a config as vLLM / SGLang / TensorRT-LLM request priorities",
        description="Map a tuned config's policy to the priority field of a server's "
                    "priority scheduling: each request's admission rank (from the length "
                    "predictor), placed by its quantile among calibration prompts, in the "
                    "server's range and direction. Writes priority-map.json, the predictor, the "
                    "server arguments and gateway.py (priority_for(prompt, ...)).",
        epilog="vLLM: --scheduling-policy priority, integer, lower first. SGLang: "
               "--enable-priority-scheduling, integer, higher first. TensorRT-LLM: "
               "scheduler_config.waiting_queue_policy=priority, float in [0, 1], higher first. "
               "Ties are served in arrival order. The full online policy inside vLLM instead: "
               "--scheduler-cls lapsd.integrations.vllm.LapsdAsyncScheduler (lapsd[vllm]).")
    p.add_argument("--config", type=Path, required=True, help="lapsd-config.json")
    p.add_argument("--server", required=True, choices=SERVER_NAMES, help="the target server")
    p.add_argument("--predictor", type=Path,
                   help="length predictor (.skops; default: the config's own predictor)")
    p.add_argument("--calibration", type=Path, action="append", metavar="TRACE_DIR",
                   help="trace whose prompts calibrate the map (repeatable; default: the "
                        "config's traces)")
    p.add_argument("--levels", type=int, default=1000,
                   help="number of priority levels (default 1000)")
    p.add_argument("--target-model",
                   help="the served model the predictor is calibrated for (default: the "
                        "calibration traces' target model)")
    p.add_argument("--max-new-tokens", type=float,
                   help="serving cap on output tokens (default: the calibration traces' cap; a "
                        "request's own max_tokens overrides it)")
    p.add_argument("--out", type=Path, required=True, help="folder to write")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out (folder or file)")
    add_json(p, "the export summary")
    p.set_defaults(func=cmd_export_priorities)
