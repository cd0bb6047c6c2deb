"""Data-parallel training on CPU with gloo: two processes give the gradients of the global batch,
and the pre-training entry point runs under torchrun.

What "the same global batch" means under DDP: rank r trains on half r of it with its own task
generator (seed + r), and DDP averages the two gradients. VSC's in-batch contrastive negatives
(and the ITM negatives its similarity picks) are per rank: nothing is gathered across ranks. So
the single-process reference is the mean of the gradients of the two halves, each with that
rank's generator, not the gradient of one batch of 8.
"""
import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from helpers import ROOT, make_trainer, synthetic_batch

from model.training.checkpoint import load_checkpoint
from model.training.distributed import rank_slice

pytestmark = pytest.mark.slow  # long training or subprocesses: not in make test-fast

STAGES = ("stage1", "joint")   # stage1 leaves the fusion layers out: DDP must not wait for them


def _halves(cfg):
    return [synthetic_batch(cfg, 0, 0), synthetic_batch(cfg, 0, 1)]


WORKER_THREADS = 1   # the reference runs with the same count: it sets the summation order


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _worker(rank: int, world: int, init_file: str, out: str):
    torch.set_num_threads(WORKER_THREADS)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                  world_size=world)
    try:
        result = {}
        for stage in STAGES:
            trainer, cfg = make_trainer(stage)
            half = _halves(cfg)[rank]
            log = trainer.backward([half])
            grads = {n: p.grad.clone() for n, p in trainer.task.named_parameters()
                     if p.grad is not None}
            trainer.optimizer.zero_grad(set_to_none=True)
            # two full steps: DDP fails on the second forward if a parameter went unused
            trainer.train_step([half])
            trainer.save(Path(out) / f"{stage}.pt", data_position={"epoch": 0, "index": 8})
            step2 = trainer.train_step([half])
            resumed, _ = make_trainer(stage, seed=5)
            resumed.load(Path(out) / f"{stage}.pt")
            result[stage] = {"grads": grads, "log": log, "samples_seen": resumed.samples_seen,
                             "step2": step2, "resumed_step2": resumed.train_step([half]),
                             "params": {n: p.detach().clone()
                                        for n, p in trainer.task.named_parameters()}}
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, str(tmp / "init"), str(tmp)), nprocs=2)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("stage", STAGES)
def test_ddp_gradients_equal_the_mean_over_the_halves(ddp_results, stage):
    trainer, cfg = make_trainer(stage)
    expected_losses = []
    # Embedding backward sums rows in an order that depends on the thread count: computed with
    # another count, the reference differs by float rounding, not by what DDP is tested for.
    with _threads(WORKER_THREADS):
        for rank, half in enumerate(_halves(cfg)):
            out = trainer.task(half, torch.Generator().manual_seed(trainer.tcfg.seed + rank))
            (out["loss"] / 2).backward()
            expected_losses.append(out["loss"].item())
    expected = {n: p.grad for n, p in trainer.task.named_parameters() if p.grad is not None}

    for r in ddp_results:
        got = r[stage]["grads"]
        assert set(got) == set(expected)
        for name, grad in expected.items():
            torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-5, msg=name)
        # logged losses describe the global batch: the mean over the ranks
        assert r[stage]["log"]["loss"] == pytest.approx(sum(expected_losses) / 2, rel=1e-6)
    # the ranks' generators differ, so their halves' losses are not the same function of data
    assert expected_losses[0] != expected_losses[1]
    assert sum(g.abs().sum() for g in expected.values()) > 0
    if stage == "stage1":
        assert not any(n.startswith("model.cross_encoder.") for n in expected)


@pytest.mark.parametrize("stage", STAGES)
def test_ddp_ranks_stay_in_step_and_resume_exactly(ddp_results, stage):
    r0, r1 = (r[stage] for r in ddp_results)
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name
    for r in (r0, r1):
        assert r["samples_seen"] == 16            # global samples: 2 steps x 2 ranks x 4
        assert r["resumed_step2"] == r["step2"]   # every rank got its own RNG states back


def test_rank_slices_concatenate_to_the_global_batch():
    batch = list(range(7))
    parts = [rank_slice(batch, r, 2) for r in range(2)]
    assert parts == [[0, 1, 2], [3, 4, 5, 6]]
    assert sum((rank_slice(batch, r, 3) for r in range(3)), []) == batch


