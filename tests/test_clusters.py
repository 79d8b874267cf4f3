"""clusters/ validates offline: the nightly's schedules (Kubernetes CronJob against the
``kubernetes`` client's models, KubeRay RayCronJob against the v1.7.0 CRD schema, systemd and
cron); the Ray cluster launcher YAMLs (aws.yaml, gcp.yaml) with Ray's own launcher checks; the
KubeRay cluster, sweep job and tracking server (kuberay/) against the CRDs and the client's
models; a misspelt field rejected in each kind; the image (Dockerfile) and every image tag and
version matching the lock file (constraints.txt) and pyproject; and the files agreeing with each
other and with the sweep's own command line (GPU counts, the entrypoint's flags, the tracking
server's name, the shared volume)."""

from __future__ import annotations

import configparser
import copy
import os
import re
import shlex
import socket
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from orchestration import manifests

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
NIGHTLY = CLUSTERS / "nightly"
KUBERAY = CLUSTERS / "kuberay"
LAUNCHERS = ("aws.yaml", "gcp.yaml")
PROJECT_IMAGE = "ghcr.io/biosignals-lab/emg-orchestra"
# A100s per machine type (AWS and GCP instance tables): what the launcher's GPU resource declares
A100S = {"p4d.24xlarge": 8, "a2-highgpu-8g": 8}


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
    version = tomllib.loads(pyproject)["project"]["version"]
    seen = {"ray image": 0, "rayVersion": 0, "project image": 0}
    for path in sorted(p for p in CLUSTERS.rglob("*") if p.is_file()):
        text = path.read_text()
        for ray, py in re.findall(r"rayproject/ray:([\d.]+)-py(\d+)", text):
            seen["ray image"] += 1
            assert ray == pinned["ray"], f"{path}: ray {ray}, constraints.txt {pinned['ray']}"
            assert py == "".join(python), f"{path}: python {py}, pyproject py{''.join(python)}"
        for ray in re.findall(r"rayVersion:\s*[\"']?([\w.]+)", text):
            seen["rayVersion"] += 1
            assert ray == pinned["ray"], f"{path}: rayVersion {ray}, constraints {pinned['ray']}"
        for tag in re.findall(re.escape(PROJECT_IMAGE) + r":([\w.-]+)", text):
            seen["project image"] += 1
            assert tag == version, f"{path}: {PROJECT_IMAGE}:{tag}, pyproject's version {version}"
        for pkg, pin in re.findall(r"\b(torch|ray|mlflow)==([\w.+]+)", text):
            assert pin.split("+")[0] == pinned[pkg], f"{path}: {pkg}=={pin}"
    assert all(seen.values()), seen


def test_the_command_line_exits_1_on_a_problem_and_names_it(tmp_path, capsys):
    bad = _misspelt(tmp_path, NIGHTLY / "cronjob.yaml", "schedule:", "schedul:")
    assert manifests.main([str(NIGHTLY / "cronjob.yaml")]) == 0
    assert capsys.readouterr().out == "ok: 1 file(s) valid\n"
    assert manifests.main([str(bad)]) == 1
    assert "spec.schedul: unknown field of V1CronJobSpec" in capsys.readouterr().out
    assert manifests.main([str(tmp_path / "absent.yaml")]) == 2


# -- the Ray cluster launcher (aws.yaml, gcp.yaml) -------------------------------------------


def _launcher(name: str) -> dict:
    return yaml.safe_load((CLUSTERS / name).read_text())


