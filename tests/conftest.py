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
