"""The one recording type every loader produces and everything downstream consumes.

A :class:`Recording` holds EMG ``(T, C)`` float32 at ``fs`` Hz in a stated unit (:data:`EMG_UNITS`),
optional channel (muscle) names, the electrode layout, optional kinematics ``(T, J)`` with joint
names and unit, optional per-sample integer labels, a per-sample validity mask for the targets
(emg2pose IK failures), and subject/session/device/source metadata.
It is validated on construction. Arrays may be in memory or lazy (:class:`LazyArray`, sliced from
disk on demand); lazy arrays check what they read, so bad values still raise, naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from emgcore.errors import InvalidValueError, ShapeError

LayoutKind = Literal["ring", "grid", "custom"]
LAYOUT_KINDS = ("ring", "grid", "custom")

# EMG amplitude units a recording may state: volts, millivolts, microvolts, or arbitrary units
# (ADC counts, a device's own scale, or values normalised away from any physical unit).
EMG_UNITS = ("V", "mV", "uV", "a.u.")
EMG_UNIT_ALIASES = {"µV": "uV", "μV": "uV"}  # micro sign / Greek mu spellings of uV
VOLTS_PER_UNIT = {"V": 1.0, "mV": 1e-3, "uV": 1e-6}  # "a.u." has no conversion


def check_emg_unit(value: object, *, source: str | None = None, field: str = "emg_unit") -> str:
    """``value`` as one of :data:`EMG_UNITS` (``"µV"`` / ``"μV"`` read as ``"uV"``).

    Raises :class:`InvalidValueError` naming ``source`` and ``field`` for anything else.
    """
    unit = EMG_UNIT_ALIASES.get(value, value) if isinstance(value, str) else value
    if unit not in EMG_UNITS:
        raise InvalidValueError(
            f"unknown EMG unit {value!r}; expected one of {', '.join(EMG_UNITS)}",
            source=source,
            field=field,
        )
    return str(unit)


@dataclass(frozen=True, eq=False)
class ChannelLayout:
    """Where the electrodes sit, on the skin of the limb unrolled to a plane.

    ``positions_mm`` is ``(C, 2)`` millimetres: column 0 is the arc length around the limb (from
    any fixed line along it), column 1 the distance along the limb, positive towards distal (from
    any fixed point). The limb is whatever the electrodes sit on: a forearm band, a thigh, a
    grid on a calf. ``kind`` says how channels relate: a ``ring`` wraps around after
    ``circumference_mm`` (channel rotation may roll it); a ``grid`` has ``grid``, ``(rows, cols)``
    channel indices (0-based; -1 where there is no electrode), 4-connected neighbours; ``custom``
    is any other placement (:meth:`custom`): no channel is a neighbour of another and nothing is
    rolled. Raises :class:`ShapeError` for positions not ``(C, 2)`` or a grid that does not map
    every channel once, :class:`InvalidValueError` for an unknown ``kind``.
    """

    kind: LayoutKind
    positions_mm: np.ndarray  # (C, 2)
    circumference_mm: float | None = None  # rings: the arc after which channels wrap around
    grid: np.ndarray | None = None  # grids: (rows, cols) channel index, -1 for none

    def __post_init__(self) -> None:
        if self.kind not in LAYOUT_KINDS:
            raise InvalidValueError(
                f"unknown layout kind {self.kind!r}; expected one of {', '.join(LAYOUT_KINDS)}",
                field="layout.kind",
            )
        pos = np.asarray(self.positions_mm, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise ShapeError(f"positions must be (C, 2), got {pos.shape}", field="layout.positions")
        object.__setattr__(self, "positions_mm", pos)
        if self.grid is not None:
            g = np.asarray(self.grid, dtype=np.int64)
            used = np.sort(g[g >= 0])
            if g.ndim != 2 or not np.array_equal(used, np.arange(len(pos))):
                raise ShapeError(
                    f"grid must map every channel 0..{len(pos) - 1} exactly once",
                    field="layout.grid",
                )
            object.__setattr__(self, "grid", g)

    @property
    def n_channels(self) -> int:
        return len(self.positions_mm)

    @classmethod
    def ring(cls, n: int, circumference_mm: float = 250.0, z_mm: float = 0.0) -> ChannelLayout:
        """``n`` electrodes evenly spaced around a limb of ``circumference_mm`` at ``z_mm``
        along it (Myo, emg2pose band, DB8 ring on the forearm)."""
        arc = np.arange(n) * circumference_mm / n
        return cls("ring", np.stack([arc, np.full(n, z_mm)], axis=1), circumference_mm)

    @classmethod
    def make_grid(
        cls, rows: int, cols: int, pitch_mm: float = 10.0, index: np.ndarray | None = None
    ) -> ChannelLayout:
        """A ``rows x cols`` grid, ``pitch_mm`` apart; rows run along the limb, columns around it.

        ``index[r, c]`` is the channel recorded at row r, column c (default: row-major order).
        """
        idx = np.arange(rows * cols).reshape(rows, cols) if index is None else np.asarray(index)
        pos = np.zeros((int((idx >= 0).sum()), 2))
        r, c = np.nonzero(idx >= 0)
        pos[idx[r, c]] = np.stack([c * pitch_mm, r * pitch_mm], axis=1)
        return cls("grid", pos, None, idx)

    @classmethod
    def custom(cls, positions_mm: Any) -> ChannelLayout:
        """Electrodes at any places: ``positions_mm`` ``(C, 2)`` = (around, along) the limb in
        mm, as in the class docstring (e.g. four electrodes on four thigh muscles)."""
        return cls("custom", np.asarray(positions_mm, dtype=np.float64))

    def neighbours(self) -> list[tuple[int, ...]]:
        """Channels adjacent to each channel: ring neighbours wrap; grid is 4-connected."""
        c = self.n_channels
        if self.kind == "ring":
            return [tuple(sorted({(i - 1) % c, (i + 1) % c} - {i})) for i in range(c)]
        if self.grid is not None:
            out: list[set[int]] = [set() for _ in range(c)]
            g = self.grid
            for dr, dc in ((0, 1), (1, 0)):
                a = g[: g.shape[0] - dr, : g.shape[1] - dc]
                b = g[dr:, dc:]
                ok = (a >= 0) & (b >= 0)
                for i, j in zip(a[ok], b[ok], strict=True):
                    out[i].add(int(j))
                    out[j].add(int(i))
            return [tuple(sorted(s)) for s in out]
        return [() for _ in range(c)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "positions_mm": self.positions_mm.tolist(),
            "circumference_mm": self.circumference_mm,
            "grid": None if self.grid is None else self.grid.tolist(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChannelLayout:
        grid = d.get("grid")
        return cls(
            d["kind"],
            np.asarray(d["positions_mm"], dtype=np.float64),
            d.get("circumference_mm"),
            None if grid is None else np.asarray(grid),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChannelLayout):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


class LazyArray:
    """A 2-D (or 1-D) array read from disk on demand, one row range at a time.

    ``reader(start, stop)`` returns rows ``start:stop``. Reads are checked for NaN/Inf so a lazy
    source fails as loudly as an in-memory one, naming ``source`` and ``field``.
    """

    def __init__(
        self,
        reader: Callable[[int, int], np.ndarray],
        shape: tuple[int, ...],
        dtype: np.dtype | type,
        *,
        source: str,
        field: str,
        check_finite: bool = True,
    ):
        self._reader = reader
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.source = source
        self.field = field
        self.check_finite = check_finite and self.dtype.kind == "f"

    ndim = property(lambda self: len(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = self.shape[0] if stop is None else min(stop, self.shape[0])
        start = max(0, start)
        out = np.asarray(self._reader(start, stop), dtype=self.dtype)
        if out.shape != (max(stop - start, 0), *self.shape[1:]):
            raise ShapeError(
                f"read rows {start}:{stop} gave shape {out.shape}",
                source=self.source,
                field=self.field,
            )
        if self.check_finite:
            check_finite(out, source=self.source, field=self.field, offset=start)
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        head, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(head, slice) and head.step in (None, 1):
            start, stop, _ = head.indices(self.shape[0])
            out = self.read(start, stop)
            return out[(slice(None), *rest)] if rest else out
        if isinstance(head, (int, np.integer)):
            if not -self.shape[0] <= head < self.shape[0]:
                raise IndexError(f"row {head} out of range for {self!r}")
            i = int(head) % self.shape[0]
            return self.read(i, i + 1)[(0, *rest)]
        return self.read()[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read()
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return f"LazyArray({self.source}:{self.field}, shape={self.shape}, dtype={self.dtype})"


ArrayLike = np.ndarray | LazyArray


def check_finite(a: np.ndarray, *, source: str | None, field: str, offset: int = 0) -> None:
    """Raise :class:`InvalidValueError` naming the first non-finite row of ``a``."""
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        bad = np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(axis=1))[0] + offset
        raise InvalidValueError(f"NaN or Inf at sample {bad}", source=source, field=field)


def require_samples(rec: Recording, n: int, what: str) -> None:
    """Refuse a recording too short for what a method cuts from it.

    ``n``: the fewest samples needed (at ``rec.fs``); ``what``: what needs them, in words (e.g.
    ``"one 2 s window"``). Raises :class:`ShapeError` (field ``emg``) naming ``rec.source``, the
    length it has and the minimum, before any method fails deep inside on zero windows.
    """
    if rec.n_samples < n:
        raise ShapeError(
            f"{rec.n_samples} samples ({rec.n_samples / rec.fs:.3g} s at {rec.fs:g} Hz), but "
            f"{what} needs at least {n} samples ({n / rec.fs:.3g} s)",
            source=rec.source,
            field="emg",
        )


def digest(*parts: Any) -> str:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.shape, p.dtype.str)).encode())
            h.update(np.ascontiguousarray(p).data)
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Recording:
    """One continuous recording. Shapes: ``emg (T, C)``, ``kinematics (T, J)``, labels ``(T,)``.

    ``emg`` is in ``emg_unit`` (one of :data:`EMG_UNITS`; :data:`VOLTS_PER_UNIT` converts);
    ``channel_names`` names the ``C`` channels (electrodes or the muscles under them) or is
    ``()``; :attr:`channel_labels` always has ``C`` names. Validated on construction: a wrong
    shape raises :class:`ShapeError`, a wrong value (NaN/Inf, unknown unit, repeated channel
    names, ...) :class:`InvalidValueError`, each naming ``source`` and the field.
    """

    emg: ArrayLike  # (T, C) float32
    fs: float  # sampling rate of emg, kinematics and labels, Hz
    layout: ChannelLayout  # electrode positions; C channels
    subject: str
    session: str
    device: str = "unknown"
    source: str = "memory"  # file path or generator name, for error messages and provenance
    kinematics: ArrayLike | None = None  # (T, J) float32, on the EMG clock
    joint_names: tuple[str, ...] = ()
    kinematics_unit: str = ""  # "deg", "rad", "a.u."
    labels: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> (T,) int
    label_names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # name -> id->name
    valid: ArrayLike | None = None  # (T,) bool: is the kinematic target usable at this sample
    meta: Mapping[str, Any] = field(default_factory=dict)  # recording-level facts (stage, side...)
    fingerprint: str = ""  # identity of the source content; computed when empty
    emg_unit: str = "a.u."  # one of EMG_UNITS: "V", "mV", "uV", "a.u." (unknown / no unit)
    channel_names: tuple[str, ...] = ()  # (C,) electrode or muscle names; () = unnamed

    def __post_init__(self) -> None:
        src = self.source
        object.__setattr__(self, "emg_unit", check_emg_unit(self.emg_unit, source=src))
        emg = self.emg
        if not isinstance(emg, LazyArray):
            emg = np.asarray(emg)
            if emg.dtype != np.float32:
                if emg.dtype.kind not in "fiu":
                    raise InvalidValueError(
                        f"dtype {emg.dtype} is not numeric", source=src, field="emg"
                    )
                emg = emg.astype(np.float32)
            object.__setattr__(self, "emg", emg)
        if emg.ndim != 2:
            raise ShapeError(f"must be 2-D (T, C), got shape {emg.shape}", source=src, field="emg")
        t, c = emg.shape
        if t == 0:
            raise ShapeError("has no samples", source=src, field="emg")
        if c != self.layout.n_channels:
            raise ShapeError(
                f"has {c} channels but the layout has {self.layout.n_channels}",
                source=src,
                field="emg",
            )
        if not (np.isfinite(self.fs) and self.fs > 0):
            raise InvalidValueError(
                f"sampling rate must be > 0, got {self.fs}", source=src, field="fs"
            )
        if isinstance(emg, np.ndarray):
            check_finite(emg, source=src, field="emg")
        if self.kinematics is not None:
            kin = self.kinematics
            if not isinstance(kin, LazyArray):
                kin = np.asarray(kin, dtype=np.float32)
                object.__setattr__(self, "kinematics", kin)
                check_finite(kin, source=src, field="kinematics")
            if kin.ndim != 2 or kin.shape[0] != t:
                raise ShapeError(
                    f"shape {kin.shape} does not match {t} EMG samples",
                    source=src,
                    field="kinematics",
                )
            if self.joint_names and len(self.joint_names) != kin.shape[1]:
                raise ShapeError(
                    f"{kin.shape[1]} columns but {len(self.joint_names)} joint names",
                    source=src,
                    field="joint_names",
                )
        labels = {}
        for name, lab in self.labels.items():
            lab = np.asarray(lab)
            if lab.shape != (t,):
                raise ShapeError(
                    f"shape {lab.shape}, expected ({t},)", source=src, field=f"labels.{name}"
                )
            if lab.dtype.kind not in "iu":
                if (
                    lab.dtype.kind == "f"
                    and np.all(np.isfinite(lab))
                    and np.all(lab == np.round(lab))
                ):
                    lab = lab.astype(np.int64)
                else:
                    raise InvalidValueError(
                        "labels must be integers", source=src, field=f"labels.{name}"
                    )
            labels[name] = lab
        object.__setattr__(self, "labels", labels)
        if self.valid is not None and not isinstance(self.valid, LazyArray):
            v = np.asarray(self.valid, dtype=bool)
            if v.shape != (t,):
                raise ShapeError(f"shape {v.shape}, expected ({t},)", source=src, field="valid")
            object.__setattr__(self, "valid", v)
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        names = self.channel_names
        if isinstance(names, str) or not all(isinstance(n, str) and n.strip() for n in names):
            raise InvalidValueError(
                f"must be a sequence of non-empty names, got {names!r}",
                source=src,
                field="channel_names",
            )
        names = tuple(names)
        if names and len(names) != c:
            raise ShapeError(
                f"{len(names)} names for {c} EMG channels", source=src, field="channel_names"
            )
        if dup := sorted({n for n in names if names.count(n) > 1}):
            raise InvalidValueError(f"names repeated: {dup}", source=src, field="channel_names")
        object.__setattr__(self, "channel_names", names)
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", self._content_digest())

    # -- derived facts ---------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return int(self.emg.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.emg.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    @property
    def channel_labels(self) -> tuple[str, ...]:
        """``(C,)`` names to print: :attr:`channel_names`, else ``ch0``, ``ch1``, ..."""
        return self.channel_names or tuple(f"ch{i}" for i in range(self.n_channels))

    @property
    def is_lazy(self) -> bool:
        return any(isinstance(a, LazyArray) for a in (self.emg, self.kinematics, self.valid))

    def header(self) -> dict[str, Any]:
        """Everything but the arrays, JSON-serialisable (the cache and BYOD manifest use it)."""
        return {
            "fs": self.fs,
            "emg_unit": self.emg_unit,
            "channel_names": list(self.channel_names),
            "layout": self.layout.to_dict(),
            "subject": self.subject,
            "session": self.session,
            "device": self.device,
            "source": self.source,
            "joint_names": list(self.joint_names),
            "kinematics_unit": self.kinematics_unit,
            "label_names": {k: list(v) for k, v in self.label_names.items()},
            "meta": dict(self.meta),
            "fingerprint": self.fingerprint,
        }

    def load(self) -> Recording:
        """The same recording with every lazy array read into memory."""
        if not self.is_lazy:
            return self
        return self.replace(
            emg=np.asarray(self.emg),
            kinematics=None if self.kinematics is None else np.asarray(self.kinematics),
            valid=None if self.valid is None else np.asarray(self.valid),
        )

    def replace(self, **changes: Any) -> Recording:
        """A validated copy with ``changes``; the fingerprint is kept unless given."""
        changes.setdefault("fingerprint", self.fingerprint)
        return dataclasses.replace(self, **changes)

    def _content_digest(self) -> str:
        if self.is_lazy:
            raise InvalidValueError(
                "a lazy recording needs an explicit fingerprint",
                source=self.source,
                field="fingerprint",
            )
        arrays = [self.emg]
        if self.kinematics is not None:
            arrays.append(self.kinematics)
        arrays += [self.labels[k] for k in sorted(self.labels)]
        if self.valid is not None:
            arrays.append(np.asarray(self.valid))
        head = {k: v for k, v in self.header().items() if k != "fingerprint"}
        # unit and names count only when given, so recordings made before they existed keep
        # their fingerprints (and their cached copies)
        if head["emg_unit"] == "a.u.":
            del head["emg_unit"]
        if not head["channel_names"]:
            del head["channel_names"]
        return digest(head, *arrays)

    def __repr__(self) -> str:
        kin = "" if self.kinematics is None else f", J={self.kinematics.shape[1]}"
        return (
            f"Recording({self.subject}/{self.session}, {self.device}, C={self.n_channels} "
            f"{self.emg_unit}{kin}, "
            f"{self.duration_s:.1f}s @ {self.fs:g} Hz, labels={sorted(self.labels)})"
        )
