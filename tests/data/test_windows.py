"""The preprocessing cache and the window Dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from emgcore.data.simulator import preset, simulate_recording
from emgcore.preprocessing import Pipeline
from emgcore.recording import ChannelLayout, Recording
from emgcore.windows import RecordingCache, WindowDataset

PIPE = Pipeline.from_config([{"name": "bandpass"}, {"name": "notch"}])


@pytest.fixture(scope="module")
def rec() -> Recording:
    return simulate_recording(preset("db8-like", duration_s=3.0), 0, 0)


def test_cache_stores_the_pipeline_output_and_second_run_does_no_work(
    rec: Recording, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = RecordingCache(tmp_path)
    first = cache.get(rec, PIPE)
    np.testing.assert_array_equal(first.emg, PIPE.apply(rec).emg)
    np.testing.assert_array_equal(first.kinematics, rec.kinematics)
    assert first.header["preprocessing"] == PIPE.recording_config()

    def boom(*_a, **_k):
        raise AssertionError("preprocessing ran on a cache hit")

    monkeypatch.setattr(Pipeline, "apply", boom)
    second = RecordingCache(tmp_path).get(rec, PIPE)
    assert isinstance(second.emg, np.ndarray) and second.emg.base is not None  # mapped
    np.testing.assert_array_equal(second.emg, first.emg)
    assert second.to_recording().fingerprint == rec.fingerprint


def test_cache_key_follows_source_and_steps(rec: Recording, tmp_path: Path) -> None:
    cache = RecordingCache(tmp_path)
    other_steps = Pipeline.from_config([{"name": "bandpass", "low": 30}])
    other_source = simulate_recording(preset("db8-like", duration_s=3.0), 0, 1)
    keys = {cache.key(rec, PIPE), cache.key(rec, other_steps), cache.key(other_source, PIPE)}
    assert len(keys) == 3
    window_only = Pipeline((*PIPE.steps, *Pipeline.from_config([{"name": "instance_norm"}]).steps))
    assert cache.key(rec, window_only) == cache.key(rec, PIPE)


def test_windows_are_slices_of_the_cached_signal(rec: Recording, tmp_path: Path) -> None:
    c = RecordingCache(tmp_path).get(rec, PIPE)
    ds = WindowDataset([c], length=256, stride=104, label="gesture")
    assert len(ds) == (rec.n_samples - 256) // 104 + 1
    for i in (0, 7, len(ds) - 1):
        item = ds[i]
        a = i * 104
        np.testing.assert_array_equal(item["emg"].numpy(), c.emg[a : a + 256])
        np.testing.assert_array_equal(item["target"].numpy(), rec.kinematics[a + 255])
        assert item["label"] == rec.labels["gesture"][a + 255]
    seq = WindowDataset([c], 256, 104, target="sequence")[3]["target"]
    assert seq.shape == (256, 5)


def test_invalid_targets_are_dropped_and_loader_batches(tmp_path: Path) -> None:
    n = 1000
    valid = np.ones(n, bool)
    valid[500:600] = False
    rec = Recording(
        emg=np.random.default_rng(0).normal(size=(n, 4)),
        fs=1000.0,
        layout=ChannelLayout.ring(4),
        subject="u",
        session="s",
        kinematics=np.zeros((n, 2)),
        valid=valid,
    )
    c = RecordingCache(tmp_path).get(rec, Pipeline())
    ds = WindowDataset([c], length=100, stride=10)
    ends = ds.starts + 99
    assert not np.isin(ends, np.arange(500, 600)).any()
    assert len(ds) == 91 - 10
    batch = next(iter(DataLoader(ds, batch_size=8)))
    assert batch["emg"].shape == (8, 100, 4) and batch["emg"].dtype == torch.float32


def test_window_steps_apply_per_window(rec: Recording, tmp_path: Path) -> None:
    pipe = Pipeline.from_config([{"name": "bandpass"}, {"name": "instance_norm"}])
    c = RecordingCache(tmp_path).get(rec, pipe)
    x = WindowDataset([c], 256, 256, pipeline=pipe)[2]["emg"].numpy()
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-3)


def test_dropping_resident_pages_keeps_data_readable(rec: Recording, tmp_path: Path) -> None:
    c = RecordingCache(tmp_path).get(rec, PIPE)
    ds = WindowDataset([c], 256, 52, resident_mb=0.01)  # drops on nearly every item
    before = ds[5]["emg"].clone()
    for i in range(len(ds)):
        ds[i]
    np.testing.assert_array_equal(ds[5]["emg"], before)


def test_bad_window_arguments(rec: Recording, tmp_path: Path) -> None:
    c = RecordingCache(tmp_path).get(rec, PIPE)
    with pytest.raises(ValueError, match="positive"):
        WindowDataset([c], 0, 1)
    with pytest.raises(KeyError, match="stage"):
        WindowDataset([c], 10, 10, label="stage")


@pytest.mark.parametrize(
    ("damage", "file", "says"),
    [
        ("truncate", "emg.npy", "truncated: "),
        ("truncate", "kinematics.npy", "truncated: "),
        ("garble", "emg.npy", "not a readable .npy file"),
        ("truncate", "header.json", "not readable JSON"),
    ],
)
def test_a_damaged_cache_file_is_one_error_naming_it(
    rec: Recording, tmp_path: Path, damage: str, file: str, says: str
) -> None:
    """A cache copied in part, or damaged on disk, is a FormatError naming the file and how to
    rebuild it, never a TypeError from numpy or a recording cut short in silence."""
    from emgcore.errors import FormatError

    cache = RecordingCache(tmp_path)
    folder = cache.get(rec, PIPE).path
    target = folder / file
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00" * len(data))
    with pytest.raises(FormatError) as err:
        cache.get(rec, PIPE)
    line = str(err.value)
    assert line.startswith(f"{target}: field 'preprocessing cache': {says}"), line
    assert f"delete {folder} and the next run builds it again" in line and "\n" not in line
    import shutil

    shutil.rmtree(folder)  # as the line says: the next run builds it again
    again = cache.get(rec, PIPE)
    assert np.array_equal(np.asarray(again.emg), PIPE.apply(rec).emg)
