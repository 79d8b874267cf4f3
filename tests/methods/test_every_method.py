"""Every registered method's final trial, run in-process as the Train worker would run it (no Ray,
no MLflow) on its smoke data: its units run, its summary carries the final metric, and what it
registers is consistent. Each export serves its example, and where the champion rule scores a
champion again (CPEP, EMBridge, EMG-JEPA), scoring the new model itself that way gives back its
own selection score: the champion and the newcomer are compared on the same evaluation."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from emgcore.config import flatten, load_yaml, override, resolve_config
from emgcore.data import open_dataset
from emgcore.methods import METHODS
from emgcore.methods.base import INFERENCE_FILE, NO_INFERENCE_FILE, TrialSetup


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_final_trial_registers_what_it_scored(name: str, tmp_path) -> None:
    m = METHODS[name]
    cfg = replace(load_yaml(m.config, resolve_config(m.smoke_preset)), seeds=(0,))
    # windowed methods stream their windows from the cache here (the sweeps' small sets are
    # held in memory, so this is the test that runs a whole trial streamed)
    storage = _storage_key(cfg)
    if storage:
        cfg = override(cfg, {storage: "stream"})
    recs = open_dataset(m.data, **m.smoke_sim)
    setup = TrialSetup(
        mode="final", cache=str(tmp_path), data=m.data, fingerprint="f", selection={"value": 0.5}
    )
    trial = m.trial(cfg, recs, setup)
    if storage:
        assert (
            trial.tags["emg.windows"].startswith("stream (")
            and "forced" in trial.tags["emg.windows"]
        )
    values = {u: trial.run(u, lambda model: ()).value for u in trial.units}

    summary = trial.summary(values)
    assert math.isfinite(summary[m.final_metric]), summary
    reg = trial.registration(values)
    assert reg.selection.split != reg.test.split  # chosen on one split, reported on another
    for ex in reg.exports:
        with torch.no_grad():
            out = ex.model(torch.as_tensor(np.asarray(ex.example)))
        assert len(out) == len(ex.example) and torch.isfinite(out).all()
        # the registry exports the graph with every dimension free, as MLflow does
        # (torch.export, Dim.AUTO); a champion is then served batches of any size, so
        # nothing in forward may fix the batch (len(x) does)
        x = torch.as_tensor(np.asarray(ex.example))
        auto = {d: torch.export.Dim.AUTO for d in range(x.ndim)}
        graph = torch.export.export(ex.model.eval(), (x,), dynamic_shapes=(auto,)).module()
        other = torch.cat([x, x[:1]])
        with torch.no_grad():
            assert torch.allclose(graph(other), ex.model(other), atol=1e-5), name
        if ex.write_files is not None:
            files = ex.write_files(tmp_path / f"files{ex.suffix}")
            assert all(f.exists() for f in files)
            # raw EMG in (load_inference), or a note saying why not: never silently neither
            names = {f.name for f in files}
            assert (INFERENCE_FILE in names) != (NO_INFERENCE_FILE in names), (name, names)
        if ex.rescore is not None:
            champion = ex.load(tmp_path / f"files{ex.suffix}") if ex.load else ex.model
            with torch.no_grad():
                again = ex.rescore(champion)
            assert again == pytest.approx(reg.selection.value, abs=1e-5), name


def _storage_key(cfg) -> str | None:
    """The dotted key of a method's window storage (gestures.storage, data.storage), if any."""
    return next((k for k in flatten(cfg) if k.endswith(".storage")), None)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_trial_records_how_it_holds_its_windows(name: str, tmp_path) -> None:
    """Every windowed method chooses memory or streaming by size, and its trial run records the
    choice and why (``emg.windows``), forced or not."""
    m = METHODS[name]
    cfg = load_yaml(m.config, resolve_config(m.smoke_preset))
    storage = _storage_key(cfg)
    if storage is None:
        pytest.skip(f"{name} has no window storage (features, or token sentences in memory)")
    recs = open_dataset(m.data, **m.smoke_sim)
    setup = TrialSetup(mode="cv", cache=str(tmp_path), data=m.data)
    tags = m.trial(cfg, recs, setup).tags
    assert tags["emg.windows"].startswith("memory (") and "stream_above_gb 2" in tags["emg.windows"]
    assert tags["emg.loader_workers"] == "0"  # a CPU
    tags = m.trial(override(cfg, {storage: "stream"}), recs, setup).tags
    assert tags["emg.windows"].startswith("stream (") and tags["emg.windows"].endswith("forced)")
