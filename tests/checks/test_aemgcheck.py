"""AEMG's real-data protocol (emgcore.checks.aemgcheck): the LOSO scoring, and one short run on
myoarmband (skipped without ../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emgcore.methods.aemg import loso


def test_loso_holds_out_each_person_and_few_shot_sees_part_of_them():
    rng = np.random.default_rng(0)
    subject = np.repeat(["a", "b", "c", "d"], 40)
    y = np.tile(np.repeat([0, 1], 20), 4)
    # person d's classes sit where the others' are swapped: zero-shot fails on d, a few of d's
    # own sentences fix it
    centre = np.where((subject == "d")[:, None], 1 - y[:, None], y[:, None]) * 4.0
    z = centre + rng.standard_normal((160, 2))
    zero = loso(z, y, subject, 2)
    assert set(zero) == {"a", "b", "c", "d"} and zero["d"] < 0.2 and zero["a"] > 0.9
    few = loso(z, y, subject, 2, fraction=0.8)
    assert few["d"] > zero["d"] + 0.3


@pytest.mark.realdata
@pytest.mark.slow
def test_aemg_runs_end_to_end_on_myoarmband(real_data: Path) -> None:
    """One epoch per stage: every score is a balanced accuracy and slicing's masked-token
    accuracy is the higher (its padded and resting slices are trivial to predict: the paper's
    ablation finding)."""
    from emgcore.checks.aemgcheck import AEMGCheckConfig, run
    from emgcore.data import load_myoarmband
    from emgcore.models.aemg import PretrainConfig

    cfg = AEMGCheckConfig(
        pretrain=PretrainConfig(vq_epochs=1, mtm_epochs=1, batch_size=32),
        simulated=(),  # the myoarmband cohorts alone: a short check, not the protocol's sources
        finetune=False,
    )
    res = run(load_myoarmband(real_data / "myoarmband"), (), cfg)
    assert len(res["scores"]["nct_zero_shot"]) == 18
    for mean, _ in res["summary"].values():
        assert 1 / 7 - 0.05 < mean < 1.0
    assert res["masked_accuracy"]["slice"] > res["masked_accuracy"]["nct"]


def test_few_shot_split_keeps_a_sentence_of_every_class_to_score():
    from emgcore.methods.aemg import few_shot_split

    y = np.array([0] * 10 + [1] * 4 + [2] * 2 + [3])
    for seed in range(10):
        seen = few_shot_split(y, 0.8, np.random.default_rng(seed))
        assert [int(seen[y == c].sum()) for c in range(4)] == [8, 3, 1, 0]
    seen = few_shot_split(y, 0.05, np.random.default_rng(0))
    assert [int(seen[y == c].sum()) for c in range(4)] == [1, 1, 1, 0]


def test_missing_data_is_one_error_line_and_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    env = os.environ | {"EMG_REAL_DATA": str(tmp_path / "nowhere")}
    p = subprocess.run(
        [sys.executable, "-m", "emgcore.checks.aemgcheck"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1
    assert "nowhere" in p.stderr
