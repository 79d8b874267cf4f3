from __future__ import annotations

import os
from pathlib import Path

import pytest

from emgcore.data.real import REAL_DATA_ENV


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own preprocessing cache; none writes into the working tree."""
    monkeypatch.setenv("EMGCORE_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``$EMG_REAL_DATA`` (the shared real recordings), or skip with the reason."""
    root = os.environ.get(REAL_DATA_ENV)
    if not root or not Path(root).is_dir():
        pytest.skip(f"real recordings not available: set {REAL_DATA_ENV} to ../shared/data")
    return Path(root)


@pytest.fixture(scope="session")
def emg2pose_sim() -> list:
    """A small emg2pose-like corpus: 6 users (2 train, 2 val, 2 test), 2 sessions, every stage,
    4 s per recording (two 2-s windows)."""
    from emgcore.data import preset, simulate

    return simulate(preset("emg2pose-like", n_subjects=6, duration_s=4.0, sessions=("s0", "s1")))


@pytest.fixture(scope="session")
def ninapro_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NinaPro-format ``DB2/`` (2 subjects x exercises B, C, D) and ``DB7/`` (5 subjects x B, C)
    files of simulated people, for EMBridge's DB2 -> DB7 benchmark (see make_fixtures)."""
    from tests.make_fixtures import write_ninapro_benchmark

    return write_ninapro_benchmark(tmp_path_factory.mktemp("ninapro"), 2, 5, seconds=30.0)
