"""Ingest one input into a warehouse: plan (fingerprint the inputs), stage (run the reader),
merge and commit (one new snapshot). Each step is a plain function so the Prefect flow can run
them as tasks and tests can call them without Prefect. A partitioned ingest runs one such build
per partition of the input, in parallel processes, each committing on its own."""
from __future__ import annotations

import hashlib
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat
from multiprocessing import get_context
from pathlib import Path

from warehouse.faults import fault_point
from warehouse.hashing import file_sha256
from warehouse.ingest.checks import DEFAULT_MAX_IMAGE_PIXELS
from warehouse.ingest.emitter import Emitter
from warehouse.ingest.merge import TableOutcome, merge, new_ingest_id
from warehouse.ingest.report import IngestReport, total
from warehouse.ingest.sources import InputError, SourceContext, partition, reader_for
from warehouse.ingest.staging import StagingWriter
from warehouse.publish import AlreadyPublished, new_build
from warehouse.store import Snapshot, Warehouse, WarehouseError

# How often an ingest merges again after other writers published to the tables it checks.
MERGE_ATTEMPTS = 5


@dataclass
class Plan:
    ctx: SourceContext
    warehouse: str
    fingerprint: str
    inputs: list[dict]
    params: dict
    already_in_snapshot: int | None
    max_image_pixels: int


