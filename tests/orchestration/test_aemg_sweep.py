"""``sweep.py aemg`` end to end on local Ray and MLflow, on data with gesture labels and no
kinematics (the simulator's smoke data written as BYOD without them): trials are selected by the
tune subjects' LOSO probe, the final run scores the evaluation cohort per seed, logs the
confusion matrix, codebook usage and few-shot curve, and registers ``aemg``, whose served graph
and raw-EMG inference path give the encoder's embeddings. A method that needs kinematics refuses
the same data in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emgcore.methods.base import seed_scores
from tests.orchestration.test_sweep import SWEEP, _client, _env

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.mlflow]


def _labels_only(tmp: Path) -> Path:
    from emgcore.data import open_dataset, write_byod
    from emgcore.methods import METHODS

    m = METHODS["aemg"]
    recs = open_dataset(m.data, **m.smoke_sim)
    bare = [r.replace(kinematics=None, joint_names=(), kinematics_unit="") for r in recs]
    write_byod(tmp / "labels-only", bare)
    return tmp / "labels-only"


def _run(tmp: Path, method: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SWEEP), method, "--smoke", *args, "--cache", str(tmp / "cache")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=tmp, env=_env())


def test_aemg_sweep_on_labels_alone_registers_a_sentence_encoder(tmp_path):
    import mlflow
    import mlflow.pytorch
    import torch

    from emgcore.config import load_yaml, resolve_config
    from emgcore.data import open_dataset
    from emgcore.methods import METHODS, load_inference
    from emgcore.methods.aemg import pack, sentences_of, split_cohorts
    from emgcore.models.aemg import as_batch

    data = _labels_only(tmp_path)
    refused = _run(tmp_path, "kinembed", "--data", str(data))
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode == 2 and len(errors) == 1, refused.stderr
    assert "field 'kinematics': no recording has kinematics" in errors[0]

    # a path relative to where the sweep starts (the Ray workers run elsewhere)
    done = _run(tmp_path, "aemg", "--data", data.name, "--stages", "tokenizer")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "evaluation LOSO balanced accuracy +" in done.stdout and "aemg v1: " in done.stdout

    (state_file,) = (tmp_path / "ray_results").glob("aemg-*/sweep.json")
    state = json.loads(state_file.read_text())
    final = state["final"]
    scores = [float(s) for s in final["scores"].split(",")]
    assert len(scores) == 3 and final["eval_loso_bacc"] == pytest.approx(np.mean(scores), abs=1e-3)
    assert 0.0 <= final["eval_loso_bacc"] <= 1.0 and "eval_few_shot_80" in final

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = _client(uri)
    exp = c.get_experiment_by_name("aemg")
    runs = c.search_runs([exp.experiment_id], max_results=100)
    assert all(r.info.status == "FINISHED" for r in runs)
    trials = [r for r in runs if "emg.trial" in r.data.tags]
    assert len(trials) == 2
    for t in trials:  # codebook usage and masked accuracy every epoch, from both stages
        assert {"vq.perplexity", "vq.dead_codes", "mtm.masked_accuracy"} <= set(t.data.metrics)
        assert "tune_loso_bacc" in t.data.metrics
        assert len(c.get_metric_history(t.info.run_id, "vq.perplexity")) == 2  # smoke: 2 epochs
    run = next(r for r in runs if r.info.run_name == "final")
    names = {a.path for a in c.list_artifacts(run.info.run_id, "report")}
    assert names == {
        f"report/{n}.{e}"
        for n in ("confusion", "codebook_usage", "few_shot")
        for e in ("csv", "png")
    }
    confusion = Path(c.download_artifacts(run.info.run_id, "report/confusion.csv")).read_text()
    assert confusion.startswith("true\\predicted,rest,hand_close")

    # the registered version: tune subjects from the pre-training cohort, scored per seed
    v1 = c.get_model_version("aemg", "1")
    assert v1.tags["selection_metric"] == "tune_loso_bacc"
    cfg = load_yaml(METHODS["aemg"].config, resolve_config("aemg-smoke"))
    recs = open_dataset(str(data))
    cohorts = split_cohorts(recs, cfg.data)
    assert v1.tags["tune_subjects"] == ",".join(cohorts.tune)
    assert not set(cohorts.tune) & set(cohorts.evaluation_subjects)
    assert v1.tags["selection_split"].startswith(f"tune subjects {','.join(cohorts.tune)} ")
    seeds = seed_scores(v1.tags, "eval_loso_bacc")
    assert seeds is not None and len(seeds) == 3
    assert seeds[0] == float(v1.tags["registered_eval_loso_bacc"])
    assert float(v1.tags["trivial_eval_loso_bacc"]) == pytest.approx(1 / 6)  # six gestures

    # the served graph and the raw-EMG inference path give the same embeddings
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    served = mlflow.pytorch.load_model("models:/aemg/1")
    pipe = load_inference(mlflow.artifacts.download_artifacts("models:/aemg/1"))
    rec = cohorts.evaluation[0]
    z = pipe.predict(np.asarray(rec.emg), rec.fs)
    s = sentences_of([rec], pipe.config, labelled=False)
    with torch.no_grad():
        got = served(pack(as_batch(s))).numpy()  # a batch unlike the example's
    assert got.shape == z.shape and np.allclose(got, z, atol=1e-4)


def test_too_few_people_for_the_cohorts_is_one_line_before_ray_starts(tmp_path):
    done = _run(tmp_path, "aemg", "--sim-subjects", "3")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert errors[0].startswith("error: myo-cohorts: field 'data.tune_subjects': 3 subjects give")
    assert "--sim-subjects" in errors[0] and not (tmp_path / "ray_results").exists()
