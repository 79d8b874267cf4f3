"""The pose-alignment evaluation end to end on a tiny simulated emg2pose corpus."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from emgcore.config import to_dict
from emgcore.cpep import CPEPConfig
from emgcore.embridge import EMBridgeConfig
from emgcore.gestures import GestureConfig, gesture_splits
from emgcore.mae import MAEConfig
from emgcore.posealign import (
    ALIGNED,
    METHODS,
    PoseAlignConfig,
    as_table,
    score,
    train_all,
    tune_score,
)

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


def test_every_method_is_trained_and_scored(emg2pose_sim) -> None:
    cfg = tiny_config()
    splits = gesture_splits(emg2pose_sim, cfg.gestures)
    seen: dict[str, list[float]] = {}
    hooks = {
        m: (lambda e, metrics, model, m=m: seen.setdefault(m, []).append(metrics["train_loss"]),)
        for m in (*METHODS, "pose_mae")
    }
    enc = train_all(splits["pretrain"], cfg, hooks=hooks)
    assert set(seen) == {*METHODS, "pose_mae"} and all(len(v) == 2 for v in seen.values())
    rows = score(enc, splits, cfg)
    by = {(r["method"], r["task"]): r for r in rows}
    for m in (*METHODS, "pose_mae_upper_bound"):
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

    from emgcore.posereport import evaluate, write

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
    from emgcore.config import load_yaml
    from emgcore.experiment import resolve_config

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
    assert main([*args, "--sim-subjects", "6", "--duration", "4"]) == 0
    printed = capsys.readouterr().out
    assert "windows: pretrain" in printed and "cpep" in printed
    assert (out / "table2.txt").exists() and (out / "zs_unseen_confusion.png").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("embridge: {n_query: 3}\n")
    assert main(["posealign", "--config", str(bad), "--out", str(out)]) == 2
    assert "embridge.n_query" in capsys.readouterr().err


def test_saved_models_rebuild_exactly(emg2pose_sim, tmp_path) -> None:
    """What the registry stores besides the traced graph: weights + config, loaded with
    weights_only=True, rebuilding modules that compute what the trained ones did."""
    import torch

    from emgcore.posealign import load_model, save_model

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
