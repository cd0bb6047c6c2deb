"""Memory and speed of the pre-training data path at several corpus sizes: today's in-memory
PretrainData against the memory-mapped feature cache (model/training/feature_cache.py), side by
side on the same synthetic warehouse (N images x R regions x D-d float16 vectors, one caption
each, no PNGs). Each measurement runs in a fresh process and reports its proportional set size
split into anonymous memory and file pages (the page cache it maps), its peak RSS, the time to
the first batch and the rate of `--steps` batches of `--batch` captions (collated, the loader's
work; no model step).

    python benchmarks/feature_cache.py --sizes 10000 100000 --out benchmarks/results/cache.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the project: benchmarks/features.py

from measure import peak_rss_mib, save_json  # noqa: E402

from features.feature_sets import FeatureSetSpec, register_feature_set  # noqa: E402
from model.config import load_config  # noqa: E402
from warehouse import vectors  # noqa: E402
from warehouse.publish import write_part  # noqa: E402
from warehouse.schemas import CAPTION_CONCEPTS, CAPTIONS, CONCEPTS, REGION_FEATURES  # noqa: E402
from warehouse.store import Warehouse  # noqa: E402

VOCAB = "bench-vocab"
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]
SHARD = 20_000  # images per part file


def make_warehouse(root: Path, n: int, regions: int, dim: int, seed: int = 0) -> str:
    """A warehouse with a synthetic feature set, captions and a small vocabulary; its feature
    set id (reused when the folder exists)."""
    wh = Warehouse(root)
    spec = FeatureSetSpec(kind="imported", backbone="bench", pretrained="none",
                          weights_sha256="0" * 64, box_source="bench", image_size=None, dim=dim,
                          dtype="float16", max_regions=regions, grid=0, code_version="bench")
    if wh.current().tables.get("region_features"):   # built by an earlier run
        return spec.id
    register_feature_set(wh, spec)
    rng = np.random.default_rng(seed)
    concepts = pa.table({"vocab": [VOCAB] * len(SHAPES), "id": pa.array(range(len(SHAPES)),
                                                                          pa.int32()),
                         "kind": ["object"] * len(SHAPES), "tuple": [[s] for s in SHAPES],
                         "text": SHAPES, "side": ["both"] * len(SHAPES),
                         "caption_count": [n] * len(SHAPES), "image_count": [n] * len(SHAPES)},
                        schema=CONCEPTS)
    with wh.staging("bench") as folder:
        staged = {"concepts": [folder / "bench-concepts.parquet"]}
        write_part(concepts, staged["concepts"][0])
        for k, start in enumerate(range(0, n, SHARD)):
            m = min(SHARD, n - start)
            images = [f"bench:{i:08d}" for i in range(start, start + m)]
            per_region = np.repeat(images, regions)
            vecs = rng.standard_normal((m * regions, dim), dtype=np.float32)
            geometry = rng.random((m * regions, 6), dtype=np.float32)
            shape = rng.integers(0, len(SHAPES), (m * regions,))
            zeros = pa.array(np.zeros(m * regions, np.float32))
            regions_t = pa.table({
                "feature_set": [spec.id] * (m * regions), "image_id": per_region,
                "region_id": [f"{im}#r{j % regions}" for j, im in enumerate(per_region)],
                "box_source": ["imported"] * (m * regions),
                "label": [SHAPES[s] for s in shape], "score": zeros,
                "x1": zeros, "y1": zeros, "x2": zeros, "y2": zeros,
                "geometry": pa.FixedSizeListArray.from_arrays(pa.array(geometry.reshape(-1)), 6),
                "vector": vectors.encode(vecs, "float16"), "build_id": ["bench"] * (m * regions)},
                schema=REGION_FEATURES)
            colour = rng.integers(0, len(COLOURS), (m, 2))
            shape = rng.integers(0, len(SHAPES), (m, 2))
            texts = [f"a {COLOURS[c[0]]} {SHAPES[s[0]]} left of a {COLOURS[c[1]]} {SHAPES[s[1]]}"
                     for c, s in zip(colour, shape)]
            ids = [f"bench:c{i:08d}" for i in range(start, start + m)]
            captions = pa.table({"id": ids, "image_id": images, "dataset": ["bench"] * m,
                                 "text": texts, "split": ["train"] * m,
                                 "box": pa.array([None] * m, CAPTIONS.field("box").type),
                                 "ingest_id": ["bench"] * m}, schema=CAPTIONS)
            mentions = pa.table({  # the two shapes: words 2 and 7 of the caption
                "vocab": [VOCAB] * (2 * m), "caption_id": np.repeat(ids, 2),
                "concept_id": pa.array(shape.reshape(-1), pa.int32()),
                "token_start": pa.array(np.tile([2, 7], m), pa.int32()),
                "token_end": pa.array(np.tile([3, 8], m), pa.int32())}, schema=CAPTION_CONCEPTS)
            for table, rows in (("region_features", regions_t), ("captions", captions),
                                ("caption_concepts", mentions)):
                path = folder / f"bench-{table}-{k:04d}.parquet"
                write_part(rows, path)
                staged.setdefault(table, []).append(path)
        wh.publish(staged, {"kind": "bench", "build_id": f"bench-{n}"})
    return spec.id


def _memory() -> dict:
    """This process's PSS by kind (MiB) and peak RSS, from /proc."""
    rollup = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":")
        rollup[key] = int(value.split()[0]) / 1024
    peak = peak_rss_mib()
    return {"pss_mib": round(rollup["Pss"], 1), "pss_anon_mib": round(rollup["Pss_Anon"], 1),
            "pss_file_mib": round(rollup["Pss_File"], 1),
            "private_dirty_mib": round(rollup["Private_Dirty"], 1),
            # USS: pages no other process maps (file pages read by this rank alone count too)
            "uss_mib": round(rollup["Private_Clean"] + rollup["Private_Dirty"], 1),
            "peak_rss_mib": round(peak, 1)}


