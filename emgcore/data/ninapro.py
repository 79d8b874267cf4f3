"""NinaPro ``.mat`` files (MATLAB v5 as published, or v7.3 when re-saved): DB8, DB2, DB7, DB4.

Files are ``S{s}_E{e}_A{a}.mat``; every variable is 2-D and labels are (N, 1). Only the
variables needed are read (:func:`emgcore.data._io.read_mat`; DB8's 48 IMU columns are
skipped). DB8's 18 CyberGlove channels map to KinEMbed's 5 degrees of actuation with
the matrix of its eq. 6 (Krasoulis et al. 2019). ``restimulus``/``rerepetition`` (relabelled to
the actual movement) become the ``gesture``/``repetition`` labels.

Movement ids. NinaPro numbers movements per database across its exercises (A: 12 basic finger
movements, B: 17 isometric/isotonic hand and wrist movements, C: 23 grasps, D: 9 force
patterns): DB2's exercise files E1, E2, E3 are B, C, D with ids 1-17, 18-40, 41-49. Some copies
of the files number each exercise from 1 instead. ``gesture`` labels are always the database-wide
id (exercise-local files are shifted, detected from the label range), and
``label_names["gesture"]`` names every id by exercise letter and number within it (``"C5"`` is
the fifth grasp), which is how the papers refer to them (EMBridge Sec. 3: "gestures 1, 5, 10 and
15 from exercise B").

Glove columns are named after the CyberGlove II sensors (18- or 22-sensor model, the
manufacturer's order) so that DB2's 22 and DB7's 18 sensors can be matched by name.

EMG is in volts in every database (``emg_unit="V"``; DB8 and DB7's Delsys Trigno, DB4's Cometa
as exported by NinaPro), so amplitude thresholds must be scaled to volts.

Electrodes. DB2, DB7 and DB4 place 12: electrodes 1-8 equally spaced around the forearm at the
height of the radio-humeral joint, 9 and 10 on the main activity spots of the flexor and extensor
digitorum superficialis, 11 and 12 on those of biceps and triceps (Atzori et al. 2014). Only the
first 8 form a ring, so the layout is ``custom`` and ``meta["ring_channels"]`` lists the ring's
channels in order around the arm: what channel-rotation augmentation may roll
(:func:`emgcore.gestures.ring_channels`). DB8's 16 electrodes (two rings of 8) still get one
ring of 16: the pose-alignment benchmark does not read DB8, and KinEMbed / EMG-JEPA (which do)
own how their masks and features use it. DB2/DB7/DB4 channels are named
(:meth:`NinaProSpec.channel_names`: ``ring_1`` ... ``ring_8`` and the four muscles); DB8's are
not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from emgcore.data._io import file_fingerprint, read_mat, require_file
from emgcore.errors import InvalidValueError, MissingFieldError, ShapeError
from emgcore.recording import ChannelLayout, Recording

# KinEMbed eq. 6: y (5 DoA) = A x (18 glove sensors). Rows: thumb rotation, thumb flexion, index,
# middle, ring/little.
DB8_DOA_MATRIX = np.zeros((5, 18))
for _doa, _entries in enumerate(
    (
        {0: 0.639, 1: 0.383, 3: -0.639, 16: -0.19},
        {2: 1.0},
        {4: 0.4, 5: 0.6},
        {6: 0.4, 7: 0.6},
        {9: 0.1667, 10: 0.3333, 12: 0.1667, 13: 0.3333},
    )
):
    for _col, _w in _entries.items():
        DB8_DOA_MATRIX[_doa, _col] = _w
DOA_NAMES = (
    "thumb_rotation",
    "thumb_flexion",
    "index_flexion",
    "middle_flexion",
    "ring_little_flexion",
)


# CyberGlove II sensors in the order the glove streams them (manufacturer's reference manual).
# The 18-sensor model has no distal (DIP) sensors on the four fingers.
GLOVE_22 = (
    "thumb_rotation",
    "thumb_mcp",
    "thumb_ip",
    "thumb_index_abduction",
    "index_mcp",
    "index_pip",
    "index_dip",
    "middle_mcp",
    "middle_pip",
    "middle_dip",
    "middle_index_abduction",
    "ring_mcp",
    "ring_pip",
    "ring_dip",
    "ring_middle_abduction",
    "little_mcp",
    "little_pip",
    "little_dip",
    "little_ring_abduction",
    "palm_arch",
    "wrist_flexion",
    "wrist_abduction",
)
GLOVE_18 = tuple(n for n in GLOVE_22 if not n.endswith("_dip"))

# Exercises and their movement counts; per database, the exercise letter of each E<e> file.
EXERCISE_SIZE = {"A": 12, "B": 17, "C": 23, "D": 9}


@dataclass(frozen=True)
class NinaProSpec:
    n_emg: int
    n_glove: int | None
    device: str
    layout: str  # how the electrodes sit
    exercises: str  # exercise letter of file E1, E2, ...; "" when the movement set is its own
    ring: int | None = None  # electrodes 1..ring form a ring and the rest sit on muscle spots

    def channel_layout(self) -> ChannelLayout:
        """Electrode positions ``(arc around the forearm, distance along it)`` in mm: the ring
        at the radio-humeral joint (along 0), the muscle-spot electrodes at approximate places
        (the papers name muscles, not coordinates): flexor / extensor digitorum superficialis
        60 mm distal on the volar / dorsal side, biceps / triceps 150 mm proximal."""
        if self.ring is None:
            return ChannelLayout.ring(self.n_emg)
        ring = ChannelLayout.ring(self.ring, RING_MM).positions_mm
        spots = np.array([[62.5, 60.0], [187.5, 60.0], [62.5, -150.0], [187.5, -150.0]])
        return ChannelLayout("custom", np.vstack([ring, spots[: self.n_emg - self.ring]]))

    def channel_names(self) -> tuple[str, ...]:
        """``(C,)`` names: the ring's electrodes by position, the others by their muscle;
        ``()`` for a plain ring (DB8)."""
        if self.ring is None:
            return ()
        return (*(f"ring_{i + 1}" for i in range(self.ring)), *SPOT_MUSCLES)[: self.n_emg]

    @property
    def glove_names(self) -> tuple[str, ...]:
        return {18: GLOVE_18, 22: GLOVE_22}.get(self.n_glove or 0, ())

    def movement_names(self) -> tuple[str, ...]:
        """Name of every database-wide movement id: ``("rest", "B1", ..., "C23", ...)``."""
        return (
            "rest",
            *(f"{x}{i}" for x in self.exercises for i in range(1, EXERCISE_SIZE[x] + 1)),
        )

    def offset(self, exercise: int) -> int:
        """Database-wide id of movement 0 of file ``E<exercise>``."""
        return sum(EXERCISE_SIZE[x] for x in self.exercises[: exercise - 1])


# muscles under electrodes 9-12 of DB2/DB7/DB4 (Atzori et al. 2014), in channel order
SPOT_MUSCLES = (
    "flexor_digitorum_superficialis",
    "extensor_digitorum_superficialis",
    "biceps_brachii",
    "triceps_brachii",
)
EMG_UNIT = "V"  # every NinaPro database stores EMG in volts
RING_MM = 250.0  # forearm circumference the ring spans (ChannelLayout.ring's default)
SPECS = {
    "db8": NinaProSpec(16, 18, "Delsys Trigno IM", "two rings of 8", ""),
    "db2": NinaProSpec(12, 22, "Delsys Trigno", "ring of 8 + 4 on muscle spots", "BCD", 8),
    "db7": NinaProSpec(12, 18, "Delsys Trigno IM", "ring of 8 + 4 on muscle spots", "BC", 8),
    "db4": NinaProSpec(12, None, "Cometa Wave Plus", "ring of 8 + 4 on muscle spots", "ABC", 8),
}
LAYOUT_VERSION = 2  # in the fingerprint: cached copies from the one-ring-of-12 layout are stale
FS = 2000.0  # all four are 2 kHz (DB8 upsampled from 1111 Hz); files carry no reliable rate
NAME = re.compile(r"^S(\d+)_E(\d+)_A(\d+)\.mat$", re.IGNORECASE)


def load_ninapro(
    path: str | Path,
    db: Literal["db8", "db2", "db7", "db4"] | None = None,
    kinematics: Literal["auto", "doa", "glove", "none"] = "auto",
) -> Recording:
    """One NinaPro file. ``db`` is inferred from the channel counts when not given.

    ``emg (T, C)`` float32 volts at 2 kHz (``C`` = 16 for DB8, 12 otherwise), named channels
    for DB2/DB7/DB4; labels ``gesture``/``repetition`` ``(T,)``. ``kinematics="doa"`` (DB8
    only) gives KinEMbed's 5 DoA; ``"glove"`` the raw glove columns, named (:data:`GLOVE_22`,
    :data:`GLOVE_18`); ``"auto"`` the DoA for DB8, the glove otherwise.
    """
    path = require_file(path, "NinaPro file")
    m = NAME.match(path.name)
    if m is None:
        raise InvalidValueError(
            "file name must look like S<s>_E<e>_A<a>.mat", source=path, field="filename"
        )
    subject, exercise, acquisition = (int(g) for g in m.groups())
    wanted = ["emg", "glove", "restimulus", "rerepetition", "frequency"]
    mat = read_mat(path, wanted)  # v5 or v7.3, one shape convention
    for key in ("emg", "restimulus", "rerepetition"):
        if key not in mat:
            raise MissingFieldError("variable missing", source=path, field=key)
    emg = _matrix(mat, "emg", path)
    db = db or _infer_db(emg.shape[1], mat.get("glove"), path)
    if db not in SPECS:
        raise InvalidValueError(
            f"unknown database {db!r}; known: {sorted(SPECS)}", source=path, field="db"
        )
    spec = SPECS[db]
    n = len(emg)
    if emg.shape[1] != spec.n_emg:
        raise ShapeError(
            f"{db.upper()} has {spec.n_emg} EMG channels, file has {emg.shape[1]}",
            source=path,
            field="emg",
        )
    if "frequency" in mat and abs(float(np.ravel(mat["frequency"])[0]) - FS) > 1:
        raise InvalidValueError(
            f"frequency={float(np.ravel(mat['frequency'])[0])} Hz but {db.upper()} is {FS:g} Hz",
            source=path,
            field="frequency",
        )
    labels = {
        "gesture": _movement_ids(_labels(mat, "restimulus", n, path), spec, exercise, path),
        "repetition": _labels(mat, "rerepetition", n, path),
    }
    if kinematics == "auto":
        kinematics = "doa" if db == "db8" else "glove"

    kin, names, unit = None, (), ""
    if kinematics != "none" and spec.n_glove is not None:
        if "glove" not in mat:
            raise MissingFieldError("variable missing", source=path, field="glove")
        glove = _matrix(mat, "glove", path)
        if glove.shape != (n, spec.n_glove):
            raise ShapeError(
                f"expected ({n}, {spec.n_glove}), got {glove.shape}", source=path, field="glove"
            )
        if not np.isfinite(glove).all():
            bad = np.flatnonzero(~np.isfinite(glove).all(axis=1))[0]
            raise InvalidValueError(f"NaN or Inf at sample {bad}", source=path, field="glove")
        if kinematics == "doa":
            if db != "db8":
                raise InvalidValueError(
                    "the 5-DoA mapping is defined for DB8 only; use kinematics='glove'",
                    source=path,
                    field="glove",
                )
            kin, names = (glove @ DB8_DOA_MATRIX.T).astype(np.float32), DOA_NAMES
        else:
            kin, names = np.ascontiguousarray(glove, np.float32), spec.glove_names
        unit = "deg"
    return Recording(  # MATLAB arrays load column-major: stored row-major like every recording
        emg=np.ascontiguousarray(emg, np.float32),
        fs=FS,
        layout=spec.channel_layout(),
        subject=f"S{subject}",
        session=f"A{acquisition}",
        device=spec.device,
        source=str(path),
        kinematics=kin,
        joint_names=names,
        kinematics_unit=unit,
        labels=labels,
        label_names={"gesture": spec.movement_names()} if spec.exercises else {},
        meta={"database": db, "exercise": exercise, "electrodes": spec.layout}
        | ({"ring_channels": list(range(spec.ring))} if spec.ring else {}),
        fingerprint=file_fingerprint(path, "ninapro", db, kinematics, LAYOUT_VERSION),
        emg_unit=EMG_UNIT,
        channel_names=spec.channel_names(),
    )


def _movement_ids(labels: np.ndarray, spec: NinaProSpec, exercise: int, path: Path) -> np.ndarray:
    """``restimulus`` as database-wide movement ids (module docstring), whichever way the file
    numbers them; labels that fit neither numbering are an error, not a guess."""
    if not spec.exercises:  # DB8: one exercise, its own movement set
        return labels
    if not 1 <= exercise <= len(spec.exercises):
        raise InvalidValueError(
            f"exercise {exercise} does not exist in this database (E1-E{len(spec.exercises)})",
            source=path,
            field="filename",
        )
    size, off = EXERCISE_SIZE[spec.exercises[exercise - 1]], spec.offset(exercise)
    moving = labels[labels != 0]
    if moving.size == 0:
        return labels
    lo, hi = int(moving.min()), int(moving.max())
    wide = lo > off and hi <= off + size  # database-wide ids
    local = lo >= 1 and hi <= size  # numbered from 1 within the exercise
    if wide and (not local or off == 0):
        return labels
    if local and not wide:
        return np.where(labels != 0, labels + off, 0)
    where = f"exercise {spec.exercises[exercise - 1]} (file E{exercise})"
    if wide and local:
        raise InvalidValueError(
            f"movement ids {lo}-{hi} of {where} fit both its database-wide ids "
            f"{off + 1}-{off + size} and its own 1-{size}; cannot tell which",
            source=path,
            field="restimulus",
        )
    raise InvalidValueError(
        f"movement ids {lo}-{hi} fit neither {where}'s database-wide ids {off + 1}-{off + size} "
        f"nor its own 1-{size}",
        source=path,
        field="restimulus",
    )


def _infer_db(n_emg: int, glove: np.ndarray | None, path: Path) -> str:
    n_glove = None if glove is None else np.atleast_2d(glove).shape[1]
    for name, spec in SPECS.items():
        if spec.n_emg == n_emg and spec.n_glove == n_glove:
            return name
    raise InvalidValueError(
        f"cannot tell the NinaPro database from {n_emg} EMG and {n_glove} glove channels; pass db=",
        source=path,
        field="emg",
    )


def _matrix(mat: dict, key: str, path: Path) -> np.ndarray:
    a = np.asarray(mat[key])
    if a.ndim != 2 or a.dtype.kind not in "fiu":
        raise ShapeError(
            f"expected a 2-D numeric matrix, got {a.dtype} {a.shape}", source=path, field=key
        )
    return a


def _labels(mat: dict, key: str, n: int, path: Path) -> np.ndarray:
    a = np.asarray(mat[key])
    if a.shape not in ((n, 1), (n,)):
        raise ShapeError(f"expected ({n}, 1) to match emg, got {a.shape}", source=path, field=key)
    a = a.ravel()
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and np.all(a == np.round(a))):
        raise InvalidValueError("labels must be finite integers", source=path, field=key)
    return a.astype(np.int64)
