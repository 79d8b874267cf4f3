"""The KinEMbed protocol's silent-wrong-result guards (issue 14): DB8's excluded subject, the mode
of the per-subject CV winners, causal embeddings for every method, an explicit held-out session,
and the baselines a user tries first (raw features through the TCN, lagged ridge).

``emgcore.methods.kinembed`` is used as a module (``ex.name``) so each test fails on its own when a
name it needs is missing, rather than the whole file failing at import.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

import emgcore.methods.kinembed as ex
from emgcore.config import resolve_config
from emgcore.data import open_dataset
from emgcore.errors import EmgDataError, InvalidValueError


@pytest.fixture(scope="module")
def smoke_cfg() -> ex.ExperimentConfig:
    return ex.load_config(resolve_config("kinembed-smoke"))


@pytest.fixture(scope="module")
def tiny_recs():
    return open_dataset("db8-like", n_subjects=1, duration_s=30.0)


@pytest.fixture(scope="module")
def tiny_fold(tiny_recs, smoke_cfg):
    (subj,), train, test = ex.prepare(tiny_recs, smoke_cfg)
    return subj.fold(train, (test,)), test


# -- 1. the paper's 11 subjects: DB8's subject 4 is excluded ---------------------------------------


def test_paper_preset_excludes_db8_subject_4(tmp_path: Path) -> None:
    """Sec. 4: "Subject 4 was excluded due to data fidelity issues yielding N=11". The preset
    names it the way the NinaPro loader names subjects (S<k> from S<k>_E1_A<j>.mat)."""
    from tests.make_fixtures import write_ninapro

    for subject in (3, 4):
        for acq in (1, 2, 3):
            write_ninapro(tmp_path / f"S{subject}_E1_A{acq}.mat", "db8")
    recs = open_dataset(tmp_path)
    assert {r.subject for r in recs} == {"S3", "S4"}  # the loader's naming
    cfg = ex.load_config(resolve_config("kinembed-paper"))
    subjects, train, test = ex.prepare(recs, cfg)
    assert [s.subject for s in subjects] == ["S3"]
    assert (train, test) == (("A1", "A2"), "A3")
    # asking for an excluded subject by name is a contradiction, not a silent inclusion
    with pytest.raises(InvalidValueError, match="exclude_subjects"):
        dataclasses.replace(cfg, subjects=("S3", "S4"))


# -- 2. one configuration for every subject: the mode of the per-subject CV winners -------------


@pytest.fixture(scope="module")
def three_subjects():
    return open_dataset("db8-like", n_subjects=3, duration_s=12.0)


def _scripted(monkeypatch, table: dict) -> list:
    """CV scores from ``table[(subject, dim)]``; held-out fits recorded, not trained."""
    calls: list = []

    def cv_score(method, params, subject, train, cfg, seed=0, context=None):
        return table[(subject.subject, params["dim"])]

    def fit_eval(method, params, fold, cfg, seed, context=None):
        calls.append((method, dict(params)))
        (s, seg), *_ = fold.evals.items()
        return {s: (np.full(seg.y.shape[1], 0.5), seg.y)}

    monkeypatch.setattr(ex, "cv_score", cv_score)
    monkeypatch.setattr(ex, "fit_eval", fit_eval)
    return calls


def test_every_subject_is_refitted_with_the_mode_of_the_cv_winners(
    three_subjects, smoke_cfg, monkeypatch, tmp_path: Path
) -> None:
    """Subjects s00, s01 choose d=8 and s02 chooses d=16 by CV: every subject, s02 included, is
    refitted and scored with d=8, and both the winners and the mode are in the outputs."""
    from emgcore.eval import report

    table = {(s, d): 0.1 for s in ("s00", "s01", "s02") for d in (2, 8, 16)}
    table |= {("s00", 8): 0.6, ("s01", 8): 0.5, ("s02", 16): 0.7, ("s02", 8): 0.65}
    calls = _scripted(monkeypatch, table)
    cfg = dataclasses.replace(smoke_cfg, methods=("pca",), dims=(2, 8, 16), seeds=(0, 1))
    res = ex.run(three_subjects, cfg)
    assert calls == [("pca", {"dim": 8})] * 6  # 3 subjects x 2 seeds, all with the mode
    assert res.chosen == {"pca": {"dim": 8}}
    own = {w["subject"]: w["params"]["dim"] for w in res.winners if w["method"] == "pca"}
    assert own == {"s00": 8, "s01": 8, "s02": 16}
    s02 = [r for r in res.rows if r["subject"] == "s02"]
    assert all(r["params"] == {"dim": 8} and r["own_params"] == {"dim": 16} for r in s02)
    assert s02[0]["cv_r2"] == pytest.approx(0.65) and s02[0]["own_cv_r2"] == pytest.approx(0.7)

    paths = report.write(res, tmp_path / "out")
    data = json.loads(paths["scores"].read_text())
    assert data["chosen"] == {"pca": {"dim": 8}}
    assert {w["subject"]: w["params"]["dim"] for w in data["winners"]} == own
    csv = (tmp_path / "out" / "scores.csv").read_text()
    assert "own_params" in csv.splitlines()[0]
    text = paths["tables"].read_text()
    assert "dim=8" in text and "s02 16" in text


def test_mode_ties_go_to_the_higher_mean_cv_then_the_smaller_value() -> None:
    winners = {"a": {"dim": 8}, "b": {"dim": 16}}
    records = [
        {"subject": "a", "dim": 8, "cv_r2": 0.6},
        {"subject": "a", "dim": 16, "cv_r2": 0.5},
        {"subject": "b", "dim": 8, "cv_r2": 0.6},
        {"subject": "b", "dim": 16, "cv_r2": 0.8},
    ]
    assert ex.mode_config(winners, records) == {"dim": 16}  # mean 0.65 vs 0.6
    assert ex.mode_config(winners) == {"dim": 8}  # no scores: the smaller value
    # the mode is per hyper-parameter (App. B.4), each with its own count
    three = {"a": {"dim": 8, "alpha": 0.1}, "b": {"dim": 8, "alpha": 1.0}, "c": {"dim": 2}}
    three["c"]["alpha"] = 1.0
    assert ex.mode_config(three) == {"dim": 8, "alpha": 1.0}
    assert ex.mode_config({"a": {}, "b": {}}) == {}


def test_cebra_takes_the_mode_of_its_hyper_parameters_then_of_its_dimension(
    three_subjects, smoke_cfg, monkeypatch
) -> None:
    """App. B.4: CEBRA's Optuna winners per subject -> their mode, fixed; then the dimension is
    searched with those fixed values and its mode taken."""
    lrs = {"s00": 1e-3, "s01": 1e-4, "s02": 1e-3}
    seen: list = []

    def tune_cebra(subject, train, cfg, seed, records=None):
        params = {"learning_rate": lrs[subject.subject], "temperature": 1.0}
        records.append({"method": "cebra", "subject": subject.subject, "stage": "hyper"})
        records[-1] |= {**params, "dim": 8, "cv_r2": 0.3}
        return params

    def cv_score(method, params, subject, train, cfg, seed=0, context=None):
        seen.append(dict(params))
        return {2: 0.2, 8: 0.4}[params["dim"]] + (0.5 if subject.subject == "s02" else 0.0)

    calls = _scripted(monkeypatch, {})
    monkeypatch.setattr(ex, "tune_cebra", tune_cebra)
    monkeypatch.setattr(ex, "cv_score", cv_score)
    cfg = dataclasses.replace(smoke_cfg, methods=("cebra",), dims=(2, 8))
    res = ex.run(three_subjects, cfg)
    # the dimension search saw only the canonical (mode) hyper-parameters, for every subject
    assert {p["learning_rate"] for p in seen} == {1e-3}
    assert res.chosen["cebra"] == {"learning_rate": 1e-3, "temperature": 1.0, "dim": 8}
    assert {c[1]["learning_rate"] for c in calls} == {1e-3}
    hyper = {w["subject"]: w["params"] for w in res.winners if w["stage"] == "hyper"}
    assert hyper["s01"]["learning_rate"] == 1e-4


def test_a_one_point_cebra_grid_is_taken_without_a_cv_fit(smoke_cfg) -> None:
    """Nothing to choose: the smoke grid's point comes back without fitting (no subject or
    session is read, no trial recorded); two points are searched by session CV."""
    one = {k: (v[0],) for k, v in smoke_cfg.cebra_grid.items()}
    records: list = []
    cfg = dataclasses.replace(smoke_cfg, cebra_grid=one, cebra_trials=3)
    assert ex.tune_cebra(None, (), cfg, 0, records) == {k: v[0] for k, v in one.items()}
    assert records == []
    two = dataclasses.replace(cfg, cebra_grid={**one, "temperature": (1.0, 2.0)})
    with pytest.raises(InvalidValueError, match="session CV"):
        ex.tune_cebra(None, (), two, 0, records)


# -- 3. every method's output at window t depends on windows <= t only ---------------------------

# ARIMA is not here: it has no embedding (it forecasts the DoA from the DoA alone, no EMG input).
EMBEDDING_METHODS = [m for m in ex.COMPARED if m != "arima"]


def _first_candidate(method: str, cfg: ex.ExperimentConfig) -> dict:
    base = (
        {k: v[0] for k, v in cfg.cebra_grid.items()} if method == "cebra" else {}
    )  # the smoke grid: 50 iterations
    return {**base, **ex.COMPARED[method].candidates(cfg)[0]}


@pytest.mark.parametrize("method", EMBEDDING_METHODS)
def test_output_at_t_ignores_future_windows(method, tiny_fold, smoke_cfg) -> None:
    """Perturbing windows t+1 .. t+4 (CEBRA's offset10 model used to look 4 ahead) leaves the
    embedding (for ridge: its prediction) and the decoded DoA at every window <= t unchanged;
    perturbing window t changes them (the control)."""
    assert set(EMBEDDING_METHODS) | {"arima"} == set(ex.COMPARED)
    fold, test = tiny_fold
    params = _first_candidate(method, smoke_cfg)
    if ex.COMPARED[method].regress is not None:
        reg = ex.fit_regressor(method, params, fold, smoke_cfg, seed=0)
        outputs = [reg.predict]
    else:
        emb, dec = ex.fit_models(method, params, fold, smoke_cfg, seed=0)
        outputs = [emb.transform, lambda x: dec.predict(emb.transform(x))]
    x = fold.evals[test].x
    t = len(x) // 2
    rng = np.random.default_rng(0)
    future, present = x.copy(), x.copy()
    future[t + 1 : t + 5] += 3.0 * rng.standard_normal(future[t + 1 : t + 5].shape)
    present[t] += 10.0 * rng.standard_normal(present[t].shape)
    for out in outputs:
        ref = out(x)
        np.testing.assert_allclose(out(future)[: t + 1], ref[: t + 1], rtol=0, atol=1e-6)
        assert np.abs(out(present)[t] - ref[t]).max() > 1e-4  # (CEBRA's: 1 of 10 windows)


def test_cebra_causal_shift_keeps_its_receptive_field_in_the_past() -> None:
    """Row t of CEBRA's embedding sees windows t-9 .. t: window t-9 matters, t-10 does not."""
    from emgcore.models.baselines import CEBRAEmbedder

    assert CEBRAEmbedder.lookahead(16) == 4  # offset10: cebra pads 5 before, 4 after
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    y = rng.standard_normal((300, 2)).astype(np.float32)
    emb = CEBRAEmbedder(3, {"max_iterations": 5, "batch_size": 64})
    emb.fit([(x, y)], seed=0)
    z = emb.transform(x)
    assert z.shape == (300, 3)
    t = 150
    for lag, matters in ((9, True), (10, False)):
        xp = x.copy()
        xp[t - lag] += 5.0
        assert (np.abs(emb.transform(xp)[t] - z[t]).max() > 1e-4) == matters, lag


# -- 4. which session is held out is explicit ----------------------------------------------------


def _cfg(**kw) -> ex.ExperimentConfig:
    return dataclasses.replace(ex.ExperimentConfig(), **kw)


def test_sessions_are_not_guessed_from_their_sort_order(tiny_recs, smoke_cfg) -> None:
    """BYOD-like names: sorting them would silently hold out one; it is refused in one line that
    names test_session and says what to set."""
    with pytest.raises(InvalidValueError) as err:
        ex.resolve_sessions(["gait", "standing", "sitting"], _cfg())
    msg = str(err.value)
    assert "\n" not in msg and "'test_session'" in msg
    assert "--set test_session=" in msg and "train_sessions" in msg
    # and prepare, which every run goes through, uses the same rule
    names = dict(zip(("A1", "A2", "A3"), ("gait", "standing", "sitting"), strict=True))
    byod = [dataclasses.replace(r, session=names[r.session]) for r in tiny_recs]
    with pytest.raises(InvalidValueError, match="test_session"):
        ex.prepare(byod, smoke_cfg)
    explicit = dataclasses.replace(smoke_cfg, test_session="sitting")
    assert ex.prepare(byod, explicit)[1:] == (("gait", "standing"), "sitting")


def test_db8_naming_is_inferred_as_the_paper_splits_it() -> None:
    assert ex.resolve_sessions(["A3", "A1", "A2", "A1"], _cfg()) == (("A1", "A2"), "A3")
    with pytest.raises(InvalidValueError, match="test_session"):  # not DB8's three
        ex.resolve_sessions(["A1", "A2", "A3", "A4"], _cfg())


def test_explicit_sessions_are_honoured() -> None:
    have = ["gait", "standing", "sitting"]
    cfg = _cfg(train_sessions=("sitting", "gait"), test_session="standing")
    assert ex.resolve_sessions(have, cfg) == (("sitting", "gait"), "standing")
    assert ex.resolve_sessions(have, _cfg(test_session="gait")) == (("sitting", "standing"), "gait")
    cfg = _cfg(train_sessions=("gait", "standing"))  # one session left: that one is held out
    assert ex.resolve_sessions(have, cfg) == (("gait", "standing"), "sitting")
    # explicit values win over DB8's inference too
    assert ex.resolve_sessions(["A1", "A2", "A3"], _cfg(test_session="A1")) == (("A2", "A3"), "A1")


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"train_sessions": ("gait", "sitting"), "test_session": "sitting"}, "test_session"),
        ({"test_session": "walking"}, "test_session"),
        ({"train_sessions": ("gait",)}, "test_session"),  # two left: which one?
        ({"train_sessions": ("gait", "running"), "test_session": "sitting"}, "train_sessions"),
    ],
)
def test_contradictory_sessions_are_refused(kw, field) -> None:
    with pytest.raises(InvalidValueError) as err:
        ex.resolve_sessions(["gait", "standing", "sitting"], _cfg(**kw))
    assert err.value.field == field and "\n" not in str(err.value)