def measure(args) -> dict:
    """One measurement in this (fresh) process: `args.path` is memory | build | cache."""
    from model.training.data import DeterministicSampler, PretrainData
    from model.training.feature_cache import build_cache, open_cache
    wh = Warehouse(args.warehouse)
    cfg = load_config("tiny", feat_dim=args.dim, n_concepts=len(SHAPES),
                      feature_set=args.feature_set, vocab_version=VOCAB)
    started = time.perf_counter()
    runtime = _memory()   # the interpreter, torch and the project's modules, before any data
    if args.path == "build":
        folder = build_cache(wh, args.feature_set, VOCAB, cfg, root=args.cache_root)
        return {"build_s": round(time.perf_counter() - started, 2),
                "cache_bytes": sum(f.stat().st_size for f in folder.iterdir()), **_memory()}
    if args.path == "load-rate":
        return load_rate(build_cache(wh, args.feature_set, VOCAB, cfg, root=args.cache_root), cfg)
    if args.path == "memory":
        data = PretrainData(wh, args.feature_set, VOCAB, cfg, split="train")
    else:
        data = open_cache(build_cache(wh, args.feature_set, VOCAB, cfg, root=args.cache_root),
                          cfg)
    order = DeterministicSampler(len(data), seed=0, epoch=0).permutation().tolist()
    order = order[args.rank::args.world]  # this rank's samples
    batches = [[order[j % len(order)] for j in range(k, k + args.batch)]  # cycled when short
               for k in range(0, args.steps * args.batch, args.batch)]
    # the in-memory path as it ran before whole-batch loading (an object per item, then collate);
    # the cache as the trainer's DataLoader reads it now (PretrainData.batch)
    load = (lambda b: data.collate([data[i] for i in b])) if args.path == "memory" else data.batch
    load(batches[0])
    first = time.perf_counter() - started
    if data.prefaulting is not None:   # steady state: the rate once the cache is mapped in
        data.prefaulting.join()
    prefaulted = time.perf_counter() - started
    t0 = time.perf_counter()
    for b in batches:
        load(b)
    seconds = time.perf_counter() - t0
    _all_ranks_here(args, "measured")   # ranks of one cache measure while all of them map it
    memory = _memory()
    _all_ranks_here(args, "done")
    return {"first_batch_s": round(first, 2), "prefaulted_s": round(prefaulted, 2),
            "samples_per_s": round(len(batches) * args.batch / seconds, 1), **memory,
            "runtime_uss_mib": runtime["uss_mib"],
            "runtime_private_dirty_mib": runtime["private_dirty_mib"]}


