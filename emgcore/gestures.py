"""Paired EMG-pose windows and the gesture splits of CPEP/EMBridge Table 1.

Windows (CPEP App. B, EMBridge A.6): non-overlapping 2 s windows at 2 kHz of EMG ``(T, C)`` and
joint angles ``(T, J)``; EMG band-passed 2-250 Hz and notched at 60 Hz per recording, then
instance-normalised per window. Each emg2pose recording performs one *stage*; a gesture class is
a group of stages (EMBridge A.2.2): 4 in-distribution and 4 unseen classes.

Splits (Table 1), from each recording's ``split`` (emg2pose ``metadata.csv``: train / val / test):

* ``pretrain``: every train-split window whose stage is not held out (D_tr).
* ``probe_train_in``: train split, in-distribution classes.
* ``tune``: val split, the first ``tune_users`` held-out users, both class sets
  (hyper-parameters only).
* ``probe_train_unseen``: val split, the other held-out users, unseen classes.
* ``eval``: test split, held-out users only, both class sets (linear-probe and zero-shot scores).

Held-out users are those metadata.csv marks ``held_out_user`` and with no train-split
recording (training users' recordings of held-out stages sit in val and test too, and go to no
subset).

Recordings without a ``split`` (the simulator) get one by user: the last ``test_users`` users
are test, the ``val_users`` before them val, the rest train; train users' recordings of held-out
stages are dropped, as emg2pose's training users never perform them.

The NinaPro benchmark (``benchmark="ninapro"``, EMBridge Sec. 3) labels every sample instead of
every recording: windows lie inside one repetition of one movement, and a window's stage is the
movement's exercise code (``"B1"``, ``"C15"``, ``"rest"``; see :mod:`emgcore.data.ninapro`).

* ``pretrain``: every DB2 window except the unseen movements' ("the entire DB2 dataset ...
  except gestures 1, 5, 10 and 15 from exercise B").
* DB7, in-distribution and unseen movements only: ``tune`` is ``tune_users`` subjects drawn
  with ``split_seed`` (the paper has no tune subset; ours keeps hyper-parameter choice off the
  evaluation users); the other subjects' sessions (subject x repetition) of each movement are
  divided at random, ``probe_fraction`` to ``probe_train_in`` / ``probe_train_unseen`` and the
  rest to ``eval`` ("within each gesture, sessions were randomly divided into probe-training and
  evaluation sets"), so unlike emg2pose the probe and eval users overlap, as in the paper.
* ``pose_norm="recording"`` (the two gloves' units differ): each recording's joints are
  standardised by the statistics of its samples outside the runs of its ``tune`` and ``eval``
  windows (:func:`standardise_poses`): a DB2 recording's all but the unseen movements, a DB7
  recording's probe-training repetitions, rest and movements in no class.

Channel rotation (:func:`rotate_channels`) rolls only the electrodes on the ring
(:func:`ring_channels`: all of emg2pose's band, NinaPro's first 8 of 12).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from emgcore.data.ninapro import GLOVE_18
from emgcore.distributed import DataParallel
from emgcore.errors import InvalidValueError, MissingFieldError, ShapeError
from emgcore.preprocessing import BandPass, InstanceNorm, Notch, Pipeline
from emgcore.recording import Recording, require_samples
from emgcore.streaming import (
    WindowArray,
    Windows,
    check_storage,
    choose_storage,
    is_streamed,
    take,
)
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
# NinaPro (EMBridge Sec. 3): exercise C's grasps 1, 5, 10 and 15 in-distribution, exercise B's
# movements 1, 5, 10 and 15 unseen. The paper prints "gestures 1, 5, 10, and 10 from exercise C",
# a typo for a fourth distinct grasp; we take 15, the same ids as exercise B's.
NINAPRO_IN_DIST = {f"C{i}": (f"C{i}",) for i in (1, 5, 10, 15)}
NINAPRO_UNSEEN = {f"B{i}": (f"B{i}",) for i in (1, 5, 10, 15)}
# DB2's 22-sensor glove and DB7's 18-sensor glove share these 18 sensors (DB2 adds the 4 DIPs).
NINAPRO_JOINTS = GLOVE_18
ROLES = ("pretrain", "probe_train_in", "tune", "probe_train_unseen", "eval")
BENCHMARKS = ("emg2pose", "ninapro")


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
    benchmark: str = "emg2pose"  # emg2pose | ninapro: how Table 1's subsets are drawn
    joints: tuple[str, ...] = ()  # pose channels by name; () = all the recordings have
    # "recording": standardise every joint by its recording's statistics, for gloves whose raw
    # sensor units differ between devices and calibrations (NinaPro DB2 vs DB7), fitted on the
    # recording's samples outside its tune and eval runs only (standardise_poses)
    pose_norm: str = "none"
    probe_fraction: float = 0.5  # ninapro: share of each movement's sessions for probe-training
    split_seed: int = 0  # ninapro: the tune users and the probe/eval division
    # how training and evaluation hold the windows (emgcore.streaming): "memory" as tensors
    # (on the accelerator when there is one), "stream" read from the
    # preprocessing cache batch by batch, "auto" streams when all subsets' windows together
    # would take more than stream_above_gb as tensors
    storage: str = "auto"
    stream_above_gb: float = 2.0
    # loader processes reading streamed windows ahead of the step; -1: none on a CPU, 6 with
    # a GPU (where the step would otherwise wait for the reads)
    loader_workers: int = -1

    @property
    def held_out(self) -> frozenset[str]:
        return frozenset(s for g in self.unseen.values() for s in g) | set(self.extra_held_out)

    def __post_init__(self) -> None:
        if not 0.0 < self.pretrain_fraction <= 1.0:
            raise ValueError(f"pretrain_fraction must be in (0, 1], got {self.pretrain_fraction}")
        if not 0.0 < self.probe_fraction < 1.0:
            raise ValueError(f"probe_fraction must be in (0, 1), got {self.probe_fraction}")
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {self.benchmark!r}")
        check_storage(self.storage, self.stream_above_gb, self.loader_workers)
        if self.pose_norm not in ("none", "recording"):
            raise ValueError(f"pose_norm must be 'none' or 'recording', got {self.pose_norm!r}")

    def pipeline(self) -> Pipeline:
        low, high = self.band_hz
        return Pipeline((BandPass(low, high), Notch(self.mains_hz), InstanceNorm()))


@dataclass
class PairedWindows:
    """Windows with metadata. ``emg (N, T, C)``, ``pose (N, T, J)`` float32, ``valid (N, T)``:
    tensors, or :class:`~emgcore.streaming.WindowArray` s read from the preprocessing cache
    on demand (``storage`` says which, and why); ``recording (N,)`` names the recording each
    window was cut from (:func:`recording_id`), so zero-shot can leave a query's own recording
    out of the pose bank."""

    emg: Windows
    pose: Windows
    valid: Windows
    stage: np.ndarray  # (N,) str
    user: np.ndarray  # (N,) str
    session: np.ndarray  # (N,) str
    recording: np.ndarray  # (N,) str
    # EMG channels on the ring, in order around the arm: what channel rotation may roll (None:
    # every channel, as on emg2pose's band); see ring_channels
    ring: tuple[int, ...] | None = None
    storage: str = "memory"  # how the windows are held, and why (choose_storage)

    def __len__(self) -> int:
        return len(self.emg)

    @property
    def streamed(self) -> bool:
        return is_streamed(self.emg)

    @property
    def nbytes(self) -> int:
        """What the windows take (or would take) as in-memory tensors."""
        return sum(_nbytes(a) for a in (self.emg, self.pose, self.valid))

    def select(self, keep: np.ndarray) -> PairedWindows:
        """The windows where ``keep (N,)`` is true (or at the indices ``keep``)."""
        return dataclasses.replace(
            self,
            emg=take(self.emg, keep),
            pose=take(self.pose, keep),
            valid=take(self.valid, keep),
            stage=self.stage[keep],
            user=self.user[keep],
            session=self.session[keep],
            recording=self.recording[keep],
        )

    def to(self, device: torch.device | str, loader_workers: int = 0) -> PairedWindows:
        """The same windows with their tensors on ``device``; streamed ones are read onto it,
        ahead of the step by ``loader_workers`` processes (:meth:`WindowArray.plan`)."""

        def move(a: Windows) -> Windows:
            if is_streamed(a):
                return dataclasses.replace(a.to(device), workers=loader_workers)
            return a.to(device)

        return dataclasses.replace(
            self, emg=move(self.emg), pose=move(self.pose), valid=move(self.valid)
        )

    def held(self, storage: str = "memory", why: str = "") -> PairedWindows:
        """The windows in ``storage``: ``memory`` reads streamed windows into tensors (the
        same values: one gather), ``stream`` keeps them as they are."""
        why = why or storage
        if storage == "stream" or not self.streamed:
            return dataclasses.replace(self, storage=why)
        return dataclasses.replace(
            self,
            emg=self.emg.materialize(),
            pose=self.pose.materialize(),
            valid=self.valid.materialize(),
            storage=why,
        )

    def labels(self, classes: Mapping[str, tuple[str, ...]]) -> np.ndarray:
        """Class index of every window's stage under ``classes`` (-1: in none of them)."""
        of = {s: i for i, stages in enumerate(classes.values()) for s in stages}
        return np.array([of.get(s, -1) for s in self.stage], dtype=np.int64)


