"""Paired EMG-pose windows and the gesture splits of CPEP/EMBridge Table 1.

Windows (CPEP App. B, EMBridge A.6): non-overlapping 2 s windows at 2 kHz of EMG ``(T, C)`` and
joint angles ``(T, J)``; EMG band-passed 2-250 Hz and notched at 60 Hz per recording, then
instance-normalised per window. Each emg2pose recording performs one *stage*; a gesture class is
a group of stages (EMBridge A.2.2): 4 in-distribution and 4 unseen classes.

Splits (Table 1), from each recording's ``split`` (emg2pose ``metadata.csv``: train / val / test):

* ``pretrain``: every train-split window whose stage is not held out (D_tr).
* ``probe_train_in``: train split, in-distribution classes.
* ``tune``: val split, the first ``tune_users`` users, both class sets (hyper-parameters only).
* ``probe_train_unseen``: val split, the other users, unseen classes.
* ``eval``: test split, held-out users only, both class sets (linear-probe and zero-shot scores).

Recordings without a ``split`` (the simulator) get one by user: the last ``test_users`` users
are test, the ``val_users`` before them val, the rest train; train users' recordings of held-out
stages are dropped, as emg2pose's training users never perform them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from emgcore.errors import InvalidValueError
from emgcore.preprocessing import BandPass, InstanceNorm, Notch, Pipeline
from emgcore.recording import Recording
from emgcore.windows import RecordingCache

IN_DIST: dict[str, tuple[str, ...]] = {  # EMBridge A.2.2, in-distribution classes 0-3
    "thumb_swipes": ("ThumbsSwipesWholeHand",),
    "claw_grasp_flicks": ("HandClawGraspFlicks",),
    "thumbs_up_down_rotations": ("ThumbsUpDownThumbRotationsCWCCWP",),
    "finger_pinches": ("FingerPinchesSingleFingerPinchesMultiple",),
}
UNSEEN: dict[str, tuple[str, ...]] = {  # unseen classes 0-3
    "horns_ok_scissors": ("HookEmHornsOKScissors",),
    "shaka_vulcan_peace": ("ShakaVulcanPeace",),
    "counting": ("CountingUpDownFaceSideAway",),
    "counting_wiggling": ("CountingUpDownFingerWigglingSpreading",),
}
ROLES = ("pretrain", "probe_train_in", "tune", "probe_train_unseen", "eval")


@dataclass(frozen=True)
class GestureConfig:
    """Windowing, preprocessing and the class groups; defaults are the papers'."""

    window_s: float = 2.0
    band_hz: tuple[float, float] = (2.0, 250.0)
    mains_hz: float = 60.0
    in_dist: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(IN_DIST))
    unseen: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(UNSEEN))
    # held out of pre-training besides the unseen classes (Sec. 3.1: the two-handed gesture and
    # finger freeform are held out too, and left out of the evaluation)
    extra_held_out: tuple[str, ...] = ("FingerFreeform",)
    tune_users: int = 3  # val-split users reserved for hyper-parameter tuning
    pretrain_fraction: float = 1.0  # data efficiency (EMBridge Fig. 3c): sessions kept per stage
    val_users: int = 2  # simulator only: users given the val split
    test_users: int = 2  # simulator only: users given the test split

    @property
    def held_out(self) -> frozenset[str]:
        return frozenset(s for g in self.unseen.values() for s in g) | set(self.extra_held_out)

    def __post_init__(self) -> None:
        if not 0.0 < self.pretrain_fraction <= 1.0:
            raise ValueError(f"pretrain_fraction must be in (0, 1], got {self.pretrain_fraction}")

    def pipeline(self) -> Pipeline:
        low, high = self.band_hz
        return Pipeline((BandPass(low, high), Notch(self.mains_hz), InstanceNorm()))


@dataclass
class PairedWindows:
    """Windows with metadata. ``emg (N, T, C)``, ``pose (N, T, J)`` float32, ``valid (N, T)``."""

    emg: Tensor
    pose: Tensor
    valid: Tensor
    stage: np.ndarray  # (N,) str
    user: np.ndarray  # (N,) str
    session: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return len(self.emg)

    def select(self, keep: np.ndarray) -> PairedWindows:
        idx = torch.as_tensor(np.flatnonzero(keep))
        return PairedWindows(
            self.emg[idx],
            self.pose[idx],
            self.valid[idx],
            self.stage[keep],
            self.user[keep],
            self.session[keep],
        )

    def to(self, device: torch.device | str) -> PairedWindows:
        """The same windows with their tensors on ``device``."""
        return PairedWindows(
            self.emg.to(device),
            self.pose.to(device),
            self.valid.to(device),
            self.stage,
            self.user,
            self.session,
        )

    def labels(self, classes: Mapping[str, tuple[str, ...]]) -> np.ndarray:
        """Class index of every window's stage under ``classes`` (-1: in none of them)."""
        of = {s: i for i, stages in enumerate(classes.values()) for s in stages}
        return np.array([of.get(s, -1) for s in self.stage], dtype=np.int64)


