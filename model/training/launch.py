"""Run a pre-training stage on several processes: torchrun around `python -m model.training.pretrain`,
with pretrain's arguments and result dict (rank 0 prints it as JSON on its last line)."""
from __future__ import annotations

import json
import subprocess
import sys

from model.training.tracking import tracking_uri as default_uri

_FLAGS = ("warehouse", "stage", "config", "steps", "out_dir", "init_from", "feature_set",
          "vocab", "seed", "tracking_uri", "run_name", "experiment", "parent_run_id",
          "checkpoint_every")
SWITCHES = ("resume", "feature_cache", "reshard")   # flags without a value


def torchrun_command(nproc: int, nnodes: int = 1, node_rank: int = 0,
                     rdzv_endpoint: str | None = None, **params) -> list[str]:
    """torchrun on this machine alone, or (nnodes > 1) as node `node_rank` of `nnodes` that meet
    at `rdzv_endpoint` (HOST:PORT, on node 0) through torchrun's c10d rendezvous."""
    params.setdefault("tracking_uri", default_uri())  # the children's cwd is ours, but be explicit
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ValueError("several nodes meet at a rendezvous: give rdzv_endpoint HOST:PORT")
        # the run id: every node of one run must give the same one
        job = f"mvp-{params.get('stage')}-{params.get('run_name') or 'run'}"
        where = [f"--nnodes={nnodes}", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={job}"]
    else:
        where = ["--standalone"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *where,
           f"--nproc-per-node={nproc}", "-m", "model.training.pretrain"]
    for key in _FLAGS:
        if params.get(key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(params[key])]
    for switch in SWITCHES:
        if params.get(switch):
            cmd.append(f"--{switch.replace('_', '-')}")
    for key, value in (params.get("train_overrides") or {}).items():
        cmd += ["--set", f"{key}={value}"]
    unknown = set(params) - set(_FLAGS) - set(SWITCHES) - {"train_overrides"}
    if unknown:
        raise ValueError(f"not passed to torchrun: {', '.join(sorted(unknown))}")
    return cmd


def torchrun_pretrain(nproc: int, nnodes: int = 1, node_rank: int = 0,
                      rdzv_endpoint: str | None = None, **params) -> dict | None:
    """pretrain(**params) on `nproc` processes of this node: one per GPU (NCCL) on a GPU
    machine, else CPU processes with gloo. Its result comes from global rank 0, on node 0;
    another node returns None."""
    proc = subprocess.run(torchrun_command(nproc, nnodes, node_rank, rdzv_endpoint, **params),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    if node_rank != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