def _all_ranks_here(args, phase: str, timeout_s: float = 600) -> None:
    """A file barrier between the --world processes of one measurement."""
    if args.world == 1:
        return
    folder = Path(args.cache_root) / "barrier"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{phase}-{args.rank}").touch()
    deadline = time.monotonic() + timeout_s
    while not all((folder / f"{phase}-{r}").exists() for r in range(args.world)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"ranks did not all reach {phase}")
        time.sleep(0.01)


READ_PER_REGION = ("vectors", "geometry", "region_labels", "tags")   # the cache files a batch reads


def load_rate(folder: Path, cfg, batches=(256, 1024)) -> dict:
    """Bytes per second from the cache's region files (vectors, geometry, labels, tags) into
    padded training batches of each size (every image once, in row order; whole batches as the
    loader reads them, and an object per item as before) against reading the same files whole
    with np.fromfile; warm page cache, best of 3."""
    from model.training.feature_cache import open_cache
    side = open_cache(folder, cfg).images
    files = [folder / f"{name}.bin" for name in READ_PER_REGION]
    n_bytes, n = sum(f.stat().st_size for f in files), len(side.regions.offsets) - 1

    def best(fn) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)
    raw = best(lambda: [np.fromfile(f, np.uint8) for f in files])
    out = {"bytes": n_bytes, "raw_gb_per_s": round(n_bytes / raw / 1e9, 3)}
    for size in batches:
        path = best(lambda: [side.batch(np.arange(s, min(s + size, n)))
                             for s in range(0, n, size)])
        out[f"batch_{size}"] = {"gb_per_s": round(n_bytes / path / 1e9, 3),
                                "ratio": round(raw / path, 3)}
    items = best(lambda: [side.collate([side.item(r) for r in range(s, min(s + 256, n))])
                          for s in range(0, n, 256)])
    out["items_256"] = {"gb_per_s": round(n_bytes / items / 1e9, 3), "ratio": round(raw / items, 3)}
    return out


def _uss(ranks: list[dict], data_only: bool = False) -> float:
    """USS summed over ranks (MiB); `data_only`: the private memory the data added to each rank
    (anonymous and dirty pages: copies), not the file pages that rank alone happened to touch,
    which USS also counts though they are the node's one page-cache copy."""
    if data_only:
        return sum(r["private_dirty_mib"] - r["runtime_private_dirty_mib"] for r in ranks)
    return sum(r["uss_mib"] for r in ranks)


