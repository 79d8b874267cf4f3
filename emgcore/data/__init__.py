"""Data sources, all producing :class:`emgcore.recording.Recording`.

:func:`open_dataset` takes what a user types after ``--data``: a simulator preset name or a path,
and picks the loader from what is there.
"""

from __future__ import annotations

from pathlib import Path

from emgcore.data._io import read_mat, warn_skipped
from emgcore.data.byod import MANIFEST, load_byod, write_byod
from emgcore.data.emg2pose import (
    load_emg2pose,
    load_emg2pose_dataset,
    load_emg2pose_segments,
    write_emg2pose,
)
from emgcore.data.ninapro import NAME as NINAPRO_NAME
from emgcore.data.ninapro import load_ninapro
from emgcore.data.real import load_flexemg, load_myoarmband
from emgcore.data.sessions import split_sessions
from emgcore.data.simulator import PRESETS, SimConfig, preset, simulate, simulate_recording
from emgcore.errors import FormatError, MissingFileError
from emgcore.recording import Recording

__all__ = [
    "PRESETS",
    "SimConfig",
    "load_byod",
    "load_emg2pose",
    "load_emg2pose_dataset",
    "load_emg2pose_segments",
    "load_flexemg",
    "load_myoarmband",
    "load_ninapro",
    "open_dataset",
    "preset",
    "read_mat",
    "simulate",
    "simulate_recording",
    "split_sessions",
    "write_byod",
    "write_emg2pose",
]


def open_dataset(spec: str | Path, **preset_overrides: object) -> list[Recording]:
    """Recordings for ``spec``: a simulator preset (``db8-like``...) or a dataset path."""
    if str(spec) in PRESETS:
        return simulate(preset(str(spec), **preset_overrides))
    path = Path(spec)
    if not path.exists():
        raise MissingFileError(
            f"no such file or folder, and not a simulator preset ({', '.join(PRESETS)})",
            source=path,
        )
    if path.is_file():
        if path.suffix in (".hdf5", ".h5"):
            return load_emg2pose_segments(path)
        if path.suffix == ".mat":
            return [load_ninapro(path)]
    elif (path / "metadata.csv").exists():
        return load_emg2pose_dataset(path)
    elif (path / MANIFEST).exists():
        return load_byod(path)
    elif (path / "PreTrainingDataset").exists() or (path / "EvaluationDataset").exists():
        return load_myoarmband(path)
    elif (path / "arraymap.mat").exists():
        return load_flexemg(path)
    elif mats := sorted(path.glob("*.mat")) + sorted(path.glob("*/*.mat")):
        # NinaPro: one folder, or one per database (DB2/, DB7/); both levels are read, and a
        # .mat not named S<s>_E<e>_A<a>.mat is named in a warning, never read as a recording
        ok = [m for m in mats if NINAPRO_NAME.match(m.name)]
        if ok:
            warn_skipped(path, [m for m in mats if m not in ok], "not NinaPro S<s>_E<e>_A<a>.mat")
            return [load_ninapro(m) for m in ok]
    raise FormatError(
        "cannot tell the format: expected an emg2pose folder (metadata.csv), a BYOD folder "
        "(sessions.csv), NinaPro S*_E*_A*.mat files (here or one folder down), myoarmband or "
        "flexemg",
        source=path,
    )
