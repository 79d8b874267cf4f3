"""Where a trial's processes run and on what device, decided without a cluster (issue 19; the
multi-node run in test_multinode.py shows the same on real nodes)."""

from __future__ import annotations

import pytest

from orchestration import launch


def _node(alive: bool = True, **resources: float) -> dict:
    return {"Alive": alive, "Resources": {"CPU": 8.0, **resources}}


@pytest.mark.parametrize(
    ("nodes", "declared"),
    [
        ([_node(GPU=1.0)], True),  # ray start --num-gpus=1 on a CPU machine
        ([_node(), _node(GPU=8.0)], True),
        ([_node(GPU=8.0, **{"accelerator_type:A100": 1.0})], False),  # detected by Ray
        ([_node(GPU=1.0), _node(GPU=8.0, **{"accelerator_type:A100": 1.0})], False),
        ([_node()], False),  # no GPU node yet: an autoscaler brings real ones
        ([_node(alive=False, GPU=1.0), _node()], False),  # a dead node does not count
    ],
)
def test_declared_gpus_are_told_from_detected_ones_by_rays_accelerator_type(nodes, declared):
    assert launch.declared_gpus_only(nodes) is declared


def test_a_trials_tune_driver_holds_no_cpu_and_runs_on_the_head():
    res = launch.TUNE_DRIVER_RESOURCES
    assert res["CPU"] == 0 and 0 < res["node:__internal_head__"] < 1


def test_a_worker_without_cuda_trains_on_cpu():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert launch.train_device() == "cpu"  # Ray would hand it cuda:0 for a declared GPU


def test_the_trainer_takes_the_sweeps_backend(tmp_path):
    pytest.importorskip("ray.train")
    args = {
        "scaling": {"num_workers": 1, "use_gpu": True, "resources_per_worker": {"GPU": 0.25}},
        "max_failures": 0,
        "backend": "gloo",
    }
    trainer = launch.make_trainer({}, b"", args, "t", str(tmp_path))
    assert trainer.backend_config.backend == "gloo"
