"""Training-step throughput of the MVP task (all five losses, `joint`) on synthetic batches
already in memory, at paper-sized inputs ([CLS] + 33 words + 5 concepts + [SEP] = 40, 20 tags,
50 regions): the in-memory side of the data-path comparison issue 4 asks for, and the GPU figure.

    python benchmarks/train_step.py --config small --batch 64 [--device cuda] [--steps 10]
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from typing import Iterable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model.batch import PretrainBatch, VisualInputs  # noqa: E402
from model.config import load_config  # noqa: E402
from model.mvp import MVP  # noqa: E402
from model.training.config import load_train_config  # noqa: E402
from model.training.task import PretrainTask  # noqa: E402
from model.training.trainer import Trainer  # noqa: E402


def synthetic_batch(cfg, B: int, g: torch.Generator, words=33, concepts=5, tags=20,
                    regions=50) -> PretrainBatch:
    token_ids = torch.randint(1000, 40000, (B, 1 + words), generator=g)
    token_ids[:, 0] = cfg.cls_id
    concept_ids = cfg.concept_offset + torch.randint(0, cfg.n_concepts, (B, concepts),
                                                     generator=g)
    starts = torch.randint(1, words - 2, (B, concepts), generator=g)
    tag_ids = torch.randint(1000, 40000, (B, tags), generator=g)
    tag_ids[:, 0], tag_ids[:, -1] = cfg.cls_id, cfg.sep_id
    R = min(regions, cfg.max_regions)
    return PretrainBatch(
        token_ids=token_ids, token_mask=torch.ones_like(token_ids, dtype=torch.bool),
        concept_ids=concept_ids, concept_mask=torch.ones(B, concepts, dtype=torch.bool),
        concept_spans=torch.stack([starts, starts + 2], -1),
        visual=VisualInputs(tag_ids, torch.ones(B, tags, dtype=torch.bool),
                            torch.randn(B, R, cfg.feat_dim, generator=g),
                            torch.rand(B, R, 6, generator=g), torch.ones(B, R, dtype=torch.bool)),
        image_index=torch.arange(B),
        caption_ids=[str(i) for i in range(B)], image_ids=[str(i) for i in range(B)])


def timed_steps(trainer: Trainer, batches: Iterable, steps: int) -> dict:
    """`steps` optimizer steps, one batch each, drawn from `batches` (a list cycled, or a
    DataLoader iterator). Returns seconds (wall, device synchronised), data_wait_s (time spent
    in next(batches)), samples and the last step's log. Resets CUDA peak memory first."""
    cuda = trainer.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    it, wait, samples, log = iter(batches), 0.0, 0, {}
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t0
        log = trainer.train_step([batch])
        samples += len(batch)
    sync()
    return {"seconds": time.perf_counter() - start, "data_wait_s": wait, "samples": samples,
            "last": log}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--concepts", type=int, default=2000,
                    help="vocabulary size where the preset leaves it to the warehouse")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if cfg.n_concepts < 1:
        cfg = load_config(args.config, n_concepts=args.concepts)
    tcfg = load_train_config(args.config, stage="joint", batch_size=args.batch)
    torch.manual_seed(0)
    trainer = Trainer(PretrainTask(MVP(cfg), tcfg), tcfg, device=args.device)
    g = torch.Generator().manual_seed(0)
    batches = [synthetic_batch(cfg, args.batch, g).to(args.device) for _ in range(4)]
    for b in batches[:2]:  # warm-up (allocator, kernels)
        trainer.train_step([b])
    run = timed_steps(trainer, itertools.cycle(batches), args.steps)
    seconds, log = run["seconds"], run["last"]
    params = sum(p.numel() for p in trainer.task.parameters()) / 1e6
    peak = (f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
            if args.device.startswith("cuda") else "")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"{args.config} ({params:.1f}M params), batch {args.batch}, {name}"
          f"{' bf16 autocast' if args.device.startswith('cuda') else ' fp32'}: "
          f"{args.steps * args.batch / seconds:.1f} samples/s, {seconds / args.steps * 1000:.0f} "
          f"ms/step{peak}; last loss {log['loss']:.3f}", flush=True)


if __name__ == "__main__":
    main()
