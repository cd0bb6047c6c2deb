"""Publishing a corpus in extraction-sized commits: does a commit cost the same at the end as at
the start? 10k, 100k and 1M synthetic images (no pixels, no model), on a local root and on a
loopback S3 server (moto), beside what the full-copy store this one replaced wrote per commit.

Each commit is what a feature-extraction shard publishes, through the product's own code
(features.extract: `_publish` stages region_features + image_features parts, checks them against
what other writers committed since the run's base and commits; then the run's base advances as
in `extract_features`): --shard images of --regions x --dim fp16 vectors. For the first and the
last window of --window commits (a checkpoint interval, so each holds one checkpoint) it reports
the mean wall time of a commit, the log bytes it wrote (its entry alone, and with the
checkpoints amortised) and the ratio last / first. The full-copy store wrote the whole state at
every commit: its size at the first and the last commit is computed from the same state.
--compact-every K also runs `mvp compact` on the feature tables every K commits (its log bytes
count in the window it falls in, its time is reported apart), which bounds the live parts a
checkpoint lists.

    python benchmarks/publish_scale.py --sizes 10000 100000 1000000 [--s3-sizes 10000 100000]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))

from commit_cost import full_copy, moto_root  # noqa: E402
from measure import save_json  # noqa: E402

from features import extract  # noqa: E402
from features.feature_sets import FeatureSetSpec  # noqa: E402
from warehouse import log  # noqa: E402
from warehouse.compact import compact  # noqa: E402
from warehouse.store import Warehouse  # noqa: E402

FEATURE_TABLES = ["region_features", "image_features", "rejects"]


def synthetic_spec(dim: int, regions: int) -> FeatureSetSpec:
    return FeatureSetSpec(kind="extracted", backbone="synthetic", pretrained="none",
                          weights_sha256="0" * 64, box_source="grid", image_size=None, dim=dim,
                          dtype="float16", max_regions=regions, grid=1, code_version="bench")


def shard_rows(spec: FeatureSetSpec, build_id: str, ids: list[str],
               rng: np.random.Generator) -> extract._ShardRows:
    """What extracting `ids` would leave in memory before the publish."""
    rows = extract._ShardRows(spec, build_id)
    n = len(ids) * spec.max_regions
    rows.image_ids = list(ids)
    rows.regions = {"image_id": [i for i in ids for _ in range(spec.max_regions)],
                    "region_id": [f"{i}#grid{k}" for i in ids for k in range(spec.max_regions)],
                    "box_source": ["grid"] * n, "label": [None] * n, "score": [None] * n}
    rows.boxes = [np.zeros((n, 4), np.float32)]
    rows.geometry = [np.zeros((n, 6), np.float32)]
    rows.region_vectors = [rng.standard_normal((n, spec.dim), dtype=np.float32)]
    rows.image_vectors = [rng.standard_normal((len(ids), spec.dim), dtype=np.float32)]
    return rows


def log_bytes(wh: Warehouse, after: int, upto: int) -> dict:
    """Bytes the commits after version `after` up to `upto` wrote into the log: their entries
    (the compaction's too), and any checkpoint with its hint."""
    out = {"entry": 0, "checkpoint": 0}
    for version in range(after + 1, upto + 1):
        out["entry"] += wh.storage.size(log.entry_name(version)) or 0
        if (size := wh.storage.size(log.checkpoint_name(version))) is not None:
            out["checkpoint"] += size + (wh.storage.size(log.HINT) or 0)
    return out


def window_stats(commits: list[dict]) -> dict:
    n = len(commits)
    return {"commits": n, "commit_ms": sum(c["ms"] for c in commits) / n,
            "entry_bytes": sum(c["entry"] for c in commits) / n,
            "log_bytes": sum(c["log"] for c in commits) / n,
            "checkpoints": sum(c["checkpoint"] for c in commits)}


def publish_corpus(root: str, images: int, shard: int, spec: FeatureSetSpec, window: int,
                   compact_every: int) -> dict:
    wh = Warehouse(root)
    rng = np.random.default_rng(0)
    ids = [f"synthetic:{i:08d}" for i in range(images)]
    base, commits, first_state, compact_s = wh.current(), [], None, 0.0
    started = time.perf_counter()
    for n, start in enumerate(range(0, images, shard), start=1):
        rows = shard_rows(spec, f"features-bench-{n:06d}", ids[start:start + shard], rng)
        before = base.version
        t = time.perf_counter()
        extract._publish(wh, spec, rows, {}, {"batch_size": 256}, base)
        head = wh.current()
        extract._published_since(wh, base, head, spec)  # the run's base advancing
        base = head
        ms = (time.perf_counter() - t) * 1e3
        if compact_every and n % compact_every == 0:  # a maintenance job, timed apart
            t = time.perf_counter()
            compact(wh, FEATURE_TABLES)
            base = wh.current()
            compact_s += time.perf_counter() - t
        written = log_bytes(wh, before, base.version)
        commits.append({"ms": ms, "entry": written["entry"], "log": sum(written.values()),
                        "checkpoint": written["checkpoint"] > 0})
        if first_state is None:
            first_state = len(full_copy(base))
    last_state = len(full_copy(base))
    hint = wh.storage.read(log.HINT)
    w = min(window, max(1, len(commits) // 2))
    first, last = window_stats(commits[:w]), window_stats(commits[-w:])
    return {"images": images, "root": root.split("://")[0] if "://" in root else "local",
            "commits": len(commits), "seconds": time.perf_counter() - started,
            "compact_s": compact_s,
            "live_parts": sum(len(base.tables[t]) for t in FEATURE_TABLES),
            "first": first, "last": last,
            "ratio": {k: last[k] / first[k] for k in ("commit_ms", "entry_bytes", "log_bytes")},
            "full_copy_bytes": {"first": first_state, "last": last_state},
            "last_checkpoint_bytes": wh.storage.size(log.checkpoint_name(int(hint))) if hint else 0,
            "read_ms": _timed(wh.current) * 1e3}


def _timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def print_table(results: list[dict]) -> None:
    print(f"{'images':>8} {'root':>5} {'commits':>7} | {'commit ms first/last':>22} | "
          f"{'entry B first/last':>20} | {'log B/commit first/last':>26} | "
          f"{'full copy B first/last':>24} | {'current() ms':>12}")
    for r in results:
        f, la, x = r["first"], r["last"], r["ratio"]
        print(f"{r['images']:>8} {r['root']:>5} {r['commits']:>7} | "
              f"{f['commit_ms']:6.1f} {la['commit_ms']:6.1f} ({x['commit_ms']:4.2f}x) | "
              f"{f['entry_bytes']:5.0f} {la['entry_bytes']:5.0f} ({x['entry_bytes']:4.2f}x) | "
              f"{f['log_bytes']:7.0f} {la['log_bytes']:7.0f} ({x['log_bytes']:5.2f}x) | "
              f"{r['full_copy_bytes']['first']:9d} {r['full_copy_bytes']['last']:10d} | "
              f"{r['read_ms']:12.1f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--s3-sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--shard", type=int, default=256, help="images per commit (the old "
                    "extraction shard; extract_features now commits ~1 GiB)")
    ap.add_argument("--regions", type=int, default=16)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--window", type=int, default=log.CHECKPOINT_EVERY)
    ap.add_argument("--compact-every", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    spec = synthetic_spec(args.dim, args.regions)
    results = []

    def run(root: str, images: int) -> None:
        results.append(publish_corpus(root, images, args.shard, spec, args.window,
                                      args.compact_every))
        print(json.dumps(results[-1]), flush=True)

    with tempfile.TemporaryDirectory(prefix="publish-scale-") as tmp:
        for images in args.sizes:
            run(f"{tmp}/wh-{images}", images)
    if args.s3_sizes:
        root, server = moto_root()
        try:
            for images in args.s3_sizes:
                run(f"{root}-{images}", images)
        finally:
            server.stop()
    print_table(results)
    save_json(args.out, results)


if __name__ == "__main__":
    main()