def run(args, path: str, n: int, spec: str, rank: int = 0, world: int = 1,
        wait: bool = True):
    cmd = [sys.executable, __file__, "--measure", path, "--warehouse",
           str(args.root / str(n) / "wh"), "--feature-set", spec, "--dim", str(args.dim),
           "--cache-root", str(args.root / str(n) / "cache"), "--steps", str(args.steps),
           "--batch", str(args.batch), "--rank", str(rank), "--world", str(world)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if not wait:
        return proc
    return json.loads(proc.communicate()[0].strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--regions", type=int, default=16)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--root", type=Path, default=Path("runs/bench/feature-cache"))
    p.add_argument("--out", type=Path)
    p.add_argument("--measure", choices=["memory", "build", "cache", "load-rate"], dest="path")
    p.add_argument("--warehouse")
    p.add_argument("--feature-set")
    p.add_argument("--cache-root")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--memory-up-to", type=int, default=100_000,
                   help="largest size to run the in-memory path at (1M needs ~40-60 GB)")
    args = p.parse_args()
    if args.path:
        print(json.dumps(measure(args)))
        return
    results = []
    for n in args.sizes:
        t0 = time.perf_counter()
        spec = make_warehouse(args.root / str(n) / "wh", n, args.regions, args.dim)
        row = {"images": n, "regions": n * args.regions,
               "vector_mib": round(n * args.regions * args.dim * 2 / 2**20, 1),
               "synthesis_s": round(time.perf_counter() - t0, 1),
               "in_memory": (run(args, "memory", n, spec) if n <= args.memory_up_to else None),
               "build": run(args, "build", n, spec),
               "cache": run(args, "cache", n, spec)}
        shutil.rmtree(args.root / str(n) / "cache" / "barrier", ignore_errors=True)
        ranks = [run(args, "cache", n, spec, r, 2, wait=False) for r in range(2)]
        row["cache_2_ranks"] = [json.loads(r.communicate()[0].strip().splitlines()[-1])
                                for r in ranks]
        row["load_rate"] = run(args, "load-rate", n, spec)
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'images':>9} {'path':>10} {'PSS MiB':>8} {'anon':>7} {'file':>7} {'peak RSS':>9} "
          f"{'1st batch s':>11} {'mapped in s':>11} {'samples/s':>10}")
    for row in results:
        for name in ("in_memory", "cache"):
            r = row[name]
            if r is None:
                print(f"{row['images']:>9} {name:>10} not run (--memory-up-to)")
                continue
            print(f"{row['images']:>9} {name:>10} {r['pss_mib']:>8} {r['pss_anon_mib']:>7} "
                  f"{r['pss_file_mib']:>7} {r['peak_rss_mib']:>9} {r['first_batch_s']:>11} "
                  f"{r['prefaulted_s']:>11} {r['samples_per_s']:>10}")
        b = row["build"]
        print(f"{row['images']:>9} {'build':>10} cache {b['cache_bytes'] / 2**20:.0f} MiB in "
              f"{b['build_s']} s, peak RSS {b['peak_rss_mib']} MiB; 2 ranks on one cache: PSS "
              + ", ".join(f"{r['pss_mib']} (anon {r['pss_anon_mib']})"
                          for r in row["cache_2_ranks"]))
        ranks, dataset = row["cache_2_ranks"], b["cache_bytes"] / 2**20
        print(f"{row['images']:>9} {'one copy':>10} USS over 2 ranks {_uss(ranks):.0f} MiB = "
              f"{_uss(ranks) / dataset:.1%} of the cache's {dataset:.0f} MiB; private dirty "
              f"pages the data added (copies): {_uss(ranks, data_only=True):.0f} MiB = "
              f"{_uss(ranks, data_only=True) / dataset:.1%}")
        lr = row["load_rate"]
        print(f"{row['images']:>9} {'load rate':>10} np.fromfile {lr['raw_gb_per_s']} GB/s; into "
              "batches: " + ", ".join(f"{k} {v['gb_per_s']} GB/s (x{v['ratio']})"
                                      for k, v in lr.items() if isinstance(v, dict)))
    for name in ("in_memory", "cache"):
        rows = [r for r in results if r[name] is not None]
        if len(rows) > 1:
            a, z = rows[0][name], rows[-1][name]
            print(f"{name}: PSS x{z['pss_mib'] / a['pss_mib']:.2f}, anon "
                  f"x{z['pss_anon_mib'] / a['pss_anon_mib']:.2f}, samples/s "
                  f"x{z['samples_per_s'] / a['samples_per_s']:.2f} over "
                  f"{rows[-1]['images'] // rows[0]['images']}x the images")
    cache = [r["cache"] for r in results]
    for target, ok in (
            ("anonymous PSS per rank within +-10% of the smallest size",
             all(abs(c["pss_anon_mib"] / cache[0]["pss_anon_mib"] - 1) <= 0.10 for c in cache)),
            ("samples/s within +-5% of the smallest size",
             all(abs(c["samples_per_s"] / cache[0]["samples_per_s"] - 1) <= 0.05 for c in cache)),
            ("time to first batch < 5 s", all(c["first_batch_s"] < 5 for c in cache)),
            ("load rate >= 0.8 of np.fromfile (batch 256)",
             all(r["load_rate"]["batch_256"]["ratio"] >= 0.8 for r in results)),
            ("USS summed over 2 ranks < 10% of the cache's bytes",
             all(_uss(r["cache_2_ranks"]) < 0.1 * r["build"]["cache_bytes"] / 2**20
                 for r in results)),
            ("private dirty pages the data added over 2 ranks < 10% of the cache's bytes",
             all(_uss(r["cache_2_ranks"], data_only=True)
                 < 0.1 * r["build"]["cache_bytes"] / 2**20 for r in results))):
        print(f"cache: {target}: {'met' if ok else 'NOT met'}")
    save_json(args.out, results)


if __name__ == "__main__":
    main()
