"""The KinEMbed protocol end to end: configs, session CV, the held-out rule, outputs, the CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from emgcore.__main__ import main
from emgcore.config import PRESETS_DIR, resolve_config
from emgcore.data import open_dataset
from emgcore.errors import InvalidValueError
from emgcore.methods.kinembed import (
    ExperimentConfig,
    ExperimentResult,
    SubjectData,
    cv_folds,
    load_config,
    prepare,
    run,
    select_config,
)
from emgcore.models.baselines import arima_forecast
from emgcore.models.kinembed import KinEmbedConfig


@pytest.fixture(scope="module")
def smoke_cfg() -> ExperimentConfig:
    return load_config(resolve_config("kinembed-smoke"))


@pytest.fixture(scope="module")
def tiny_recs():
    return open_dataset("db8-like", n_subjects=1, duration_s=30.0)


def test_paper_preset_is_the_dataclass_defaults() -> None:
    """The file a reader sees and the defaults the code uses cannot drift apart."""
    cfg = load_config(resolve_config("kinembed-paper"))
    # the data-specific fields (DB8's subject ids and session names) are the preset's own
    db8 = {"ld_subjects": (), "exclude_subjects": (), "train_sessions": (), "test_session": ""}
    assert dataclasses.replace(cfg, **db8) == ExperimentConfig()
    assert cfg.exclude_subjects == ("S4",) and cfg.ld_subjects == ("S11", "S12")
    assert cfg.kinembed == KinEmbedConfig()
    assert cfg.kinembed.variant == "projection_head" and cfg.kinembed.temperature == 0.2


@pytest.mark.parametrize("name", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_every_bundled_preset_loads(name) -> None:
    from emgcore.config import load_yaml
    from emgcore.methods import METHODS

    # a preset belongs to the method family its name starts with (posealign-*: MAE, CPEP, ...)
    family = {m.preset.split("-")[0]: m.config for m in METHODS.values()}
    cls = family.get(name.split("-")[0], ExperimentConfig)
    assert isinstance(load_yaml(cls, resolve_config(name)), cls)


@pytest.mark.parametrize(
    "text,field",
    [
        ("kinembed: {embed_dims: 8}\n", "kinembed.embed_dims"),
        ("kinembed: {variant: transformer}\n", "kinembed"),
        ("method: [pca]\n", "method"),
        ("methods: [pca, umap]\n", "methods"),
        ("- just a list\n", "config"),
        ("kinembed: [1, 2\n", "config"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text, field) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidValueError) as err:
        load_config(path)
    assert str(path) in str(err.value) and f"'{field}'" in str(err.value)


def test_unknown_preset_lists_the_bundled_ones() -> None:
    with pytest.raises(InvalidValueError, match="kinembed-paper"):
        resolve_config("kinembed-nope")


def test_session_cv_folds_follow_db8() -> None:
    assert cv_folds(("A1", "A2")) == [(("A1",), ("A2",)), (("A2",), ("A1",))]
    with pytest.raises(InvalidValueError):
        cv_folds(("A1",))


def test_selection_never_needs_the_held_out_session(tiny_recs, smoke_cfg) -> None:
    """Selection runs on a subject from which A3 has been removed, so it cannot have used it."""
    cfg = dataclasses.replace(smoke_cfg, methods=("pca", "ae_super"))
    subjects, train, test = prepare(tiny_recs, cfg)
    assert (train, test) == (("A1", "A2"), "A3")
    subj = subjects[0]
    blind = SubjectData(subj.subject, {s: subj.sessions[s] for s in train}, cfg.features)
    res = ExperimentResult(cfg, subj.doa_names, train, test)
    best, score = select_config("ae_super", blind, train, cfg, res)
    assert set(best) == {"dim", "alpha"} and np.isfinite(score)
    assert {r["dim"] for r in res.selection} == set(cfg.dims)
    with pytest.raises(KeyError):
        blind.fold(train, (test,))


def test_features_are_standardised_with_training_statistics_only(tiny_recs, smoke_cfg) -> None:
    subjects, train, test = prepare(tiny_recs, smoke_cfg)
    fold = subjects[0].fold(train, (test,))
    x_train = np.concatenate([s.x for s in fold.train])
    np.testing.assert_allclose(x_train.mean(axis=0), 0, atol=1e-4)
    held = fold.evals[test].x
    assert np.abs(held.mean(axis=0)).max() > 0.05, "held-out statistics leaked into the scaler"


def test_arima_forecasts_from_the_doa_alone() -> None:
    rng = np.random.default_rng(0)
    e = rng.standard_normal((400, 2))
    y = np.zeros((400, 2))
    for t in range(1, 400):
        y[t] = 0.8 * y[t - 1] + e[t]
    pred, orders = arima_forecast(y[:300], 100)
    assert pred.shape == (100, 2) and len(orders) == 2
    assert all(len(o) == 3 for o in orders)
    # a long-horizon forecast decays to the mean: near-zero skill on the continuation
    assert np.abs(pred[-1]).max() < 0.5


def test_cli_runs_one_configuration_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(
        [
            "kinembed",
            "--data",
            "db8-like",
            "--config",
            "kinembed-smoke",
            "--duration",
            "20",
            "--subjects",
            "s00",
            "--methods",
            "pca,kinembed",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "Table 1" in text and "Table 2" in text and "KinEMbed" in text and "PCA" in text
    # the split is printed before any fitting, and again with the tables
    assert "sessions: train on A1, A2; held out: A3" in text
    assert "trained on A1 + A2, held-out session A3" in text
    for name in ("tables.txt", "scores.csv", "scores.json", "table1.csv", "table2.csv"):
        assert (out / name).stat().st_size > 0
    for fig in ("fig2_trace.png", "fig3_per_doa.png", "fig4_subjects.png"):
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a report merged from this run alone reproduces its tables exactly
    merged = tmp_path / "merged"
    assert main(["kinembed-report", str(out), "--out", str(merged)]) == 0
    assert (merged / "tables.txt").read_text() == (out / "tables.txt").read_text()
    assert (merged / "fig2_trace.png").exists()


def test_cli_bad_config_is_one_line_and_status_2(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("kinembed: {lr: -1}\n")
    assert main(["kinembed", "--config", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "lr" in err


@pytest.mark.slow
def test_kinembed_learns_far_above_arima_on_the_simulator(smoke_cfg) -> None:
    """Real learning on db8-like: with moderate budgets KinEMbed's held-out R^2 is high, far above
    ARIMA's, and not below PCA's by more than noise."""
    recs = open_dataset("db8-like", n_subjects=1, duration_s=90.0)
    cfg = dataclasses.replace(
        smoke_cfg,
        methods=("arima", "pca", "kinembed"),
        dims=(8, 16),
        kinembed=KinEmbedConfig(epochs=60, patience=20),
        decoder=dataclasses.replace(smoke_cfg.decoder, epochs=40, seq_len=128),
    )
    res = run(recs, cfg)
    per = res.per_subject().set_index("method")["mean"]
    assert per["kinembed"] > 0.6, per
    assert per["kinembed"] > per["arima"] + 0.5, per
    assert per["kinembed"] > per["pca"] - 0.05, per


def test_tables_aggregate_seeds_then_subjects() -> None:
    from emgcore.eval.report import table1, table2

    cfg = dataclasses.replace(ExperimentConfig(), ld_subjects=("S3",))
    res = ExperimentResult(cfg, ("thumb_rotation", "index_flexion"), ("A1", "A2"), "A3")
    for method, base in (("pca", 0.5), ("kinembed", 0.6)):
        for k, subj in enumerate(("S1", "S2", "S3")):
            for seed in (0, 1):
                a, b = base + 0.1 * k + 0.02 * seed, base - 0.1 * k
                res.rows.append(
                    {
                        "method": method,
                        "subject": subj,
                        "seed": seed,
                        "thumb_rotation": a,
                        "index_flexion": b,
                        "mean": (a + b) / 2,
                    }
                )
    t1 = table1(res)
    # subject means over seeds: kinembed S1 0.605, S2 0.605, S3 0.605 -> mean 0.605, std 0
    assert t1.loc["KinEMbed", "All (n=3) mean"] == pytest.approx(0.605)
    assert t1.loc["KinEMbed", "All std"] == pytest.approx(0.0, abs=1e-12)
    assert t1.loc["PCA", "AB (n=2) mean"] == pytest.approx(0.505)
    assert t1.loc["PCA", "LD (n=1) mean"] == pytest.approx(0.505)
    # per-seed all-subject means 0.6 and 0.61 -> sample std 0.00707
    assert t1.loc["KinEMbed", "seeds std"] == pytest.approx(np.std([0.6, 0.61], ddof=1))
    t2 = table2(res)  # able-bodied only: S1, S2
    assert list(t2.columns) == ["Th.R", "Idx", "Mean"]
    assert t2.loc["PCA", "Th.R"] == pytest.approx(np.mean([0.51, 0.61]))
    assert t2.loc["PCA", "Idx"] == pytest.approx(np.mean([0.5, 0.4]))
