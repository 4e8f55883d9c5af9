"""The hidden-state probe: data from traces with states, beliefs, calibration, files, command line.

Most tests run on a synthetic trace whose states carry the length (a direction scaled by the
log length, plus noise), so a working probe ranks and covers well and a broken one does not;
one runs the collector with a tiny random model so the probe reads what ``--states`` writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from one_line import one_line_error

from lapsd.cli import main
from lapsd.errors import LapsdError
from lapsd.predict.persist import load_predictor
from lapsd.predict.probe import (
    ProbePredictor,
    StateData,
    evaluate_probe,
    fit_probe,
    from_trace,
    load_probe,
    save_probe,
    total_belief,
    updates,
)
from lapsd.predict.train import fit_predictor
from lapsd.replay.estimate import LengthPrediction
from lapsd.replay.trace import (
    STATES_SCHEMA_VERSION,
    Trace,
    make_trace,
    new_manifest,
    read_trace,
    write_trace,
)

CATEGORIES = ("alpha", "beta", "gamma", "delta", "epsilon")
HIDDEN, EVERY, CAP = 24, 8, 256


def signal_trace(seed: int, n: int, layers: tuple[int, ...] = (1, 2), hidden: int = HIDDEN,
                 target: str = "tiny", noise: float = 1.5) -> Trace:
    """``n`` requests whose states encode their length (the directions are the same for every
    ``seed``: one "model"); categories shift the lengths; outputs above :data:`CAP` are cut."""
    directions = np.random.default_rng(99).normal(size=(2 * len(layers) + 1, hidden))
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, len(CATEGORIES), n)
    log_x = rng.normal(3.6 + 0.25 * cat, 0.8)
    out = np.clip(np.round(np.exp(log_x)), 2, CAP).astype(np.int64)
    requests, rounds, states = [], [], []
    decode_layer = layers[(len(layers) - 1) // 2]
    for i in range(n):
        rid = f"{seed}-{i}"
        requests.append({"request_id": rid, "source": "synthetic", "dataset": "synth",
                         "category": CATEGORIES[cat[i]], "prompt": f"question {rid}",
                         "target_model": target, "finish_reason": "length" if out[i] == CAP
                         else "stop"})
        rounds += [{"request_id": rid, "round": r, "drafted": 3, "accepted": e - 1,
                    "emitted": e, "round_s": 0.01}
                   for r, e in enumerate([4] * (out[i] // 4) + [out[i] % 4] * bool(out[i] % 4))]
        for j, layer in enumerate(layers):
            for k, kind in enumerate(("prompt_last", "prompt_mean")):
                states.append((rid, kind, layer, 0, log_x[i] * directions[2 * j + k]
                               + rng.normal(0, noise, hidden)))
        for t in range(EVERY, int(out[i]) + 1, EVERY):
            left = math.log(max(math.exp(log_x[i]) - t, 1.0))
            states.append((rid, "decode", decode_layer, t,
                           left * directions[-1] + rng.normal(0, noise, hidden)))
    table = pl.DataFrame({"request_id": [s[0] for s in states], "kind": [s[1] for s in states],
                          "layer": [s[2] for s in states],
                          "generated_tokens": [s[3] for s in states],
                          "state": pl.Series(np.array([s[4] for s in states], np.float32))})
    block = {"schema_version": STATES_SCHEMA_VERSION, "layers": list(layers),
             "decode_layer": decode_layer, "every": EVERY, "hidden_size": hidden,
             "dtype": "float32", "saturated": 0}
    manifest = new_manifest(timing="synthetic", states=block,
                            collector={"target": target, "max_new_tokens": CAP})
    return make_trace(pl.DataFrame(requests), pl.DataFrame(rounds), manifest, table)


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trace(signal_trace(0, 400), tmp_path_factory.mktemp("probe") / "train")


@pytest.fixture(scope="module")
def test_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_trace(signal_trace(1, 200), tmp_path_factory.mktemp("probe") / "test")


@pytest.fixture(scope="module")
def data(train_dir: Path) -> StateData:
    return from_trace(read_trace(train_dir), train_dir)


@pytest.fixture(scope="module")
def probe(data: StateData) -> ProbePredictor:
    return fit_probe(data, folds=4)


def test_state_data_follows_the_table(data: StateData, train_dir: Path) -> None:
    trace = read_trace(train_dir)
    assert trace.states is not None
    assert data.prompt_states.shape == (400, 2 * 2 * HIDDEN)
    assert data.features == {"layers": [1, 2], "decode_layer": 1, "hidden_size": HIDDEN,
                             "every": EVERY, "target": "tiny", "target_sha256": None}
    row = trace.states.filter((pl.col("request_id") == "0-7") & (pl.col("kind") == "prompt_mean")
                              & (pl.col("layer") == 2))["state"].to_numpy()[0]
    np.testing.assert_array_equal(data.prompt_states[7, 3 * HIDDEN:], row)
    decode = trace.states.filter(pl.col("kind") == "decode")
    assert data.decode_states.shape == (decode.height, HIDDEN)
    assert np.all(np.diff(data.decode_owner) >= 0)
    assert np.all(data.decode_tokens <= data.output_tokens[data.decode_owner])
    part = data.subset([5, 2])
    assert part.request_ids == ["0-5", "0-2"]
    np.testing.assert_array_equal(part.decode_tokens[part.decode_owner == 1],
                                  data.decode_tokens[data.decode_owner == 2])
    assert data.censored.sum() == (data.output_tokens == CAP).sum() > 0


def test_beliefs_are_valid_and_follow_the_states(probe: ProbePredictor,
                                                 test_dir: Path) -> None:
    test = from_trace(read_trace(test_dir), test_dir)
    beliefs = probe.predictions(test)
    assert len(beliefs) == len(test)
    assert all(isinstance(b, LengthPrediction) and b.median >= 1 and 0 < b.sigma < 5
               and b.cap == CAP for b in beliefs)
    per_request = updates(probe, test)
    assert [u.request_id for u in per_request] == test.request_ids
    for i, u in enumerate(per_request):
        np.testing.assert_array_equal(u.generated, test.decode_tokens[test.decode_owner == i])
        assert u.median.shape == u.sigma.shape == u.generated.shape
        assert np.all(u.median > 0) and np.all(u.sigma > 0) and u.cap == CAP
    result = evaluate_probe(probe, test)
    # the states carry the length: a probe that reads them ranks well at both points
    assert result["admission"]["kendall_tau"] > 0.6
    assert result["remaining"][64]["kendall_tau"] > 0.6
    assert result["seen_prompts"]["seen"] == 0


def test_intervals_cover_on_a_category_never_seen(data: StateData) -> None:
    """Trained without one category, the 80% intervals cover about 80% of it."""
    for held in ("alpha", "epsilon"):
        test = np.array([c == held for c in data.categories])
        probe = fit_probe(data.subset(np.flatnonzero(~test)), folds=4)
        result = evaluate_probe(probe, data.subset(np.flatnonzero(test)))
        assert 0.65 <= result["admission"]["coverage_80"] <= 0.95, result["admission"]
        assert 0.6 <= result["remaining"][64]["coverage_80"] <= 0.97, result["remaining"]


def test_censored_outputs_are_covered_through_the_cap(probe: ProbePredictor,
                                                      data: StateData) -> None:
    capped = np.flatnonzero(data.censored)
    beliefs = probe.predictions(data.subset(capped))
    # a capped output lies in the interval when its 0.9 quantile reaches the cap
    share = np.mean([b.quantile_remaining(0, 0.9) >= CAP for b in beliefs])
    assert share >= 0.5


@given(t=st.integers(1, 1024), m=st.floats(1.0, 1e5), s=st.floats(0.05, 4.0))
@example(t=32, m=29.8, s=2.0)  # a median exp(log t - a sigma) that underflowed to 0
def test_total_belief_reads_back_the_remaining_belief(t: int, m: float, s: float) -> None:
    median, sigma = total_belief(np.array([t]), np.array([m]), np.array([s]))
    # a belief the trace can hold (belief_median > 0) however wide the remaining one
    assert 0 < median[0] < math.inf and 0 < sigma[0] < math.inf
    belief = LengthPrediction(float(median[0]), float(sigma[0]))
    assert belief.quantile_remaining(t, 0.5) == pytest.approx(m, rel=1e-6)
    wanted = m * math.exp(1.2815515655446004 * s)
    got = belief.quantile_remaining(t, 0.9)
    # exact where the family can hold that tail; else the widest tail it has, never wider
    ratio = math.log1p(wanted / t) / math.log1p(m / t)
    if ratio < 3.3:  # the largest is log 10 / log 2 = 3.32
        assert got == pytest.approx(wanted, rel=1e-5)
    else:
        assert m < got <= wanted * (1 + 1e-6)


def test_total_belief_at_admission_is_the_belief() -> None:
    median, sigma = total_belief(np.zeros(2), np.array([40.0, 300.0]), np.array([0.5, 0.9]))
    np.testing.assert_array_equal(median, [40.0, 300.0])
    np.testing.assert_array_equal(sigma, [0.5, 0.9])


def test_file_round_trip_and_kinds(probe: ProbePredictor, data: StateData,
                                   tmp_path: Path) -> None:
    path = save_probe(probe, tmp_path / "probe.skops")
    again = load_probe(path)
    assert again.card == probe.card and again.calibration == probe.calibration
    np.testing.assert_array_equal(again.log_beliefs(data)[0], probe.log_beliefs(data)[0])
    np.testing.assert_array_equal(again.remaining(data)[0], probe.remaining(data)[0])
    assert "lapsd live" in again.card["deployments"]
    with pytest.raises(LapsdError, match="hidden-state probe"):
        load_predictor(path)
    prompt_only = tmp_path / "prompt.skops"
    from lapsd.predict.persist import save_predictor

    save_predictor(fit_predictor(data.length_data(), folds=2, embeddings=False, max_iter=20),
                   prompt_only)
    with pytest.raises(LapsdError, match="not a probe"):
        load_probe(prompt_only)


@pytest.mark.parametrize(("changed", "named"), [
    ({"layers": (1, 3)}, "layers=[1, 2]"),
    ({"hidden": 16}, "hidden_size=24"),
    ({"target": "other-model"}, "target='other-model'"),
])
def test_states_unlike_the_training_ones_are_refused(probe: ProbePredictor, changed: dict,
                                                     named: str, tmp_path: Path) -> None:
    trace = signal_trace(2, 20, **changed)
    with pytest.raises(LapsdError) as info:
        probe.predictions(from_trace(trace, "other"))
    message = str(info.value)
    assert "\n" not in message and named in message and "the probe has" in message
    assert "the data (other) has" in message


def test_cli_train_eval_apply(train_dir: Path, test_dir: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "probe.skops"
    assert main(["predict", "train", "--probe", "--data", str(train_dir), "--out", str(model),
                 "--cv-folds", "3"]) == 0
    assert "probe of tiny" in capsys.readouterr().out
    assert main(["predict", "eval", "--model", str(model), "--data", str(test_dir),
                 "--json", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())["result"]
    assert result["n"] == 200 and set(result["remaining"]) == {"64", "128"}
    assert main(["predict", "apply", "--model", str(model), str(test_dir), "--out",
                 str(tmp_path / "applied")]) == 0
    req = read_trace(tmp_path / "applied").requests
    probe = load_probe(model)
    mu, sigma = probe.log_beliefs(from_trace(read_trace(test_dir), test_dir))
    np.testing.assert_allclose(req["predicted_tokens"].to_numpy(), np.exp(mu))
    np.testing.assert_allclose(req["predicted_tokens_p90"].to_numpy(),
                               np.exp(mu + 1.2815515655446004 * sigma))
    applied = read_trace(tmp_path / "applied")
    assert applied.states is not None
    # Re-predictions go on the first round after which more than t tokens are out.
    ups = {u.request_id: u for u in probe.updates(from_trace(read_trace(test_dir), test_dir))}
    rounds = applied.rounds.sort("request_id", "round")
    written = 0
    for (rid,), rows in rounds.group_by("request_id"):
        after = np.cumsum(rows["emitted"].to_numpy())
        expect: dict[int, tuple[float, float]] = {}
        for t, m, sd in zip(ups[rid].generated.tolist(), ups[rid].median.tolist(),
                            ups[rid].sigma.tolist(), strict=True):
            r = int(np.argmax(after > t)) if (after > t).any() else None
            if r is not None:
                expect[r] = (m, sd)
        got = {r: (m, sd) for r, m, sd in rows.select("round", "belief_median", "belief_sigma")
               .iter_rows() if m is not None}
        assert got.keys() == expect.keys()
        for r, (m, sd) in got.items():
            assert m == pytest.approx(expect[r][0]) and sd == pytest.approx(expect[r][1])
        written += len(got)
    assert written > 0 and applied.manifest["predictions"]["updates"] == written
    capsys.readouterr()
    means = {}
    for extra in ([], ["--recorded-updates"]):
        assert main(["replay", str(tmp_path / "applied"), "--policies", "fcfs,lp-srpt",
                     "--workload", "poisson:n=60,load=0.9", *extra,
                     "--json", str(tmp_path / "replay.json")]) == 0
        replayed = json.loads((tmp_path / "replay.json").read_text())
        means[bool(extra)] = {r["policy"]: r["mean"] for r in replayed["results"]}
    assert "re-predicted as the trace records" in replayed["predictions"]
    # FCFS reads no beliefs; lp-srpt ranks on the re-predictions.
    assert means[True]["fcfs"] == means[False]["fcfs"]
    assert means[True]["lp-srpt"] != means[False]["lp-srpt"]
    assert main(["tune", str(tmp_path / "applied"), "--out", str(tmp_path / "run"),
                 "--predictions", "column", "--recorded-updates", "--trials", "2",
                 "--bands", "none", "--policies", "lp-srpt", "--bursts", "10", "--loads",
                 "0.9", "--poisson-n", "60", "--seeds", "1"]) == 0
    exported = json.loads((tmp_path / "run" / "lapsd-config.json").read_text())
    assert exported["prediction"]["recorded_updates"] is True  # a server must re-predict too
    # A prompt-only predictor's predictions drop another predictor's re-predictions.
    plain_model = tmp_path / "plain.skops"
    assert main(["predict", "train", "--data", str(train_dir), "--out", str(plain_model)]) == 0
    assert main(["predict", "apply", "--model", str(plain_model), str(tmp_path / "applied")]) == 0
    again = read_trace(tmp_path / "applied")
    assert "belief_median" not in again.rounds.columns
    assert again.manifest["predictions"]["updates"] == 0
    one_line_error(["replay", str(tmp_path / "applied"), "--recorded-updates"], capsys,
                   "records no re-predictions", "lapsd predict apply PROBE")


def test_cli_bad_input_is_one_line(train_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    plain = write_trace(signal_trace(3, 12), tmp_path / "plain")
    trace = read_trace(plain)
    no_states = write_trace(Trace(trace.requests, trace.rounds,
                                  {k: v for k, v in trace.manifest.items() if k != "states"}),
                            tmp_path / "no_states")
    out = tmp_path / "m.skops"
    one_line_error(["predict", "train", "--probe", "--data", str(no_states), "--out", str(out)],
                   capsys, "no hidden states", no_states)
    assert not out.exists()
    one_line_error(["predict", "train", "--probe", "--data", str(train_dir), "--out", str(out),
                    "--tfidf"], capsys, "takes no --tfidf")
    assert not out.exists()
    model = save_probe(fit_probe(from_trace(trace, plain), folds=2), tmp_path / "p.skops")
    other = write_trace(signal_trace(4, 12, layers=(1, 3)), tmp_path / "other")
    one_line_error(["predict", "eval", "--model", str(model), "--data", str(other)], capsys,
                   "hidden states do not match", "layers=[1, 2]", "layers=[1, 3]")
    one_line_error(["predict", "apply", "--model", str(model), str(other)], capsys,
                   "hidden states do not match", other)
    one_line_error(["predict", "apply", "--model", str(model), str(plain), "--target-model",
                    "x"], capsys, "leave --target-model out", plain)


def test_a_collected_trace_with_states(tmp_path: Path) -> None:
    """What ``lapsd collect --states`` writes is what the probe reads (tiny random model)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from lapsd.collect.run import CollectConfig, collect
    from tests.collect.conftest import _tokenizer, tiny_llama

    model_dir = tmp_path / "tiny"
    model = tiny_llama(0)
    model.generation_config.eos_token_id = None  # run to the token budget
    model.save_pretrained(model_dir)
    _tokenizer(model_dir)
    prompts = tmp_path / "question.jsonl"
    prompts.write_text("".join(json.dumps({"question_id": i, "category": "qa" if i % 2 else "w",
                                           "turns": [f"say {i} things about {i * 7}."]}) + "\n"
                               for i in range(12)))
    path = collect(CollectConfig(target=model_dir, draft="ngram:2", prompts=prompts,
                                 out=tmp_path / "trace", k=3, max_new_tokens=24, device="cpu",
                                 dtype="float32", states="1,3,4", states_every=2),
                   log=lambda *_: None)
    trace = read_trace(path)
    data = from_trace(trace, path)
    assert data.features["layers"] == [1, 3, 4] and data.features["decode_layer"] == 3
    assert data.prompt_states.shape == (12, 2 * 3 * 32) and data.cap == 24
    assert set(data.decode_tokens.tolist()) <= set(range(2, 25, 2))
    probe = fit_probe(data, folds=2)
    assert len(updates(probe, data)) == 12
    assert probe.card["features"]["target_sha256"] == trace.manifest["collector"][
        "target_sha256"]


@pytest.mark.parametrize("head", [("ridge", 10.0), ("boost", None)])
def test_compiled_pipelines_predict_as_scikit_learn(head: tuple[str, float | None]) -> None:
    """What the probe predicts with (numpy, one row at a time live) is its pipelines' output."""
    from sklearn.pipeline import Pipeline

    from lapsd.predict.compiled import compile_pipeline
    from lapsd.predict.probe import _head, _projection

    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 40)) * rng.uniform(0.1, 5, 40) + rng.normal(size=40)
    y = X[:, :5] @ rng.normal(size=5) + np.sin(X[:, 35]) + rng.normal(0, 0.1, 300)
    pipeline = Pipeline([("features", _projection(34, 40, 300, 0)),
                         ("head", _head(*head, 0))]).fit(X, y)
    new = rng.normal(size=(50, 40)) * 2
    compiled = compile_pipeline(pipeline)
    np.testing.assert_allclose(compiled.predict(new), pipeline.predict(new), rtol=1e-9,
                               atol=1e-9)
    np.testing.assert_allclose(compiled.predict(new[:1]), pipeline.predict(new[:1]),
                               rtol=1e-9, atol=1e-9)
