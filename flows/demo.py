"""Prefect flow `mvp-demo`: the main job on the embedded default data (shapes + easy-vqa):
ingest, concept vocabulary, region features, ending with a summary queried through DuckDB.
Training joins this flow when it lands."""
from __future__ import annotations

from prefect import flow

from flows.concepts import concepts_flow
from flows.features import features_flow
from flows.ingest import ingest_flow
from warehouse import concept_queries, queries
from warehouse.catalog import connect, table_counts


def summary_text(warehouse: str) -> str:
    con = connect(warehouse)
    try:
        lines = ["tables: " + ", ".join(f"{t} {n}" for t, n in table_counts(warehouse))]
        lines.append("dataset      images  captions   regions  questions")
        for d, i, c, r, q in queries.dataset_summary(con):
            lines.append(f"{d:<10} {i:>8} {c:>9} {r:>9} {q:>10}")
        lines.append("top region labels: " + ", ".join(
            f"{label} ({n})" for label, n in queries.top_labels(con, 6)))
        example = queries.captions_mentioning(con, "left of", 3)
        lines.append("captions with 'left of': " + " | ".join(t for _, _, t in example))
        lines.append("top object concepts: " + ", ".join(
            f"{text} ({side}, {images} images)"
            for _, _, text, side, _, images in concept_queries.top_concepts(con, "object",
                                                                            limit=6)))
        lines.append("top relation concepts: " + ", ".join(
            text for _, _, text, *_ in concept_queries.top_concepts(con, "relation", limit=4)))
        lines.append("feature sets: " + ", ".join(
            f"{fs} ({backbone}, {dim}-d): {n} regions" for fs, backbone, dim, n in con.execute(
                "SELECT f.id, f.backbone, f.dim, count(r.region_id) FROM feature_sets f "
                "LEFT JOIN region_features r ON r.feature_set = f.id GROUP BY ALL").fetchall()))
        rejected = queries.rejects_by_reason(con)
        lines.append("rejects: " + (", ".join(f"{d}/{r}: {n}" for d, r, n in rejected)
                                    or "none"))
    finally:
        con.close()
    return "\n".join(lines)


@flow(name="mvp-demo", log_prints=True)
def demo_flow(warehouse: str = "runs/demo/warehouse", n_images: int = 2000,
              backbone: str = "ViT-B-32") -> str:
    ingest_flow(dataset="shapes", warehouse=warehouse, n_images=n_images, seed=0)
    ingest_flow(dataset="easy-vqa", warehouse=warehouse)
    concepts_flow(warehouse=warehouse, min_count=20)
    # random-init weights (offline); the shapes scenes only, to keep the CPU demo short
    features_flow(warehouse=warehouse, backbone=backbone, dataset="shapes")
    text = summary_text(warehouse)
    print("\n" + text)
    print(f"\nQuery it yourself: mvp sql \"SELECT * FROM captions LIMIT 5\" --warehouse {warehouse}")
    return text