def _launcher_checked(config: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    """``config`` through the launcher's own checks, as Ray's tests run them on its example YAMLs
    (python/ray/tests/test_autoscaler_yaml.py): ``prepare_config`` merges the provider's
    defaults.yaml (a file in the wheel) and fills each node type's bounds, ``validate_config``
    checks the result against ray-schema.json (no unknown key at the top, under ``docker`` or under
    a node type; integer resources) and the min/max workers. Both are offline: what reaches the
    cloud (the provider's bootstrap: key pairs, IAM, subnets) runs only in ``ray up``. Sockets
    are refused here to hold them to that. Not checked by Ray: ``provider`` (extra keys allowed)
    and ``node_config`` (the cloud's own API body; AWS's is checked below against botocore)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    def offline(*args: object, **kwargs: object) -> None:
        raise AssertionError("the launcher's offline checks tried the network")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(socket, "getaddrinfo", offline)
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _workers(config: dict) -> dict:
    """The one worker node type (every type but the head's)."""
    (worker,) = [
        t for n, t in config["available_node_types"].items() if n != config["head_node_type"]
    ]
    return worker


@pytest.mark.parametrize("name", LAUNCHERS)
def test_a_launcher_yaml_passes_rays_own_checks_offline(name, monkeypatch):
    prepared = _launcher_checked(_launcher(name), monkeypatch)
    head = prepared["available_node_types"][prepared["head_node_type"]]
    # no GPU trial on the head; CPUs, so that it starts trials' processes in parallel
    assert "GPU" not in head["resources"] and head["resources"]["CPU"] >= 8
    worker = _workers(prepared)
    machine = worker["node_config"].get("InstanceType") or worker["node_config"]["machineType"]
    assert worker["resources"]["GPU"] == A100S[machine]
    assert worker["min_workers"] <= worker["max_workers"] == prepared["max_workers"] > 0
    docker = prepared["docker"]
    assert docker["image"].startswith(PROJECT_IMAGE + ":") and docker["pull_before_run"]
    # GPUs visible in the workers' containers, not asked for on the GPU-less head
    assert "--gpus all" in docker["worker_run_options"]
    assert "--gpus all" not in docker["run_options"] + docker.get("head_run_options", [])
    assert "--ulimit nofile=65536:65536" in docker["run_options"]
    (tracking,) = [o for o in docker["run_options"] if o.startswith("--env MLFLOW_TRACKING_URI=")]
    assert urlsplit(tracking.split("=", 1)[1]).scheme in ("http", "https")
    # the image carries the project: nothing is installed at node start
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert prepared[key] == [], key


def test_a_launcher_yaml_without_its_empty_setup_commands_gets_the_launchers_pip_installs(
    monkeypatch,
):
    """Why aws.yaml and gcp.yaml spell out empty setup commands: the defaults come back."""
    config = _launcher("aws.yaml")
    del config["setup_commands"], config["head_setup_commands"]
    prepared = _launcher_checked(config, monkeypatch)
    assert any("pip install" in c for c in prepared["head_setup_commands"])


@pytest.mark.parametrize("name", LAUNCHERS)
@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("\nmax_workers: 4", "\nmax_worker: 4", "('max_worker' was unexpected)"),
        ("    min_workers: 0", "    min_worker: 0", "('min_worker' was unexpected)"),
        ("\n  run_options:", "\n  run_option:", "('run_option' was unexpected)"),
        ("GPU: 8}", 'GPU: "8"}', "'8' is not of type 'integer'"),
        ("    min_workers: 0", "    min_workers: 5", "smaller than the sum of `min_workers`"),
    ],
)
def test_a_misspelt_launcher_yaml_is_rejected(name, old, new, error, tmp_path, monkeypatch):
    bad = _misspelt(tmp_path, CLUSTERS / name, old, new)
    with pytest.raises(Exception, match=re.escape(error)) as caught:
        _launcher_checked(yaml.safe_load(bad.read_text()), monkeypatch)
    assert type(caught.value).__name__ in ("ValidationError", "ValueError")


def _botocore_problems(value: object, shape: object, path: str) -> list[str]:
    """``value`` against a botocore shape: unknown members and wrong primitive types."""
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        out = []
        for key, v in value.items():
            if key not in shape.members:
                out.append(f"{path}.{key}: unknown")
            else:
                out += _botocore_problems(v, shape.members[key], f"{path}.{key}")
        return out
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [
            p
            for i, v in enumerate(value)
            for p in _botocore_problems(v, shape.member, f"{path}[{i}]")
        ]
    expected = {"string": str, "integer": int, "boolean": bool}.get(kind, object)
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    return [] if ok else [f"{path}: expected {kind}, got {value!r}"]


