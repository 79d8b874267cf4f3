"""Search spaces as data: the paper's stages, and load-time validation naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from emgcore.errors import InvalidValueError
from emgcore.methods import METHODS
from emgcore.methods.kinembed import ExperimentConfig
from orchestration.search_space import (
    SEARCH_SPACES_DIR,
    apply,
    distinct,
    load,
    path_for,
)

SPACES = sorted(SEARCH_SPACES_DIR.glob("*.yaml"))


def test_kinembed_space_is_the_papers_four_stages() -> None:
    space = load(path_for("kinembed"))
    assert (space.metric, space.mode) == ("cv_r2", "max")
    assert space.subjects == ("S1", "S3", "S6", "S8", "S11")
    assert [s.name for s in space.stages] == ["loss", "architecture", "widths", "optimisation"]
    assert [len(s.grid_points()) for s in space.stages] == [75, 5, 12, 36]
    assert space.stage("widths").grid["kinembed.emg_hidden"][2] == (512, 256, 128)
    assert space.stage("optimisation").inherit == ("loss", "architecture", "widths")


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_every_key_of_every_space_is_a_config_field(path: Path) -> None:
    """Loading checks each key; applying every value proves they build a valid config."""
    space = load(path)
    base = METHODS[space.method].config()
    for stage in space.stages:
        for key, values in {**stage.grid, **stage.choice}.items():
            for v in values:
                node = apply(base, {**stage.fixed, key: v})
                for part in key.split("."):
                    node = getattr(node, part)
                assert node == v


@pytest.mark.parametrize(
    "body,field",
    [
        ("    grid: {kinembed.learning_rate: [0.1]}\n", "stages.a.grid.kinembed.learning_rate"),
        ("    grid: {kinembed: [1]}\n", "stages.a.grid.kinembed"),
        ("    grid: {kinembed.variant: [transformer]}\n", "stages.a.kinembed.variant"),
        ("    grid: {kinembed.lr: []}\n", "stages.a.grid.kinembed.lr"),
        ("    inherit: [b]\n", "stages.a.inherit"),
        ("    choice: {kinembed.lr: [0.1, 0.2]}\n", "stages.a.budget"),
        ("    grids: {kinembed.lr: [0.1]}\n", "stages.a"),
    ],
)
def test_bad_space_names_file_and_key(tmp_path: Path, body: str, field: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("method: kinembed\nmetric: cv_r2\nmode: max\nstages:\n  - name: a\n" + body)
    with pytest.raises(InvalidValueError) as err:
        load(path)
    assert str(path) in str(err.value) and f"'{field}'" in str(err.value), str(err.value)


def test_apply_overrides_nested_fields_and_checks_values() -> None:
    cfg = apply(ExperimentConfig(), {"kinembed.emg_hidden": (128, 64), "decoder.epochs": 5})
    assert cfg.kinembed.emg_hidden == (128, 64) and cfg.decoder.epochs == 5
    assert cfg.kinembed.lr == ExperimentConfig().kinembed.lr
    with pytest.raises(InvalidValueError):
        apply(ExperimentConfig(), {"kinembed.batch_size": -1})


def test_pose_family_spaces() -> None:
    mae = load(path_for("mae"))
    assert len(mae.stage("patch_mask").grid_points()) == 27  # CPEP Fig. 3: S_emg x S_pose x r
    emb = load(path_for("embridge"))
    assert [s.name for s in emb.stages] == [
        "soft_targets",
        "queries",
        "weights",
        "reconstruction",
        "similarity",
    ]
    assert emb.stage("queries").grid["embridge.n_queries"] == (8, 16, 32)
    assert emb.metric == load(path_for("cpep")).metric == "tune_zs_bacc"
    with pytest.raises(InvalidValueError, match=r"embridge\.cascle\.topk"):
        apply(METHODS["embridge"].config(), {"embridge.cascle.topk": 3})


def test_studies_are_the_papers_figures_and_leave_the_stage_digest_alone(tmp_path: Path) -> None:
    for method in ("cpep", "embridge"):
        space = load(path_for(method))
        assert dict(space.study("data_efficiency").grid) == {
            "gestures.pretrain_fraction": (0.2, 0.4, 0.6, 0.8, 1.0)
        }
        assert dict(space.study("batch_size").grid) == {f"{method}.batch_size": (256, 512, 1024)}
        with pytest.raises(InvalidValueError, match=r"no study 'speed'.*batch_size"):
            space.study("speed")
        # a study added to a space does not change the hash its sweeps' runs are tagged with
        text = path_for(method).read_text()
        bare = tmp_path / f"{method}.yaml"
        bare.write_text(text[: text.index("\nstudies:")] + "\n")
        assert load(bare).digest() == space.digest() and not load(bare).studies


@pytest.mark.parametrize(
    "body,field",
    [
        ("  s: {grid: {kinembed.lr: []}}\n", "studies.s.grid.kinembed.lr"),
        ("  s: {grid: {kinembed.learning_rate: [0.1]}}\n", "studies.s.grid.kinembed.learning_rate"),
        ("  s: {fixed: {kinembed.lr: 0.1}}\n", "studies.s"),
        ("  s: {grid: {kinembed.lr: [0.1]}, budget: 3}\n", "studies.s"),
        ("  s: {grid: {kinembed.variant: [transformer]}}\n", "studies.s.kinembed.variant"),
    ],
)
def test_bad_study_names_file_and_key(tmp_path: Path, body: str, field: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "method: kinembed\nmetric: cv_r2\nmode: max\nstages:\n  - name: a\n"
        "    grid: {kinembed.lr: [0.1]}\nstudies:\n" + body
    )
    with pytest.raises(InvalidValueError) as err:
        load(path)
    assert str(path) in str(err.value) and f"'{field}'" in str(err.value), str(err.value)


def test_jepa_space_selects_on_validation_error_and_every_point_draws_masks() -> None:
    """Lower JA-MAE wins; every mask range x patch size of the space yields masks on the
    simulator's 16-channel ring and a 64-electrode grid (the sampler's own checks run)."""
    import torch

    from emgcore.models.jepa import mask_sampler
    from emgcore.recording import ChannelLayout

    space = load(path_for("jepa"))
    assert (space.metric, space.mode) == ("val_ja_mae", "min")
    assert [s.name for s in space.stages] == ["masks", "patch", "featurizer"]
    assert space.stage("featurizer").grid["jepa.featurizer"] == ("mlp", "conv", "raw")
    base = METHODS["jepa"].config()
    grid = ChannelLayout.make_grid(8, 8)
    for point in space.stage("masks").grid_points():
        for patch in space.stage("patch").grid["jepa.patch"]:
            cfg = apply(base, {**point, "jepa.patch": patch}).jepa
            for channels, layout in ((16, None), (64, grid)):
                m = mask_sampler(cfg, channels, 2000, layout)(8, torch.Generator().manual_seed(0))
                assert m.obs.shape[0] == m.target.shape[0] == 8 and m.target.shape[1] > 0


# -- points that cannot differ (issue 14) ---------------------------------------------------------


def _sim_base() -> ExperimentConfig:
    from emgcore.config import load_yaml, resolve_config

    return load_yaml(ExperimentConfig, resolve_config("kinembed-sim"))  # the sweep's base


def test_loss_stage_drops_exactly_the_vicreg_points_that_differ_only_in_temperature() -> None:
    """75 points; VICReg ignores the temperature, so of its 25 (5 tau x 5 dims) the 20 with
    tau != 0.05 repeat the tau = 0.05 point of the same dimension."""
    stage = load(path_for("kinembed")).stage("loss")
    points = stage.grid_points()
    found = distinct(_sim_base(), points, stage.fixed)
    assert (len(points), len(found.points), len(found.repeats)) == (75, 55, 20)
    want = [
        (p, {**p, "kinembed.temperature": 0.05})
        for p in points
        if p["kinembed.loss"] == "vicreg" and p["kinembed.temperature"] != 0.05
    ]
    assert found.repeats == want
    assert found.points == [p for p in points if p not in [r for r, _ in want]]
    assert found.message("loss") == (
        "stage loss: 20 of 75 points repeat others "
        "(kinembed.loss=vicreg ignores kinembed.temperature), skipped"
    )


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_a_grid_where_nothing_is_inert_keeps_every_point(path: Path) -> None:
    space = load(path)
    base = METHODS[space.method].config()
    for stage in space.stages:
        points = stage.grid_points()
        if stage.name == "loss" and space.method == "kinembed":  # the one with VICReg
            points = [p for p in points if p["kinembed.loss"] != "vicreg"]
        found = distinct(base, points, stage.fixed)
        assert found.points == points and not found.repeats and not found.message(stage.name)


def test_inherited_winners_decide_what_repeats() -> None:
    """After an asymmetric architecture the kinematic widths are unread: 12 -> 4 points.
    After VICReg every variant, momentum_ema included, is its own experiment."""
    space = load(path_for("kinembed"))
    widths = space.stage("widths")
    found = distinct(_sim_base(), widths.grid_points(), {"kinembed.variant": "asymmetric"})
    assert [p["kinembed.emg_hidden"] for p in found.points] == list(
        widths.grid["kinembed.emg_hidden"]
    )
    assert "kinembed.variant=asymmetric ignores kinembed.kin_hidden" in found.message("widths")
    arch = space.stage("architecture")
    assert len(distinct(_sim_base(), arch.grid_points(), {"kinembed.loss": "vicreg"}).points) == 5


def test_sweep_skips_repeats_and_lists_them_on_the_leaderboard(capsys) -> None:
    """``Sweep._points`` with a real stage and base config (no Ray, no MLflow server): the
    repeats are skipped with one line and come back on the leaderboard as duplicates."""
    import json

    from orchestration.driver import Options, Sweep

    sweep = Sweep.__new__(Sweep)  # only what _points reads: no tracking server, no Ray
    sweep.opts, sweep.space, sweep.base = (
        Options("kinembed"),
        load(path_for("kinembed")),
        _sim_base(),
    )
    points = sweep._points(sweep.space.stage("loss"), {})
    assert len(points) == 55 and all(
        p["kinembed.temperature"] == 0.05 for p in points if p["kinembed.loss"] == "vicreg"
    )
    assert "stage loss: 20 of 75 points repeat others" in capsys.readouterr().out
    # the leaderboard of the 55 trials that ran, as _leaderboard builds it
    rows = [
        {
            "trial": f"t{i}",
            "overrides": json.dumps(p, sort_keys=True),
            "cv_r2": 0.3 + i / 1000,
            "status": "ok",
            "error": "",
        }
        for i, p in enumerate(points)
    ]
    board = sweep._with_repeats("loss", rows)
    assert len(board) == 75 and board[:55] == rows
    by_point = {r["overrides"]: r for r in rows}
    for row in board[55:]:
        point = json.loads(row["overrides"])
        same = by_point[json.dumps({**point, "kinembed.temperature": 0.05}, sort_keys=True)]
        assert row["status"] == f"duplicate of {same['trial']}"
        assert row["cv_r2"] == same["cv_r2"] and row["trial"] == ""
    # nothing repeats in the next stage, whatever stage 1 chose: no line, no extra rows
    arch = sweep._points(sweep.space.stage("architecture"), {"kinembed.loss": "vicreg"})
    assert len(arch) == 5 and capsys.readouterr().out == ""
    assert sweep._with_repeats("architecture", rows[:1]) == rows[:1]


def test_values_are_checked_on_the_preset_the_sweep_runs(tmp_path: Path) -> None:
    """A width must divide the heads of the model the sweep trains (aemg-sim: 4), not the
    class defaults' (Base: 8): the sweep loads its space with its preset as ``base``."""
    from emgcore.config import load_yaml, resolve_config

    space = tmp_path / "space.yaml"
    text = "method: aemg\nmetric: tune_loso_bacc\nmode: max\nstages:\n  - name: size\n"
    space.write_text(text + "    grid: {model.dim: [36, 64]}\n")
    four = load_yaml(METHODS["aemg"].config, resolve_config("aemg-sim"))
    assert load(space, four).stage("size").grid["model.dim"] == (36, 64)
    with pytest.raises(InvalidValueError, match="divisible by heads 8"):
        load(space)  # the class defaults: Base's 8 heads
    three = apply(four, {"model.heads": 3, "model.dim": 48})
    with pytest.raises(InvalidValueError, match="divisible by heads 3") as e:
        load(space, three)  # refused here, not as a failed trial
    assert e.value.field == "stages.size.model.dim"
