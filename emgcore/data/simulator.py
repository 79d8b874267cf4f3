"""A physiologically grounded surface-EMG simulator: the embedded default dataset.

The generative chain, each stage a function below, top to bottom:

1. **Kinematics.** A hand posture is 8 synergy coordinates ``s`` in [-1, 1] (thumb rotation,
   thumb flexion, index, middle, ring, little, wrist flexion, wrist deviation). Gestures are target
   postures; a protocol strings rests, minimum-jerk transitions, holds and band-limited free
   movement into a trajectory at a 200 Hz control rate. Output kinematics are a fixed linear map of
   ``s``: the 5 DB8 degrees of actuation, or the 20 emg2pose joint angles, in degrees.
2. **Muscle excitation.** 14 forearm muscles (finger flexor/extensor compartments, thumb and
   wrist muscles) are excited by the posture they must hold (agonist of each synergy direction),
   by its velocity (phasic bursts) and a little co-contraction, then low-passed (activation
   dynamics, tau = 40 ms).
3. **Motor units.** Each muscle has a pool of motor units with exponentially spread recruitment
   thresholds and sizes (Henneman's size principle, Fuglevand et al. 1993); recruited units fire at
   8-35 Hz rising with excitation, with jittered inter-spike intervals (CV ~0.2). Spike times come
   from time-rescaling of the integrated rate, vectorised over all units with one searchsorted.
4. **Volume conduction.** Units sit at a depth and angle inside a cylindrical forearm; each
   electrode sees each unit with a gain falling with 3-D distance and a MUAP shape that widens with
   distance (narrow/wide biphasic and triphasic basis waveforms). EMG = spikes (sparse T x U) @
   gains (U x 3C), convolved with the basis waveforms.
5. **Nuisances.** Per-user anatomy (circumference, fat, muscle positions, drive gains), per-session
   electrode rotation/shift and skin gain, white amplifier noise, mains interference with
   harmonics, and baseline drift.

Everything is deterministic for ``(preset seed, subject, session)``: each recording draws from its
own ``numpy.random.SeedSequence``, so one recording can be regenerated without the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.fft as sp_fft
import scipy.signal as sps
import scipy.sparse as spa

from emgcore.data.emg2pose import JOINTS as JOINTS20
from emgcore.data.ninapro import DOA_NAMES as DOA5
from emgcore.preprocessing import resample_ratio
from emgcore.recording import ChannelLayout, Recording, digest

SIM_VERSION = 1  # bump when the generative model changes: it is part of every fingerprint
CONTROL_FS = 200.0  # Hz, rate of kinematics/excitation before upsampling to the EMG clock

SYNERGIES = (
    "thumb_rot",
    "thumb_flex",
    "index",
    "middle",
    "ring",
    "little",
    "wrist_flex",
    "wrist_dev",
)

# -- 1. kinematics ----
# Target postures in synergy space: [thumb_rot, thumb_flex, index, middle, ring, little,
# wrist_flex, wrist_dev].
GESTURES: dict[str, tuple[float, ...]] = {
    "rest": (0, 0, 0, 0, 0, 0, 0, 0),
    # NinaPro DB8 exercise 1 movements
    "thumb_flexion": (0.1, 1.0, 0.1, 0, 0, 0, 0, 0),
    "thumb_abduction": (1.0, 0.1, 0, 0, 0, 0, 0, 0),
    "index_flexion": (0, 0.1, 1.0, 0.25, 0, 0, 0, 0),
    "middle_flexion": (0, 0, 0.2, 1.0, 0.3, 0, 0, 0),
    "ring_little_flexion": (0, 0, 0, 0.25, 1.0, 1.0, 0, 0),
    "index_point": (0.4, 0.6, -0.6, 1.0, 1.0, 1.0, 0, 0),
    "cylindrical_grip": (0.8, 0.5, 0.8, 0.85, 0.8, 0.75, 0, 0),
    "lateral_grip": (-0.3, 0.7, 0.9, 1.0, 1.0, 1.0, 0, 0),
    "tripod_grip": (0.8, 0.6, 0.6, 0.6, -0.2, -0.2, 0, 0),
    # Myo-armband wrist/hand gestures
    "hand_close": (0.3, 0.8, 1.0, 1.0, 1.0, 1.0, 0, 0),
    "hand_open": (-0.4, -0.7, -0.8, -0.8, -0.8, -0.8, 0, 0),
    "wrist_flexion": (0, 0, 0.2, 0.2, 0.2, 0.2, 1.0, 0),
    "wrist_extension": (0, 0, -0.2, -0.2, -0.2, -0.2, -1.0, 0),
    "radial_deviation": (0, 0, 0, 0, 0, 0, 0, -1.0),
    "ulnar_deviation": (0, 0, 0, 0, 0, 0, 0, 1.0),
    # emg2pose-style hand shapes
    "thumbs_up": (-0.5, -0.8, 1.0, 1.0, 1.0, 1.0, 0, -0.3),
    "thumb_swipe": (0.9, 0.3, 0.3, 0.3, 0.3, 0.3, 0, 0),
    "claw": (0.2, 0.4, 0.55, 0.55, 0.55, 0.55, -0.2, 0),
    "pinch_index": (0.8, 0.5, 0.6, 0, 0, 0, 0, 0),
    "pinch_middle": (0.8, 0.5, 0, 0.6, 0, 0, 0, 0),
    "pinch_ring": (0.9, 0.6, 0, 0, 0.65, 0, 0, 0),
    "pinch_little": (1.0, 0.6, 0, 0, 0, 0.7, 0, 0),
    "horns": (0.5, 0.7, -0.8, 1.0, 1.0, -0.8, 0, 0),
    "ok": (0.8, 0.6, 0.7, -0.6, -0.6, -0.6, 0, 0),
    "scissors": (0.4, 0.7, -0.8, -0.8, 1.0, 1.0, 0, 0),
    "shaka": (-0.8, -0.8, 1.0, 1.0, 1.0, -0.8, 0, 0),
    "vulcan": (-0.3, -0.3, -0.8, -0.8, -0.8, -0.8, 0, 0),
    "count_one": (0.4, 0.6, -0.8, 1.0, 1.0, 1.0, 0, 0),
    "count_two": (0.4, 0.6, -0.8, -0.8, 1.0, 1.0, 0, 0),
    "count_three": (0.4, 0.6, -0.8, -0.8, -0.8, 1.0, 0, 0),
    "count_four": (0.5, 0.8, -0.8, -0.8, -0.8, -0.8, 0, 0),
    "count_five": (-0.5, -0.6, -0.8, -0.8, -0.8, -0.8, 0, 0),
}
FREE = "free"  # pseudo-gesture: band-limited free movement of every synergy

# emg2pose-like stages (CPEP/EMBridge Appendix A): each recording performs one stage's gestures.
STAGES: dict[str, tuple[str, ...]] = {
    "ThumbsSwipesWholeHand": ("thumb_swipe", "hand_open", "thumb_abduction"),
    "HandClawGraspFlicks": ("claw", "hand_close", "hand_open"),
    "ThumbsUpDownThumbRotationsCWCCWP": ("thumbs_up", "thumb_abduction", "thumb_flexion"),
    "FingerPinchesSingleFingerPinchesMultiple": (
        "pinch_index",
        "pinch_middle",
        "pinch_ring",
        "pinch_little",
        "tripod_grip",
    ),
    "HookEmHornsOKScissors": ("horns", "ok", "scissors"),
    "ShakaVulcanPeace": ("shaka", "vulcan", "count_two"),
    "CountingUpDownFaceSideAway": (
        "count_one",
        "count_two",
        "count_three",
        "count_four",
        "count_five",
    ),
    "CountingUpDownFingerWigglingSpreading": ("count_one", "count_three", "count_five", FREE),
    "FingerFreeform": (FREE,),
    "WristFlexionExtensionDeviation": (
        "wrist_flexion",
        "wrist_extension",
        "radial_deviation",
        "ulnar_deviation",
    ),
}


def _kinematic_map(kind: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(W, b, names)`` with kinematics = s @ W + b, in degrees. W is (8, J)."""
    if kind == "doa5":
        w = np.zeros((8, 5))
        w[0, 0], w[1, 1], w[2, 2], w[3, 3] = 60, 60, 90, 90
        w[4, 4] = w[5, 4] = 45
        return w, np.zeros(5), DOA5
    if kind == "joints20":
        w, b = np.zeros((8, 20)), np.zeros(20)
        w[0, 0], w[1, 0], w[0, 1], w[1, 2], w[1, 3] = 20, 15, 25, 30, 40  # thumb CMC/MCP/IP
        b[:4] = (10, 5, 10, 10)
        for k, s in enumerate((2, 3, 4, 5)):  # index, middle, ring, pinky
            j = 4 + 4 * k
            w[s, j] = -4.0 * (k - 1.5)  # MCP abduction: fingers converge as they flex
            w[s, j + 1], w[s, j + 2], w[s, j + 3] = 45, 55, 35
            b[j + 1 : j + 4] = (15, 20, 10)  # relaxed hand is slightly flexed
        return w, b, JOINTS20
    raise ValueError(f"unknown kinematics kind {kind!r} (choose 'doa5' or 'joints20')")


