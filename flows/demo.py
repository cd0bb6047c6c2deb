"""Prefect flow `mvp-demo`: the main job on the embedded default data (shapes + easy-vqa), ending
with a summary queried through DuckDB. Later stages (features, training) join this flow as they
land."""
from __future__ import annotations

from prefect import flow

from flows.ingest import ingest_flow
from warehouse import queries
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
        rejected = queries.rejects_by_reason(con)
        lines.append("rejects: " + (", ".join(f"{d}/{r}: {n}" for d, r, n in rejected)
                                    or "none"))
    finally:
        con.close()
    return "\n".join(lines)


@flow(name="mvp-demo", log_prints=True)
def demo_flow(warehouse: str = "runs/demo/warehouse", n_images: int = 2000) -> str:
    ingest_flow(dataset="shapes", warehouse=warehouse, n_images=n_images, seed=0)
    ingest_flow(dataset="easy-vqa", warehouse=warehouse)
    text = summary_text(warehouse)
    print("\n" + text)
    print(f"\nQuery it yourself: mvp sql \"SELECT * FROM captions LIMIT 5\" --warehouse {warehouse}")
    return text