def test_the_aws_node_configs_are_run_instances_requests_and_workers_can_write_s3(tmp_path):
    """The launcher passes each node_config to EC2's RunInstances, which Ray does not check
    offline; botocore's own model of that request (in the wheel) does. The workers carry an
    instance profile: they write checkpoints to the S3 storage path, and the launcher gives its
    default profile (with S3 access) to the head only."""
    import botocore.session

    request = (
        botocore.session.get_session()
        .get_service_model("ec2")
        .operation_model("RunInstances")
        .input_shape
    )
    config = _launcher("aws.yaml")
    for name, node_type in config["available_node_types"].items():
        assert _botocore_problems(node_type["node_config"], request, name) == []
    assert _workers(config)["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    bad = yaml.safe_load(
        _misspelt(
            tmp_path, CLUSTERS / "aws.yaml", "InstanceType: p4d", "InstanceTyp: p4d"
        ).read_text()
    )
    assert _botocore_problems(
        bad["available_node_types"]["a100"]["node_config"], request, "a100"
    ) == ["a100.InstanceTyp: unknown"]


def test_the_gcp_workers_are_a100_vms_with_their_driver_and_storage_access():
    worker = _workers(_launcher("gcp.yaml"))
    node = worker["node_config"]
    assert node["guestAccelerators"] == [
        {"acceleratorType": "nvidia-tesla-a100", "acceleratorCount": worker["resources"]["GPU"]}
    ]
    # a mapping, as the Compute Engine API takes it (Ray's older GCP examples have a list)
    assert node["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert {"key": "install-nvidia-driver", "value": "True"} in node["metadata"]["items"]
    assert any("nvidia-smi" in c for c in worker["initialization_commands"])
    (account,) = node["serviceAccounts"]
    assert "https://www.googleapis.com/auth/cloud-platform" in account["scopes"]


def test_the_image_the_torch_wheels_and_the_gcp_vm_image_have_one_cuda():
    """The base image's CUDA, the index torch comes from, and the CUDA of the GCP workers' VM
    image (whose driver must run it) are one version."""
    dockerfile = (CLUSTERS / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM rayproject/ray:[\d.]+-py\d+-cu(\d+)\s*$", dockerfile, re.M)
    (wheels,) = re.findall(r"download\.pytorch\.org/whl/cu(\d+)", dockerfile)
    vm = _workers(_launcher("gcp.yaml"))["node_config"]["disks"][0]["initializeParams"]
    (family,) = re.findall(r"family/common-cu(\d+)-", vm["sourceImage"])
    assert base == wheels == family


# -- the image (Dockerfile, .dockerignore) -----------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of clusters/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (CLUSTERS / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _workdir() -> PurePosixPath:
    (workdir,) = [a for op, a in _dockerfile() if op == "WORKDIR"]
    return PurePosixPath(workdir)


def test_the_image_installs_like_the_readme_with_the_lock_files_versions():
    steps = _dockerfile()
    pinned = _pinned()
    assert steps[0][0] == "FROM" and [op for op, _ in steps].count("FROM") == 1
    runs = [(i, a) for i, (op, a) in enumerate(steps) if op == "RUN" and "pip install" in a]
    (torch_at, torch_step), (project_at, project_step) = runs
    assert f"torch=={pinned['torch']} " in torch_step
    assert "--index-url https://download.pytorch.org/whl/cu" in torch_step
    assert "-c constraints.txt" in project_step and '-e ".[cluster]"' in project_step
    assert "assert torch.version.cuda" in project_step  # a CPU torch fails the build
    copied = {}
    for i, (op, args) in enumerate(steps):
        if op == "COPY":
            *sources, _ = [a for a in args.split() if not a.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), source
                copied[source.rstrip("/")] = i
    # what the project's install reads is there before it, the rest of the repository after
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "emgcore", "orchestration"):
        assert copied[needed] < project_at, needed
    assert torch_at < project_at and {"search_spaces", "suites"} <= copied.keys()
    # the `cluster` extra brings what the image's MLflow server and the storage clients need
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    cluster = " ".join(extras["cluster"])
    assert all(pkg in cluster for pkg in ("psycopg", "boto3", "google-cloud-storage"))
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "mlflow.db", "ray_results"} <= ignored
    assert not ignored & copied.keys()


# -- KubeRay (kuberay/) ------------------------------------------------------------------------


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((KUBERAY / name).read_text()) if d]


def _doc(name: str, kind: str, metadata_name: str | None = None) -> dict:
    (doc,) = [
        d
        for d in _docs(name)
        if d["kind"] == kind and metadata_name in (None, d["metadata"]["name"])
    ]
    return doc


