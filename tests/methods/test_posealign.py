"""The pose-alignment evaluation end to end on a tiny simulated emg2pose corpus."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from emgcore.config import to_dict
from emgcore.gestures import GestureConfig, gesture_splits
from emgcore.methods.posealign import (
    ABLATION_KEYS,
    ABLATION_ZERO,
    ABLATIONS,
    ALIGNED,
    ENCODERS,
    PROTOCOL_KEYS,
    PoseAlignConfig,
    as_table,
    score,
    train_all,
    tune_score,
)
from emgcore.models.cpep import CPEPConfig
from emgcore.models.embridge import EMBridgeConfig
from emgcore.models.mae import MAEConfig

TINY = {"dim": 32, "depth": 2, "decoder_depth": 1, "heads": 4, "epochs": 2, "batch_size": 32}


def tiny_config() -> PoseAlignConfig:
    fast = {"epochs": 2, "batch_size": 32}
    return PoseAlignConfig(
        gestures=GestureConfig(tune_users=1),
        emg_mae=MAEConfig(patch=200, **TINY),
        pose_mae=MAEConfig(patch=400, **TINY),
        poset=MAEConfig(patch=200, **TINY),
        cpep=CPEPConfig(**fast),
        embridge=EMBridgeConfig(n_queries=4, **fast),
    )


def test_defaults_are_the_papers_training_schedules() -> None:
    """CPEP App. B: MAEs and CPEP 100 epochs; EMBridge A.6: Q-Former and EMBridge 40; batch 256."""
    cfg = PoseAlignConfig()
    assert cfg.emg_mae.epochs == cfg.pose_mae.epochs == 100
    assert cfg.cpep.epochs == 100
    assert cfg.embridge.epochs == 40
    assert cfg.cpep.batch_size == cfg.embridge.batch_size == cfg.emg_mae.batch_size == 256


@pytest.mark.parametrize("method", ["mae", "cpep", "embridge"])
def test_method_searches_tune_only_their_own_hyper_parameters(method) -> None:
    """A stage that varies an ablation switch (Table 2's pooling, freezing, initialisation, label
    smoothing, CASCLe, the soft objective) can register an ablation as the method; one that varies
    zero-shot k tunes the evaluation protocol the papers fix at 10. Studies may do both, and
    ``ablations`` is Table 2 / Table 3: the method's own rows, the published method first."""
    from orchestration.search_space import load, path_for

    space = load(path_for(method))
    forbidden = ABLATION_KEYS | PROTOCOL_KEYS
    for stage in space.stages:
        for part in (stage.grid, stage.choice, stage.fixed):
            assert not set(part) & forbidden, (stage.name, sorted(set(part) & forbidden))
        for key in ABLATION_ZERO:
            values = [*stage.grid.get(key, ()), *stage.choice.get(key, ())]
            values += [stage.fixed[key]] if key in stage.fixed else []
            assert all(v > 0 for v in values), (stage.name, key, values)
    if method == "mae":
        return
    rows = space.study("ablations").grid["ablation"]
    assert rows[0] == "none" and {ABLATIONS[r][0] for r in rows[1:]} == {method}
    assert set(rows) == {"none"} | {n for n, (m, _) in ABLATIONS.items() if m == method}


def test_an_ablation_row_is_one_change_of_the_published_method() -> None:
    from emgcore.config import override

    row = PoseAlignConfig(ablation="cpep_avg_pool").resolved()
    assert row.cpep.pool == "mean" and row.resolved() == row
    assert PoseAlignConfig(ablation="qformer").resolved().embridge.lam == 0.0
    with pytest.raises(ValueError, match=r"cpep\.freeze_emg"):  # a combination no table has
        PoseAlignConfig(ablation="cpep_avg_pool", cpep=CPEPConfig(freeze_emg=True))
    with pytest.raises(ValueError, match=r"cpep\.pool"):
        override(row, {"ablation": "cpep_frozen"})
    with pytest.raises(ValueError, match="ablation"):
        PoseAlignConfig(ablation="cpep_maxpool")


def test_mae_search_hides_one_ratio_of_both_modalities(monkeypatch) -> None:
    """CPEP Fig. 3 varies one mask ratio r for the EMG- and the pose-MAE: every point of the mae
    space trains both with the same r, and the whole axis is covered."""
    import emgcore.methods.posealign as pa
    from orchestration.search_space import apply, load, path_for

    space = load(path_for("mae"))
    ratios = set()
    for stage in space.stages:
        for point in stage.grid_points():
            cfg = apply(PoseAlignConfig(), {**stage.fixed, **point}).resolved()
            assert cfg.emg_mae.mask_ratio == cfg.pose_mae.mask_ratio, (stage.name, point)
            ratios.add(cfg.emg_mae.mask_ratio)
    assert ratios == {0.25, 0.5, 0.75}
    with pytest.raises(ValueError, match=r"emg_mae\.mask_ratio is 0\.75"):
        PoseAlignConfig(mask_ratio=0.25, emg_mae=MAEConfig(mask_ratio=0.75))
    seen = []

    def spy(cfg, *a, **kw):
        seen.append((cfg.mask_ratio, kw["ring"]))
        raise StopIteration

    monkeypatch.setattr(pa, "train_mae", spy)
    train = SimpleNamespace(emg=None, pose=None, ring=(0, 1, 2))
    with pytest.raises(StopIteration):  # train_all hands the MAEs the shared ratio (and the
        train_all(train, PoseAlignConfig(mask_ratio=0.25))  # windows' ring to rotate)
    assert seen == [(0.25, (0, 1, 2))]


