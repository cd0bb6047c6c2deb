"""The training loop: AdamW, warmup + cosine lr, gradient accumulation, clipping, bf16 autocast on
CUDA, DDP under a process group, and checkpoints a run resumes from EXACTLY (the same losses after
step k as an uninterrupted run)."""
from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model.mvp import param_groups
from model.training import distributed
from model.training.checkpoint import load_checkpoint, load_weights, save_checkpoint
from model.training.config import TrainConfig
from model.training.data import DeterministicSampler


def rank_loader(data, seed: int, position: dict, batch_size: int, rank: int, world: int,
                num_workers: int = 0, pin_memory: bool = False) -> tuple[DataLoader, list[int]]:
    """This rank's DataLoader over the rest of epoch position["epoch"] from sample
    position["index"] on: its slice of each global batch of the DeterministicSampler order (the
    order is the same at any world size), and the global batches' sizes."""
    sampler = DeterministicSampler(len(data), seed, position["epoch"], start=position["index"])
    # An epoch's last global batch, if smaller than the number of ranks, would leave a rank
    # without data: it is skipped (never with one process).
    global_batches = [b for b in sampler.batches(batch_size) if len(b) >= world]
    # its own generator: creating a loader draws a seed, which from the global RNG would shift
    # dropout after a resume (a new loader mid-epoch) against an uninterrupted run
    loader = DataLoader(data, collate_fn=data.collate, num_workers=num_workers,
                        pin_memory=pin_memory, generator=torch.Generator(),
                        batch_sampler=[distributed.rank_slice(b, rank, world)
                                       for b in global_batches])
    return loader, [len(b) for b in global_batches]


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): (step+1)/warmup during warmup
    (no step is wasted at lr 0), then cosine from 1 down to 0 at `total_steps`, 0 after."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    """Trains any module whose forward(batch, generator) returns a dict with a scalar "loss"."""

    def __init__(self, task: nn.Module, tcfg: TrainConfig, device: str | torch.device = "cpu"):
        self.task, self.tcfg = task.to(device), tcfg
        self.device = torch.device(device)
        # what forward and backward run through; self.task stays the unwrapped module
        self.wrapped = task
        if distributed.is_distributed():
            # no find_unused_parameters: the task freezes what its losses never reach
            self.wrapped = DistributedDataParallel(
                task, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.AdamW(param_groups(task, tcfg.weight_decay), lr=tcfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, tcfg.warmup_steps, tcfg.total_steps))
        # Every random choice of the task (masks, ITM direction split, WPG draws) comes from this
        # generator, so checkpointing its state makes the masks of a resumed run the same. Rank r
        # seeds it with seed + r: ranks draw different masks, rank 0 those of a single process.
        self.generator = torch.Generator().manual_seed(tcfg.seed + distributed.rank())
        self.step = 0            # optimizer steps taken
        self.samples_seen = 0    # over the global batch

    # ---- one optimizer step ----

    def backward(self, micro_batches: list) -> dict[str, float]:
        """Forward + backward over the micro-batches, gradients summed into .grad. Each loss is
        divided by their number, so with equal sizes and per-sample-mean losses the gradient
        equals that of one batch of their concatenation. Returns the mean of each loss (over
        the micro-batches and, under DDP, the ranks)."""
        n = len(micro_batches)
        totals: dict[str, float] = {}
        samples = 0
        self.task.train()
        if hasattr(self.task, "step"):   # tasks with a schedule of their own (ITM's curriculum)
            self.task.step = self.step
        for k, batch in enumerate(micro_batches):
            batch = batch.to(self.device) if hasattr(batch, "to") else batch
            # DDP averages gradients once per step, on the last micro-batch's backward
            sync = k == n - 1 or not isinstance(self.wrapped, DistributedDataParallel)
            with contextlib.nullcontext() if sync else self.wrapped.no_sync():
                with torch.autocast("cuda", dtype=torch.bfloat16,
                                    enabled=self.device.type == "cuda"):
                    out = self.wrapped(batch, self.generator)
                (out["loss"] / n).backward()
            for name, v in out.items():
                totals[name] = totals.get(name, 0.0) + v.detach().float().item() / n
            samples += len(batch)
        self.samples_seen += distributed.all_sum(samples, self.device)
        return distributed.all_mean(totals, self.device)

    def train_step(self, micro_batches: list) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches (any number is accepted). Returns
        the losses, the lr the step used and the gradient norm before clipping."""
        log = self.backward(micro_batches)
        log["lr"] = self.scheduler.get_last_lr()[0]
        params = [p for p in self.task.parameters() if p.grad is not None]
        if self.tcfg.clip_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.tcfg.clip_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        log["grad_norm"] = norm.item()
        self.optimizer.step()
        if hasattr(self.task, "after_step"):   # e.g. a momentum teacher's update
            self.task.after_step()
        self.scheduler.step()
        # set_to_none: parameters the stage does not use keep grad None, so AdamW skips them
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return log

    def run(self, data, position: dict, stop: int, checkpoint: str | Path | None = None,
            checkpoint_every: int = 0, on_step=None) -> dict[str, float]:
        """The training loop: optimizer steps until `stop`, epoch after epoch over `data` (a
        Dataset with `collate`) in DeterministicSampler order, each rank on its slice of every
        global batch. `position` ({"epoch", "index"} in samples of the global batch) is kept
        current and saved with every checkpoint, so `load` + `run` continues exactly.
        `on_step(step, log, micro_batches)` after each step (metrics, diagnostics, progress).
        Returns the last step's log."""
        tcfg, last = self.tcfg, {}
        rank, world = distributed.rank(), distributed.world_size()
        while self.step < stop:
            loader, sizes = rank_loader(data, tcfg.seed, position, tcfg.batch_size, rank, world,
                                        tcfg.num_workers, self.device.type == "cuda")
            loader, sizes = iter(loader), iter(sizes)
            epoch_done = False
            while self.step < stop:
                t0 = time.perf_counter()
                # a step's micro-batches never span two epochs: the position stays one
                # (epoch, index)
                group = [b for b in (next(loader, None) for _ in range(tcfg.grad_accum))
                         if b is not None]
                epoch_done = len(group) < tcfg.grad_accum
                if not group:
                    break
                wait = time.perf_counter() - t0
                last = self.train_step(group)
                n = sum(next(sizes) for _ in group)
                position["index"] += n
                last.update(samples_per_s=n / (time.perf_counter() - t0), data_wait_s=wait)
                if on_step is not None:
                    on_step(self.step, last, group)
                if checkpoint is not None and checkpoint_every \
                        and self.step % checkpoint_every == 0:
                    self.save(checkpoint, data_position=position)
                if epoch_done:
                    break
            if epoch_done or position["index"] >= len(data):
                position["epoch"], position["index"] = position["epoch"] + 1, 0
        return last

    # ---- checkpoints ----

    def save(self, path: str | Path, data_position: dict | None = None) -> None:
        """Write everything a resumed run needs; atomic (a kill mid-write leaves the old file).
        Under DDP every rank must call it (their RNG states are gathered); rank 0 writes."""
        rng = distributed.gather_objects({
            "task_generator": self.generator.get_state(),
            "torch": torch.get_rng_state(),   # dropout on CPU
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python": random.getstate(),   # (version, tuple of ints, None): plain values
            "numpy": _numpy_state(),
        })
        if not distributed.is_main():
            return
        model = getattr(self.task, "model", self.task)
        state = {
            "model": model.state_dict(),
            "model_config": model.cfg.to_dict() if hasattr(model, "cfg") else None,
            "train_config": self.tcfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "samples_seen": self.samples_seen,
            "data_position": data_position,
            "rng": rng,   # one entry per rank
            # the task's own state beyond the model's weights (a momentum teacher)
            "task_state": (self.task.training_state() if hasattr(self.task, "training_state")
                           else None),
        }
        save_checkpoint(state, path)

    def _reseed(self, step: int) -> None:
        """Random streams of this rank after a reshard: a function of (seed, step, rank)."""
        seed = (self.tcfg.seed * 1_000_003 + step) * 1_009 + distributed.rank()
        self.generator.manual_seed(seed)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)

    def load(self, path: str | Path, reshard: bool = False) -> dict | None:
        """Restore the full training state saved by `save`; returns its data_position. A
        checkpoint of another number of processes is refused unless `reshard`: then the run
        continues the same global sample order, but each rank's random streams (masks, dropout)
        start anew from (seed, step, rank), so its losses are not those of the original run."""
        state = load_checkpoint(path, needs=("model", "optimizer", "scheduler", "rng"))
        load_weights(self.task, state)
        if hasattr(self.task, "load_training_state"):
            self.task.load_training_state(state.get("task_state"))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.samples_seen = state["step"], state["samples_seen"]
        per_rank = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # pre-DDP
        if len(per_rank) != distributed.world_size():
            if not reshard:
                raise ValueError(f"{path} was written by {len(per_rank)} process(es); resume it "
                                 f"with as many (this run has {distributed.world_size()}) to "
                                 "continue exactly, or reshard to continue its data order")
            self._reseed(state["step"])
            return state["data_position"]
        rng = per_rank[distributed.rank()]
        self.generator.set_state(rng["task_generator"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(rng["python"])
        name, keys, *rest = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        return state["data_position"]


def _numpy_state() -> tuple:
    """np.random.get_state() with its key array as a tensor: a checkpoint holds no NumPy
    objects, so it loads weights-only (model/training/checkpoint.py)."""
    name, keys, *rest = np.random.get_state()   # rest: position, has_gauss, cached_gaussian
    return (name, torch.from_numpy(keys.astype(np.int64)), *rest)