def _ray_pods(spec: dict) -> list[dict]:
    """The pod specs of a RayCluster spec: the head's, then each worker group's."""
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def test_the_kuberay_folder_holds_the_files_the_readme_names():
    names = {p.name for p in KUBERAY.glob("*.yaml")}
    assert names == {"shared.yaml", "mlflow.yaml", "raycluster.yaml", "rayjob.yaml"}
    readme = (CLUSTERS / "README.md").read_text()
    assert all(f"kuberay/{n}" in readme for n in names)


@pytest.mark.parametrize("name", ["shared.yaml", "mlflow.yaml", "raycluster.yaml", "rayjob.yaml"])
def test_every_kuberay_manifest_validates(name):
    kinds = {d["kind"] for d in _docs(name)}
    schemas = _schemas() if kinds & manifests.KUBERAY.keys() else None
    assert manifests.problems(KUBERAY / name, schemas) == []
    assert all(d["metadata"]["namespace"] == "emg" for d in _docs(name) if d["kind"] != "Namespace")


@pytest.mark.parametrize(
    ("name", "old", "new", "line"),
    [
        (
            "raycluster.yaml",
            "enableInTreeAutoscaling:",
            "enableIntreeAutoscaling:",
            "(RayCluster emg-cluster): spec: Additional properties are not allowed "
            "('enableIntreeAutoscaling' was unexpected)",
        ),
        (  # deep in a pod template: the CRD carries the whole pod spec
            "raycluster.yaml",
            "              volumeMounts:",
            "              volumeMount:",
            "(RayCluster emg-cluster): spec.workerGroupSpecs.0.template.spec.containers.0: "
            "Additional properties are not allowed ('volumeMount' was unexpected)",
        ),
        (
            "raycluster.yaml",
            "nvidia.com/gpu: 8}",
            "nvidia.com/gpu: eight}",
            "spec.workerGroupSpecs.0.template.spec.containers.0.resources.requests.nvidia.com/gpu:"
            " 'eight' does not match",
        ),
        (
            "rayjob.yaml",
            "shutdownAfterJobFinishes:",
            "shutdownAfterJobFinish:",
            "(RayJob emg-sweep-kinembed): spec: Additional properties are not allowed "
            "('shutdownAfterJobFinish' was unexpected)",
        ),
        (
            "mlflow.yaml",
            "startupProbe:",
            "startUpProbe:",
            "(Deployment emg-mlflow): spec.template.spec.containers[0].startUpProbe: "
            "unknown field of V1Container",
        ),
        (
            "mlflow.yaml",
            "volumeClaimTemplates:",
            "volumeClaimTemplate:",
            "(StatefulSet emg-postgres): spec.volumeClaimTemplate: unknown field of "
            "V1StatefulSetSpec",
        ),
        (
            "mlflow.yaml",
            "clusterIP: None",
            "clusterIp: None",
            "(Service emg-postgres): spec.clusterIp: unknown field of V1ServiceSpec",
        ),
        (
            "mlflow.yaml",
            "stringData:",
            "stringdata:",
            "(Secret emg-mlflow-db): stringdata: unknown field of V1Secret",
        ),
        (
            "shared.yaml",
            "accessModes:",
            "accessMode:",
            "(PersistentVolumeClaim emg-shared): spec.accessMode: unknown field of "
            "V1PersistentVolumeClaimSpec",
        ),
    ],
)
def test_a_misspelt_kuberay_manifest_is_rejected_naming_the_field(name, old, new, line, tmp_path):
    schemas = _schemas() if name in ("raycluster.yaml", "rayjob.yaml") else None
    (problem,) = manifests.problems(_misspelt(tmp_path, KUBERAY / name, old, new), schemas)
    assert line in problem