def _min_jerk(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """(n, 8) minimum-jerk path from posture a to b (Flash & Hogan 1985)."""
    tau = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
    return a + (b - a) * (10 * tau**3 - 15 * tau**4 + 6 * tau**5)


def _free_movement(rng: np.random.Generator, n: int, start: np.ndarray) -> np.ndarray:
    """(n, 8) band-limited (< ~1 Hz) random movement of all synergies, starting near ``start``."""
    sos = sps.butter(2, 0.8, fs=CONTROL_FS, output="sos")
    pad = int(2 * CONTROL_FS)
    x = sps.sosfilt(sos, rng.standard_normal((n + pad, 8)), axis=0)[pad:]
    x = np.tanh(1.1 * x / (x.std(axis=0, keepdims=True) + 1e-9))
    x[:, 6:] *= 0.4  # free finger movement moves the wrist less
    ramp = np.minimum(np.arange(n) / (0.5 * CONTROL_FS), 1.0)[:, None]  # ease in over 0.5 s
    return start * (1 - ramp) + x * ramp


@dataclass(frozen=True)
class Segment:
    """One protocol step at control rate: a path and its per-sample labels."""

    path: np.ndarray  # (n, 8)
    gesture: int
    repetition: int


def _protocol(cfg: SimConfig, rng: np.random.Generator, stage: str | None) -> Iterator[Segment]:
    """Yield protocol segments forever; the caller stops once the recording is long enough."""
    gid = {g: i for i, g in enumerate(cfg.gesture_names)}
    pose, rep = np.zeros(8), 0

    def steps(seconds: float) -> int:
        return max(2, int(seconds * CONTROL_FS))

    while True:
        if stage is not None:  # emg2pose-like: the stage's gestures in random order, no full rest
            choices = STAGES[stage]
            pool = [rng.choice(choices)]
            hold, rest = rng.uniform(0.4, 1.5), rng.uniform(0.0, 0.8)
        else:
            rep += 1
            pool = list(cfg.gestures)
            hold, rest = cfg.hold_s, cfg.rest_s
        for g in pool:
            if g == FREE or rng.random() < cfg.free_fraction:
                n = steps(rng.uniform(3.0, 8.0))
                path = _free_movement(rng, n, pose)
                yield Segment(path, gid[FREE], 0)
                pose = path[-1]
                continue
            target = np.asarray(GESTURES[g]) * rng.uniform(0.75, 1.1)  # effort varies per trial
            r = rep if stage is None else 0
            trans = steps(rng.uniform(0.3, 0.7))
            yield Segment(_min_jerk(pose, target, trans), gid[g], r)
            hold_n = steps(hold * rng.uniform(0.8, 1.2))
            drift = np.cumsum(rng.normal(0, 0.004, (hold_n, 8)), axis=0)  # postural sway
            yield Segment(target + drift, gid[g], r)
            pose = target + drift[-1]
            if rest > 0:
                yield Segment(_min_jerk(pose, np.zeros(8), trans), 0, 0)
                yield Segment(np.zeros((steps(rest * rng.uniform(0.8, 1.2)), 8)), 0, 0)
                pose = np.zeros(8)


def _trajectory(cfg: SimConfig, rng: np.random.Generator, stage: str | None):
    """Control-rate synergy path (n, 8) and gesture/repetition labels (n,)."""
    n_total = round(cfg.duration_s * CONTROL_FS) + 2
    paths, gest, reps, n = [], [], [], 0
    for seg in _protocol(cfg, rng, stage):
        paths.append(seg.path)
        gest.append(np.full(len(seg.path), seg.gesture))
        reps.append(np.full(len(seg.path), seg.repetition))
        n += len(seg.path)
        if n >= n_total:
            break
    s = np.concatenate(paths)[:n_total]
    return np.clip(s, -1.2, 1.2), np.concatenate(gest)[:n_total], np.concatenate(reps)[:n_total]


# -- 2. muscles ----
@dataclass(frozen=True)
class Muscle:
    name: str
    angle_deg: float  # position around the forearm; 0 = ventral midline, 180 = dorsal
    depth_mm: float  # below the fascia
    drive: tuple[tuple[int, float], ...]  # (synergy index, signed gain): + flexion drives it


MUSCLES: tuple[Muscle, ...] = (
    Muscle("FDS_index", -20, 8, ((2, 1.0), (3, 0.15))),
    Muscle("FDS_middle", 0, 7, ((3, 1.0), (2, 0.15), (4, 0.15))),
    Muscle("FDS_ring", 20, 8, ((4, 1.0), (3, 0.15))),
    Muscle("FDS_little", 35, 10, ((5, 1.0), (4, 0.2))),
    Muscle("FDP_radial", -5, 18, ((2, 0.7), (3, 0.7))),
    Muscle("FDP_ulnar", 30, 17, ((4, 0.7), (5, 0.7))),
    Muscle("FPL", -50, 16, ((1, 1.0),)),
    Muscle("FCR", -35, 5, ((6, 1.0), (7, -0.5))),
    Muscle("FCU", 65, 6, ((6, 1.0), (7, 0.8))),
    Muscle("EDC_index", 175, 6, ((2, -1.0),)),
    Muscle("EDC_middle_ring", 190, 6, ((3, -1.0), (4, -0.8))),
    Muscle("EDM_little", 210, 7, ((5, -1.0),)),
    Muscle("APL_EPB", 140, 9, ((0, 1.0), (1, -0.6))),
    Muscle("ECR", 130, 6, ((6, -1.0), (7, -0.6))),
    Muscle("ECU", 230, 6, ((6, -0.7), (7, 1.0))),
    Muscle("EPL", 155, 12, ((1, -0.8), (0, -0.5))),
)


def _excitation(s: np.ndarray, drive: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n, M) neural excitation in [0, 1] from the (n, 8) synergy path; ``drive`` is (16, M).

    Holding a posture needs the agonist of each synergy direction (positive drive for flexion,
    negative for extension); moving adds a velocity-proportional burst; everything co-contracts a
    little. Activation dynamics are a first-order low-pass (tau 40 ms).
    """
    vel = np.gradient(s, axis=0) * CONTROL_FS  # synergy units / s
    feats = np.concatenate([np.maximum(s, 0), np.maximum(-s, 0)], axis=1)  # (n, 16)
    tonic = feats @ drive
    phasic = 0.08 * (np.concatenate([np.maximum(vel, 0), np.maximum(-vel, 0)], axis=1) @ drive)
    cocon = 0.05 * np.abs(s).mean(axis=1, keepdims=True)
    e = np.clip(0.02 + 0.55 * tonic + phasic + cocon, 0.0, 1.0)
    a = np.exp(-1.0 / (0.040 * CONTROL_FS))
    return sps.lfilter([1 - a], [1, -a], e, axis=0)


# -- 3. and 4. motor units and volume conduction ----
@dataclass(frozen=True)
class Anatomy:
    """One user's forearm: geometry, motor-unit pools and how strongly each muscle is driven."""

    radius_mm: float
    fat_mm: float
    mu_muscle: np.ndarray  # (U,) muscle index of each motor unit
    mu_threshold: np.ndarray  # (U,) recruitment excitation
    mu_size: np.ndarray  # (U,) relative MUAP amplitude
    mu_pos: np.ndarray  # (U, 3) x, y (cross-section, mm; skin at radius), z (along arm, mm)
    drive: np.ndarray  # (16, M) synergy-direction -> muscle gains


def _anatomy(cfg: SimConfig, rng: np.random.Generator) -> Anatomy:
    circ = rng.uniform(230, 280)
    radius, fat = circ / (2 * np.pi), rng.uniform(2.0, 6.0)
    n = cfg.motor_units_per_muscle
    m_idx = np.repeat(np.arange(len(MUSCLES)), n)
    rank = np.tile(np.arange(n) / n, len(MUSCLES))
    threshold = 0.02 + 0.6 * (np.exp(3.0 * rank) - 1) / (np.exp(3.0) - 1)  # many small, few large
    size = np.exp(np.log(30.0) * rank) * rng.lognormal(0, 0.15, len(rank))
    angle = (
        np.array([mu.angle_deg for mu in MUSCLES])[m_idx] + rng.normal(0, 6, len(MUSCLES))[m_idx]
    )
    angle = np.deg2rad(angle + rng.normal(0, 5, len(rank)))
    depth = fat + np.array([mu.depth_mm for mu in MUSCLES])[m_idx] * rng.uniform(0.8, 1.2)
    depth = np.clip(depth + rng.normal(0, 2.0, len(rank)), fat + 1, radius - 5)
    r = radius - depth
    z = rng.normal(0, 12, len(rank))  # spread around the innervation zone under the electrodes
    pos = np.stack([r * np.cos(angle), r * np.sin(angle), z], axis=1)
    drive = np.zeros((16, len(MUSCLES)))
    for m, mu in enumerate(MUSCLES):
        for syn, g in mu.drive:
            drive[syn if g > 0 else syn + 8, m] += abs(g)
    drive *= rng.uniform(0.8, 1.2, drive.shape)
    return Anatomy(radius, fat, m_idx, threshold, size, pos, drive)


def _electrodes(
    layout: ChannelLayout, radius: float, rotation_deg: float, shift_mm: float
) -> np.ndarray:
    """(C, 3) electrode positions on the skin, after this session's band rotation and shift."""
    arc, z = layout.positions_mm[:, 0], layout.positions_mm[:, 1]
    if layout.kind == "grid":  # centre the grid on the forearm's ulnar-ventral side
        arc = arc - arc.mean()
        z = z - z.mean()
    phi = arc / radius + np.deg2rad(rotation_deg)
    return np.stack([radius * np.cos(phi), radius * np.sin(phi), z + shift_mm], axis=1)


def _basis(fs: float) -> np.ndarray:
    """(K, 3) MUAP basis waveforms: narrow biphasic, wide biphasic, narrow triphasic."""
    half = int(np.ceil(0.008 * fs))
    t = np.arange(-half, half + 1) / fs
    out = []
    for sigma, order in ((0.0006, 1), (0.0016, 1), (0.0007, 2)):
        g = np.exp(-0.5 * (t / sigma) ** 2)
        w = -t / sigma * g if order == 1 else (1 - (t / sigma) ** 2) * g
        out.append(w / np.abs(w).max())
    return np.stack(out, axis=1)


def _gains(anat: Anatomy, elec: np.ndarray) -> np.ndarray:
    """(U, 3C) gain of every motor unit on every (basis waveform, electrode)."""
    d = np.linalg.norm(anat.mu_pos[:, None, :] - elec[None, :, :], axis=-1)  # (U, C) mm
    d = np.sqrt(d**2 + anat.fat_mm**2)  # fat blurs: no unit is closer than the fat layer
    amp = anat.mu_size[:, None] / (1.0 + (d / 7.0) ** 2) ** 1.5
    far = np.clip((d - 8.0) / 25.0, 0.0, 1.0)  # deeper/farther units look wider
    dz = anat.mu_pos[:, 2:3] - elec[None, :, 2]
    tri = np.exp(-0.5 * (dz / 6.0) ** 2)  # over the innervation zone the MUAP is triphasic
    sign = np.sign(dz + 1e-9)  # propagation direction flips the bipolar polarity
    g = np.stack([amp * (1 - far) * (1 - tri) * sign, amp * far * sign, amp * (1 - far) * tri], 1)
    return g.reshape(len(anat.mu_pos), -1)  # (U, 3*C) basis-major


def _spike_times(
    excitation: np.ndarray, anat: Anatomy, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Spike times (s) and unit indices for every motor unit, by time-rescaling.

    A unit's firing rate is 8 Hz at recruitment rising to 35 Hz; its integrated rate
    Lambda(t) crosses one integer per spike. At 35 Hz and a 200 Hz control rate Lambda crosses at
    most one integer per step, so the steps where floor(Lambda) changes are exactly the spikes;
    their sub-step time is interpolated. Spike times are then jittered (sd 15% of the local
    inter-spike interval) for physiological ISI variability.
    """
    assert 35.0 < CONTROL_FS  # one crossing per step at most (see above)
    peak = excitation.max(axis=0)[anat.mu_muscle]
    units = np.flatnonzero(peak > anat.mu_threshold)  # never-recruited units never fire
    thr = anat.mu_threshold[units]
    lam = excitation[:, anat.mu_muscle[units]] - thr  # (n, U') excitation above threshold
    silent = lam <= 0
    lam *= 45.0
    lam += 8.0
    np.minimum(lam, 35.0, out=lam)
    lam[silent] = 0.0  # now the firing rate, Hz; integrated in place below (arrays are large)
    np.cumsum(lam, axis=0, out=lam)
    lam *= 1.0 / CONTROL_FS  # spikes so far
    lam += rng.uniform(0, 1, lam.shape[1])  # random initial phase
    fl = np.floor(lam)
    pos, col = np.nonzero(fl[1:] != fl[:-1])
    pos += 1  # Lambda crossed fl[pos] between steps pos-1 and pos
    lo, hi = lam[pos - 1, col], lam[pos, col]
    t = (pos - 1 + (fl[pos, col] - lo) / np.maximum(hi - lo, 1e-12)) / CONTROL_FS
    local_rate = np.maximum((hi - lo) * CONTROL_FS, 1.0)
    t += rng.normal(0, 0.15, len(t)) / local_rate
    return t, units[col]


def _mix(
    t: np.ndarray, unit: np.ndarray, gains: np.ndarray, n_samples: int, fs: float, n_ch: int
) -> np.ndarray:
    """(T, C) EMG: sparse spike trains @ per-unit gains, convolved with the MUAP basis.

    Per time chunk: impulses (m, 3, C) = spikes (m, U) @ gains (U, 3C); then one FFT convolution
    that multiplies each basis channel by its waveform's spectrum and sums before the inverse.
    """
    basis = _basis(fs)
    k = len(basis)
    chunk = min(1 << 16, n_samples)  # a short recording pads to its own length, not 2^16
    nfft = sp_fft.next_fast_len(chunk + k - 1, real=True)
    basis_f = sp_fft.rfft(basis, n=nfft, axis=0)[:, :, None]  # (F, 3, 1)
    idx = np.round(t * fs).astype(np.int64)
    ok = (idx >= 0) & (idx < n_samples)
    order = np.argsort(idx[ok], kind="stable")
    idx, unit = idx[ok][order], unit[ok][order]
    bounds = np.searchsorted(idx, np.arange(0, n_samples + chunk, chunk))
    out = np.zeros((n_samples + k, n_ch), dtype=np.float32)
    for a, i0, i1 in zip(range(0, n_samples, chunk), bounds[:-1], bounds[1:], strict=False):
        m = min(chunk, n_samples - a)
        s = spa.csr_matrix(
            (np.ones(i1 - i0, np.float32), (idx[i0:i1] - a, unit[i0:i1])), shape=(m, gains.shape[0])
        )
        impulses = (s @ gains).reshape(m, 3, n_ch)
        spec = (sp_fft.rfft(impulses, n=nfft, axis=0, workers=1) * basis_f).sum(axis=1)
        out[a : a + m + k - 1] += sp_fft.irfft(spec, n=nfft, axis=0, workers=1)[: m + k - 1]
    return out[k // 2 : k // 2 + n_samples]


# -- 5. configuration, presets, generation ----
@dataclass(frozen=True)
class SimConfig:
    """One simulated dataset. Every field is recorded in each recording's fingerprint."""

    name: str = "custom"
    n_subjects: int = 2  # simulated users, ids s00, s01, ...
    sessions: tuple[str, ...] = ("A1", "A2", "A3")  # sessions (band placements) per user
    stages: tuple[str, ...] = ()  # emg2pose-like: one recording per (session, stage)
    duration_s: float = 60.0  # per recording
    fs: float = 2000.0  # output sampling rate (simulated at >= 2 kHz, then resampled)
    layout: str = "ring16"  # ring8 | ring16 | grid64 | grid110 (see layout_for)
    kinematics: Literal["doa5", "joints20"] = "doa5"
    gestures: tuple[str, ...] = (
        "thumb_flexion",
        "thumb_abduction",
        "index_flexion",
        "middle_flexion",
        "ring_little_flexion",
    )
    hold_s: float = 2.0  # gesture protocol: hold time per repetition
    rest_s: float = 1.5  # gesture protocol: rest between repetitions
    free_fraction: float = 0.15  # probability a protocol slot is free movement instead
    motor_units_per_muscle: int = 30
    rotation_sd_deg: float = 6.0  # per-session band rotation (sd)
    shift_sd_mm: float = 4.0  # per-session band shift along the arm (sd)
    noise_uv: float = 4.0  # white amplifier noise, RMS microvolts
    mains_hz: float = 50.0
    mains_uv: float = 15.0
    drift_uv: float = 20.0
    amplitude_uv: float = 60.0  # peak MUAP of a unit-size unit right under an electrode
    seed: int = 0

    @property
    def gesture_names(self) -> tuple[str, ...]:
        gs = set(self.gestures) | {g for st in self.stages for g in STAGES[st]}
        return ("rest", *sorted(gs - {"rest", FREE}), FREE)  # ids: rest = 0, free movement last

    def replace(self, **kw: Any) -> SimConfig:
        return dataclasses.replace(self, **kw)


def layout_for(name: str) -> ChannelLayout:
    """The named electrode layouts the simulator supports."""
    if name.startswith("ring"):
        return ChannelLayout.ring(int(name[4:]))
    if name == "grid64":  # flexemg-like 16 x 4 at 10 mm
        return ChannelLayout.make_grid(16, 4, pitch_mm=10.0)
    if name == "grid110":  # wristband-scale 10 x 11 at 8 mm
        return ChannelLayout.make_grid(10, 11, pitch_mm=8.0)
    raise ValueError(f"unknown layout {name!r} (ring<N>, grid64, grid110)")


PRESETS: dict[str, SimConfig] = {
    # NinaPro DB8 shape: 16-channel ring, 5 DoA, sessions A1 A2 (train) | A3 (held out).
    "db8-like": SimConfig(
        name="db8-like",
        gestures=(
            "thumb_flexion",
            "thumb_abduction",
            "index_flexion",
            "middle_flexion",
            "ring_little_flexion",
            "index_point",
            "cylindrical_grip",
            "lateral_grip",
            "tripod_grip",
        ),
        n_subjects=3,
        duration_s=120.0,
    ),
    # emg2pose shape: 16-channel wrist ring, 20 joint angles, stage-labelled recordings.
    "emg2pose-like": SimConfig(
        name="emg2pose-like",
        n_subjects=4,
        sessions=("s0", "s1", "s2", "s3"),
        stages=tuple(STAGES),
        gestures=(),
        duration_s=20.0,
        kinematics="joints20",
        mains_hz=60.0,
        free_fraction=0.0,
    ),
    # High-density 110-channel grid (EMG-JEPA's densest setup).
    "grid110": SimConfig(
        name="grid110",
        layout="grid110",
        kinematics="joints20",
        sessions=("s0", "s1"),
        duration_s=30.0,
        mains_hz=60.0,
        motor_units_per_muscle=20,
    ),
    # Myo-armband shape: 8-channel ring at 200 Hz, wrist/hand gestures.
    "myo-like": SimConfig(
        name="myo-like",
        layout="ring8",
        fs=200.0,
        sessions=("training0", "Test0"),
        gestures=(
            "hand_close",
            "hand_open",
            "wrist_flexion",
            "wrist_extension",
            "radial_deviation",
            "ulnar_deviation",
        ),
        free_fraction=0.0,
        duration_s=60.0,
    ),
    # flexemg shape: 16 x 4 grid at 1 kHz.
    "flexemg-like": SimConfig(
        name="flexemg-like",
        layout="grid64",
        fs=1000.0,
        sessions=("Session1",),
        mains_hz=60.0,
        gestures=("hand_close", "wrist_flexion", "wrist_extension", "hand_open"),
        free_fraction=0.0,
    ),
}
# Myo-armband shape with cohorts of people: AEMG's default data (a pre-training cohort, tune
# subjects drawn from it and an evaluation cohort need a dozen people, not the default two).
PRESETS["myo-cohorts"] = PRESETS["myo-like"].replace(name="myo-cohorts", n_subjects=12)


def preset(name: str, **overrides: Any) -> SimConfig:
    """A named preset, optionally with fields overridden (e.g. ``duration_s=10``)."""
    try:
        return PRESETS[name].replace(**overrides)
    except KeyError:
        raise KeyError(
            f"unknown simulator preset {name!r}; choose from {sorted(PRESETS)}"
        ) from None


def _drive(cfg: SimConfig, subject: int, session: int, stage: str | None):
    """The user's anatomy and one recording's control-rate trajectory ``s``, gestures,
    repetitions and muscle excitation ``exc (n_ctrl, M)``, with the recording's random stream
    positioned after them (the motor units draw from it next). The one place these streams are
    seeded, so :func:`muscle_activation` is exactly what :func:`simulate_recording` drives."""
    stage_idx = -1 if stage is None else list(STAGES).index(stage)
    user_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, subject, 7]))
    rec_rng = np.random.default_rng(
        np.random.SeedSequence([cfg.seed, subject, session, stage_idx + 1, 13])
    )
    anat = _anatomy(cfg, user_rng)
    s, gest, reps = _trajectory(cfg, rec_rng, stage)
    exc = _excitation(s, anat.drive, rec_rng)
    return anat, s, gest, reps, exc, rec_rng


