"""Prefect flow `mvp-ingest`: the warehouse ingest with each step (plan, stage, merge and commit)
as a task, so the Prefect UI shows where time goes and where a build failed. A partitioned ingest
submits one task per partition, so a Dask task runner spreads them over its cluster."""
from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from flows.defaults import WAREHOUSE
from warehouse.ingest.build import ingest, ingest_context
from warehouse.ingest.checks import DEFAULT_MAX_IMAGE_PIXELS
from warehouse.ingest.report import IngestReport
from warehouse.ingest.sources import SourceContext


def as_task(step, *args):
    # No Prefect caching: the warehouse itself skips inputs it already holds (by content hash).
    return task(step, name=step.__name__.replace("_", "-"), cache_policy=NONE)(*args)


@task(name="ingest-partition", cache_policy=NONE)
def ingest_partition(ctx: SourceContext, warehouse: str, max_image_pixels: int) -> IngestReport:
    """One partition's build, its steps as tasks of their own."""
    return ingest_context(ctx, warehouse, max_image_pixels, run=as_task)


def as_tasks(contexts: list[SourceContext], warehouse: str,
             max_image_pixels: int) -> list[IngestReport]:
    futures = [ingest_partition.submit(c, warehouse, max_image_pixels) for c in contexts]
    return [f.result() for f in futures]


def report_markdown(report: IngestReport) -> str:
    if report.skipped:
        return f"**{report.dataset}**: input already ingested (snapshot {report.snapshot})."
    rows = ["| table | new | already present | rejected |", "|---|---:|---:|---:|"]
    rows += [f"| {t} | {o['new']} | {o['existing']} | {sum(o['rejected'].values())} |"
             for t, o in report.tables.items()]
    reasons = ["| reason | rejected |", "|---|---:|"]
    reasons += [f"| {r} | {n} |" for r, n in sorted(report.rejected_by_reason.items())]
    parts = ["| partition | snapshot | read | accepted | rejected | merges |",
             "|---|---:|---:|---:|---:|---:|"]
    parts += [f"| {k + 1} of {len(report.partitions)} | {r.snapshot} | {r.read} | "
              f"{r.new + r.existing} | {r.rejected} | {r.merges} |"
              for k, r in enumerate(report.partitions)]
    return (f"## Ingest of `{report.dataset}` → snapshot {report.snapshot}\n\n"
            f"read **{report.read}** = accepted **{report.new + report.existing}** + rejected "
            f"**{report.rejected}** ({'balanced' if report.balanced else 'UNBALANCED'})\n\n"
            + "\n".join(rows) + "\n\n" + ("\n".join(reasons) + "\n\n" if report.rejected else "")
            + ("\n".join(parts) if report.partitions else ""))


@flow(name="mvp-ingest", log_prints=True)
def ingest_flow(dataset: str = "shapes", warehouse: str = WAREHOUSE,
                source: str | None = None, split: str | None = None,
                image_root: str | None = None, n_images: int | None = None, seed: int = 0,
                workers: int | None = None,
                max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, partitions: int = 1) -> dict:
    """Read one data set into the warehouse as a new snapshot; what it already holds is skipped.

    Args:
        dataset: the input's format (README, "Ingest your data")
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        source: input file or folder (shapes: where the generated images are written)
        split: split to read, or to label the rows with
        image_root: folder that relative image paths resolve against
        n_images: shapes: number of scenes (none: the reader's default)
        seed: shapes: generator seed
        workers: parallel workers (none: all cores)
        max_image_pixels: images with more pixels are rejected as decompression bombs
        partitions: split the input into this many builds that run in parallel and commit on
            their own (shapes: scene ranges; tsv: every n-th line)
    """
    report = ingest(dataset, source, warehouse, split=split, image_root=image_root,
                    n_images=n_images, seed=seed, workers=workers,
                    max_image_pixels=max_image_pixels, partitions=partitions, run=as_task,
                    run_partitions=as_tasks)
    print(report.summary())
    create_markdown_artifact(report_markdown(report), key=f"ingest-{dataset}".lower(),
                             description=f"mvp ingest {dataset}")
    return asdict(report)
