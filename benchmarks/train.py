"""What the data path costs a training run (issue 4): the same N optimizer steps of the joint
stage, side by side in one run,

  (a) data path   PretrainData -> DataLoader (workers, collate) in the training order
  (b) in memory   the same batches, collated before the clock starts and held in memory

from the same initial weights and RNG states, so both runs compute exactly the same steps (the
last losses must agree). Reports samples/s of each, their ratio (target: the data path costs at
most 10%), the time (a) spent waiting for batches, and peak memory: RSS of the process and its
DataLoader workers (sampled every 20 ms; an upper bound, since pages the forked workers share
with the main process count once per process), and CUDA max allocated on GPU. CPU seconds of the
main process and of the workers are reported beside wall time: on a shared machine they are the
steadier measure. The timed loop is
benchmarks/train_step.py's `timed_steps`; worker start-up and `--warmup` steps are not timed.

    python benchmarks/train.py --warehouse /tmp/demo/warehouse --config small --steps 20 \\
        --batch-size 64 --workers 2 [--device cuda]

Writes benchmarks/results/train.json (and .txt, the printed table).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.train_step import timed_steps  # noqa: E402
from features.vocabulary import latest_vocab  # noqa: E402
from model.config import load_config  # noqa: E402
from model.mvp import MVP  # noqa: E402
from model.training.config import load_train_config  # noqa: E402
from model.training.data import DeterministicSampler, PretrainData  # noqa: E402
from model.training.pretrain import n_concepts, pick_feature_set  # noqa: E402
from model.training.task import PretrainTask  # noqa: E402
from model.training.trainer import Trainer  # noqa: E402
from warehouse.store import Warehouse  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class PeakRSS:
    """Peak resident memory of this process plus its children (DataLoader workers) while the
    block runs, sampled by a thread: ru_maxrss cannot be reset between the two runs."""

    def __init__(self, every_s: float = 0.02):
        self.every_s, self.peak = every_s, 0
        self._stop = threading.Event()

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every_s)

    def __enter__(self):
        self.peak = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _trainer(cfg, tcfg, device: str) -> Trainer:
    torch.manual_seed(tcfg.seed)  # same init and dropout draws in both runs
    return Trainer(PretrainTask(MVP(cfg), tcfg), tcfg, device=device)


def _cpu_seconds() -> tuple[float, float]:
    """CPU time (user + system) of this process and of its live children (the workers)."""
    me = psutil.Process()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            t = child.cpu_times()
            children += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    t = me.cpu_times()
    return t.user + t.system, children


def _run(name: str, trainer: Trainer, batches, warmup: int, steps: int) -> dict:
    with PeakRSS() as rss:
        it = iter(batches)
        t0 = time.perf_counter()
        for _ in range(warmup):
            trainer.train_step([next(it)])
        warm_s = time.perf_counter() - t0
        cpu0 = _cpu_seconds()
        r = timed_steps(trainer, it, steps)
        cpu1 = _cpu_seconds()
    cuda = trainer.device.type == "cuda"
    # CPU seconds are steadier than wall time on a shared machine: they do not count the time
    # other jobs hold the cores
    return {"name": name, "samples_per_s": r["samples"] / r["seconds"], "seconds": r["seconds"],
            "data_wait_s": r["data_wait_s"], "warmup_s": warm_s, "samples": r["samples"],
            "cpu_s_main": cpu1[0] - cpu0[0], "cpu_s_workers": cpu1[1] - cpu0[1],
            "peak_rss_mib": rss.peak / 2**20,
            "cuda_max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "last_loss": r["last"]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--config", default="small")
    ap.add_argument("--feature-set")
    ap.add_argument("--vocab")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=str(RESULTS / "train.json"))
    args = ap.parse_args()

    wh = Warehouse(args.warehouse)
    spec = pick_feature_set(wh, args.feature_set)
    vocab = args.vocab or latest_vocab(wh)
    cfg = load_config(args.config, feat_dim=spec.dim, n_concepts=n_concepts(wh, vocab),
                      feature_set=spec.id, vocab_version=vocab)
    tcfg = load_train_config(args.config, stage="joint", batch_size=args.batch_size)
    t0 = time.perf_counter()
    data = PretrainData(wh, spec.id, vocab, cfg, split="train")
    load_s = time.perf_counter() - t0
    n = args.warmup + args.steps
    order = DeterministicSampler(len(data), tcfg.seed, epoch=0).batches(args.batch_size,
                                                                        drop_last=True)
    if n > len(order):
        raise SystemExit(f"{n} batches asked, the split has {len(order)} of {args.batch_size}")

    # (b) first collated, so that (a)'s workers are not alive while (b) runs
    t0 = time.perf_counter()
    held = [data.collate([data[i] for i in idx]).to(args.device)
            for _, idx in zip(range(n), order)]
    collate_s = time.perf_counter() - t0
    in_memory = _run("in memory", _trainer(cfg, tcfg, args.device), held, args.warmup,
                     args.steps)
    del held

    loader = DataLoader(data, batch_sampler=order, collate_fn=data.collate,
                        num_workers=args.workers, pin_memory=args.device.startswith("cuda"),
                        persistent_workers=False)
    batches = iter(loader)  # before seeding: the loader's iterator draws from the global RNG
    data_path = _run(f"data path ({args.workers} workers)", _trainer(cfg, tcfg, args.device),
                     batches, args.warmup, args.steps)
    del batches

    ratio = data_path["samples_per_s"] / in_memory["samples_per_s"]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    report = {
        "config": args.config, "device": device, "steps": args.steps, "warmup": args.warmup,
        "batch_size": args.batch_size, "workers": args.workers, "train_captions": len(data),
        "dataset_load_s": load_s, "precollate_s": collate_s, "cpu_count": os.cpu_count(),
        "runs": [in_memory, data_path], "data_path_over_in_memory": ratio,
        "data_path_cost": 1 - ratio,
        "same_losses": abs(in_memory["last_loss"] - data_path["last_loss"]) < 1e-4,
    }
    lines = [f"# python benchmarks/train.py --warehouse {args.warehouse} --config {args.config} "
             f"--steps {args.steps} --batch-size {args.batch_size} --workers {args.workers} "
             f"--device {args.device}",
             f"joint stage, {args.config}, batch {args.batch_size}, {device}, "
             f"{len(data)} train captions (PretrainData built in {load_s:.1f} s)",
             f"  {'run':<24}{'samples/s':>10}{'s':>8}{'data wait s':>13}{'CPU s main':>12}"
             f"{'CPU s workers':>15}{'peak RSS MiB':>14}{'CUDA GiB':>10}{'last loss':>11}"]
    for r in report["runs"]:
        cuda = "-" if r["cuda_max_allocated_gib"] is None else f"{r['cuda_max_allocated_gib']:.2f}"
        lines.append(f"  {r['name']:<24}{r['samples_per_s']:>10.1f}{r['seconds']:>8.1f}"
                     f"{r['data_wait_s']:>13.2f}{r['cpu_s_main']:>12.1f}{r['cpu_s_workers']:>15.1f}"
                     f"{r['peak_rss_mib']:>14.0f}{cuda:>10}{r['last_loss']:>11.4f}")
    lines.append(f"  data path / in memory = {ratio:.3f} (cost {100 * (1 - ratio):.1f}%, target "
                 f"<= 10%); same losses: {report['same_losses']}")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
