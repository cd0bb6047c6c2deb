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


def torchrun_command(nproc: int, **params) -> list[str]:
    params.setdefault("tracking_uri", default_uri())  # the children's cwd is ours, but be explicit
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "model.training.pretrain"]
    for key in _FLAGS:
        if params.get(key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(params[key])]
    for switch in ("resume", "feature_cache"):
        if params.get(switch):
            cmd.append(f"--{switch.replace('_', '-')}")
    for key, value in (params.get("train_overrides") or {}).items():
        cmd += ["--set", f"{key}={value}"]
    unknown = set(params) - set(_FLAGS) - {"resume", "feature_cache", "train_overrides"}
    if unknown:
        raise ValueError(f"not passed to torchrun: {', '.join(sorted(unknown))}")
    return cmd


def torchrun_pretrain(nproc: int, **params) -> dict:
    """pretrain(**params) on `nproc` processes: one per GPU (NCCL) on a GPU machine, else CPU
    processes with gloo."""
    proc = subprocess.run(torchrun_command(nproc, **params), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