def simulate_recording(
    cfg: SimConfig,
    subject: int,
    session: int,
    stage: str | None = None,
    band_offset: tuple[float, float] = (0.0, 0.0),
) -> Recording:
    """One recording: user ``subject``, session index ``session`` (and stage, if staged).

    ``emg (T, C)`` float32 in volts (``emg_unit="V"``), ``kinematics (T, J)`` degrees.

    ``band_offset`` (degrees, mm) moves the electrode band further than the session's own random
    placement: the same movements, recorded through shifted electrodes.
    """
    sess_rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, subject, session, 11]))
    # 1-2. kinematics and excitation at the control rate
    anat, s, gest, reps, exc, rec_rng = _drive(cfg, subject, session, stage)
    layout = layout_for(cfg.layout)
    n_ch = layout.n_channels
    sim_fs = max(cfg.fs, 2000.0)
    n_out = round(cfg.duration_s * cfg.fs)
    n_sim = round(cfg.duration_s * sim_fs)

    # 3-4. spikes and volume conduction, at the simulation rate
    rotation = sess_rng.normal(0, cfg.rotation_sd_deg) + band_offset[0]
    shift = sess_rng.normal(0, cfg.shift_sd_mm) + band_offset[1]
    elec = _electrodes(layout, anat.radius_mm, rotation, shift)
    t, unit = _spike_times(exc, anat, rec_rng)
    emg = _mix(t, unit, _gains(anat, elec).astype(np.float32), n_sim, sim_fs, n_ch)
    emg *= cfg.amplitude_uv * 1e-6 * sess_rng.uniform(0.85, 1.15, n_ch).astype(np.float32)
    # 5. nuisances
    tt = np.arange(n_sim) / sim_fs
    emg += (cfg.noise_uv * 1e-6) * rec_rng.standard_normal((n_sim, n_ch), dtype=np.float32)
    phase = rec_rng.uniform(0, 2 * np.pi, n_ch)
    mains_amp = cfg.mains_uv * 1e-6 * sess_rng.uniform(0.3, 1.0, n_ch)
    for h, rel in ((1, 1.0), (3, 0.3)):  # a sin(wt + p) = a cos p sin wt + a sin p cos wt
        wt = 2 * np.pi * h * cfg.mains_hz * tt
        basis = np.stack([np.sin(wt), np.cos(wt)], axis=1).astype(np.float32)  # (T, 2)
        coef = rel * mains_amp * np.stack([np.cos(h * phase), np.sin(h * phase)])  # (2, C)
        emg += basis @ coef.astype(np.float32)
    n_ctrl = len(s)
    drift_ctrl = sps.sosfilt(
        sps.butter(1, 0.5, fs=CONTROL_FS, output="sos"),
        rec_rng.standard_normal((n_ctrl, n_ch)),
        axis=0,
    )
    drift_ctrl *= cfg.drift_uv * 1e-6 / (drift_ctrl.std(axis=0, keepdims=True) + 1e-12)
    ctrl_t = np.arange(n_ctrl) / CONTROL_FS
    emg += _interp_rows(tt, ctrl_t, drift_ctrl).astype(np.float32)
    if sim_fs != cfg.fs:
        up, down = resample_ratio(cfg.fs, sim_fs)
        emg = sps.resample_poly(emg, up, down, axis=0).astype(np.float32)[:n_out]

    out_t = np.arange(n_out) / cfg.fs
    w, b, names = _kinematic_map(cfg.kinematics)
    kin = _interp_rows(out_t, ctrl_t, s @ w + b).astype(np.float32)
    ctrl_idx = np.minimum((out_t * CONTROL_FS).astype(np.int64), n_ctrl - 1)
    sessions = cfg.sessions[session]
    meta: dict[str, Any] = {
        "preset": cfg.name,
        "seed": cfg.seed,
        "band_rotation_deg": rotation,
        "band_shift_mm": shift,
    }
    if stage is not None:
        meta["stage"] = stage
    config_id = dataclasses.asdict(cfg)
    return Recording(
        emg=emg[:n_out],
        fs=cfg.fs,
        layout=layout,
        subject=f"s{subject:02d}",
        session=sessions,
        device=f"sim-{cfg.layout}",
        source=f"simulator:{cfg.name}" + (f":{stage}" if stage else ""),
        kinematics=kin,
        joint_names=names,
        kinematics_unit="deg",
        labels={"gesture": gest[ctrl_idx], "repetition": reps[ctrl_idx]},
        label_names={"gesture": cfg.gesture_names},
        meta=meta,
        fingerprint=digest("sim", SIM_VERSION, config_id, subject, session, stage, band_offset),
        emg_unit="V",  # amplitudes, noise, mains and drift are all set in microvolts * 1e-6
    )


