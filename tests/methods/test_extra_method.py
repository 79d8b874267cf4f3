"""The method seam, proved: a method defined here, in the test suite only, registered into
``METHODS`` at test time, sweeps through Ray Tune + Train + MLflow and registers a champion with
no change to ``orchestration/``.

The method ("tiny"): log-RMS of each channel over 200 ms windows, decoded to the kinematics by a
one-hidden-layer MLP; trained on session A1, selected on A2 (``val_r2``), the final run
retrained per seed on A1+A2 and scored on A3 (``test_r2``). It is what "adding a method" takes
(README): a config dataclass, a :class:`Trial`, a :class:`Method`, a preset and a search space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from emgcore.methods import METHODS
from emgcore.methods.base import (
    Export,
    Hooks,
    Method,
    Registration,
    Score,
    Trial,
    UnitResult,
    seed_scores,
)
from emgcore.models.decoder import r2_per_output
from emgcore.training import fit

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class TinyConfig:
    hidden: int = 64
    lr: float = 0.01
    epochs: int = 30
    batch_size: int = 64
    weight_decay: float = 0.0
    restart_epochs: int = 100
    grad_clip: float = 0.0
    seeds: tuple[int, ...] = (0, 1)


def windows(recordings: Sequence[Any], sessions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` log-RMS of 200-ms windows every 50 ms, ``(N, J)`` kinematics at their ends."""
    xs, ys = [], []
    for r in (r for r in recordings if r.session in sessions):
        n, hop = int(0.2 * r.fs), int(0.05 * r.fs)
        emg, kin = np.asarray(r.emg), np.asarray(r.kinematics)
        ends = np.arange(n, len(emg) + 1, hop)
        power = np.concatenate([np.zeros((1, emg.shape[1])), np.cumsum(emg**2, 0)])
        xs.append(0.5 * np.log((power[ends] - power[ends - n]) / n + 1e-12))
        ys.append(kin[ends - 1])
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)


class TinyTrial(Trial):
    def __init__(self, cfg: TinyConfig, recordings: Sequence[Any], setup: Any):
        self.config, self.setup = cfg, setup
        final = setup.mode == "final"
        self.train = windows(recordings, ("A1", "A2") if final else ("A1",))
        self.eval = windows(recordings, ("A3",) if final else ("A2",))
        self.mean, self.std = self.train[0].mean(0), self.train[0].std(0) + 1e-6
        self.units = [f"seed{s}" for s in cfg.seeds] if final else ["cv"]
        self.models: dict[str, torch.nn.Module] = {}

    def _model(self) -> torch.nn.Module:
        (x, y), h = self.train, self.config.hidden
        return torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], h), torch.nn.ReLU(), torch.nn.Linear(h, y.shape[1])
        )

    def _predict(self, model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy((x - self.mean) / self.std)).numpy()

    def run(self, unit: str, hooks: Hooks) -> UnitResult:
        seed = self.config.seeds[0] if unit == "cv" else int(unit.removeprefix("seed"))
        torch.manual_seed(seed)
        model = self._model()
        x = torch.from_numpy((self.train[0] - self.mean) / self.std)
        y = torch.from_numpy(self.train[1])

        def step(idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            return loss, {"loss": loss.item()}

        gen = torch.Generator().manual_seed(seed)
        fit(model, step, len(x), self.config, name="tiny", gen=gen, hooks=hooks(None))
        self.models[unit] = model
        r2 = float(np.mean(r2_per_output(self.eval[1], self._predict(model, self.eval[0]))))
        return UnitResult(r2, {f"r2.{unit}": r2}, model.state_dict())

    def restore(self, unit: str, state: Mapping[str, Any]) -> None:
        self.models[unit] = self._model()
        self.models[unit].load_state_dict(state)

    def summary(self, values: Mapping[str, Any]) -> dict[str, Any]:
        metric = "test_r2" if self.setup.mode == "final" else "val_r2"
        v = list(values.values())
        return {metric: float(np.mean(v)), f"{metric}_std": float(np.std(v))} if v else {}

    def seeds(self, values: Mapping[str, Any]) -> dict[str, list[float]]:
        return {"test_r2": [float(values[u]) for u in self.units if u in values]}

    def registration(self, values: Mapping[str, Any]) -> Registration:
        first = self.units[0]
        data = f"{self.setup.data} ({self.setup.fingerprint})"
        sel = Score("val_r2", float(self.setup.selection["value"]), f"A2 of {data}", 0.0)
        test = Score("test_r2", float(values[first]), f"A3 of {data}", 0.0)

        class Decoder(torch.nn.Module):  # raw log-RMS (N, C) -> kinematics (N, J)
            def __init__(self, net: torch.nn.Module, mean: np.ndarray, std: np.ndarray):
                super().__init__()
                self.net = net
                self.register_buffer("mean", torch.from_numpy(mean))
                self.register_buffer("std", torch.from_numpy(std))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net((x - self.mean) / self.std)

        model = Decoder(self.models[first], self.mean, self.std).eval()
        return Registration(sel, test, [Export("", model, self.eval[0][:8])])


TINY = Method(
    name="tiny",
    config=TinyConfig,
    preset=str(HERE / "tiny-preset.yaml"),
    smoke_preset=str(HERE / "tiny-preset.yaml"),
    data="db8-like",
    smoke_sim={"duration_s": 30.0, "n_subjects": 1},
    final_metric="test_r2",
    final_label="test R^2",
    trial=TinyTrial,
)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.mlflow
def test_a_method_added_at_test_time_sweeps_and_registers_a_champion(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestration import sweep, tracking

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(METHODS, "tiny", TINY)
    uri = f"sqlite:///{tmp_path}/m.db"
    argv = ["tiny", "--smoke", "--space", str(HERE / "tiny.yaml"), "--tracking-uri", uri]
    assert sweep.main(argv) == 0

    client = MlflowClient(uri, registry_uri=uri)
    champ = client.get_model_version_by_alias("tiny", "champion")
    assert champ.tags["selection_metric"] == "val_r2" and champ.tags["test_metric"] == "test_r2"
    assert float(champ.tags["registered_test_r2"]) > 0.0  # better than the mean predictor on A3
    final = tracking.Tracker(uri).client.get_run(champ.run_id)
    assert final.data.tags["emg.stage"] == "final" and final.info.status == "FINISHED"
    # both seeds were units of the final run, each logged once
    assert {"r2.seed0", "r2.seed1"} <= set(final.data.metrics)
    # and its score per seed, declared by seeds(), recorded on the version for the nightly
    seeds = seed_scores(champ.tags, "test_r2")
    assert seeds is not None and len(seeds) == len(
        [k for k in final.data.metrics if k[:6] == "r2.see"]
    )
    assert np.mean(seeds) == pytest.approx(final.data.metrics["test_r2"], rel=1e-9)
    tracking.use(uri)
    served = tracking.load_model("models:/tiny@champion")
    x = np.zeros((5, 16), np.float32)  # db8-like: 16 channels -> 5 DoA, any batch size
    assert tuple(served(torch.from_numpy(x)).shape) == (5, 5)
