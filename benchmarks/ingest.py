"""Shapes generation + ingest throughput and peak memory at 10k and 100k images.

Side by side in one script, each run in a fresh child process so peak RSS (of the main process;
render workers hold one 500-scene chunk each) is its own:
  streaming   - the product: `ingest("shapes", ...)`, rows flushed to Parquet in bounded batches,
                merged by DuckDB (run with 1 worker, the baseline's parallelism, and with all cores)
  in-memory   - the baseline a research repo would write: render the same scenes in one process,
                keep every row in Python lists, write one Parquet table at the end
Memory must stay flat for streaming as N grows; the ratios printed at the end say whether it does.

    python benchmarks/ingest.py [--sizes 10000 100000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, resource, sys, time
mode, n, workers, root = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import pyarrow as pa, pyarrow.parquet as pq  # imports outside the timed part, for both modes
from warehouse.ingest.build import ingest
from warehouse.ingest.readers.shapes import CHUNK, render_chunk
t = time.perf_counter()
if mode == "streaming":
    r = ingest("shapes", root + "/img", root + "/wh", n_images=n, seed=0, workers=workers)
    assert r.balanced and r.tables["images"]["new"] == n, r.summary()
    rows = r.read
else:
    tables = {}
    for start in range(0, n, CHUNK):
        for table, cols in render_chunk(0, start, min(start + CHUNK, n), root + "/img", None).items():
            for k, v in cols.items():
                tables.setdefault(table, {}).setdefault(k, []).extend(v)
    rows = 0
    for table, cols in tables.items():
        t_ = pa.Table.from_pydict(cols)
        pq.write_table(t_, f"{root}/{table}.parquet")
        rows += t_.num_rows
seconds = time.perf_counter() - t
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "rows": rows, "peak_mib": own}))
"""


def run(mode: str, n: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mvp-bench-") as root:
        out = subprocess.run([sys.executable, "-c", CHILD, mode, str(n), str(workers), root],
                             capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(mode=mode, n=n, workers=workers, images_per_s=n / result["seconds"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--streaming-sizes", type=int, nargs="*", default=[],
                    help="extra sizes for the streaming path alone (e.g. 300000: shows where "
                         "its memory levels off; the in-memory baseline would need GBs)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    results = []
    for n in args.sizes:
        for mode, workers in (("in-memory", 1), ("streaming", 1), ("streaming", cores)):
            r = run(mode, n, workers)
            results.append(r)
            print(f"{mode:<10} n={n:>7} workers={workers}  {r['images_per_s']:8.0f} images/s  "
                  f"{r['rows'] / r['seconds']:9.0f} rows/s  peak {r['peak_mib']:7.0f} MiB  "
                  f"{r['seconds']:.1f}s", flush=True)

    def get(mode, n, workers):
        return next(r for r in results if (r["mode"], r["n"], r["workers"]) == (mode, n, workers))

    lo, hi = min(args.sizes), max(args.sizes)
    print(f"\nratios ({hi} vs {lo} images; memory flat means ~1.0):")
    for mode, workers in (("in-memory", 1), ("streaming", 1), ("streaming", cores)):
        big, small = get(mode, hi, workers), get(mode, lo, workers)
        print(f"  {mode:<10} workers={workers}: peak memory x{big['peak_mib'] / small['peak_mib']:.2f}"
              f", throughput x{big['images_per_s'] / small['images_per_s']:.2f}")
    stream, stream_all, memory = get('streaming', hi, 1), get('streaming', hi, cores), \
        get('in-memory', hi, 1)
    print(f"streaming vs in-memory at {hi} images: peak memory x"
          f"{stream['peak_mib'] / memory['peak_mib']:.2f}, "
          f"throughput x{stream['images_per_s'] / memory['images_per_s']:.2f}"
          f" (1 worker), x{stream_all['images_per_s'] / memory['images_per_s']:.2f}"
          f" ({cores} workers)")
    for n in args.streaming_sizes:
        r = run("streaming", n, cores)
        results.append(r)
        base = get("streaming", hi, cores)
        print(f"streaming  n={n:>7} workers={cores}  {r['images_per_s']:8.0f} images/s  "
              f"peak {r['peak_mib']:7.0f} MiB: x{r['peak_mib'] / base['peak_mib']:.2f} the peak "
              f"at {hi} images")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
