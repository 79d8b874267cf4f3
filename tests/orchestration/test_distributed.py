"""Data parallelism for real: 2 Ray Train workers x 128 == 1 worker x 256, loss and gradients
(KinEMbed), and 2 x 16 == 1 x 32 for CPEP and EMBridge (global-batch negatives, CASCLe targets,
MPRL masks drawn for the global batch).

A simulated 2-node Ray cluster (``ray.cluster_utils.Cluster``, one CPU per node, so the two
workers land on different nodes) runs gloo DDP through ``TorchTrainer``. Each worker computes one
step's loss and gradients on its shard of the same global batch, then trains two epochs through
``train_kinembed``; both must equal one worker on the whole batch.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _worker(config: dict) -> None:
    import ray.train

    from emgcore.distributed import DataParallel
    from emgcore.models.kinembed import KinEmbed, KinEmbedConfig, train_kinembed
    from emgcore.models.nn import seeded

    par = DataParallel.current()
    gen = np.random.default_rng(0)
    x = gen.standard_normal((600, 32)).astype(np.float32)
    y = (x[:, :5] @ gen.standard_normal((5, 5))).astype(np.float32)
    cfg = KinEmbedConfig(
        loss=config["loss"], batch_size=256, epochs=2, val_fraction=0.1, dropout=0.0
    )
    with seeded(0):
        model = KinEmbed(cfg, 32, 5)
    net = par.wrap(model)
    idx = par.shard(torch.arange(256))  # the first global batch
    loss, _ = net(
        torch.as_tensor(x[idx]), torch.as_tensor(y[idx]), gather=par.gather, rank=par.rank
    )
    loss.backward()  # DDP averages the gradients over workers
    total = par.all_reduce(loss.detach()) / par.world_size  # the global loss
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    trained, hist = train_kinembed(cfg, [(x, y)], seed=3, parallel=par)
    if par.rank == 0:
        # compare what training produced by its function: a Linear bias in front of BatchNorm
        # gets a zero gradient, so AdamW moves it by rounding noise that changes nothing
        with torch.no_grad():
            z = trained.eval().embed(torch.as_tensor(x[:200]))
        losses = torch.tensor([e["val_loss"] for e in hist.epochs])
        torch.save(
            {"loss": total, **{f"grad.{k}": v for k, v in grads.items()}, "z": z, "val": losses},
            os.path.join(config["out"], f"w{par.world_size}.pt"),
        )
    ray.train.report({"train_loss": hist.epochs[-1]["train_loss"]})


def _pose_worker(config: dict) -> None:
    """CPEP / EMBridge: the first global batch's loss and gradients, then 2 epochs of training."""
    import ray.train
    import torch.nn.functional as F

    from emgcore.distributed import DataParallel
    from emgcore.models.cpep import CPEP, CPEPConfig, train_cpep
    from emgcore.models.embridge import EMBridge, EMBridgeConfig, pose_token_mask, train_embridge
    from emgcore.models.mae import MAE, MAEConfig
    from emgcore.models.nn import seeded

    par = DataParallel.current()
    g = torch.Generator().manual_seed(0)
    x, pose = torch.randn(96, 200, 4, generator=g), torch.randn(96, 200, 3, generator=g)
    small = {"dim": 16, "depth": 4, "decoder_depth": 1, "heads": 2}
    with seeded(0):
        emg_enc = MAE(MAEConfig(patch=20, **small), 4, 200).encoder
        pose_enc = MAE(MAEConfig(patch=40, **small), 3, 200).encoder
    common = {"batch_size": 32, "epochs": 2, "lr": 1e-3}
    with seeded(1):  # the head, queries and cross-attention start from the same draw
        if config["method"] == "cpep":
            cfg = CPEPConfig(cascle_alpha=0.5, label_smoothing=0.1, **common)
            model = CPEP(cfg, emg_enc, pose_enc)
        else:
            cfg = EMBridgeConfig(n_queries=4, **common)
            model = EMBridge(cfg, emg_enc, pose_enc, heads=2)
    model.centroids = F.normalize(torch.randn(6, 16, generator=g), dim=1)
    net = par.wrap(model)
    idx = par.shard(torch.arange(32))  # the first global batch
    extra = ()
    if config["method"] == "embridge":
        extra = (pose_token_mask(32, 5, 0.5, torch.Generator().manual_seed(1))[idx],)
    loss, _ = net(x[idx], pose[idx], *extra, gather=par.gather, rank=par.rank)
    loss.backward()
    total = par.all_reduce(loss.detach()) / par.world_size
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    train = train_cpep if config["method"] == "cpep" else train_embridge
    kw = {} if config["method"] == "cpep" else {"heads": 2}
    trained, fit = train(cfg, emg_enc, pose_enc, x, pose, seed=3, parallel=par, **kw)
    if par.rank == 0:
        with torch.no_grad():
            z = trained.eval().embed_emg(x[:40])
        losses = torch.tensor([e["train_loss"] for e in fit.epochs])
        torch.save(
            {"loss": total, **{f"grad.{k}": v for k, v in grads.items()}, "z": z, "fit": losses},
            os.path.join(config["out"], f"w{par.world_size}.pt"),
        )
    ray.train.report({"train_loss": fit.epochs[-1]["train_loss"]})


@pytest.fixture(scope="module")
def two_nodes():
    """One 2-node Ray cluster on loopback for the four cases (each start costs ~15 s)."""
    import ray
    from ray.cluster_utils import Cluster

    env = {"RAY_AUTH_MODE": "disabled"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": root}})
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize(
    "worker,option",
    [
        (_worker, {"loss": "nt_xent"}),
        (_worker, {"loss": "vicreg"}),
        (_pose_worker, {"method": "cpep"}),
        (_pose_worker, {"method": "embridge"}),
    ],
    ids=["kinembed-nt_xent", "kinembed-vicreg", "cpep", "embridge"],
)
def test_two_workers_equal_one_big_batch(worker, option, tmp_path, two_nodes):
    import ray.train
    from ray.train.torch import TorchTrainer

    for workers in (1, 2):
        TorchTrainer(
            worker,
            train_loop_config={"out": str(tmp_path), **option},
            scaling_config=ray.train.ScalingConfig(num_workers=workers),
            run_config=ray.train.RunConfig(name=f"ddp{workers}", storage_path=str(tmp_path)),
        ).fit()
    one = torch.load(tmp_path / "w1.pt", weights_only=True)
    two = torch.load(tmp_path / "w2.pt", weights_only=True)
    assert set(one) == set(two)
    assert len([k for k in one if k.startswith("grad.")]) >= 10
    for k in one:
        torch.testing.assert_close(
            two[k], one[k], rtol=1e-4, atol=2e-5, msg=lambda m, k=k: f"{k}: {m}"
        )
    # and the check has teeth: the gradients are not all zero
    assert max(float(v.abs().max()) for k, v in one.items() if k.startswith("grad.")) > 1e-3
