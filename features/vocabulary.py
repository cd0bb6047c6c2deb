"""The concept vocabulary: text concepts parsed from every caption plus visual concepts from region
labels, published as one versioned build of the tables concepts (one row per concept),
caption_concepts (each mention in a caption, with its span) and image_concepts."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.concept_mentions import write_mentions
from features.nltk_setup import nlp_record
from features.text_concepts import KINDS, normalise_label
from warehouse.catalog import connect
from warehouse.publish import AlreadyPublished, new_build, write_part
from warehouse.schemas import CAPTION_CONCEPTS, CONCEPTS, IMAGE_CONCEPTS
from warehouse.store import Warehouse

# Bump when tuple extraction, label normalisation or the selection rules change what a build
# produces from the same inputs.
CONCEPTS_CODE_VERSION = "1"
KIND_ORDER = {kind: k for k, kind in enumerate(KINDS.values())}  # object, attribute, relation
BATCH_ROWS = 5_000       # captions per extraction partition: bounded memory, ~5 s of parsing
PART_ROWS = 2_000_000    # rows per published caption_concepts part file

def _as_warehouse(warehouse) -> Warehouse:
    return warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)


def vocab_id(snapshot, min_count: int, max_size: int, dataset: str | None,
             nlp: dict | None = None) -> str:
    """Hash of everything that decides the tables; the lists of immutable part files stand for
    their content."""
    record = {"min_count": min_count, "max_size": max_size, "dataset": dataset,
              "captions": sorted(snapshot.tables.get("captions", [])),
              "regions": sorted(snapshot.tables.get("regions", [])),
              "nlp": nlp or nlp_record(), "concepts_code_version": CONCEPTS_CODE_VERSION}
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _manifest(snapshot, vid: str) -> dict | None:
    return next((b for b in reversed(snapshot.builds)
                 if b.get("kind") == "concepts" and b.get("vocab") == vid), None)


def latest_vocab(warehouse) -> str | None:
    """The id of the most recently published vocabulary, or None."""
    builds = [b for b in _as_warehouse(warehouse).current().builds if b.get("kind") == "concepts"]
    return builds[-1]["vocab"] if builds else None


def _sql_files(paths) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _extract_mentions(con, dataset: str | None, folder: Path, workers: int
                      ) -> tuple[list[Path], dict]:
    """Parse every caption (streamed in partitions, in `workers` processes) and spill its
    mentions to Parquet."""
    partitions = con.sql("SELECT id, image_id, text FROM captions WHERE ? IS NULL OR dataset = ?",
                         params=[dataset, dataset]).to_arrow_reader(BATCH_ROWS)
    return write_mentions(partitions, folder, workers)


def _register_labels(con, dataset: str | None) -> None:
    """Temp table label_map(label, concept): each distinct region label -> its concept text."""
    labels = [r[0] for r in con.execute(
        "SELECT DISTINCT label FROM regions WHERE label IS NOT NULL "
        "AND source IN ('annotation', 'detector') AND (? IS NULL OR dataset = ?)",
        [dataset, dataset]).fetchall()]
    pairs = [(lab, normalise_label(lab)) for lab in labels]
    pairs = [(lab, c) for lab, c in pairs if c]
    con.register("_label_map", pa.table({"label": [p[0] for p in pairs],
                                         "concept": [p[1] for p in pairs]},
                                        schema=pa.schema([("label", pa.string()),
                                                          ("concept", pa.string())])))
    con.execute("CREATE TEMP TABLE label_map AS SELECT * FROM _label_map")
    con.execute("""CREATE TEMP TABLE visual AS
        SELECT r.image_id, m.concept, r.source, r.score FROM regions r
        JOIN label_map m USING (label)
        WHERE r.source IN ('annotation', 'detector') AND (? IS NULL OR r.dataset = ?)""",
                [dataset, dataset])


def _select_vocabulary(con, vid: str, min_count: int, max_size: int) -> pa.Table:
    """Temp table vocab (the concepts rows) from the mentions and visual views."""
    kind_order = "CASE kind " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in
                                         KIND_ORDER.items()) + " END"
    con.execute(f"""CREATE TEMP TABLE vocab AS
        WITH text_side AS (
            SELECT kind, tuple, any_value(text) AS text, count(DISTINCT caption_id) AS captions
            FROM mentions GROUP BY kind, tuple),
        visual_side AS (
            SELECT 'object' AS kind, [concept] AS tuple, concept AS text,
                   count(DISTINCT image_id) AS images
            FROM visual GROUP BY concept),
        candidates AS (
            SELECT coalesce(t.kind, v.kind) AS kind, coalesce(t.tuple, v.tuple) AS tuple,
                   coalesce(t.text, v.text) AS text, coalesce(t.captions, 0) AS caption_count,
                   coalesce(v.images, 0) AS visual_images
            FROM text_side t FULL OUTER JOIN visual_side v USING (kind, tuple)),
        kept AS (
            SELECT * FROM candidates
            WHERE caption_count >= $min_count OR visual_images >= $min_count
            ORDER BY greatest(caption_count, visual_images) DESC, {kind_order}, text
            LIMIT $max_size)
        SELECT $vocab AS vocab,
               CAST(row_number() OVER (ORDER BY {kind_order}, caption_count DESC, text) - 1
                    AS INTEGER) AS id,
               kind, tuple, text,
               CASE WHEN caption_count > 0 AND visual_images > 0 THEN 'both'
                    WHEN caption_count > 0 THEN 'text' ELSE 'visual' END AS side,
               caption_count
        FROM kept""", {"min_count": min_count, "max_size": max_size, "vocab": vid})
    # images with a caption mentioning the concept or, for objects, a region labelled with it
    return con.sql("""
        WITH images AS (
            SELECT kind, tuple, image_id FROM mentions
            UNION SELECT 'object', [concept], image_id FROM visual)
        SELECT v.vocab, v.id, v.kind, v.tuple, v.text, v.side, v.caption_count,
               count(DISTINCT i.image_id) AS image_count
        FROM vocab v JOIN images i USING (kind, tuple)
        GROUP BY ALL ORDER BY v.id""").to_arrow_table().cast(CONCEPTS)


def _write_parts(reader: pa.RecordBatchReader, schema: pa.Schema, stem: Path) -> list[Path]:
    """Stream query results into part files of at most PART_ROWS rows."""
    paths, writer, rows = [], None, 0
    for batch in reader:
        batch = pa.Table.from_batches([batch]).cast(schema)
        if writer is None or rows >= PART_ROWS:
            if writer is not None:
                writer.close()
            paths.append(stem.with_name(f"{stem.name}-{len(paths):04d}.parquet"))
            writer, rows = pq.ParquetWriter(paths[-1], schema, compression="zstd"), 0
        writer.write_table(batch)
        rows += batch.num_rows
    if writer is None:  # an empty table still gets a (schema-only) part
        paths.append(stem.with_name(f"{stem.name}-0000.parquet"))
        pq.write_table(schema.empty_table(), paths[-1])
    else:
        writer.close()
    return paths


def build_vocabulary(warehouse, min_count: int = 50, max_size: int = 100_000,
                     dataset: str | None = None, workers: int = 1) -> dict:
    """Build and publish the concept vocabulary of the current snapshot (optionally one
    dataset's captions and regions). Returns a report; skipped=True when this exact vocabulary
    (same inputs, parameters, tools and code) is already published.

    Concepts that enter: text tuples (object, attribute, relation) mentioned in >= min_count
    captions (once per caption), and region labels (annotation or detector, normalised like caption
    nouns) on >= min_count images: a label on a handful of images is as useless to MCR as a rare
    caption tuple. Past max_size, the most supported (max of caption and visual image count) are
    kept, ties by kind then text. A concept that qualifies on one side is linked wherever it
    appears on the other (side "both"; caption_count says how often). Ids are 0..n-1 in the order
    (kind, caption count descending, text), so identical inputs give identical ids; the model
    offsets them by its word vocabulary. New captions give a new id and a full rebuild: counts and
    ids are corpus-wide, so a vocabulary cannot be extended in place.
    """
    if min_count < 1 or max_size < 1:
        raise ValueError("min_count and max_size must be >= 1")
    started = time.perf_counter()
    wh = _as_warehouse(warehouse)
    with wh.lock():
        wh.remove_orphans()
    snap = wh.current()
    nlp = nlp_record()  # fails early, naming the install script, when WordNet is missing
    vid = vocab_id(snap, min_count, max_size, dataset, nlp)
    if (done := _manifest(snap, vid)) is not None:
        return {**done["counts"], "vocab": vid, "skipped": True}

    build_id = f"concepts-{vid}-{time.time_ns():x}"
    with connect(wh, snap) as con, wh.staging(build_id) as folder:
        con.execute("SET temp_directory = ?", [str(folder / "duckdb-tmp")])
        mention_files, counts = _extract_mentions(con, dataset, folder, workers)
        con.execute(f"CREATE TEMP VIEW mentions AS SELECT * FROM read_parquet("
                    f"{_sql_files(mention_files)})")
        _register_labels(con, dataset)
        concepts = _select_vocabulary(con, vid, min_count, max_size)
        concept_path = folder / f"{build_id}-concepts.parquet"
        write_part(concepts, concept_path)

        caption_parts = _write_parts(con.sql("""
            SELECT v.vocab, m.caption_id, v.id AS concept_id, m.token_start, m.token_end
            FROM mentions m JOIN vocab v USING (kind, tuple)
            ORDER BY m.caption_id, m.token_start, m.token_end, v.id""").to_arrow_reader(),
            CAPTION_CONCEPTS, folder / f"{build_id}-caption-concepts")
        # ground truth has no score; a detector's is its most confident box of the concept
        image_parts = _write_parts(con.sql("""
            SELECT v.vocab, s.image_id, v.id AS concept_id, s.source,
                   max(CASE WHEN s.source = 'annotation' THEN NULL ELSE s.score END) AS score
            FROM visual s JOIN vocab v ON v.kind = 'object' AND v.tuple = [s.concept]
            GROUP BY ALL ORDER BY s.image_id, v.id, s.source""").to_arrow_reader(),
            IMAGE_CONCEPTS, folder / f"{build_id}-image-concepts")

        counts.update(
            concepts=concepts.num_rows,
            by_kind={k: concepts.filter(pc.equal(concepts["kind"], k)).num_rows
                     for k in KIND_ORDER},
            by_side={s: concepts.filter(pc.equal(concepts["side"], s)).num_rows
                     for s in ("text", "visual", "both")},
            caption_concepts=sum(pq.ParquetFile(p).metadata.num_rows for p in caption_parts),
            image_concepts=sum(pq.ParquetFile(p).metadata.num_rows for p in image_parts),
            labels=con.execute("SELECT count(*) FROM label_map").fetchone()[0])
        build = new_build("concepts", build_id=build_id, vocab=vid,
                          params={"min_count": min_count, "max_size": max_size,
                                  "dataset": dataset},
                          inputs={"snapshot": snap.version,
                                  "captions_parts": len(snap.tables.get("captions", [])),
                                  "regions_parts": len(snap.tables.get("regions", []))},
                          nlp=nlp, counts=counts, concepts_code_version=CONCEPTS_CODE_VERSION)

        def check(current) -> None:
            if _manifest(current, vid) is not None:
                raise AlreadyPublished()

        try:
            published = wh.publish({"concepts": [concept_path],
                                    "caption_concepts": caption_parts,
                                    "image_concepts": image_parts}, build, check=check)
        except AlreadyPublished:
            return {**_manifest(wh.current(), vid)["counts"], "vocab": vid, "skipped": True}
    return {**counts, "vocab": vid, "skipped": False, "snapshot": published.version,
            "seconds": round(time.perf_counter() - started, 2)}