def test_torchrun_runs_the_entry_point(tmp_path, tiny_feature_store):
    wh, _, _ = tiny_feature_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "model.training.pretrain", "--warehouse", str(wh), "--stage", "stage1",
           "--config", "tiny", "--steps", "2", "--out-dir", str(tmp_path / "runs"),
           "--tracking-uri", uri, "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert sorted(p.name for p in (tmp_path / "runs" / "stage1").iterdir()) == ["last.pt"]
    ckpt = load_checkpoint(tmp_path / "runs" / "stage1" / "last.pt")
    assert ckpt["step"] == 2 and ckpt["samples_seen"] == 16   # 2 global batches of 8
    assert ckpt["data_position"]["index"] == 16 and len(ckpt["rng"]) == 2
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("mvp-pretrain").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == ckpt["data_position"]["mlflow_run_id"]
    assert runs[0].data.params["world_size"] == "2"
    assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")) == [1, 2]


# ---- global negatives: VSC over the batch gathered from every rank ----

def _global_halves(cfg):
    """Two halves whose images are distinct across ranks (as dataset rows are), and which
    together hold two captions of one image, so the same-image rule is exercised."""
    a, b = synthetic_batch(cfg, 0, 0), synthetic_batch(cfg, 0, 1)
    return [a, dataclasses.replace(b, image_index=b.image_index + 10)]


def _concatenated(a, b):
    return type(a)(**{f.name: (torch.cat([getattr(a, f.name), getattr(b, f.name)])
                               if isinstance(getattr(a, f.name), torch.Tensor)
                               else _concatenated(getattr(a, f.name), getattr(b, f.name))
                               if dataclasses.is_dataclass(getattr(a, f.name))
                               else None if getattr(a, f.name) is None   # an unknown field
                               else getattr(a, f.name) + getattr(b, f.name))
                      for f in dataclasses.fields(a)})


GLOBAL_VSC = {"negatives_scope": "global", "mcr": 0.0}   # VSC alone: no per-rank masks


def _global_worker(rank: int, world: int, init_file: str, out: str):
    torch.set_num_threads(WORKER_THREADS)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                  world_size=world)
    try:
        trainer, cfg = make_trainer("stage1", **GLOBAL_VSC)
        log = trainer.backward([_global_halves(cfg)[rank]])
        torch.save({"log": log, "grads": {n: p.grad.clone() for n, p in
                                          trainer.task.named_parameters() if p.grad is not None}},
                   Path(out) / f"global{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_global_vsc_gradients_equal_one_process_on_the_whole_batch(tmp_path):
    mp.spawn(_global_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    trainer, cfg = make_trainer("stage1", **GLOBAL_VSC)
    whole = _concatenated(*_global_halves(cfg))
    with _threads(WORKER_THREADS):
        out = trainer.task(whole, torch.Generator().manual_seed(0))
        out["loss"].backward()
    expected = {n: p.grad for n, p in trainer.task.named_parameters() if p.grad is not None}
    assert expected and sum(g.abs().sum() for g in expected.values()) > 0
    for r in range(2):
        got = torch.load(tmp_path / f"global{r}.pt", weights_only=True)
        assert set(got["grads"]) == set(expected)
        for name, grad in expected.items():
            torch.testing.assert_close(got["grads"][name], grad, atol=1e-6, rtol=1e-5, msg=name)
        assert got["log"]["vsc"] == pytest.approx(out["vsc"].item(), rel=1e-5)
    # the guard: per-rank negatives give other gradients on the same data
    rank_trainer, _ = make_trainer("stage1", mcr=0.0)
    rank_out = rank_trainer.task(whole, torch.Generator().manual_seed(0))
    assert rank_out["vsc"].item() != pytest.approx(out["vsc"].item(), rel=1e-4)


def test_two_nodes_meet_at_a_rendezvous_on_loopback(tmp_path, tiny_feature_store):
    """Two "nodes" of one process each, started as a cluster's would be (one torchrun per
    node, the same command but the node rank), train as one run of world size 2."""
    from model.training.launch import torchrun_command
    wh, _, _ = tiny_feature_store(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with socket.socket() as s:   # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    params = dict(warehouse=str(wh), stage="stage1", config="tiny", steps=2,
                  out_dir=str(tmp_path / "runs"), tracking_uri=uri)
    nodes = [subprocess.Popen(torchrun_command(1, nnodes=2, node_rank=r,
                                               rdzv_endpoint=f"127.0.0.1:{port}", **params)
                              + ["--device", "cpu"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r in range(2)]
    outs = [n.communicate(timeout=300) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [err[-3000:] for _, err in outs]
    ckpt = load_checkpoint(tmp_path / "runs" / "stage1" / "last.pt")
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2 and ckpt["samples_seen"] == 16
    result = json.loads(outs[0][0].strip().splitlines()[-1])   # global rank 0 reports
    client = mlflow.MlflowClient(uri)
    run = client.get_run(result["run_id"])
    assert run.data.params["world_size"] == "2"
    with pytest.raises(ValueError, match="rendezvous"):
        torchrun_command(1, nnodes=2, **params)