def test_cli_prints_the_split_and_refuses_an_unknown_test_session(capsys) -> None:
    from emgcore.__main__ import main

    argv = ["kinembed", "--data", "db8-like", "--duration", "10", "--config", "kinembed-smoke"]
    assert main([*argv, "--sim-subjects", "1", "--set", "test_session=A9"]) == 2
    out, err = capsys.readouterr()
    assert err.strip().count("\n") == 0 and "test_session" in err and "A9" in err
    # --sim-subjects reaches the simulator (it was ignored: 3 subjects' 9 recordings)
    assert "kinembed on db8-like: 3 recordings" in out


# -- 5. the baselines a user tries first ---------------------------------------------------------


def test_lag_stack_is_causal_and_ordered() -> None:
    from emgcore.models.baselines import lag_stack

    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    z = lag_stack(x, 2)
    assert z.shape == (5, 6)
    np.testing.assert_array_equal(z[3], [6, 7, 4, 5, 2, 3])  # x_3, x_2, x_1
    np.testing.assert_array_equal(z[0], [0, 1, 0, 1, 0, 1])  # before the start: window 0
    np.testing.assert_array_equal(lag_stack(x, 0), x)


def test_lag_ridge_matches_a_reference_and_needs_its_lags() -> None:
    """DoA that depend on the current and the window two back: LagRidge equals a closed-form
    ridge on an explicitly built lagged design (sessions never mixed), and lags=0 cannot fit it."""
    from emgcore.models.baselines import LagRidge

    rng = np.random.default_rng(0)
    w0, w2 = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))

    def session(n):
        x = rng.standard_normal((n, 6)).astype(np.float32)
        past = np.concatenate([np.repeat(x[:1], 2, axis=0), x])[:n]  # x_{t-2}, held at the start
        return x, (x @ w0 + past @ w2 + 0.05 * rng.standard_normal((n, 3))).astype(np.float32)

    train, (x_test, y_test) = [session(400), session(300)], session(300)
    model = LagRidge(lags=2, alpha=1.0)
    model.fit(train, seed=0)
    pred = model.predict(x_test)

    def design(x):  # [1, x_t, x_{t-1}, x_{t-2}] by an explicit loop
        rows = [
            np.concatenate([[1.0], *(x[max(t - k, 0)] for k in range(3))]) for t in range(len(x))
        ]
        return np.array(rows)

    a = np.concatenate([design(x) for x, _ in train])
    y = np.concatenate([y for _, y in train])
    centre_a, centre_y = a[:, 1:].mean(0), y.mean(0)  # sklearn: intercept not penalised
    ac, yc = a[:, 1:] - centre_a, y - centre_y
    coef = np.linalg.solve(ac.T @ ac + 1.0 * np.eye(ac.shape[1]), ac.T @ yc)
    ref = (design(x_test)[:, 1:] - centre_a) @ coef + centre_y
    np.testing.assert_allclose(pred, ref, rtol=1e-4, atol=1e-4)
    r2 = ex.r2_per_output(y_test, pred)
    assert r2.min() > 0.98, r2
    flat = LagRidge(lags=0, alpha=1.0)
    flat.fit(train, seed=0)
    assert ex.r2_per_output(y_test, flat.predict(x_test)).mean() < 0.7