def muscle_activation(
    cfg: SimConfig | str, subject: int, session: int, stage: str | None = None
) -> np.ndarray:
    """The true activation ``(T, M)`` of the :data:`MUSCLES` behind one recording, in [0, 1],
    on the recording's own clock (``T`` = its samples at ``cfg.fs``).

    The excitation :func:`simulate_recording` drives its motor units with (stage 2: tonic,
    phasic, co-contraction, 40 ms activation dynamics), recomputed from the same random streams
    without the motor units, so it is exact and cheap: ground truth for onset detectors and
    contraction tokenizers. At rest it sits at about 0.02 (the resting drive).
    """
    cfg = preset(cfg) if isinstance(cfg, str) else cfg
    _, s, _, _, exc, _ = _drive(cfg, subject, session, stage)
    out_t = np.arange(round(cfg.duration_s * cfg.fs)) / cfg.fs
    return _interp_rows(out_t, np.arange(len(s)) / CONTROL_FS, exc).astype(np.float32)


def simulate(cfg: SimConfig | str, subjects: Sequence[int] | None = None) -> list[Recording]:
    """Every recording of a simulated dataset (or of the given subject indices)."""
    cfg = preset(cfg) if isinstance(cfg, str) else cfg
    out = []
    for subj in subjects if subjects is not None else range(cfg.n_subjects):
        for sess in range(len(cfg.sessions)):
            for stage in cfg.stages or (None,):
                out.append(simulate_recording(cfg, subj, sess, stage))
    return out


def _interp_rows(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Linear interpolation of every column of ``fp`` (n, J) from uniform ``xp`` onto ``x``."""
    pos = (x - xp[0]) / (xp[1] - xp[0])
    i = np.clip(pos.astype(np.int64), 0, len(xp) - 2)
    w = (pos - i).astype(np.float32)[:, None]
    f = fp.astype(np.float32)
    return f[i] + (f[i + 1] - f[i]) * w