def test_the_rayjob_brings_the_standing_clusters_spec_with_its_gpu_pods_up_front():
    cluster = _doc("raycluster.yaml", "RayCluster")["spec"]
    job = _doc("rayjob.yaml", "RayJob")["spec"]
    own = copy.deepcopy(job["rayClusterSpec"])
    (group,) = own["workerGroupSpecs"]
    # the one difference: the sweep sizes its concurrency by the GPUs present when it starts
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] > 0
    (standing,) = cluster["workerGroupSpecs"]
    for key in ("replicas", "minReplicas"):
        group[key] = standing[key]
    assert own == cluster
    assert standing["minReplicas"] == 0 < standing["maxReplicas"] == group["maxReplicas"]
    assert job["shutdownAfterJobFinishes"] is True and job["backoffLimit"] == 0
    assert job["submissionMode"] == "K8sJobMode" and job["activeDeadlineSeconds"] > 0


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_every_ray_pod_has_the_image_tracking_server_shared_volume_and_shm(name):
    doc = _docs(name)[0]
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    # its CPUs (not 0: Ray would start trials' processes there one at a time), no GPU
    assert "num-cpus" not in head["rayStartParams"]
    (container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    claim = _doc("shared.yaml", "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    service = _doc("mlflow.yaml", "Service", "emg-mlflow")
    tracking = f"http://emg-mlflow.emg.svc:{service['spec']['ports'][0]['port']}"
    for pod in _ray_pods(spec):
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert container["image"].startswith(PROJECT_IMAGE + ":")
            assert container["workingDir"] == str(_workdir())
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["MLFLOW_TRACKING_URI"] == tracking
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            shared = mounts[_shared_mount()]  # the same path on every pod
            assert shared["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
            assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_the_kuberay_gpu_pods_are_the_launchers_gpu_nodes(name):
    """One worker pod is one whole A100 machine, as one launcher worker is."""
    gpus = _workers(_launcher(name))["resources"]["GPU"]
    cluster = _doc("raycluster.yaml", "RayCluster")["spec"]
    (group,) = cluster["workerGroupSpecs"]
    pod = group["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert pod["nodeSelector"]
    # Ray's object store fits in the pod's /dev/shm
    shm = next(v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory")
    assert int(group["rayStartParams"]["object-store-memory"]) < _bytes(
        shm["emptyDir"]["sizeLimit"]
    )


def _shared_mount() -> str:
    """Where the head of raycluster.yaml mounts shared.yaml's claim: the folder results must be
    under to be seen by every node."""
    claim = _doc("shared.yaml", "PersistentVolumeClaim")["metadata"]["name"]
    pod = _doc("raycluster.yaml", "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]
    names = {
        v["name"]
        for v in pod["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] in names]
    return mount["mountPath"]


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", quantity).groups()
    return int(number) * 1024 ** ("", "Ki", "Mi", "Gi", "Ti").index(unit or "")


def test_the_rayjobs_entrypoint_is_a_sweep_command_that_fits_the_cluster():
    """The entrypoint parses with the sweep's own parser (a misspelt flag fails here, not an
    hour into a cluster's start), runs the image's copy of sweep.py, keeps its results on the
    shared volume and logs to the tracking server, and one trial fits one GPU pod (a trial asking
    more than a pod has would wait forever)."""
    from orchestration.sweep import parser

    job = _doc("rayjob.yaml", "RayJob")["spec"]
    python, script, *args = shlex.split(job["entrypoint"])
    assert python == "python"
    in_repo = PurePosixPath(script).relative_to(_workdir())
    assert in_repo == PurePosixPath("orchestration/sweep.py") and (ROOT / in_repo).is_file()
    a = parser().parse_args(args)
    assert a.method == "kinembed" and a.resume is None
    assert PurePosixPath(a.storage_path).is_relative_to(_shared_mount())
    (group,) = job["rayClusterSpec"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert a.workers * a.gpus_per_worker <= limits["nvidia.com/gpu"]
    assert a.workers * a.cpus_per_worker <= int(limits["cpu"])
    env = group["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MLFLOW_TRACKING_URI", "value": a.tracking_uri} in env


def test_a_misspelt_flag_in_the_rayjobs_entrypoint_fails_the_sweeps_parser():
    from orchestration.sweep import parser

    job = _doc("rayjob.yaml", "RayJob")["spec"]
    argv = shlex.split(job["entrypoint"].replace("--gpus-per-worker", "--gpu-per-worker"))
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(argv[2:])
    assert exited.value.code == 2


def _mlflow_args() -> tuple[dict, dict[str, str]]:
    """The MLflow container and its server's flags (``--flag value``, bare flags: True)."""
    container = _doc("mlflow.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["mlflow", "server"]
    flags, args = {}, list(container["args"])
    while args:
        flag = args.pop(0)
        assert flag.startswith("--"), flag
        flags[flag] = args.pop(0) if args and not args[0].startswith("--") else True
    return container, flags


def test_the_mlflow_server_listens_for_its_service_on_postgresql():
    from mlflow.server.security_utils import is_allowed_host_header
    from sqlalchemy.engine import make_url

    container, flags = _mlflow_args()
    assert flags["--host"] == "0.0.0.0" and flags["--serve-artifacts"] is True
    service = _doc("mlflow.yaml", "Service", "emg-mlflow")
    (port,) = service["spec"]["ports"]
    (container_port,) = container["ports"]
    assert int(flags["--port"]) == container_port["containerPort"]
    assert port["targetPort"] == container_port["name"]
    labels = _doc("mlflow.yaml", "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    # the Host header every client sends passes MLflow's own check (a 403 otherwise)
    allowed = flags["--allowed-hosts"].split(",")
    name = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    for host in (f"{name}:{port['port']}", f"localhost:{port['port']}", "localhost:8080"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, f"10.0.0.1:{port['port']}")
    # the probes hit /health on the served port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": container_port["name"]}
    # the backend: PostgreSQL through psycopg (the image's driver), at the StatefulSet's Service
    env = {e["name"]: e for e in container["env"]}
    uri = flags["--backend-store-uri"]
    assert set(re.findall(r"\$\((\w+)\)", uri)) <= env.keys()  # Kubernetes expands $(VAR)
    url = make_url(re.sub(r"\$\(\w+\)", "x", uri))
    assert url.get_dialect().driver == "psycopg"
    postgres = _doc("mlflow.yaml", "Service", "emg-postgres")
    assert url.host == f"emg-postgres.{postgres['metadata']['namespace']}.svc"
    assert url.port == postgres["spec"]["ports"][0]["port"]
    statefulset = _doc("mlflow.yaml", "StatefulSet")
    assert statefulset["spec"]["serviceName"] == "emg-postgres"
    db_env = {e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert url.database == db_env["POSTGRES_DB"]["value"]
    secret = _doc("mlflow.yaml", "Secret")
    for var in ("POSTGRES_USER", "POSTGRES_PASSWORD"):
        for e in (env[var], db_env[var]):
            ref = e["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert flags["--artifacts-destination"].startswith(("s3://", "gs://"))


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("foo\n", "document 1: not a Kubernetes object (a mapping with apiVersion, kind and"),
        ("- a\n- b\n", "got list"),
        ("# only a comment\n", "no Kubernetes object in the file"),
        ("kind: Deployment\nmetadata: {name: x}\n", "(Deployment x): apiVersion: missing"),
        ("apiVersion: v1\nkind: Service\n", "(Service ?): metadata: missing"),
    ],
)
def test_a_file_that_is_no_kubernetes_object_is_a_problem_not_a_pass(tmp_path, text, line):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    (problem,) = manifests.problems(bad)
    assert problem.startswith(f"{bad}: ") and line in problem


def test_a_kuberay_kind_under_another_api_version_is_a_problem(tmp_path):
    bad = _misspelt(
        tmp_path, KUBERAY / "rayjob.yaml", "apiVersion: ray.io/v1", "apiVersion: ray.io/v2"
    )
    (problem,) = manifests.problems(bad, "/nonexistent")  # refused before the schemas are read
    assert problem.endswith("apiVersion: 'ray.io/v2', KubeRay serves RayJob as 'ray.io/v1'")


def test_unreadable_input_is_one_line_each_and_every_file_is_still_checked(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1\n")
    bad = _misspelt(tmp_path, NIGHTLY / "cronjob.yaml", "schedule:", "schedul:")
    assert manifests.main([str(broken), str(bad)]) == 2
    out = capsys.readouterr()
    expected = "not YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1"
    assert out.err == f"error: {broken}: {expected}\n"
    assert "spec.schedul: unknown field of V1CronJobSpec" in out.out  # the next file, checked
    assert manifests.main([str(bad), "--schemas", str(bad)]) == 2
    assert "not a folder (KubeRay's CRD folder)" in capsys.readouterr().err