def _nbytes(a: Windows) -> int:
    return a.nbytes if is_streamed(a) else a.element_size() * a.nelement()


def windows(
    recordings: Sequence[Recording],
    cfg: GestureConfig,
    cache: RecordingCache | None = None,
    *,
    storage: str = "memory",
) -> PairedWindows:
    """Non-overlapping windows of every recording, preprocessed (see the module docstring).

    With ``cache`` the filtered recordings come from (and go to) the on-disk preprocessing cache,
    so the trials of a sweep filter each recording once between them. Whole recordings are
    filtered before they are cut, so no window carries a filter's edge transient.
    ``storage="stream"`` returns the windows as an index into the filtered recordings
    (:class:`~emgcore.streaming.WindowArray`, read from ``cache``'s files), ``"memory"`` as
    tensors; the values are the same.

    Raises :class:`~emgcore.errors.ShapeError` naming the recording when it (or every run of it
    that windows may not cross) is shorter than one window: no recording is dropped silently.
    """
    pipe = cfg.pipeline()
    emg, pose, valid, cols = [], [], [], []
    rec_id, first, stage, user, session, recording = [], [], [], [], [], []
    width, ring, length = None, None, 0
    for i, rec in enumerate(recordings):
        if rec.kinematics is None:
            raise InvalidValueError("paired windows need kinematics", source=rec.source)
        if ring is None:
            ring = ring_channels(rec)
        elif ring_channels(rec) != ring:
            raise InvalidValueError(
                f"ring electrodes {list(ring_channels(rec))} where earlier recordings have "
                f"{list(ring)}: channel rotation needs one layout",
                source=rec.source,
                field="layout",
            )
        n = round(cfg.window_s * rec.fs)
        if length and n != length:
            raise InvalidValueError(
                f"a {cfg.window_s:g} s window is {n} samples at {rec.fs:g} Hz where earlier "
                f"recordings' is {length}: resample to one rate",
                source=rec.source,
                field="fs",
            )
        length = n
        what = f"one {cfg.window_s:g} s window"
        require_samples(rec, n, what)
        starts, st, se = _window_starts(rec, n)
        if len(starts) == 0:  # long enough, but cut into runs (NinaPro) that are all shorter
            raise ShapeError(
                f"no run of one movement and repetition holds {what} ({n} samples); the "
                f"longest has {int(_runs(rec)[1].max())}",
                source=rec.source,
                field="labels.gesture",
            )
        joints = _joint_columns(rec, cfg)
        j = rec.kinematics.shape[1] if joints is None else len(joints)
        if width is not None and j != width:
            raise InvalidValueError(
                f"{j} pose channels where earlier recordings have {width}; pick a "
                "shared set with gestures.joints",
                source=rec.source,
                field="kinematics",
            )
        width = j
        if cache is not None:
            r = cache.get(rec, pipe)  # its maps pickle as paths: a worker maps the same files
            emg.append(r.file("emg"))
            pose.append(r.file("kinematics"))
            v = r.file("valid")
            valid.append(v if v is not None else np.ones(r.n_samples, bool))
        else:
            r = pipe.apply(rec)
            emg.append(np.asarray(r.emg, np.float32))
            pose.append(np.asarray(r.kinematics, np.float32))
            v = r.valid
            valid.append(np.ones(r.n_samples, bool) if v is None else np.asarray(v, bool))
        cols.append(joints)
        rec_id.append(np.full(len(starts), i, np.int32))
        first.append(starts.astype(np.int64))
        stage.append(st)
        user.append(np.full(len(starts), rec.subject))
        session.append(se)
        recording.append(np.full(len(starts), recording_id(rec)))
    if not emg:
        raise InvalidValueError(f"no recording is as long as one {cfg.window_s} s window")
    cat = np.concatenate
    index = {"rec": cat(rec_id), "start": cat(first), "length": length}
    out = PairedWindows(
        WindowArray(tuple(emg), steps=pipe, **index),
        WindowArray(tuple(pose), columns=tuple(cols), **index),
        WindowArray(tuple(valid), dtype=torch.bool, **index),
        cat(stage).astype(str),
        cat(user).astype(str),
        cat(session).astype(str),
        cat(recording).astype(str),
        ring,
    )
    return out.held(storage)


