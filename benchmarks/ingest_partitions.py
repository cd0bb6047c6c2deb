"""Partitioned ingest: wall time, speed-up and peak memory of `ingest("shapes", ...)` with
partitions=1 and partitions=2, side by side at each size.

Each run is a fresh child process on a fresh warehouse. Every build renders with workers=1, so the
only parallelism compared is the partitions': 1 process rendering all scenes against 2 processes
rendering half each (spawned by the ingest itself; their start-up is part of the time). Each
partition commits on its own, and one that finds the other's commit first merges again: the
"merges" column counts merges over all partitions (2 = nobody had to merge twice).

Memory: the peak of the summed RSS of the child and all its descendants, sampled with psutil every
20 ms (shared pages are counted once per process, so it overstates a little), next to the largest
single process (getrusage maxrss of the child and of its waited-for children: exact, but a max,
not a sum). The speed-up is partitions=1 seconds / partitions=2 seconds; it cannot pass the
number of idle cores (the load average is printed with it).

    python benchmarks/ingest_partitions.py [--sizes 2000 8000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import psutil

CHILD = r"""
import json, resource, sys, time
n, partitions, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
from warehouse.ingest.build import ingest  # imported outside the timed part
t = time.perf_counter()
r = ingest("shapes", root + "/img", root + "/wh", n_images=n, seed=0, workers=1,
           partitions=partitions)
seconds = time.perf_counter() - t
assert r.balanced and r.tables["images"]["new"] == n, r.summary()
largest = max(resource.getrusage(who).ru_maxrss for who in
              (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
print(json.dumps({"seconds": seconds, "rows": r.read, "largest_process_mib": largest,
                  "merges": r.merges if r.partitions else 1}))
"""


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:  # ended between the listing and the read
            pass
    return total


def run(n: int, partitions: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="mvp-bench-") as root:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(n), str(partitions), root],
                                 stdout=subprocess.PIPE, text=True,
                                 cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        proc, peak = psutil.Process(child.pid), 0
        while child.poll() is None:
            try:
                peak = max(peak, tree_rss(proc))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        out, _ = child.communicate()
    if child.returncode != 0:
        raise SystemExit(f"n={n} partitions={partitions} failed (exit {child.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(n=n, partitions=partitions, tree_peak_mib=peak / 2**20)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2_000, 8_000])
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    print(f"{'scenes':>7} {'partitions':>10} {'seconds':>8} {'speed-up':>8} {'merges':>6} "
          f"{'tree peak MiB':>13} {'largest process MiB':>19}")
    results = []
    for n in args.sizes:
        base = None
        for partitions in (1, 2):
            r = run(n, partitions)
            results.append(r)
            base = base or r["seconds"]
            r["speed_up"] = base / r["seconds"]
            print(f"{n:>7} {partitions:>10} {r['seconds']:>8.1f} {r['speed_up']:>7.2f}x "
                  f"{r['merges']:>6} {r['tree_peak_mib']:>13.0f} "
                  f"{r['largest_process_mib']:>19.0f}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
