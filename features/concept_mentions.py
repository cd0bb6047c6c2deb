"""The concept mentions of a corpus's captions, parsed as a map over caption partitions (~1 ms a
caption on one core) and spilled to one Parquet file per partition, so the vocabulary's counting
runs in DuckDB.

Partitions are cut and numbered in the caption query's order and parsed alone, so the files hold
the same rows whatever the number of workers, and so does every table made from them."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from features.text_concepts import extract

MENTIONS = pa.schema([
    ("caption_id", pa.string()), ("image_id", pa.string()), ("kind", pa.string()),
    ("tuple", pa.list_(pa.string())), ("text", pa.string()),
    ("token_start", pa.int32()), ("token_end", pa.int32())])
COUNTS = ("captions", "captions_with_concepts", "mentions")
IN_FLIGHT_PER_WORKER = 2  # partitions queued per worker: busy workers, bounded memory


def write_partition(captions: pa.RecordBatch, path: Path) -> dict:
    """Parse one partition of captions (columns id, image_id, text) and write every mention in
    it to `path`; its counts."""
    cols = {name: [] for name in MENTIONS.names}
    with_concepts = 0
    for cid, iid, text in zip(*(captions.column(k).to_pylist() for k in range(3))):
        found = extract(text or "")
        with_concepts += bool(found)
        for m in found:
            for name, value in zip(MENTIONS.names, (cid, iid, m.kind, list(m.tuple), m.text,
                                                    m.start, m.end)):
                cols[name].append(value)
    pq.write_table(pa.table(cols, schema=MENTIONS), path)
    return {"captions": captions.num_rows, "captions_with_concepts": with_concepts,
            "mentions": len(cols["caption_id"])}


def write_mentions(partitions: Iterable[pa.RecordBatch], folder: Path, workers: int = 1
                   ) -> tuple[list[Path], dict]:
    """One mentions file per partition, in order, parsed by `workers` processes (1: in this
    one); the files and the summed counts."""
    paths: list[Path] = []
    counts = dict.fromkeys(COUNTS, 0)

    def add(found: dict) -> None:
        for key in COUNTS:
            counts[key] += found[key]

    if workers <= 1:
        for batch in partitions:
            paths.append(folder / f"mentions-{len(paths):05d}.parquet")
            add(write_partition(batch, paths[-1]))
    else:
        # spawn: the caller holds DuckDB's threads, which a forked child would inherit locked
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            pending: deque[Future] = deque()
            for batch in partitions:
                paths.append(folder / f"mentions-{len(paths):05d}.parquet")
                pending.append(pool.submit(write_partition, batch, paths[-1]))
                if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                    add(pending.popleft().result())
            while pending:
                add(pending.popleft().result())
    if not paths:  # no captions: an empty file keeps the queries on it valid
        paths.append(folder / "mentions-00000.parquet")
        pq.write_table(MENTIONS.empty_table(), paths[-1])
    return paths, counts
