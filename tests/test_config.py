"""Typed configs from plain data: nesting, tuples, and errors that name the dotted key."""

from __future__ import annotations

import pytest

from emgcore.config import build, override, to_dict
from emgcore.errors import InvalidValueError
from emgcore.posealign import PoseAlignConfig


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
