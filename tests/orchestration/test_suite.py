"""The nightly suite as data (orchestration/suite.py, suites/nightly.yaml)."""

from __future__ import annotations

import pytest

from emgcore.errors import InvalidValueError
from emgcore.methods import METHODS
from orchestration import suite


def test_the_shipped_suite_loads_and_holds_every_method():
    """A new method joins the nightly by declaring it: this fails until suites/nightly.yaml
    has an entry for it."""
    s = suite.load()
    assert {e.method for e in s.entries} == set(METHODS)
    jepa = s.entry("jepa")
    assert [(m.name, m.mode) for m in jepa.metrics] == [
        ("test_ja_mae", "min"),
        ("val_ja_mae", "min"),
    ]
    assert s.entry("kinembed").metrics[0] == suite.Metric("heldout_r2", "max", 0.02)
    assert s.entry("mae").registry == "mae-emg" and s.entry("cpep").registry == "cpep"
    assert all(e.seeds == 5 for e in s.entries) and s.alpha == 0.05 and not s.smoke


def test_smoke_takes_the_smoke_budget():
    s = suite.load(smoke=True)
    assert s.smoke and all(e.seeds == 3 for e in s.entries)


BASE = """
entries:
  kinembed:
    metrics: {heldout_r2: 0.02}
"""


@pytest.mark.parametrize(
    ("text", "field", "match"),
    [
        (BASE + "    slowdwn: 2\n", "entries.kinembed.slowdwn", "unknown key"),
        (BASE.replace("heldout_r2", "heldout_r"), "entries.kinembed.metrics.heldout_r",
         r"kinembed records no per-seed 'heldout_r'; it records \['heldout_r2'\]"),
        (BASE.replace("0.02", "-1"), "entries.kinembed.metrics.heldout_r2", "a tolerance is >= 0"),
        (BASE.replace("0.02", "lots"), "entries.kinembed.metrics.heldout_r2", "must be a number"),
        (BASE + "    method: kinembd\n", "entries.kinembed.method", "unknown method 'kinembd'"),
        (BASE + "    seeds: 1\n", "entries.kinembed.seeds", "must be an integer >= 2"),
        (BASE + "    slowdown: 0.9\n", "entries.kinembed.slowdown", "a slowdown factor is > 1"),
        (BASE + "    flaky: yes please\n", "entries.kinembed.flaky", "must be true or false"),
        ("alpha: 2\n" + BASE, "alpha", r"must lie in \(0, 1\)"),
        ("artifact_tolerance: -0.1\n" + BASE, "artifact_tolerance", "must be >= 0"),
        ("smoke: {seed: 2}\n" + BASE, "smoke.seed", "unknown key"),
        ("entries: {}\n", "entries", "must map entry names"),
        ("entries: [\n", "file", "not valid YAML"),
    ],
)  # fmt: skip
def test_a_bad_suite_names_the_file_and_key(tmp_path, text, field, match):
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    with pytest.raises(InvalidValueError, match=match) as e:
        suite.load(path)
    assert e.value.field == field and str(path) in str(e.value)


def test_a_missing_suite_file_is_one_error(tmp_path):
    with pytest.raises(InvalidValueError, match="suite file not found"):
        suite.load(tmp_path / "nope.yaml")
