"""The concept vocabulary built by 1 and by N caption-parsing workers: seconds, peak memory, and
whether the published tables are the same bytes.

1. One shapes warehouse is ingested, copied once per worker count, and each copy's vocabulary
   is built in a fresh child process (peak RSS: the builder's own; each worker holds one
   partition). Shapes captions repeat (a few hundred distinct texts), so parsing is mostly cache
   hits: this measures the fixed costs.
2. The parsing map alone over distinct generated captions, where the ~1 ms a caption is paid.

    python benchmarks/vocabulary_workers.py [--images 2000] [--distinct 20000] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import json, resource, sys
from features.vocabulary import build_vocabulary
from warehouse.store import Warehouse
wh, workers = sys.argv[1], int(sys.argv[2])
report = build_vocabulary(wh, min_count=50, workers=workers)
snap = Warehouse(wh).current()
parts = [snap.parts[p]["sha256"] for t in ("concepts", "caption_concepts", "image_concepts")
         for p in snap.tables[t]]
print(json.dumps({"seconds": report["seconds"], "captions": report["captions"],
                  "concepts": report["concepts"], "parts": parts,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
MAP = r"""
import json, random, sys, tempfile, time
from pathlib import Path
import pyarrow as pa
from features.concept_mentions import write_mentions
from features.vocabulary import BATCH_ROWS
n, workers = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(0)
words = {"size": ["small", "large", "tiny", "huge", "tall"], "colour": ["red", "blue", "green",
         "white", "black", "brown"], "thing": ["dog", "cat", "man", "woman", "car", "bus",
         "table", "chair", "kite", "tree", "horse", "boat", "plate", "pizza", "bench"],
         "rel": ["next to", "on top of", "behind", "near", "under", "riding", "holding",
                 "sitting on", "in front of"], "place": ["street", "beach", "field", "kitchen",
                 "park", "river", "room", "table"]}
pick = lambda k: rng.choice(words[k])
texts = [f"a {pick('size')} {pick('colour')} {pick('thing')} {pick('rel')} a {pick('colour')} "
         f"{pick('thing')} in a {pick('size')} {pick('place')} with {rng.randint(2, 9)} "
         f"{pick('thing')}s" for _ in range(n)]
ids = [f"c{i}" for i in range(n)]
batches = pa.table({"id": ids, "image_id": ids, "text": texts}).to_batches(BATCH_ROWS)
with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    _, counts = write_mentions(batches, Path(tmp), workers)
    print(json.dumps({"seconds": time.perf_counter() - t, "distinct": len(set(texts)), **counts}))
"""


def map_only(n: int, workers: list[int], env: dict) -> None:
    base = None
    for w in workers:
        out = subprocess.run([sys.executable, "-c", MAP, str(n), str(w)],
                             check=True, cwd=ROOT, env=env, capture_output=True, text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        base = base or r
        print(f"parse map, workers={w}: {r['captions']} captions ({r['distinct']} distinct)  "
              f"{r['seconds']:6.1f} s  {r['captions'] / r['seconds']:6.0f} captions/s  "
              f"x{base['seconds'] / r['seconds']:.2f} speed  {r['mentions']} mentions", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--distinct", type=int, default=20_000, help="captions for the map alone")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    map_only(args.distinct, args.workers, env)
    with tempfile.TemporaryDirectory(prefix="mvp-vocab-") as tmp:
        source = Path(tmp) / "wh"
        subprocess.run([sys.executable, "-c", "import sys; from warehouse.ingest.build import "
                        "ingest; ingest('shapes', sys.argv[1], sys.argv[2], n_images="
                        f"{args.images}, workers=1)", f"{tmp}/img", str(source)],
                       check=True, cwd=ROOT, env=env, capture_output=True)
        results = {}
        for workers in args.workers:
            wh = Path(tmp) / f"wh-{workers}"
            shutil.copytree(source, wh)
            out = subprocess.run([sys.executable, "-c", CHILD, str(wh), str(workers)],
                                 check=True, cwd=ROOT, env=env, capture_output=True, text=True)
            results[workers] = r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"workers={workers}  {r['captions']} captions  {r['seconds']:6.1f} s  "
                  f"{r['captions'] / r['seconds']:6.0f} captions/s  peak {r['peak_mib']:5.0f} MiB  "
                  f"{r['concepts']} concepts",
                  flush=True)
    base = results[args.workers[0]]
    for workers, r in results.items():
        print(f"workers={workers} vs {args.workers[0]}: x{base['seconds'] / r['seconds']:.2f} "
              f"speed, same published bytes: {r['parts'] == base['parts']}")
    print(f"load average during the runs: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
