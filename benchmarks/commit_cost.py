"""What a commit costs as history grows: the commit log (warehouse/log.py: one small entry per
commit, a checkpoint every K) against the full-copy snapshots it replaced (`_snapshots/`: every
commit rewrites every part and every manifest), side by side after 100, 1,000 and 5,000 prior
commits of feature-extraction size (two parts and one manifest each).

For each size the log is built for real (N commits through Warehouse.commit); the full-copy
format needs only its two newest files to commit (its commit re-read the newest snapshot and its
parent, then wrote a full copy), so those are written from the same state. Then both formats
commit --commits more versions (a multiple of K, so the log's checkpoints count in full) and
report the mean wall time and bytes written per commit, and the time of one `current()` read.

    python benchmarks/commit_cost.py --sizes 100 1000 5000 [--s3-size 100] [--out results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))

from measure import save_json  # noqa: E402

from warehouse import legacy, log  # noqa: E402
from warehouse.snapshot import Snapshot, sha256  # noqa: E402
from warehouse.storage import Storage  # noqa: E402
from warehouse.store import Warehouse  # noqa: E402


def extraction_commit(i: int) -> tuple[dict[str, list[str]], dict, dict[str, dict]]:
    """What one feature-extraction shard publishes: its vectors' part, a rejects part, and a
    manifest (the parts need not exist: commit() takes their records as given)."""
    build_id = f"features-{uuid.uuid4().hex[:12]}-{i:06d}"
    parts = {"region_features": [f"tables/region_features/{build_id}-0000.parquet"],
             "rejects": [f"tables/rejects/{build_id}-rejects.parquet"]}
    records = {rel: {"size": 268_435_456, "sha256": sha256(rel.encode())}
               for rels in parts.values() for rel in rels}
    build = {"kind": "features", "build_id": build_id, "feature_set": "vinvl-2048-fp16",
             "params": {"batch": 256, "max_regions": 50, "dtype": "float16", "device": "cuda"},
             "counts": {"images": 256, "regions": 12_800, "rejected": 0},
             "code_version": "0.1.0+abcdef0", "time": "2026-12-03T20:00:00Z"}
    return parts, build, records


def written_bytes(storage: Storage, folder: str) -> int:
    return sum(size for size, _ in storage.listing(folder).values())


def full_copy_commit(storage: Storage, new_parts, build, records) -> None:
    """A commit as the full-copy store made it: re-read the newest snapshot (and check its link
    to its parent), then create the next one holding the whole state."""
    parent = legacy.newest(storage) or Snapshot.empty()
    version = parent.version + 1
    tables = {t: parent.tables.get(t, []) + new_parts.get(t, []) for t in parent.tables}
    data = {"version": version, "parent": parent.link(), "tables": tables,
            "parts": {**parent.parts, **records},
            "builds": [*parent.builds, {**build, "snapshot": version}]}
    if not storage.put_if_absent(legacy.name(version),
                                 json.dumps(data, indent=1, sort_keys=True).encode()):
        raise RuntimeError("full-copy commit lost a race it cannot have")


def full_copy(snap: Snapshot) -> bytes:
    """The full-copy snapshot file of state `snap`, as the old store wrote it."""
    return json.dumps({"version": snap.version, "parent": snap.parent, "tables": snap.tables,
                       "parts": snap.parts, "builds": list(snap.builds)}, indent=1,
                      sort_keys=True).encode()


def write_full_copy(storage: Storage, snap: Snapshot) -> bytes:
    raw = full_copy(snap)
    storage.write(legacy.name(snap.version), raw)
    return raw


def build_log(wh: Warehouse, n: int) -> tuple[Snapshot, Snapshot]:
    """N real commits; the snapshots at N - 1 and N."""
    prev, snap = None, wh.current()
    for i in range(n):
        prev, snap = snap, wh.commit(snap, *extraction_commit(i))
    return prev, snap


def timed(fn, repeat: int) -> float:
    """Mean seconds of fn() over `repeat` calls."""
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def measure_log(wh: Warehouse, snap: Snapshot, commits: int) -> dict:
    before = written_bytes(wh.storage, log.FOLDER)
    first = snap.version + 1
    started = time.perf_counter()
    for i in range(commits):
        snap = wh.commit(snap, *extraction_commit(i))
    commit_s = (time.perf_counter() - started) / commits
    entries = sum(wh.storage.size(log.entry_name(v)) for v in range(first, snap.version + 1))
    return {"commit_ms": commit_s * 1e3,
            "bytes_per_commit": (written_bytes(wh.storage, log.FOLDER) - before) / commits,
            "entry_bytes": entries / commits,  # the rest: checkpoints and their hint
            "read_ms": timed(wh.current, 5) * 1e3}


def measure_full_copy(storage: Storage, prev: Snapshot, snap: Snapshot, commits: int) -> dict:
    raw = write_full_copy(storage, prev)
    snap = Snapshot(snap.version, snap.tables, snap.builds, snap.parts,
                    {"version": prev.version, "sha256": sha256(raw)} if prev.version else None)
    write_full_copy(storage, snap)
    before = written_bytes(storage, legacy.FOLDER)
    started = time.perf_counter()
    for i in range(commits):
        full_copy_commit(storage, *extraction_commit(i))
    commit_s = (time.perf_counter() - started) / commits
    return {"commit_ms": commit_s * 1e3,
            "bytes_per_commit": (written_bytes(storage, legacy.FOLDER) - before) / commits,
            "read_ms": timed(lambda: legacy.newest(storage), 5) * 1e3}


def run_size(root: str, n: int, commits: int, full_copy: bool) -> dict:
    wh = Warehouse(root)
    started = time.perf_counter()
    prev, snap = build_log(wh, n)
    result = {"prior_commits": n, "root": root.split("://")[0] if "://" in root else "local",
              "build_s": time.perf_counter() - started, "log": measure_log(wh, snap, commits)}
    if full_copy:
        old = Warehouse(f"{root}-full-copy").storage
        result["full_copy"] = measure_full_copy(old, prev or Snapshot.empty(), snap, commits)
    return result


def moto_root() -> tuple[str, object]:
    """A bucket prefix on a loopback moto S3 server, as the tests start it."""
    from moto.server import ThreadedMotoServer
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ["AWS_ENDPOINT_URL"] = f"http://{host}:{port}"
    import boto3
    boto3.client("s3").create_bucket(Bucket="bench")
    return "s3://bench/wh", server


def print_table(results: list[dict]) -> None:
    """One row per size: the log, the full copies and their ratio (full / log) for the commit's
    wall time, its bytes written (the log's entry alone, then with its checkpoints amortised)
    and one current() read."""
    print(f"{'prior':>6} {'root':>5} | {'commit ms':^22} | {'bytes written per commit':^38} | "
          f"{'current() ms':^22}")
    print(f"{'':>6} {'':>5} | {'log':>7} {'full':>7} {'x':>6} | {'entry':>7} {'+ckpt':>8} "
          f"{'full':>10} {'x':>9} | {'log':>7} {'full':>7} {'x':>6}")
    for r in results:
        new, old = r["log"], r.get("full_copy") or {}

        def cell(key, width, digits):
            return f"{old[key]:{width}.{digits}f}" if old else f"{'-':>{width}}"

        def ratio(key, width):
            return f"{old[key] / new[key]:{width - 1}.1f}x" if old else f"{'-':>{width}}"

        print(f"{r['prior_commits']:>6} {r['root']:>5} | {new['commit_ms']:7.2f} "
              f"{cell('commit_ms', 7, 2)} {ratio('commit_ms', 6)} | {new['entry_bytes']:7.0f} "
              f"{new['bytes_per_commit']:8.0f} {cell('bytes_per_commit', 10, 0)} "
              f"{ratio('bytes_per_commit', 9)} | {new['read_ms']:7.2f} {cell('read_ms', 7, 2)} "
              f"{ratio('read_ms', 6)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--commits", type=int, default=log.CHECKPOINT_EVERY,
                    help="commits measured per size (default: one checkpoint interval)")
    ap.add_argument("--s3-size", type=int, default=0,
                    help="also measure the log on a loopback moto S3 server at this size")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="commit-cost-") as tmp:
        for n in args.sizes:
            results.append(run_size(f"{tmp}/wh-{n}", n, args.commits, full_copy=True))
            print(json.dumps(results[-1]), flush=True)
    if args.s3_size:
        root, server = moto_root()
        try:
            results.append(run_size(root, args.s3_size, args.commits, full_copy=False))
            print(json.dumps(results[-1]), flush=True)
        finally:
            server.stop()
    print_table(results)
    save_json(args.out, results)


if __name__ == "__main__":
    main()