def plan(ctx: SourceContext, warehouse: str,
         max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Plan:
    """Hash the inputs and decide whether this build was already done."""
    reader = reader_for(ctx.dataset)
    inputs = []
    for path in reader.inputs(ctx):
        try:
            inputs.append({"path": str(path), "sha256": file_sha256(path),
                           "bytes": path.stat().st_size})
        except OSError as e:
            raise InputError(f"input file {path} is unreadable: {e}") from None
    params = {"dataset": ctx.dataset, "source": str(ctx.source), "split": ctx.split,
              "image_root": str(ctx.image_root) if ctx.image_root else None,
              "n_images": ctx.n_images, "seed": ctx.seed, "max_image_pixels": max_image_pixels}
    if hasattr(reader, "GENERATOR_VERSION"):  # a generator's output is defined by its code
        params["generator_version"] = reader.GENERATOR_VERSION
    if ctx.partition is not None:  # absent when whole: unpartitioned fingerprints stay as they were
        params["partition"] = str(ctx.partition)
    fingerprint = hashlib.sha256(repr((sorted(params.items()),
                                       [i["sha256"] for i in inputs])).encode()).hexdigest()
    done = _ingested_in(Warehouse(warehouse).current(), fingerprint)
    return Plan(ctx, warehouse, fingerprint, inputs, params, done, max_image_pixels)


def _ingested_in(snap: Snapshot, fingerprint: str) -> int | None:
    """The version that ingested the input with this fingerprint, or None."""
    done = None
    for build in snap.builds:
        if build.get("fingerprint") == fingerprint:
            done = build.get("snapshot")
    return done


def stage(p: Plan, ingest_id: str) -> tuple[dict[str, list[str]], dict]:
    """Run the reader; every record lands in staging as a row or a reject."""
    wh = Warehouse(p.warehouse)
    for old in wh.staging_dir(ingest_id).glob("*/"):  # a retried step starts clean
        shutil.rmtree(old, ignore_errors=True)
    staging = StagingWriter(wh.staging_dir(ingest_id))
    emit = Emitter(p.ctx.dataset, ingest_id, staging, p.max_image_pixels,
                   image_workers=max(1, p.ctx.workers * 2))
    try:
        reader_for(p.ctx.dataset).read(p.ctx, emit)
    finally:
        emit.close()
    staged = staging.close()
    fault_point("after-stage")
    return staged, {"read": emit.counts.read, "rejected": emit.counts.rejected}


class MergedOnStaleSnapshot(WarehouseError):
    """Another writer published rows of a table the merge checked against: merge again."""


def merge_and_commit(p: Plan, ingest_id: str, staged: dict[str, list[str]], read_counts: dict,
                     started: float) -> IngestReport:
    """Merge against the current snapshot into the build's staging folder and publish. When
    another writer publishes first, the publish goes ahead only if it added no rows to a table
    the merge read (its duplicate, existing and reference checks would still hold); else the
    merge runs again against what is there now."""
    wh = Warehouse(p.warehouse)
    folder = wh.staging_dir(ingest_id)
    read = {"images", "regions", "rejects", *staged}
    # each sibling partition that publishes first costs one more merge
    attempts = MERGE_ATTEMPTS + (p.ctx.partition.count if p.ctx.partition else 0)
    for merges in range(1, attempts + 1):
        parent = wh.current()
        shutil.rmtree(folder / "merged", ignore_errors=True)
        new_parts, outcomes = merge(wh, parent, staged, ingest_id, folder, folder / "merged")
        report = _report(p, ingest_id, read_counts, outcomes)
        report.seconds, report.merges = time.time() - started, merges
        fault_point("before-commit")
        # the commit records the version the build lands as (its "snapshot"), not the counts
        counts = {k: v for k, v in asdict(report).items() if k not in ("snapshot", "partitions")}
        build = new_build("ingest", ingest_id=ingest_id, fingerprint=p.fingerprint,
                          params=p.params, inputs=p.inputs, counts=counts)

        def check(snap: Snapshot, parent=parent) -> None:
            if _ingested_in(snap, p.fingerprint) is not None:
                raise AlreadyPublished()  # the same input, by another writer
            if any(snap.tables.get(t, []) != parent.tables.get(t, []) for t in read):
                raise MergedOnStaleSnapshot(f"another writer published to {sorted(read)}")

        try:
            report.snapshot = wh.publish(new_parts, build, check=check).version
            return report
        except MergedOnStaleSnapshot:
            continue
        except AlreadyPublished:
            return IngestReport(p.ctx.dataset, "", _ingested_in(wh.current(), p.fingerprint),
                                skipped=True)
    raise WarehouseError(f"ingest {ingest_id}: other writers kept publishing to the tables it "
                         f"merges into; gave up after {MERGE_ATTEMPTS} merges")


def _report(p: Plan, ingest_id: str, read_counts: dict,
            outcomes: dict[str, TableOutcome]) -> IngestReport:
    r = IngestReport(p.ctx.dataset, ingest_id, snapshot=-1, skipped=False)  # set once published
    r.read = sum(read_counts["read"].values())
    reasons = list(read_counts["rejected"].items())
    for table, o in outcomes.items():
        r.new += o.new
        r.existing += o.existing
        reasons += o.rejected.items()
        r.tables[table] = asdict(o)
    for reason, n in reasons:
        kind = reason.split(":")[0]  # "box has zero area: [5, 5, 5, 10]" counts as its kind
        r.rejected += n
        r.rejected_by_reason[kind] = r.rejected_by_reason.get(kind, 0) + n
    return r


def call(step, *args):
    """Run a step directly; the Prefect flow passes a runner that makes each step a task."""
    return step(*args)


def ingest_context(ctx: SourceContext, warehouse: str | Path,
                   max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, run=call) -> IngestReport:
    """One build. A build that dies midway leaves the previous snapshot as it was; the next
    build clears its leftovers. Writers that want it wait for the local writer lock while
    planning and cleaning up; the commit itself is optimistic."""
    wh = Warehouse(warehouse)
    started = time.time()
    with wh.lock():
        p = run(plan, ctx, str(wh.root), max_image_pixels)
        if p.already_in_snapshot is not None:
            return IngestReport(ctx.dataset, "", p.already_in_snapshot, skipped=True)
        wh.remove_orphans()
    ingest_id = new_ingest_id()
    with wh.staging(ingest_id):
        staged, read_counts = run(stage, p, ingest_id)
        return run(merge_and_commit, p, ingest_id, staged, read_counts, started)


def in_processes(contexts: list[SourceContext], warehouse: str | Path,
                 max_image_pixels: int) -> list[IngestReport]:
    """Each partition's build in a process of its own; spawned, not forked, since the caller may
    hold threads and locks (Prefect, DuckDB) that a fork would copy mid-use."""
    with ProcessPoolExecutor(len(contexts), mp_context=get_context("spawn")) as pool:
        return list(pool.map(ingest_context, contexts, repeat(warehouse),
                             repeat(max_image_pixels)))


def ingest(dataset: str, source: str | Path | None, warehouse: str | Path,
           split: str | None = None, image_root: str | Path | None = None,
           n_images: int | None = None, seed: int = 0, workers: int | None = None,
           max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, partitions: int = 1,
           run=call, run_partitions=in_processes) -> IngestReport:
    """Plan, stage, merge and commit one input; with partitions > 1, one build per partition of
    it, all at once through `run_partitions` (`workers` is then each build's)."""
    ctx = make_context(dataset, source, warehouse, split, image_root, n_images, seed, workers)
    contexts = partition(ctx, partitions)
    if len(contexts) == 1:
        return ingest_context(ctx, warehouse, max_image_pixels, run)
    started = time.time()
    return total(run_partitions(contexts, warehouse, max_image_pixels), time.time() - started)


def make_context(dataset, source, warehouse, split=None, image_root=None, n_images=None,
                 seed=0, workers=None) -> SourceContext:
    if source is None:
        if dataset != "shapes" and dataset != "easy-vqa":
            raise InputError(f"--source is required for {dataset}")
        source = Warehouse(warehouse).local_dir() / "sources" / (
            f"shapes-seed{seed}" if dataset == "shapes" else dataset)
    return SourceContext(dataset=dataset, source=Path(source).expanduser().resolve(),
                         split=split,
                         image_root=Path(image_root).expanduser().resolve() if image_root
                         else None,
                         n_images=n_images, seed=seed, workers=workers or os.cpu_count() or 1)
