"""EMG-JEPA end to end: cross-user hand-pose estimation data, pre-training, fine-tuning, JA-MAE,
and the paper's ablations as rows of one table (papers/emg-jepa.txt Sec. 3.1, 4).

Data (Sec. 3.1.1, 4.2): EMG band-passed 20-850 Hz, then per user and channel median-subtracted
and L2-scaled (statistics from each user's own recordings: label-free calibration, so held-out
users are normalised on their own signals); joint angles low-passed at 15 Hz, each stretch of
valid tracking on its own (:class:`~emgcore.preprocessing.KinematicsLowPass`: IK failures, whose
angles are zeros, never reach a valid target); 1-s windows, the target the pose at the window's
last sample (windows whose last sample is an IK failure are dropped); train / validation / test
users disjoint (participant-level split).

Choices: training windows start every ``stride_s`` = 0.25 s (not given); the band's upper edge
is clipped to 0.45 fs for recordings sampled below 2 kHz (flexemg at 1 kHz), since 850 Hz is
above their Nyquist frequency.

As a sweep method (the end of this module, ``METHOD``: ``sweep.py jepa``):

A search trial pre-trains the encoder on the training users' windows, fine-tunes it with the
pose head (early-stopped on the validation users) and reports the selection metric
``val_ja_mae``: JA-MAE in degrees on the validation users, lower is better
(:func:`emgcore.methods.jepa.run`).

The final run retrains the winner once per seed and scores the held-out test users
(``test_ja_mae``, mean +- std over seeds, with ``val_ja_mae`` beside it), reports the first
seed's per-joint errors and trajectories and registers its pose model (EMG windows
``(B, T, C)`` -> joint angles ``(B, J)`` in the data's unit). The champion is loaded and scored
again on the validation users (the selection split, never the test users); the trivial baseline
is the training users' mean pose. A champion that cannot run on this data (other channels or
window length) keeps its alias.

Each trial is one unit: a restarted worker retrains it from its seed, which reproduces it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emgcore.config import build
from emgcore.distributed import DataParallel
from emgcore.errors import InvalidValueError
from emgcore.features import window_starts
from emgcore.methods.base import (
    Export,
    Hooks,
    Method,
    Registration,
    Score,
    Trial,
    TrialSetup,
    UnitResult,
    check_input,
    save_inference,
)
from emgcore.models.jepa import (
    Encoder,
    JEPAConfig,
    PoseHeadConfig,
    PoseModel,
    finetune,
    ja_mae,
    pretrain,
)
from emgcore.preprocessing import BandPass, KinematicsLowPass, MedianL2, Pipeline
from emgcore.recording import ChannelLayout, Recording, require_samples
from emgcore.splits import catalog, cross_user
from emgcore.streaming import (
    WindowArray,
    Windows,
    check_storage,
    choose_storage,
    is_streamed,
    loader_workers,
)
from emgcore.training import EpochHook, batched
from emgcore.windows import CachedRecording, RecordingCache


@dataclass(frozen=True)
class PoseDataConfig:
    """Windows, preprocessing and the cross-user split (Sec. 3.1.1, 4.2)."""

    window_s: float = 1.0
    stride_s: float = 0.25
    band_hz: tuple[float, float] = (20.0, 850.0)
    norm: str = "median_l2"  # median_l2 | none (Table 2)
    pose_lowpass_hz: float = 15.0
    test_fraction: float = 0.2  # of the users
    val_fraction: float = 0.2  # of the users: early stopping and model selection
    split_seed: int = 0
    # how the EMG windows are held (emgcore.streaming; the poses, one sample a window, always
    # in memory): "memory", "stream" from the preprocessing cache files, or "auto" by
    # size; overlapping windows (stride_s < window_s) take window_s / stride_s times the
    # recording in memory, none when streamed
    storage: str = "auto"
    stream_above_gb: float = 2.0
    loader_workers: int = -1  # read-ahead processes; -1: none on a CPU, 6 with a GPU

    def __post_init__(self) -> None:
        if self.norm not in ("median_l2", "none"):
            raise ValueError(f"norm must be 'median_l2' or 'none', got {self.norm!r}")
        check_storage(self.storage, self.stream_above_gb, self.loader_workers)

    def pipeline(self, fs: float) -> Pipeline:
        low, high = self.band_hz
        steps: list[Any] = [BandPass(low, min(high, 0.45 * fs))]
        if self.norm == "median_l2":
            steps.append(MedianL2())
        steps.append(KinematicsLowPass(self.pose_lowpass_hz))
        return Pipeline(tuple(steps))


@dataclass(frozen=True)
class PoseEstConfig:
    """One EMG-JEPA experiment: data, encoder + pre-training, pose head + fine-tuning."""

    data: PoseDataConfig = field(default_factory=PoseDataConfig)
    jepa: JEPAConfig = field(default_factory=JEPAConfig)
    head: PoseHeadConfig = field(default_factory=PoseHeadConfig)
    pretrain: bool = True  # False: the fully supervised baseline (same model, random init)
    seeds: tuple[int, ...] = (0, 1, 2)  # a run trains with the first; final evaluations with all

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds: needs at least one")


@dataclass
class PoseWindows:
    """``emg (N, T, C)`` float32 windows (a tensor, or a :class:`~emgcore.streaming.WindowArray`
    read from the preprocessing cache on demand), ``pose (N, J)`` at their last sample,
    ``user (N,)``; ``storage`` says how the EMG is held, and why."""

    emg: Windows
    pose: Tensor
    user: np.ndarray
    storage: str = "memory"

    def __len__(self) -> int:
        return len(self.emg)

    def to(self, device: torch.device | str, loader_workers: int = 0) -> PoseWindows:
        """On ``device``; streamed windows are read onto it, ahead of the step by
        ``loader_workers`` processes."""
        emg = self.emg.to(device)
        if is_streamed(emg):
            emg = replace(emg, workers=loader_workers)
        return replace(self, emg=emg, pose=self.pose.to(device))

    def held(self, storage: str, why: str) -> PoseWindows:
        """The EMG in ``storage`` (``memory``: read into one tensor, the same values)."""
        emg = self.emg.materialize() if storage == "memory" and is_streamed(self.emg) else self.emg
        return replace(self, emg=emg, storage=why)

    @staticmethod
    def concat(parts: Sequence[PoseWindows]) -> PoseWindows:
        if any(is_streamed(p.emg) for p in parts):
            raise InvalidValueError(
                "extra windows join in-memory windows only; these are streamed from disk",
                field="data.storage",
            )
        return PoseWindows(
            torch.cat([p.emg for p in parts]),
            torch.cat([p.pose for p in parts]),
            np.concatenate([p.user for p in parts]),
        )


@dataclass
class PoseData:
    """The three subsets, the angles' unit, the electrode layout and the joints' names."""

    train: PoseWindows
    val: PoseWindows
    test: PoseWindows
    unit: str
    layout: ChannelLayout
    joints: tuple[str, ...] = ()
    fs: float = 0.0  # the recordings' rate, Hz

    def to(self, device: torch.device | str) -> PoseData:
        """Training and validation windows on ``device`` (the test users stay: scored on CPU)."""
        return replace(self, train=self.train.to(device), val=self.val.to(device))


def prepare(
    recordings: Sequence[Recording], cfg: PoseDataConfig, cache: RecordingCache | None = None
) -> PoseData:
    """Preprocess, split by user, and cut windows (see the module docstring). With ``cache``
    the preprocessed recordings come from (and go to) the on-disk cache, which streamed windows
    read (``cfg.storage``).

    Raises :class:`~emgcore.errors.ShapeError` naming the recording when one is shorter than a
    window, before any filtering or training.
    """
    roles, pipe = _split_and_fit(recordings, cfg)
    out = {role: _windows(recs, pipe, cfg, cache) for role, recs in roles.items()}
    nbytes = sum(w.emg.nbytes for w in out.values())
    storage, why = choose_storage(nbytes, cfg.storage, cfg.stream_above_gb)
    out = {role: w.held(storage, why) for role, w in out.items()}
    first = recordings[0]
    unit, n_joints = first.kinematics_unit or "rad", out["train"].pose.shape[1]
    joints = tuple(first.joint_names) or tuple(f"joint{j}" for j in range(n_joints))
    return PoseData(out["train"], out["val"], out["test"], unit, first.layout, joints, first.fs)


def cache_plan(cfg: PoseEstConfig, recordings: Sequence[Recording]) -> list[tuple[Any, Pipeline]]:
    """What :func:`prepare` reads from the preprocessing cache: every recording of the three
    subsets with the pipeline fitted on the training users (``Method.cache_plan``)."""
    roles, pipe = _split_and_fit(recordings, cfg.data)
    return [(r, pipe) for recs in roles.values() for r in recs]


def _split_and_fit(
    recordings: Sequence[Recording], cfg: PoseDataConfig
) -> tuple[dict[str, list[Recording]], Pipeline]:
    """The recordings by subset (train / val / test users) and the pipeline fitted to them."""
    if not recordings:
        raise InvalidValueError("no recordings", field="data")
    first = recordings[0]
    for r in recordings:
        if r.kinematics is None:
            raise InvalidValueError("pose estimation needs joint angles", source=r.source)
        require_samples(r, round(cfg.window_s * r.fs), f"one {cfg.window_s:g} s window")
        if r.n_channels != first.n_channels or r.fs != first.fs:
            raise InvalidValueError(
                f"{r.n_channels} channels at {r.fs:g} Hz where the first recording has "
                f"{first.n_channels} at {first.fs:g} Hz",
                source=r.source,
                field="emg",
            )
    split = cross_user(
        catalog(recordings), cfg.test_fraction, cfg.val_fraction, seed=cfg.split_seed
    )
    roles = {role: split.select(recordings, role) for role in ("train", "val", "test")}
    for role in ("train", "val", "test"):
        if not roles.get(role):
            raise InvalidValueError(
                f"no {role} users: {len({r.subject for r in recordings})} users cannot be split "
                f"with test_fraction {cfg.test_fraction} and val_fraction {cfg.val_fraction}",
                field=f"data.{role}",
            )
    return roles, cfg.pipeline(first.fs).fit(roles["train"], calibration=recordings)


def _windows(
    recordings: Sequence[Recording],
    pipe: Pipeline,
    cfg: PoseDataConfig,
    cache: RecordingCache | None,
) -> PoseWindows:
    """The windows of ``recordings`` as an index into the preprocessed recordings (streamed)."""
    emg, rec_id, first, pose, user = [], [], [], [], []
    n = 0
    for rec in recordings:
        r = cache.get(rec, pipe) if cache is not None else pipe.apply(rec)
        n, step = round(cfg.window_s * r.fs), max(1, round(cfg.stride_s * r.fs))
        starts = window_starts(r.n_samples, n, step)
        if r.valid is not None:  # the target must not be an IK failure
            starts = starts[np.asarray(r.valid)[starts + n - 1]]
        if len(starts) == 0:
            continue
        if isinstance(r, CachedRecording):  # read from its files: only the rows asked for
            emg.append(r.file("emg"))
            kin = r.kinematics
        else:
            emg.append(np.asarray(r.emg, np.float32))
            kin = np.asarray(r.kinematics, np.float32)
        rec_id.append(np.full(len(starts), len(emg) - 1, np.int32))
        first.append(starts.astype(np.int64))
        pose.append(np.asarray(kin[starts + n - 1], np.float32))
        user.append(np.full(len(starts), r.subject))
    if not emg:
        raise InvalidValueError(f"no recording holds a {cfg.window_s} s window")
    cat = np.concatenate
    x = WindowArray(tuple(emg), cat(rec_id), cat(first), n)
    return PoseWindows(x, torch.from_numpy(cat(pose)), cat(user), "stream")


def run(
    data: PoseData,
    cfg: PoseEstConfig,
    hooks: Mapping[str, Sequence[EpochHook]] | None = None,
    *,
    extra_pretrain: Tensor | None = None,
    extra_train: PoseWindows | None = None,
    keep: dict[str, Any] | None = None,
    parallel: DataParallel | None = None,
) -> dict[str, float]:
    """Pre-train (unless ``cfg.pretrain`` is off), fine-tune, score: ``val_ja_mae`` (selection),
    ``test_ja_mae`` (held-out users) and the last pre-training loss.

    ``extra_pretrain`` windows join pre-training and ``extra_train`` windows the fine-tuning set
    (Sec. 4.4's emulated signals); ``keep["model"]`` receives the fine-tuned pose model.
    Training runs on the windows' device, data-parallel over ``parallel``'s workers; the test
    users are scored on the CPU.
    """
    hooks, seed = hooks or {}, cfg.seeds[0]
    tr = data.train
    channels, window = tr.emg.shape[2], tr.emg.shape[1]
    out: dict[str, float] = {}
    if cfg.pretrain:
        unlabelled = tr.emg
        if extra_pretrain is not None:
            unlabelled = PoseWindows.concat(
                [tr, PoseWindows(extra_pretrain, tr.pose[:0], tr.user[:0])]
            ).emg
        model, fit = pretrain(
            cfg.jepa,
            unlabelled,
            layout=data.layout,
            seed=seed,
            hooks=hooks.get("pretrain", ()),
            parallel=parallel,
        )
        encoder = model.encoder
        out["pretrain_loss"] = fit.epochs[-1]["train_loss"]
    else:
        torch.manual_seed(seed)
        encoder = Encoder(cfg.jepa, channels, window // cfg.jepa.patch).to(tr.emg.device)
    labelled = tr if extra_train is None else PoseWindows.concat([tr, extra_train])
    pose, _, best = finetune(
        cfg.head,
        encoder,
        labelled.emg,
        labelled.pose,
        (data.val.emg, data.val.pose),
        unit=data.unit,
        seed=seed,
        hooks=hooks.get("finetune", ()),
        parallel=parallel,
    )
    out["val_ja_mae"] = best
    pose.cpu()
    out["test_ja_mae"] = ja_mae(batched(pose, data.test.emg.cpu()), data.test.pose, data.unit)
    if keep is not None:
        keep["model"] = pose
    return out


def per_joint_report(model: torch.nn.Module, data: PoseData, folder: str | Path) -> list[Path]:
    """The test users' errors, for a run's artifacts: ``test_per_joint.csv`` (JA-MAE in degrees
    per joint and per user) and ``test_trajectories.png`` (predicted against true angles of the
    four worst joints over the first test user's windows). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        pred = batched(model.cpu().eval(), data.test.emg.cpu()).numpy()
    true = data.test.pose.numpy()
    users = sorted(set(data.test.user.tolist()))
    rows = ["joint," + ",".join(["all", *users])]
    per_joint = []
    for j, name in enumerate(data.joints):
        errs = [ja_mae(pred[:, j], true[:, j], data.unit)]
        errs += [
            ja_mae(pred[data.test.user == u, j], true[data.test.user == u, j], data.unit)
            for u in users
        ]
        per_joint.append(errs[0])
        rows.append(f"{name}," + ",".join(f"{e:.4f}" for e in errs))
    table = folder / "test_per_joint.csv"
    table.write_text("\n".join(rows) + "\n")

    first = data.test.user == users[0]
    worst = np.argsort(per_joint)[::-1][:4]
    fig, axes = plt.subplots(len(worst), 1, figsize=(8, 1.8 * len(worst)), sharex=True)
    for ax, j in zip(np.atleast_1d(axes), worst, strict=True):
        ax.plot(true[first, j], lw=1.2, label="true")
        ax.plot(pred[first, j], lw=1.0, label="predicted")
        ax.set_ylabel(f"{data.joints[j]}\n({data.unit})", fontsize=7)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="upper right")
    np.atleast_1d(axes)[-1].set_xlabel(f"window of test user {users[0]}")
    fig.tight_layout()
    plot = folder / "test_trajectories.png"
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    return [table, plot]


# The paper's ablations (Tables 1-5) as overrides of one base experiment; "supervised" is the
# fully supervised baseline of Table 1 and Table 5's random-initialisation rows.
ABLATIONS: dict[str, dict[str, Any]] = {
    "emg_jepa": {},
    "supervised": {"pretrain": False},
    "no_normalisation": {"data.norm": "none"},
    "raw_featurizer": {"jepa.featurizer": "raw"},
    "conv_featurizer": {"jepa.featurizer": "conv"},
    "random_token_masks": {"jepa.masks.strategy": "random_token"},
    "random_block_masks": {"jepa.masks.strategy": "random_block"},
    "conv_decoder": {"head.decoder": "conv"},
    "conv_decoder_supervised": {"head.decoder": "conv", "pretrain": False},
}


def ablate(
    recordings: Sequence[Recording],
    cfg: PoseEstConfig,
    names: Sequence[str] = tuple(ABLATIONS),
) -> list[dict[str, Any]]:
    """One row per ablation: its overrides applied to ``cfg``, trained and scored on the same
    users (data re-prepared only when a ``data.`` setting changes)."""
    from emgcore.config import override

    rows, cache = [], {}
    for name in names:
        if name not in ABLATIONS:
            raise InvalidValueError(f"unknown ablation; known: {sorted(ABLATIONS)}", field=name)
        run_cfg = override(cfg, ABLATIONS[name])
        key = repr(run_cfg.data)
        if key not in cache:
            cache[key] = prepare(recordings, run_cfg.data)
        rows.append({"ablation": name, **run(cache[key], run_cfg)})
    return rows


def channel_study(
    datasets: Mapping[str, Sequence[Recording]], cfg: PoseEstConfig
) -> list[dict[str, Any]]:
    """Table 1: EMG-JEPA and the supervised baseline on each named dataset (8 / 16 / 110
    channels)."""
    rows = []
    for name, recordings in datasets.items():
        data = prepare(recordings, cfg.data)
        for label, pre in (("supervised", False), ("emg_jepa", True)):
            rows.append({"ablation": f"{name}:{label}", **run(data, replace(cfg, pretrain=pre))})
    return rows


def as_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The ablation rows as aligned text: JA-MAE in degrees."""
    lines = [f"{'ablation':26s} {'val JA-MAE':>11s} {'test JA-MAE':>12s} {'pretrain L1':>12s}"]
    for r in rows:
        pre = r.get("pretrain_loss")
        pre_s = f"{pre:12.4f}" if pre is not None else f"{'-':>12s}"
        lines.append(
            f"{r['ablation']:26s} {r['val_ja_mae']:11.2f} {r['test_ja_mae']:12.2f} {pre_s}"
        )
    return "\n".join(lines)


# -- as a sweep method ----------------------------------------------------------------------------

PHASES = ("pretrain", "finetune")


class PoseEstimator:
    """A registered EMG-JEPA pose model from raw EMG to joint angles: what
    :func:`emgcore.methods.load_inference` returns for a ``jepa`` version (its ``inference.pt``).

    ``predict(emg (T, C), fs, calibration=None) -> angles (N, J)`` in ``unit``: band-pass, the
    per-channel median / L2 normalisation with statistics from ``calibration`` (a list of the
    same user's raw EMG arrays, all their recordings as in training; default ``[emg]``): label
    free, as the paper normalises each held-out user on their own signals (Sec. 3.1.1); then
    windows of ``window_s`` every ``stride_s``,
    the pose model. Row ``n`` is the pose at sample ``window_end(T, fs)[n]``; the held-out score
    reads the windows whose last sample has valid tracking. ``emg`` is as recorded, at ``fs``.
    """

    method = "jepa"

    def __init__(
        self,
        config: PoseEstConfig,
        fs: float,
        layout: ChannelLayout,
        model: PoseModel,
        joints: Sequence[str],
        unit: str,
    ):
        self.config, self.fs, self.layout = config, float(fs), layout
        self.model, self.joints, self.unit = model.eval(), tuple(joints), unit

    @property
    def n_channels(self) -> int:
        return self.layout.n_channels

    def _recording(self, emg: Any, fs: float) -> Recording:
        x = check_input(emg, fs, self)
        return Recording(x, self.fs, self.layout, subject="user", session="-", source="predict")

    def predict(self, emg: Any, fs: float, calibration: Sequence[Any] | None = None) -> np.ndarray:
        rec = self._recording(emg, fs)
        cal = [rec] if calibration is None else [self._recording(c, fs) for c in calibration]
        r = self.config.data.pipeline(self.fs).fit([], calibration=cal).apply(rec)
        d = self.config.data
        n, step = round(d.window_s * self.fs), max(1, round(d.stride_s * self.fs))
        starts = window_starts(r.n_samples, n, step)
        x = np.asarray(r.emg, np.float32)[starts[:, None] + np.arange(n)]
        with torch.no_grad():
            return batched(self.model, torch.from_numpy(x)).numpy()

    def window_end(self, n_samples: int, fs: float) -> np.ndarray:
        d = self.config.data
        n, step = round(d.window_s * fs), max(1, round(d.stride_s * fs))
        return window_starts(n_samples, n, step) + n - 1

    def save(self, folder: Path) -> list[Path]:
        enc = self.model.encoder
        spec = {
            "config": json.loads(json.dumps(asdict(self.config), default=list)),
            "fs": self.fs,
            "layout": self.layout.to_dict(),
            "joints": list(self.joints),
            "unit": self.unit,
            "channels": enc.channels,
            "patches": enc.n_patches,
        }
        payload = {"spec": json.dumps(spec), "state_dict": self.model.state_dict()}
        return [save_inference(self.method, payload, folder)]

    @classmethod
    def load(cls, payload: Mapping[str, Any]) -> PoseEstimator:
        spec = json.loads(payload["spec"])
        cfg = build(PoseEstConfig, spec["config"], source="inference.pt")
        encoder = Encoder(cfg.jepa, spec["channels"], spec["patches"])
        model = PoseModel(encoder, cfg.head, len(spec["joints"]))
        model.load_state_dict(payload["state_dict"])
        layout = ChannelLayout.from_dict(spec["layout"])
        return cls(cfg, spec["fs"], layout, model, spec["joints"], spec["unit"])


class JepaTrial(Trial):
    def __init__(self, cfg: PoseEstConfig, recordings: Sequence[Any], setup: TrialSetup):
        self.config, self.setup = cfg, setup
        data = prepare(recordings, cfg.data, RecordingCache(setup.cache))
        workers = loader_workers(cfg.data.loader_workers, setup.device)
        workers = workers if is_streamed(data.train.emg) else 0  # tensors in memory need none
        self.data = replace(
            data, train=data.train.to(setup.device, workers), val=data.val.to(setup.device)
        )
        self.tags = {"emg.windows": data.train.storage, "emg.loader_workers": str(workers)}
        self.units = [setup.mode]
        self.first: torch.nn.Module | None = None  # final: the first seed's model, registered

    def run(self, unit: str, hooks: Hooks) -> UnitResult:
        by_phase = {phase: hooks(phase) for phase in PHASES}
        p = self.setup.parallel
        if unit == "cv":
            out = run(self.data, self.config, by_phase, parallel=p)
            return UnitResult({k: out[k] for k in ("val_ja_mae", "pretrain_loss") if k in out})
        scores: dict[str, list[float]] = {"test_ja_mae": [], "val_ja_mae": []}
        for seed in self.config.seeds:
            keep: dict[str, Any] = {}
            out = run(
                self.data, replace(self.config, seeds=(seed,)), by_phase, keep=keep, parallel=p
            )
            for k in scores:
                scores[k].append(out[k])
            self.first = self.first or keep["model"]
        summary: dict[str, Any] = {"scores": ",".join(f"{s:.4f}" for s in scores["test_ja_mae"])}
        for k, values in scores.items():
            summary |= {k: float(np.mean(values)), f"{k}_std": float(np.std(values))}
        first = {"first_seed_ja_mae": scores["test_ja_mae"][0]}
        return UnitResult(summary | first | {"seeds": scores})

    def summary(self, values: Mapping[str, Any]) -> dict[str, Any]:
        # the per-seed lists are summarised by seeds(), as text, not logged as metrics
        return {k: v for k, v in values.get(self.setup.mode, {}).items() if k != "seeds"}

    def seeds(self, values: Mapping[str, Any]) -> dict[str, list[float]]:
        return dict(values.get("final", {}).get("seeds", {}))

    def report(self, values: Mapping[str, Any], folder: Path) -> Sequence[Path]:
        assert self.first is not None
        return per_joint_report(self.first, self.data, folder)

    def registration(self, values: Mapping[str, Any]) -> Registration:
        """``champion`` moves only on a lower JA-MAE on the validation users, and never to a
        model no better than the training users' mean pose."""
        model, data = self.first, self.data
        assert model is not None
        val, test = data.val.to("cpu"), data.test.to("cpu")
        mean_pose = data.train.pose.float().mean(0).cpu()

        def evaluation(metric: str, w: PoseWindows, value: float, role: str) -> Score:
            trivial = ja_mae(mean_pose.expand_as(w.pose), w.pose, data.unit)
            return Score(
                metric,
                value,
                f"{role} users {_users(w)} of {self.setup.data} ({self.setup.fingerprint})",
                trivial,
                "min",
            )

        with torch.no_grad():
            val_score = ja_mae(batched(model, val.emg), val.pose, data.unit)
        estimator = PoseEstimator(
            self.config, data.fs, data.layout, model.cpu(), data.joints, data.unit
        )
        export = Export(
            "",
            model,
            test.emg[:4].numpy(),
            estimator.save,
            rescore=lambda champ: ja_mae(batched(champ, val.emg), val.pose, data.unit),
            rescored_on="the same validation users",
        )
        return Registration(
            evaluation("val_ja_mae", val, val_score, "validation"),
            evaluation("test_ja_mae", test, values["final"]["first_seed_ja_mae"], "test"),
            [export],
            {"train_users": _users(data.train), "unit": data.unit, "joints": ",".join(data.joints)},
        )


def _users(w: PoseWindows) -> str:
    return ",".join(sorted(set(w.user.tolist())))


METHOD = Method(  # smoke: 6 users (4 train, 1 validation, 1 test), one session of 4 s
    name="jepa",
    config=PoseEstConfig,
    preset="jepa-sim",
    smoke_preset="jepa-smoke",
    data="emg2pose-like",
    smoke_sim={"duration_s": 4.0, "n_subjects": 6, "sessions": ("s0",)},
    final_metric="test_ja_mae",
    final_label="test JA-MAE",  # degrees
    trial=JepaTrial,
    cache_plan=cache_plan,
    inference=PoseEstimator.load,
    seed_metrics={"test_ja_mae": "min", "val_ja_mae": "min"},  # degrees: lower is better
)
