"""clusters/ validates offline: the nightly's schedules (Kubernetes CronJob against the
``kubernetes`` client's models, KubeRay RayCronJob against the v1.7.0 CRD schema, systemd and
cron), a misspelt field rejected in each manifest kind, and every image tag and version matching
the lock file (constraints.txt) and pyproject."""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

import pytest
import yaml

from orchestration import manifests

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
NIGHTLY = CLUSTERS / "nightly"


def _schemas() -> Path:
    folder = os.environ.get(manifests.SCHEMAS_ENV)
    if not folder or not Path(folder, "ray.io_raycronjobs.yaml").exists():
        pytest.skip(
            f"${manifests.SCHEMAS_ENV} does not name KubeRay's CRD folder "
            "(../shared/schemas/kuberay-v1.7.0; .ci/run sets it)"
        )
    return Path(folder)


def _misspelt(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    text = source.read_text()
    assert old in text, old
    out = tmp_path / source.name
    out.write_text(text.replace(old, new, 1))
    return out


def test_the_cronjob_is_a_valid_batch_v1_cronjob_and_forbids_overlap(tmp_path):
    assert manifests.problems(NIGHTLY / "cronjob.yaml") == []
    (job,) = yaml.safe_load_all((NIGHTLY / "cronjob.yaml").read_text())
    spec = job["spec"]
    assert spec["concurrencyPolicy"] == "Forbid" and spec["timeZone"] == "Etc/UTC"
    assert spec["startingDeadlineSeconds"] > 0 and spec["failedJobsHistoryLimit"] > 0
    (submit,) = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "orchestration/nightly.py" in submit["args"][0] and "EMG_GIT_COMMIT" in submit["args"][0]
    bad = _misspelt(tmp_path, NIGHTLY / "cronjob.yaml", "concurrencyPolicy:", "concurencyPolicy:")
    (line,) = manifests.problems(bad)
    assert line.endswith(
        "(CronJob emg-nightly): spec.concurencyPolicy: unknown field of V1CronJobSpec"
    )
    wrong = _misspelt(tmp_path, NIGHTLY / "cronjob.yaml", "backoffLimit: 0", "backoffLimit: none")
    assert any("backoffLimit: expected int, got str" in p for p in manifests.problems(wrong))


def test_the_raycronjob_validates_against_kuberays_crd(tmp_path):
    schemas = _schemas()
    assert manifests.problems(NIGHTLY / "raycronjob.yaml", schemas) == []
    bad = _misspelt(tmp_path, NIGHTLY / "raycronjob.yaml", "entrypoint:", "entrypiont:")
    (line,) = manifests.problems(bad, schemas)
    assert "spec.jobTemplate: Additional properties are not allowed ('entrypiont'" in line
    text = (NIGHTLY / "raycronjob.yaml").read_text()
    assert "ALPHA" in text and "RayCronJob=true" in text  # the feature gate, said


def test_a_kuberay_manifest_without_schemas_is_a_problem_not_a_pass():
    (line,) = manifests.problems(NIGHTLY / "raycronjob.yaml", None)
    assert "needs the KubeRay CRD schemas" in line


def test_systemd_units_and_the_cron_line_run_the_nightly():
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.read(NIGHTLY / "emg-nightly.service")
    assert service["Service"]["Type"] == "oneshot"
    assert "orchestration/nightly.py" in service["Service"]["ExecStart"]
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.read(NIGHTLY / "emg-nightly.timer")
    assert timer["Timer"]["OnCalendar"] == "*-*-* 02:00:00 UTC"
    assert timer["Timer"]["Persistent"] == "true" and timer["Install"]["WantedBy"]
    (line,) = [
        ln for ln in (NIGHTLY / "crontab").read_text().splitlines() if ln and ln[0].isdigit()
    ]
    minute, hour, dom, month, dow, command = line.split(maxsplit=5)
    assert (minute, hour, dom, month, dow) == ("0", "2", "*", "*", "*")
    assert "flock -n" in command and "orchestration/nightly.py" in command


def _pinned() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.lower()] = version.split("+")[0]
    return out


def test_every_image_tag_and_version_in_clusters_matches_the_lock_file():
    pinned = _pinned()
    pyproject = (ROOT / "pyproject.toml").read_text()
    python = re.search(r'target-version = "py(\d)(\d+)"', pyproject).groups()
    seen = 0
    for path in sorted(p for p in CLUSTERS.rglob("*") if p.is_file()):
        text = path.read_text()
        for ray, py in re.findall(r"rayproject/ray:([\d.]+)-py(\d+)", text):
            seen += 1
            assert ray == pinned["ray"], f"{path}: ray {ray}, constraints.txt {pinned['ray']}"
            assert py == "".join(python), f"{path}: python {py}, pyproject py{''.join(python)}"
        for pkg, version in re.findall(r"\b(torch|ray|mlflow)==([\w.+]+)", text):
            assert version.split("+")[0] == pinned[pkg], f"{path}: {pkg}=={version}"
    assert seen, "no Ray image in clusters/"


def test_the_command_line_exits_1_on_a_problem_and_names_it(tmp_path, capsys):
    bad = _misspelt(tmp_path, NIGHTLY / "cronjob.yaml", "schedule:", "schedul:")
    assert manifests.main([str(NIGHTLY / "cronjob.yaml")]) == 0
    assert capsys.readouterr().out == "ok: 1 file(s) valid\n"
    assert manifests.main([str(bad)]) == 1
    assert "spec.schedul: unknown field of V1CronJobSpec" in capsys.readouterr().out
    assert manifests.main([str(tmp_path / "absent.yaml")]) == 2
