"""Rank-aware sampling through the feature cache, as training runs it: 2 gloo ranks x 2
DataLoader workers read one epoch of a synthetic warehouse (benchmarks/feature_cache.py's) with
the trainer's own loader (model/training/trainer.py rank_loader), and the script checks what
sharding promises:

- every caption is read exactly once in the epoch, and no caption by both ranks;
- a loader restarted at a checkpoint's position after k steps gives the identical later batches
  (every tensor of every batch, per rank);
- the same position resumed on 1 rank gives the same global order (its batch j holds rank 0's
  then rank 1's captions of global batch k + j).

It reports each rank's rate and exits 1 if any check fails.

    python benchmarks/sharding.py --images 10000 --out benchmarks/results/sharding.json
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the project: benchmarks/*.py

from feature_cache import SHAPES, VOCAB, make_warehouse  # noqa: E402
from measure import save_json  # noqa: E402

from model.config import load_config  # noqa: E402
from model.training import distributed  # noqa: E402
from model.training.feature_cache import cached_data  # noqa: E402
from model.training.trainer import rank_loader  # noqa: E402

WORLD, SEED = 2, 0


def digest(batch) -> str:
    """A hash of every tensor and id list of a batch (nested batches included)."""
    h = hashlib.sha256()
    for field in dataclasses.fields(batch):
        value = getattr(batch, field.name)
        if isinstance(value, torch.Tensor):
            h.update(field.name.encode() + value.contiguous().numpy().tobytes())
        elif dataclasses.is_dataclass(value):
            h.update(digest(value).encode())
        elif value is not None:
            h.update(json.dumps(value).encode())
    return h.hexdigest()


def read_epoch(data, position: dict, rank: int, world: int, args) -> tuple[list, dict]:
    """[(caption ids, digest)] of each batch this rank reads from `position` to the epoch's end,
    and its timing: seconds to the first batch (the workers' start) and samples/s after it."""
    loader, _ = rank_loader(data, SEED, dict(position), args.batch, rank, world, args.workers)
    t0 = time.perf_counter()
    batches, first = [], None
    for b in loader:
        batches.append((b.caption_ids, digest(b)))
        first = first or time.perf_counter()
    rest = sum(len(ids) for ids, _ in batches[1:])
    return batches, {"first_batch_s": round(first - t0, 2),
                     "samples_per_s": round(rest / (time.perf_counter() - first), 1)}


def rank_main(rank: int, args, spec: str, init_file: str, out: str) -> None:
    os.environ["LOCAL_RANK"] = str(rank)   # one node: local rank 0 builds the cache
    # workers forked from the rank, as under torchrun (mp.spawn would make them spawn too)
    mp.set_start_method("fork", force=True)
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                  world_size=WORLD)
    try:
        cfg = load_config("tiny", feat_dim=args.dim, n_concepts=len(SHAPES),
                          feature_set=spec, vocab_version=VOCAB)
        data = cached_data(args.root / "wh", spec, VOCAB, cfg, "train",
                           root=args.root / "cache")
        start = {"epoch": 0, "index": 0}
        full, timing = read_epoch(data, start, rank, WORLD, args)
        resume_at = {"epoch": 0, "index": args.resume_after * args.batch}
        resumed, _ = read_epoch(data, resume_at, rank, WORLD, args)
        report = {"rank": rank, "batches": full, "resumed": resumed, **timing,
                  "samples": sum(len(ids) for ids, _ in full)}
        reports = distributed.gather_objects(report)
        if rank == 0:
            one_rank, _ = read_epoch(data, resume_at, 0, 1, args)
            result = check(reports, one_rank, len(data), args)
            Path(out).write_text(json.dumps(result))
    finally:
        torch_dist.destroy_process_group()


def check(reports: list[dict], one_rank: list, n_captions: int, args) -> dict:
    seen = Counter(c for r in reports for ids, _ in r["batches"] for c in ids)
    per_rank = [{c for ids, _ in r["batches"] for c in ids} for r in reports]
    k = args.resume_after
    merged = [reports[0]["batches"][k + j][0] + reports[1]["batches"][k + j][0]
              for j in range(len(one_rank))]
    checks = {
        "every caption exactly once": len(seen) == n_captions and set(seen.values()) == {1},
        "no caption on both ranks": not (per_rank[0] & per_rank[1]),
        f"resumed after {k} steps: identical later batches on every rank":
            all(r["resumed"] == r["batches"][k:] for r in reports),
        "2-rank position resumed on 1 rank: the same global order":
            len(one_rank) == len(reports[0]["batches"]) - k
            and [ids for ids, _ in one_rank] == merged,
    }
    return {"images": args.images, "captions": n_captions, "batch": args.batch,
            "workers": args.workers, "ranks": WORLD, "checks": checks,
            "rank_samples_per_s": [r["samples_per_s"] for r in reports],
            "rank_first_batch_s": [r["first_batch_s"] for r in reports],
            "rank_samples": [r["samples"] for r in reports]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--regions", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=256, help="the global batch")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per rank")
    p.add_argument("--resume-after", type=int, default=10, help="steps before the restart")
    p.add_argument("--root", type=Path, default=Path("runs/bench/sharding"))
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    args.root = args.root / str(args.images)
    spec = make_warehouse(args.root / "wh", args.images, args.regions, args.dim)
    result_file = args.root / "result.json"
    result_file.unlink(missing_ok=True)
    mp.spawn(rank_main, args=(args, spec, str(args.root / "init"), str(result_file)),
             nprocs=WORLD)
    (args.root / "init").unlink(missing_ok=True)
    result = json.loads(result_file.read_text())
    print(f"{WORLD} ranks x {args.workers} workers, {result['captions']} captions, global batch "
          f"{args.batch}: samples/s per rank after the first batch "
          f"{result['rank_samples_per_s']}, first batch after {result['rank_first_batch_s']} s, "
          f"samples per rank {result['rank_samples']}")
    for name, ok in result["checks"].items():
        print(f"{name}: {'met' if ok else 'NOT met'}")
    save_json(args.out, result)
    sys.exit(0 if all(result["checks"].values()) else 1)


if __name__ == "__main__":
    main()