def test_zero_shot_is_scored_with_and_without_the_querys_own_recording(tmp_path) -> None:
    """Each class of the evaluation set is one recording of two windows: with the papers' bank
    (every eval pose) a query finds its own recording's poses and is right; with its own
    recording left out only the other class remains and it is wrong. Both go to the report."""
    import torch

    from emgcore.eval.posereport import PoseReport, write
    from emgcore.gestures import PairedWindows
    from emgcore.methods.posealign import Encoders

    direction = {"A": [1.0, 0.0], "B": [0.0, 1.0], "C": [1.0, 0.2], "D": [0.2, 1.0]}

    def part(stages: str, tag: str) -> PairedWindows:
        x = torch.tensor([[direction[s]] for s in stages])  # (N, T=1, 2): its own embedding
        x = x + 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(len(tag)))
        n = len(stages)
        stage = np.array(list(stages))
        rec = np.char.add(f"{tag}-", stage)  # one recording per class
        return PairedWindows(
            x, x.clone(), torch.ones(n, 1, dtype=torch.bool), stage,
            np.full(n, "u"), np.full(n, "s"), rec,
        )  # fmt: skip

    splits = {
        "probe_train_in": part("AABB", "probe"),
        "probe_train_unseen": part("CCDD", "probe"),
        "eval": part("AABBCCDD", "eval"),
    }

    def flat(t: torch.Tensor) -> torch.Tensor:
        return t[:, 0]

    enc = Encoders(
        emg_encoder=None,
        pose_encoder=SimpleNamespace(summary=flat),
        emg={"m": flat},
        retrieve={"m": flat},
        pose={"m": flat},
    )
    groups = GestureConfig(in_dist={"a": ("A",), "b": ("B",)}, unseen={"c": ("C",), "d": ("D",)})
    cfg = PoseAlignConfig(gestures=groups, zero_shot_k=2)
    rows = {(r["method"], r["task"]): r for r in score(enc, splits, cfg)}
    for task in ("in_dist", "unseen"):
        assert rows[("m", task)]["zs_bacc"] == 1.0  # transductive: its own recording answers
        assert rows[("m", task)]["zs_excl_bacc"] == 0.0  # left out: only the other class
        assert "zs_excl_bacc" not in rows[("pose_mae_upper_bound", task)]
    table = as_table(list(rows.values()))
    assert "ZS-x in" in table and "ZS-x unseen" in table and "own recording" in table
    paths = write(PoseReport(list(rows.values())), tmp_path)
    assert {"zs_bacc", "zs_excl_bacc"} <= set(paths["rows"].read_text().splitlines()[0].split(","))
    assert "ZS-x unseen" in paths["table"].read_text()


def test_every_method_is_trained_and_scored(emg2pose_sim) -> None:
    cfg = tiny_config()
    splits = gesture_splits(emg2pose_sim, cfg.gestures)
    seen: dict[str, list[float]] = {}
    hooks = {
        m: (lambda e, metrics, model, m=m: seen.setdefault(m, []).append(metrics["train_loss"]),)
        for m in (*ENCODERS, "pose_mae")
    }
    enc = train_all(splits["pretrain"], cfg, hooks=hooks)
    assert set(seen) == {*ENCODERS, "pose_mae"} and all(len(v) == 2 for v in seen.values())
    rows = score(enc, splits, cfg)
    by = {(r["method"], r["task"]): r for r in rows}
    for m in (*ENCODERS, "pose_mae_upper_bound"):
        for task in ("in_dist", "unseen"):
            r = by[(m, task)]
            assert 0.0 <= r["lp_bacc"] <= 1.0
            assert ("zs_bacc" in r) == (m in ALIGNED)
    table = as_table(rows)
    assert "embridge" in table and "pose_mae_upper_bound" in table
    # the upper bound reads poses, which the simulator draws per stage: well above chance (0.25)
    assert by[("pose_mae_upper_bound", "in_dist")]["lp_bacc"] > 0.5
    assert np.isfinite(by[("embridge", "unseen")]["zs_bacc"])
    for m in ALIGNED:
        assert 0.0 <= tune_score(enc, splits["tune"], cfg, m) <= 1.0


