"""Typed configs from plain data: nesting, tuples, and errors that name the dotted key."""

from __future__ import annotations

import pytest

from emgcore.config import build, override, to_dict
from emgcore.errors import InvalidValueError
from emgcore.methods.posealign import PoseAlignConfig


def test_nested_build_round_trips() -> None:
    cfg = build(PoseAlignConfig, {"embridge": {"cascle": {"top_k": 3}}, "methods": ["cpep"]})
    assert cfg.embridge.cascle.top_k == 3 and cfg.methods == ("cpep",)
    assert build(PoseAlignConfig, to_dict(cfg)) == cfg


def test_unknown_nested_key_names_its_path() -> None:
    with pytest.raises(InvalidValueError, match=r"embridge\.cascle\.topk") as e:
        build(PoseAlignConfig, {"embridge": {"cascle": {"topk": 3}}}, source="space.yaml")
    assert "space.yaml" in str(e.value)


def test_refused_value_names_its_section() -> None:
    with pytest.raises(InvalidValueError, match=r"embridge.*soft"):
        build(PoseAlignConfig, {"embridge": {"soft": "hard"}})


def test_dotted_overrides() -> None:
    cfg = override(PoseAlignConfig(), {"emg_mae.patch": 100, "embridge.cascle.tau": 0.5})
    assert cfg.emg_mae.patch == 100 and cfg.embridge.cascle.tau == 0.5
    with pytest.raises(InvalidValueError, match=r"emg_mae\.patches"):
        override(PoseAlignConfig(), {"emg_mae.patches": 100})


def test_yaml_exponents_become_floats_and_bad_numbers_name_the_key(tmp_path) -> None:
    from emgcore.config import load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("emg_mae: {lr: 1e-4, weight_decay: 0}\n")  # PyYAML: "1e-4" is a string
    cfg = load_yaml(PoseAlignConfig, path)
    assert cfg.emg_mae.lr == 1e-4 and isinstance(cfg.emg_mae.weight_decay, float)
    path.write_text("emg_mae: {lr: fast}\n")
    with pytest.raises(InvalidValueError, match=r"emg_mae\.lr.*expected a number, got 'fast'"):
        load_yaml(PoseAlignConfig, path)


def test_effective_blanks_the_fields_a_method_does_not_read() -> None:
    """Issue 14: two configs differing only where the method does not read compare equal."""
    from emgcore.config import UNUSED, effective, unused
    from emgcore.methods.jepa import PoseEstConfig
    from emgcore.methods.kinembed import ExperimentConfig

    def kin(**kw):
        return override(ExperimentConfig(), {f"kinembed.{k}": v for k, v in kw.items()})

    assert effective(kin(loss="vicreg", temperature=0.05)) == effective(
        kin(loss="vicreg", temperature=0.5)
    )
    assert effective(kin(temperature=0.05)) != effective(kin(temperature=0.5))  # NT-Xent reads it
    assert effective(kin(loss="vicreg"))["kinembed"]["temperature"] == UNUSED
    assert unused(kin(loss="vicreg", variant="momentum_ema")) == {
        "kinembed.temperature": "kinembed.loss=vicreg"
    }
    # rules for configs defined elsewhere: EMBridge without CASCLe, JEPA's raw featurizer,
    # no pre-training (a whole nested section reported once)
    emb = override(PoseAlignConfig(), {"embridge.soft": "none", "embridge.lam": 0.0})
    assert {"embridge.alpha", "embridge.cascle", "embridge.mask_ratio"} <= set(unused(emb))
    assert "embridge.cascle.top_k" not in unused(emb)
    assert effective(override(emb, {"embridge.cascle.top_k": 20})) == effective(emb)
    jepa = override(PoseEstConfig(), {"jepa.featurizer": "raw", "pretrain": False})
    assert unused(jepa)["jepa.feat_hidden"] == "jepa.featurizer=raw"
    assert unused(jepa)["jepa.masks"] == "pretrain=False"
    assert "jepa.masks.obs_ratio" not in unused(jepa)
    assert "jepa.feat_hidden" not in unused(PoseEstConfig())