def ring_channels(rec: Recording) -> tuple[int, ...]:
    """The channels of ``rec`` that sit on a ring around the arm, in order: all of a ``ring``
    layout, ``meta["ring_channels"]`` otherwise (NinaPro DB2/DB7/DB4: the 8 of 12 not on muscle
    spots, :mod:`emgcore.data.ninapro`), else none (a grid does not rotate as a band)."""
    if rec.layout.kind == "ring":
        return tuple(range(rec.n_channels))
    return tuple(int(c) for c in rec.meta.get("ring_channels", ()))


def recording_id(rec: Recording) -> str:
    """A name unique to ``rec``: its source and content fingerprint (a simulator's recordings
    share a source; two files never share a fingerprint)."""
    return f"{rec.source}#{rec.fingerprint}"


def _window_starts(rec: Recording, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First sample, stage and session of each ``n``-sample window of ``rec``: back to back
    inside each of its runs (:func:`_runs`)."""
    first, length, stage, session = _runs(rec)
    k = length // n  # windows per run
    run = np.repeat(np.arange(len(k)), k)  # (N,) the run of every window
    nth = np.arange(len(run)) - np.repeat(np.cumsum(k) - k, k)  # its index within the run
    return first[run] + nth * n, stage[run], session[run]


def _runs(rec: Recording) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First sample, length, stage and session of each run of ``rec`` that windows may not
    cross: the whole recording of one stage (emg2pose), or each run of one repetition of one
    named movement (NinaPro; the run's session is ``<session>/rep<r>``)."""
    if "stage" in rec.meta:
        one = np.zeros(1, np.int64)
        return one, one + rec.n_samples, np.array([str(rec.meta["stage"])]), np.array([rec.session])
    names = rec.label_names.get("gesture")
    if "gesture" not in rec.labels or not names:
        raise MissingFieldError(
            "recording has neither a stage nor named gesture labels to cut windows by",
            source=rec.source,
            field="stage",
        )
    g = np.asarray(rec.labels["gesture"])
    rep = np.asarray(rec.labels.get("repetition", np.zeros_like(g)))
    if g.max() >= len(names):
        raise InvalidValueError(
            f"gesture id {g.max()} has no name ({len(names)} names)",
            source=rec.source,
            field="gesture",
        )
    bounds = np.r_[0, np.flatnonzero((np.diff(g) != 0) | (np.diff(rep) != 0)) + 1, len(g)]
    first = bounds[:-1]
    session = np.char.add(f"{rec.session}/rep", rep[first].astype(str))
    return first, np.diff(bounds), np.asarray(names)[g[first]], session


def _joint_columns(rec: Recording, cfg: GestureConfig) -> np.ndarray | None:
    """The columns of ``rec.kinematics`` that are ``cfg.joints``, by name (None: all)."""
    if not cfg.joints:
        return None
    missing = [j for j in cfg.joints if j not in rec.joint_names]
    if missing:
        raise MissingFieldError(
            f"no joint(s) {missing}; the recording has {list(rec.joint_names)}",
            source=rec.source,
            field="gestures.joints",
        )
    return np.array([rec.joint_names.index(j) for j in cfg.joints])


def _pose(rec: Recording, cfg: GestureConfig) -> np.ndarray:
    """The recording's joint angles ``(T, J)``, ``cfg.joints`` by name, as recorded (scaling,
    ``cfg.pose_norm``, needs the subsets: :func:`standardise_poses`)."""
    kin = np.asarray(rec.kinematics, np.float32)
    cols = _joint_columns(rec, cfg)
    return kin if cols is None else kin[:, cols]


def standardise_poses(
    w: PairedWindows, recordings: Sequence[Recording], cfg: GestureConfig, fit: np.ndarray
) -> PairedWindows:
    """``w`` with each recording's joints standardised by the mean and standard deviation of
    that recording's valid pose samples outside the runs (movement x repetition) of every
    window where ``fit (N,)`` is False.

    ``fit`` marks the windows a model may learn from (pre-training, probe-training); the other
    windows' runs (tune, eval) are left out of the statistics, and everything no subset uses is
    kept in (rest, movements in no class, runs too short for a window): the tune and eval
    windows are scaled by a calibration they took no part in, as one measured before the test
    would be. ``recordings`` are those ``w`` was cut from (:func:`windows`). Raises
    :class:`InvalidValueError` for a recording left without any sample.
    """
    held = set(zip(w.recording[~fit], w.stage[~fit], w.session[~fit], strict=True))
    width = w.pose.shape[-1]
    mean = torch.zeros(len(recordings), width)  # a recording without windows: unchanged
    denom = torch.ones(len(recordings), width)
    for i, rec in enumerate(recordings):
        rid = recording_id(rec)
        if not (w.recording == rid).any():
            continue
        first, length, stage, session = _runs(rec)
        use = np.zeros(rec.n_samples, bool)
        for f, n, st, se in zip(first, length, stage, session, strict=True):
            use[f : f + n] = (rid, st, se) not in held
        if rec.valid is not None:
            use &= np.asarray(rec.valid, bool)
        if not use.any():
            raise InvalidValueError(
                "pose_norm 'recording' fits each recording's scale outside its tune and eval "
                "runs, and this recording has nothing else",
                source=rec.source,
                field="gestures.pose_norm",
            )
        kin = _pose(rec, cfg)[use].astype(np.float64)
        mean[i] = torch.as_tensor(kin.mean(axis=0), dtype=torch.float32)
        denom[i] = torch.as_tensor(kin.std(axis=0), dtype=torch.float32) + 1e-6
    if is_streamed(w.pose):  # scaled as each window is read
        if len(w.pose.sources) != len(recordings):
            raise ValueError("standardise_poses needs the recordings the windows were cut from")
        return dataclasses.replace(w, pose=dataclasses.replace(w.pose, mean=mean, denom=denom))
    of = {recording_id(r): i for i, r in enumerate(recordings)}
    ri = torch.as_tensor([of[r] for r in w.recording], dtype=torch.int64)
    pose = (w.pose - mean[ri][:, None]) / denom[ri][:, None]
    return dataclasses.replace(w, pose=pose)


def _scaled(
    w: PairedWindows, recordings: Sequence[Recording], cfg: GestureConfig, fit: np.ndarray
) -> PairedWindows:
    return standardise_poses(w, recordings, cfg, fit) if cfg.pose_norm == "recording" else w


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
    split = _ninapro_splits if cfg.benchmark == "ninapro" else _emg2pose_splits
    out = split(recordings, cfg, cache)
    if cfg.pretrain_fraction < 1.0:
        out["pretrain"] = subsample_sessions(out["pretrain"], cfg.pretrain_fraction)
    for role in ROLES:
        if len(out[role]) == 0:
            raise InvalidValueError(f"the {role!r} subset is empty", field=f"gestures.{role}")
    storage, why = choose_storage(
        sum(w.nbytes for w in out.values()), cfg.storage, cfg.stream_above_gb
    )
    return {role: w.held(storage, why) for role, w in out.items()}


def _emg2pose_splits(
    recordings: Sequence[Recording], cfg: GestureConfig, cache: RecordingCache | None
) -> dict[str, PairedWindows]:
    if cfg.pose_norm == "recording":
        raise InvalidValueError(
            "pose_norm 'recording' scales each recording by its own training windows, but an "
            "emg2pose recording lies wholly in one subset: the tune and eval recordings have "
            "none. Use pose_norm: none (the pose-MAE standardises by its training statistics)",
            field="gestures.pose_norm",
        )
    if unstaged := [r for r in recordings if "stage" not in r.meta]:
        raise MissingFieldError(
            "the emg2pose benchmark needs one stage per recording; for NinaPro DB2/DB7 set "
            "gestures.benchmark: ninapro (preset posealign-ninapro)",
            source=unstaged[0].source,
            field="stage",
        )
    split = assign_splits(recordings, cfg)
    held = cfg.held_out
    in_stages = {s for g in cfg.in_dist.values() for s in g}
    unseen_stages = {s for g in cfg.unseen.values() for s in g}
    # Table 1: tune, probe_train_unseen and eval hold users absent from training. emg2pose's
    # val and test splits also hold training users' recordings of held-out stages
    # (metadata.csv's held_out_user False): those go to no subset, in val as in test; so does
    # any user with a train-split recording, whatever the metadata says.
    trained = {r.subject for r in recordings if split[id(r)] == "train"}

    def held_out_user(r: Recording) -> bool:
        return _held_out_user(r) and r.subject not in trained

    val_users = sorted(
        {r.subject for r in recordings if split[id(r)] == "val" and held_out_user(r)}
    )
    tune_users = set(val_users[: cfg.tune_users])

    def role_of(r: Recording) -> list[str]:
        s, st = split[id(r)], str(r.meta["stage"])
        if s == "train":
            if st in held:
                return []
            return ["pretrain"] + (["probe_train_in"] if st in in_stages else [])
        if not held_out_user(r):
            return []
        if s == "val":
            if r.subject in tune_users:
                return ["tune"] if st in in_stages | unseen_stages else []
            return ["probe_train_unseen"] if st in unseen_stages else []
        if st in in_stages | unseen_stages:
            return ["eval"]
        return []

    out = {}
    for role in ROLES:
        recs = [r for r in recordings if role in role_of(r)]
        if not recs:
            raise InvalidValueError(f"the {role!r} subset is empty", field=f"gestures.{role}")
        out[role] = windows(recs, cfg, cache, storage="stream")
    return out


def _held_out_user(r: Recording) -> bool:
    """Whether metadata.csv marks ``r``'s user ``held_out_user`` (emg2pose); True where no
    metadata says (the simulator splits by user)."""
    return bool(r.meta.get("held_out_user", True))


def _ninapro_splits(
    recordings: Sequence[Recording], cfg: GestureConfig, cache: RecordingCache | None
) -> dict[str, PairedWindows]:
    by_db: dict[str, list[Recording]] = {}
    for r in recordings:
        by_db.setdefault(str(r.meta.get("database")), []).append(r)
    if "db2" not in by_db or "db7" not in by_db:
        raise InvalidValueError(
            "the NinaPro benchmark pre-trains on DB2 and evaluates on DB7; the data hold "
            f"{sorted(by_db)}",
            field="gestures.benchmark",
        )
    pre = windows(by_db["db2"], cfg, cache, storage="stream")
    keep = ~np.isin(pre.stage, sorted(cfg.held_out))
    pre = _scaled(pre, by_db["db2"], cfg, keep).select(keep)  # the unseen movements' runs out
    in_stages = sorted({s for g in cfg.in_dist.values() for s in g})
    unseen_stages = sorted({s for g in cfg.unseen.values() for s in g})
    db7 = windows(by_db["db7"], cfg, cache, storage="stream")
    target = np.isin(db7.stage, in_stages + unseen_stages)
    ev = db7.select(target)
    rng = np.random.default_rng(cfg.split_seed)
    users = np.unique(ev.user)
    if len(users) <= cfg.tune_users:
        raise InvalidValueError(
            f"{len(users)} DB7 subjects cannot give {cfg.tune_users} tune subjects and leave "
            "any to probe and evaluate on",
            field="gestures.tune_users",
        )
    tune = np.isin(ev.user, rng.choice(users, cfg.tune_users, replace=False))
    unit = _units(ev)
    probe = np.zeros(len(ev), bool)
    for stage in np.unique(ev.stage[~tune]):
        here = ~tune & (ev.stage == stage)
        units = np.unique(unit[here])
        n = min(max(1, round(cfg.probe_fraction * len(units))), len(units) - 1)
        probe |= here & np.isin(unit, rng.choice(units, n, replace=False))
    # each DB7 recording scaled by its samples outside the tune and eval runs: probe-training
    # repetitions, rest, the movements no subset uses (the split above reads no pose)
    held = np.zeros(len(db7), bool)
    held[np.flatnonzero(target)] = tune | ~probe
    ev = _scaled(db7, by_db["db7"], cfg, ~held).select(target)
    return {
        "pretrain": pre,
        "probe_train_in": ev.select(probe & np.isin(ev.stage, in_stages)),
        "tune": ev.select(tune),
        "probe_train_unseen": ev.select(probe & np.isin(ev.stage, unseen_stages)),
        "eval": ev.select(~tune & ~probe),
    }


def _units(w: PairedWindows) -> np.ndarray:
    """Every window's session as one string: ``user`` + separator + ``session``."""
    return np.char.add(np.char.add(w.user.astype(str), "\x1f"), w.session.astype(str))


def subsample_sessions(w: PairedWindows, fraction: float, seed: int = 0) -> PairedWindows:
    """Keep ``ceil(fraction * n)`` of each stage's ``n`` sessions (user x session), drawn
    uniformly with a fixed seed: EMBridge's data-efficiency protocol ("uniformly downsample
    sessions within each gesture class")."""
    rng = np.random.default_rng(seed)
    unit = _units(w)
    keep = np.zeros(len(w), bool)
    for stage in np.unique(w.stage):
        here = w.stage == stage
        units = np.unique(unit[here])
        n = max(1, int(np.ceil(fraction * len(units))))
        keep |= here & np.isin(unit, rng.choice(units, n, replace=False))
    return w.select(keep)


def rotate_channels(
    x: Tensor,
    gen: torch.Generator,
    max_shift: int = 1,
    ring: Sequence[int] | None = None,
    parallel: DataParallel | None = None,
) -> Tensor:
    """Channel-rotation augmentation of ring EMG ``(B, T, C)``: each window's ring channels
    rolled by a random shift in ``[-max_shift, max_shift]`` (emg2pose's band-rotation
    augmentation, CPEP App. B). ``ring``: the channels on the ring in order around the arm
    (:attr:`PairedWindows.ring`; None: all ``C``); the others, electrodes on muscle spots that
    do not move with the band (NinaPro's 9-12), stay where they are.

    With ``parallel``, ``x`` is this worker's shard of a global batch of ``B x world_size``
    windows: the shifts are drawn for the whole global batch, so the generator stays in step
    on every worker and each window gets the shift it gets in one process."""
    parallel = parallel or DataParallel()
    _, _, c = x.shape
    b = len(x) * parallel.world_size
    shift = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen, device=gen.device)
    shift = parallel.shard(shift)
    b = len(shift)
    dev = x.device
    members = torch.arange(c, device=dev) if ring is None else torch.as_tensor(ring, device=dev)
    if len(members) == 0:
        return x
    r = len(members)
    idx = torch.arange(c, device=dev).repeat(b, 1)  # (B, C): identity off the ring
    idx[:, members] = members[(torch.arange(r, device=dev) - shift.to(dev)[:, None]) % r]
    return torch.gather(x, 2, idx[:, None, :].expand(-1, x.shape[1], -1))