def test_new_baselines_run_through_the_protocol_and_table1(tiny_recs, smoke_cfg) -> None:
    """features_tcn and ridge are methods like the paper's: session CV, the mode, the held-out
    score, a row in Table 1; both are in the default and preset method lists."""
    from emgcore.eval.report import table1

    for name in ("kinembed-paper", "kinembed-sim", "kinembed-smoke"):
        methods = ex.load_config(resolve_config(name)).methods
        assert {"features_tcn", "ridge"} <= set(methods), name
    cfg = dataclasses.replace(smoke_cfg, methods=("features_tcn", "ridge"))
    res = ex.run(tiny_recs, cfg)
    assert set(res.chosen["ridge"]) == {"lags", "alpha"} and res.chosen["features_tcn"] == {}
    assert len(res.selection) == 1 + len(cfg.ridge_lags) * len(cfg.ridge_alphas)
    t1 = table1(res)
    assert {"Feat+TCN", "Ridge-lag"} <= set(t1.index)
    for (_method, _subject), (y, pred) in res.traces.items():
        assert pred.shape == y.shape and np.isfinite(pred).all()
    # the simulator's DoA are decodable from its EMG features: both well above chance
    per = res.per_subject().set_index("method")["mean"]
    assert per["ridge"] > 0.3 and per["features_tcn"] > 0.0, per
    assert all(math.isfinite(r["cv_r2"]) for r in res.rows)


def test_errors_stay_in_the_typed_family() -> None:
    with pytest.raises(EmgDataError):
        ex.resolve_sessions(["x", "y"], _cfg())