def windows(
    recordings: Sequence[Recording], cfg: GestureConfig, cache: RecordingCache | None = None
) -> PairedWindows:
    """Non-overlapping windows of every recording, preprocessed (see the module docstring).

    With ``cache`` the filtered recordings come from (and go to) the on-disk preprocessing cache,
    so the trials of a sweep filter each recording once between them.
    """
    pipe = cfg.pipeline()
    emg, pose, valid, stage, user, session = [], [], [], [], [], []
    for rec in recordings:
        if rec.kinematics is None:
            raise InvalidValueError("paired windows need kinematics", source=rec.source)
        if "stage" not in rec.meta:
            raise InvalidValueError(
                "recording has no stage label", source=rec.source, field="stage"
            )
        n = round(cfg.window_s * rec.fs)
        k = rec.n_samples // n
        if k == 0:
            continue
        r = cache.get(rec, pipe) if cache is not None else pipe.apply(rec)
        x = np.asarray(r.emg[: k * n], np.float32).reshape(k, n, -1)
        emg.append(pipe.apply_windows(x))  # instance normalisation, per window
        pose.append(np.asarray(r.kinematics[: k * n], np.float32).reshape(k, n, -1))
        v = np.ones(k * n, bool) if r.valid is None else np.asarray(r.valid[: k * n], bool)
        valid.append(v.reshape(k, n))
        stage += [str(rec.meta["stage"])] * k
        user += [rec.subject] * k
        session += [rec.session] * k
    if not emg:
        raise InvalidValueError(f"no recording is as long as one {cfg.window_s} s window")
    cat = np.concatenate
    return PairedWindows(
        torch.from_numpy(cat(emg).astype(np.float32, copy=False)),
        torch.from_numpy(cat(pose)),
        torch.from_numpy(cat(valid)),
        np.array(stage),
        np.array(user),
        np.array(session),
    )


def assign_splits(recordings: Sequence[Recording], cfg: GestureConfig) -> dict[int, str]:
    """``id(recording) -> train|val|test``: its own ``split`` or, if none has one, by user."""
    if all("split" in r.meta for r in recordings):
        return {id(r): str(r.meta["split"]) for r in recordings}
    users = sorted({r.subject for r in recordings})
    n_test, n_val = cfg.test_users, cfg.val_users
    if len(users) < n_test + n_val + 1:
        raise InvalidValueError(
            f"{len(users)} users cannot give {n_val} val and {n_test} test users and leave one "
            "to train on",
            field="gestures.val_users/test_users",
        )
    role = {u: "train" for u in users[: len(users) - n_val - n_test]}
    role |= {u: "val" for u in users[len(users) - n_val - n_test : len(users) - n_test]}
    role |= {u: "test" for u in users[len(users) - n_test :]}
    return {id(r): role[r.subject] for r in recordings}


def gesture_splits(
    recordings: Sequence[Recording],
    cfg: GestureConfig = GestureConfig(),
    cache: RecordingCache | None = None,
) -> dict[str, PairedWindows]:
    """The five subsets of Table 1 (see the module docstring), keyed by :data:`ROLES`."""
    split = assign_splits(recordings, cfg)
    held = cfg.held_out
    in_stages = {s for g in cfg.in_dist.values() for s in g}
    unseen_stages = {s for g in cfg.unseen.values() for s in g}
    val_users = sorted({r.subject for r in recordings if split[id(r)] == "val"})
    tune_users = set(val_users[: cfg.tune_users])

    def role_of(r: Recording) -> list[str]:
        s, st = split[id(r)], str(r.meta.get("stage"))
        if s == "train":
            if st in held:
                return []
            return ["pretrain"] + (["probe_train_in"] if st in in_stages else [])
        if s == "val":
            if r.subject in tune_users:
                return ["tune"] if st in in_stages | unseen_stages else []
            return ["probe_train_unseen"] if st in unseen_stages else []
        if r.meta.get("held_out_user", True) and st in in_stages | unseen_stages:
            return ["eval"]
        return []

    out = {}
    for role in ROLES:
        recs = [r for r in recordings if role in role_of(r)]
        if role == "pretrain" and cfg.pretrain_fraction < 1.0:
            recs = subsample_sessions(recs, cfg.pretrain_fraction)
        if not recs:
            raise InvalidValueError(f"the {role!r} subset is empty", field=f"gestures.{role}")
        out[role] = windows(recs, cfg, cache)
    return out


def subsample_sessions(recordings: Sequence[Recording], fraction: float, seed: int = 0) -> list:
    """Keep ``ceil(fraction * n)`` of each stage's ``n`` recordings (sessions), drawn uniformly
    with a fixed seed: EMBridge's data-efficiency protocol ("uniformly downsample sessions
    within each gesture class")."""
    rng = np.random.default_rng(seed)
    by_stage: dict[str, list[Recording]] = {}
    for r in recordings:
        by_stage.setdefault(str(r.meta.get("stage")), []).append(r)
    keep: set[int] = set()
    for stage in sorted(by_stage):
        group = by_stage[stage]
        n = max(1, int(np.ceil(fraction * len(group))))
        keep |= {id(group[i]) for i in rng.choice(len(group), n, replace=False)}
    return [r for r in recordings if id(r) in keep]


def rotate_channels(x: Tensor, gen: torch.Generator, max_shift: int = 1) -> Tensor:
    """Channel-rotation augmentation of ring EMG ``(B, T, C)``: each window's channels rolled by
    a random shift in ``[-max_shift, max_shift]`` (emg2pose's band-rotation augmentation)."""
    b, _, c = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen, device=gen.device)
    idx = (torch.arange(c, device=x.device) - shift.to(x.device)[:, None]) % c  # (B, C)
    return torch.gather(x, 2, idx[:, None, :].expand(-1, x.shape[1], -1))
