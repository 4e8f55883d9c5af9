"""``lapsd report OUT_DIR``: one self-contained HTML page about a tuning run.

Plotly's JavaScript is embedded once, inline, so the page works offline; every figure after the
first reuses it. Figures: optimisation history and parameter importances (from the study), the
held-out latency CDF and mean latency vs load of every policy, and held-out LAPS-SD vs baselines.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go

from lapsd.io import atomic_write_text
from lapsd.replay.config import HeldoutMetrics, LapsdConfig, load_config
from lapsd.tune.defaults import CONFIG_FILE, HELDOUT_FILE, JOURNAL_FILE, REPORT_FILE
from lapsd.tune.heldout import HeldoutResult
from lapsd.tune.study import StorageSpec


def _study(out: Path, cfg: LapsdConfig, storage_url: str | None) -> optuna.Study | None:
    journal = out / JOURNAL_FILE
    if storage_url is None and not journal.exists():
        return None
    storage = StorageSpec(str(journal), storage_url).open()
    return optuna.load_study(study_name=cfg.provenance.study, storage=storage)


def _study_figures(study: optuna.Study) -> list[tuple[str, go.Figure | str]]:
    vis = optuna.visualization
    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    name = "mean latency / srpt-oracle"
    figs: list[tuple[str, go.Figure | str]] = [
        ("Optimisation history", vis.plot_optimization_history(study, target=target,
                                                               target_name=name)),
    ]
    try:
        figs.append(("Parameter importances (fANOVA)",
                     vis.plot_param_importances(
                         study, target=target, target_name=name,
                         evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))))
    except (ValueError, RuntimeError) as exc:
        figs.append(("Parameter importances", f"not available: {exc}"))
    if multi:
        figs.append(("Pareto front", vis.plot_pareto_front(
            study, target_names=["mean / srpt-oracle", "p99 / srpt-oracle"])))
    return figs


def _cdf(latencies: dict[str, list[float]]) -> go.Figure:
    fig = go.Figure()
    for name, values in latencies.items():
        x = np.sort(np.asarray(values))
        # At most 400 points per curve keeps the page small.
        pick = np.unique(np.linspace(0, x.size - 1, min(x.size, 400)).astype(int))
        fig.add_trace(go.Scatter(x=x[pick], y=(pick + 1) / x.size, mode="lines", name=name))
    fig.update_layout(xaxis_title="latency (s, log)", yaxis_title="fraction of requests",
                      xaxis_type="log")
    return fig


def _vs_load(rows: list[dict[str, Any]]) -> go.Figure:
    by: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["kind"] == "poisson":
            by[r["policy"]][r["load"]].append(r["mean"])
    fig = go.Figure()
    for name, loads in by.items():
        xs = sorted(loads)
        fig.add_trace(go.Scatter(x=xs, y=[float(np.mean(loads[x])) for x in xs],
                                 mode="lines+markers", name=name))
    fig.update_layout(xaxis_title="offered load (Poisson)", yaxis_title="mean latency (s)")
    return fig


def _bars(summary: dict[str, HeldoutMetrics]) -> go.Figure:
    names = list(summary)
    fig = go.Figure(go.Bar(x=names, y=[summary[n].norm_mean for n in names],
                           text=[f"{summary[n].norm_mean:.3f}" for n in names]))
    fig.update_layout(yaxis_title="mean latency / srpt-oracle (held-out mean)")
    return fig


def _table(summary: dict[str, HeldoutMetrics], tuning: dict[str, float],
           exported: str | None) -> str:
    head = ("<tr><th>policy</th><th>tuning objective</th><th>mean s</th><th>p99 s</th>"
            "<th>mean / srpt-oracle</th></tr>")
    body = "".join(
        f"<tr><td>{'<b>' if n == exported else ''}{html.escape(n)}"
        f"{' (exported)</b>' if n == exported else ''}</td>"
        f"<td>{'-' if n not in tuning else format(tuning[n], '.4f')}</td>"
        f"<td>{m.mean_s:.3f}</td><td>{m.p99_s:.3f}</td>"
        f"<td>{m.norm_mean:.3f}</td></tr>" for n, m in summary.items())
    return f"<table>{head}{body}</table>"


def render(out: Path, storage_url: str | None = None) -> str:
    """The report page of the run in ``out`` (reads its config, held-out file and study)."""
    cfg = load_config(out / CONFIG_FILE)
    heldout = HeldoutResult.read(out / HELDOUT_FILE)
    study = _study(out, cfg, storage_url)
    figs: list[tuple[str, go.Figure | str]] = []
    if study is not None:
        figs += _study_figures(study)
    figs += [
        ("Held-out: mean latency / srpt-oracle", _bars(heldout.summary)),
        ("Held-out: latency CDF (all held-out workloads)", _cdf(heldout.latencies)),
        ("Held-out: mean latency vs load", _vs_load(heldout.rows)),
    ]
    parts, plotlyjs = [], True
    for title, fig in figs:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if isinstance(fig, str):
            parts.append(f"<p>{html.escape(fig)}</p>")
            continue
        fig.update_layout(height=420, margin={"t": 30})
        parts.append(fig.to_html(full_html=False, include_plotlyjs=plotlyjs,
                                 config={"displaylogo": False}))
        plotlyjs = False
    prov = cfg.provenance
    params = json.dumps(cfg.policy.parameters)
    bands = cfg.load_bands
    band_note = ("one parameter set for all loads" if bands is None else
                 f"{len(bands.bands)} load bands by waiting requests")
    pred = cfg.prediction
    source = (f"a length predictor ({html.escape(pred.predictor.path)})" if pred.predictor
              else html.escape(pred.source))
    if pred.what_if:
        source += " <b>(a what-if: true length x noise, not a predictor a server has)</b>"
    notes = [
        f"traces: {', '.join(html.escape(t.path) for t in prov.traces)}",
        f"predictions: {source}"
        + (f"; re-predicted every {pred.repredict_every} rounds" if pred.repredict_every
           else ""),
        f"exported <b>{html.escape(cfg.policy.name)}</b>: <code>{html.escape(params)}</code>; "
        f"{band_note}",
        f"study {html.escape(prov.study)} ({html.escape(prov.storage or '')}), best "
        f"trial {prov.trial} of {prov.n_trials or '?'}",
        f"held-out workloads: {html.escape(', '.join(heldout.workloads))}",
        f"created {html.escape(prov.created)} by lapsd {html.escape(prov.lapsd_version)}",
    ]
    verdict = "" if heldout.verdict is None else str(heldout.verdict)
    colour = "#070" if heldout.verdict is None or heldout.verdict.exported_best else "#a60"
    items = "".join(f"<li>{n}</li>" for n in notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>lapsd tuning report</title><style>body{font-family:sans-serif;margin:2em;"
        "max-width:1100px}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child{text-align:left}</style></head><body>"
        f"<h1>lapsd tuning report</h1><p style=\"color:{colour};font-weight:bold\">"
        f"{html.escape(verdict)}</p><ul>{items}</ul>"
        f"<h2>Held-out metrics</h2>"
        f"{_table(heldout.summary, heldout.tuning_objective, heldout.exported)}"
        f"{''.join(parts)}</body></html>\n"
    )


def write_report(out: str | Path, storage_url: str | None = None) -> Path:
    """Write ``OUT/report.html``; return its path."""
    out = Path(out)
    path = out / REPORT_FILE
    atomic_write_text(path, render(out, storage_url))
    return path