def test_report_writes_tables_and_figures(emg2pose_sim, tmp_path) -> None:
    from PIL import Image

    from emgcore.eval.posereport import evaluate, write

    cfg = replace(tiny_config(), methods=("cpep", "emg_mae"))
    splits = gesture_splits(emg2pose_sim, cfg.gestures)
    enc = train_all(splits["pretrain"], cfg)
    rep = evaluate(enc, splits, cfg, shots=(1, 2), draws=2, tsne_points=40)
    assert set(rep.zs_unseen) == {"cpep"} and set(rep.few_shot) == {"cpep", "emg_mae"}
    assert set(rep.per_user_f1["cpep"]) == set(splits["eval"].user)
    for curve in rep.few_shot["emg_mae"].values():
        assert set(curve) == {1, 2} and all(0 <= m <= 1 and s >= 0 for m, s in curve.values())
    paths = write(rep, tmp_path)
    for key in ("confusion", "per_user", "few_shot", "tsne_cpep"):
        with Image.open(paths[key]) as im:
            assert im.size[0] > 300
    f1 = (tmp_path / "zs_unseen_f1.csv").read_text()
    assert "counting_wiggling" in f1
    assert "cpep" in paths["table"].read_text()


def test_ninapro_db2_to_db7_benchmark_runs_end_to_end(ninapro_root, tmp_path, capsys) -> None:
    """EMBridge's second benchmark through the CLI: DB2 pre-training, DB7 probes and zero-shot,
    the tiny models of posealign-smoke with the NinaPro split of posealign-ninapro."""
    from emgcore.__main__ import main
    from emgcore.config import load_yaml, resolve_config

    cfg = load_yaml(PoseAlignConfig, resolve_config("posealign-ninapro"))
    sizes = load_yaml(PoseAlignConfig, resolve_config("posealign-smoke"))
    out = tmp_path / "out"
    args = ["posealign", "--data", str(ninapro_root), "--out", str(out)]
    args += ["--config", "posealign-ninapro", "--methods", "cpep,embridge"]
    for section in ("emg_mae", "pose_mae", "cpep", "embridge"):
        args += ["--set", f"{section}={json.dumps(to_dict(getattr(sizes, section)))}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "windows: pretrain" in printed
    table = (out / "table2.txt").read_text()
    assert "cpep" in table and "embridge" in table
    # the pose upper bound separates the simulated movements (chance 0.25)
    scores = (out / "scores.csv").read_text()
    assert "pose_mae_upper_bound" in scores
    assert cfg.gestures.benchmark == "ninapro"
    assert main([*args, "--set", "embridge.n_query=3"]) == 2
    assert "embridge.n_query" in capsys.readouterr().err


def test_cli_writes_the_report(tmp_path, capsys) -> None:
    from emgcore.__main__ import main

    out = tmp_path / "out"
    args = ["posealign", "--config", "posealign-smoke", "--methods", "cpep", "--out", str(out)]
    assert main(args) == 0  # the smoke preset on the smoke size: 6 users' 4-s recordings
    printed = capsys.readouterr().out
    assert "windows: pretrain" in printed and "cpep" in printed
    assert "posealign on emg2pose-like: 240 recordings" in printed  # 8 users' 320 before
    assert (out / "table2.txt").exists() and (out / "zs_unseen_confusion.png").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("embridge: {n_query: 3}\n")
    assert main(["posealign", "--config", str(bad), "--out", str(out)]) == 2
    assert "embridge.n_query" in capsys.readouterr().err


def test_saved_models_rebuild_exactly(emg2pose_sim, tmp_path) -> None:
    """What the registry stores besides the traced graph: weights + config, loaded with
    weights_only=True, rebuilding modules that compute what the trained ones did."""
    import torch

    from emgcore.methods.posealign import load_model, save_model

    cfg = replace(tiny_config(), methods=("cpep", "embridge"))
    splits = gesture_splits(emg2pose_sim, cfg.gestures)
    enc = train_all(splits["pretrain"], cfg)
    x, p = splits["eval"].emg[:3], splits["eval"].pose[:3]
    with torch.no_grad():
        for kind, ref in (("mae-emg", enc.emg_encoder), ("mae-pose", enc.pose_encoder)):
            save_model(kind, cfg, enc, tmp_path / kind)
            got = load_model(tmp_path / kind)
            inp = x if kind == "mae-emg" else p
            assert torch.allclose(got(inp), ref.eval()(inp), atol=1e-6)
        for kind in ("cpep", "embridge"):
            save_model(kind, cfg, enc, tmp_path / kind)
            got = load_model(tmp_path / kind)
            assert torch.allclose(got(x), enc.emg[kind](x), atol=1e-6)
            assert torch.allclose(got.retrieve(x), enc.retrieve[kind](x), atol=1e-6)
            assert torch.allclose(got.embed_pose(p), enc.pose[kind](p), atol=1e-6)


def test_split_id_matches_the_split_tag_of_already_registered_maes() -> None:
    """The digest registered MAEs carry as their ``split`` tag (written before the method
    registry, through ``tracking.flatten``): a different encoding would make every CPEP /
    EMBridge sweep refuse them. The method registry's first version digested ``asdict`` and
    gave 1b2876c95457 for the defaults."""
    from emgcore.methods.posealign import split_id

    assert split_id(PoseAlignConfig()) == "dcaaa5c26ae4"
