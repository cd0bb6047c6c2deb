"""A few lines that show what a warehouse holds, through the same DuckDB queries users run."""
from __future__ import annotations

from warehouse import concept_queries, queries
from warehouse.catalog import connect, table_counts


def summary_text(warehouse: str) -> str:
    with connect(warehouse) as con:
        lines = ["tables: " + ", ".join(f"{t} {n}" for t, n in table_counts(warehouse))]
        lines.append(f"{'dataset':<10} {'images':>8} " + " ".join(
            f"{t:>10}" for t in queries.SUMMARY_TABLES))
        for d, images, *counts in queries.dataset_summary(con):
            lines.append(f"{d:<10} {images:>8} " + " ".join(f"{n:>10}" for n in counts))
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
    return "\n".join(lines)
