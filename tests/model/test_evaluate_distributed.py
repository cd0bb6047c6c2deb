"""Evaluation under torchrun: the processes share the ITM re-ranking's pairs and report what one
process would."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from helpers import ROOT

from model.config import load_config
from model.downstream.evaluate import evaluate, scored_across_ranks
from model.mvp import MVP
from model.training.config import load_train_config
from model.training.task import PretrainTask
from model.training.trainer import Trainer

pytestmark = pytest.mark.slow  # subprocesses: not in make test-fast

N_PAIRS = 11   # not a multiple of the ranks or the batch


def _share_worker(rank: int, world: int, init_file: str, out: str):
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                  world_size=world)
    try:
        seen = []

        def score(text_rows, image_rows):
            seen.extend(text_rows.tolist())
            return (text_rows * 100 + image_rows).float()
        rows = torch.arange(N_PAIRS)
        scores = scored_across_ranks(score, batch_size=2)(rows, rows + 1)
        torch.save({"seen": seen, "scores": scores}, Path(out) / f"share{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_each_process_scores_its_share_and_every_process_gets_all_scores(tmp_path):
    mp.spawn(_share_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    got = [torch.load(tmp_path / f"share{r}.pt", weights_only=True) for r in range(2)]
    expected = torch.arange(N_PAIRS) * 101 + 1.0
    assert all(torch.equal(g["scores"], expected) for g in got)
    assert sorted(got[0]["seen"] + got[1]["seen"]) == list(range(N_PAIRS))   # each pair once
    assert len(got[0]["seen"]) == 6 and len(got[1]["seen"]) == 5


def test_evaluate_under_torchrun_equals_one_process(tmp_path, tiny_feature_store):
    wh, fs, vocab = tiny_feature_store(tmp_path)
    cfg = load_config("tiny", feat_dim=fs["dim"], n_concepts=vocab["concepts"],
                      feature_set=fs["feature_set"], vocab_version=vocab["vocab"])
    torch.manual_seed(0)
    tcfg = load_train_config("tiny", stage="joint")
    ckpt = tmp_path / "joint.pt"
    Trainer(PretrainTask(MVP(cfg), tcfg), tcfg).save(ckpt)
    args = [str(ckpt), "--warehouse", str(wh), "--split", "train", "--k-text", "5",
            "--k-image", "3", "--batch-size", "4", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "model.downstream.evaluate", *args, "--json", str(tmp_path / "m.json")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sum(line.split()[0] == "rerank_t2i_r1" for line in lines) == 1   # rank 0 reports
    two = json.loads((tmp_path / "m.json").read_text())
    one = evaluate(ckpt, wh, split="train", k_text=5, k_image=3, batch_size=4, device="cpu")
    reranked = [k for k in one if k.startswith("rerank_")]
    assert len(reranked) >= 7 and one["n_captions"] > 5
    assert {k: two[k] for k in reranked} == {k: one[k] for k in reranked}
