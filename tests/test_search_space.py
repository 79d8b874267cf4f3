"""Search spaces as data: the paper's stages, and load-time validation naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from emgcore.errors import InvalidValueError
from emgcore.experiment import ExperimentConfig
from orchestration.search_space import CONFIGS, SEARCH_SPACES_DIR, apply, load, path_for

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
    base = CONFIGS[space.method]()
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
        "zero_shot_k",
    ]
    assert emb.stage("queries").grid["embridge.n_queries"] == (8, 16, 32)
    assert emb.metric == load(path_for("cpep")).metric == "tune_zs_bacc"
    with pytest.raises(InvalidValueError, match=r"embridge\.cascle\.topk"):
        apply(CONFIGS["embridge"](), {"embridge.cascle.topk": 3})


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

    from emgcore.jepa import mask_sampler
    from emgcore.recording import ChannelLayout

    space = load(path_for("jepa"))
    assert (space.metric, space.mode) == ("val_ja_mae", "min")
    assert [s.name for s in space.stages] == ["masks", "patch", "featurizer"]
    assert space.stage("featurizer").grid["jepa.featurizer"] == ("mlp", "conv", "raw")
    base = CONFIGS["jepa"]()
    grid = ChannelLayout.make_grid(8, 8)
    for point in space.stage("masks").grid_points():
        for patch in space.stage("patch").grid["jepa.patch"]:
            cfg = apply(base, {**point, "jepa.patch": patch}).jepa
            for channels, layout in ((16, None), (64, grid)):
                m = mask_sampler(cfg, channels, 2000, layout)(8, torch.Generator().manual_seed(0))
                assert m.obs.shape[0] == m.target.shape[0] == 8 and m.target.shape[1] > 0
