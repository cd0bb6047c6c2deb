"""Prefect flow `mvp-concepts`: the concept vocabulary and its caption/image concept tables as one
versioned build, whose id hashes inputs (immutable part files), parameters, NLP tools and code,
so the task's Prefect cache and the warehouse agree on what is done."""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from features.nltk_setup import nlp_record
from features.vocabulary import build_vocabulary, vocab_id
from flows.defaults import WAREHOUSE
from warehouse.store import Warehouse


def _content_key(context, parameters) -> str:
    """The vocabulary id (a hash of the inputs' immutable part files, parameters, NLP tools and
    code) plus the warehouse root: equal keys mean the same vocabulary in the same place."""
    wh = Warehouse(parameters["warehouse"])
    return f"concepts-{wh.root}-" + vocab_id(wh.current(), parameters["min_count"],
                                             parameters["max_size"], parameters["dataset"],
                                             nlp_record())


@task(name="build-vocabulary", retries=1, cache_key_fn=_content_key, persist_result=True)
def vocabulary_task(warehouse: str, min_count: int, max_size: int, dataset: str | None,
                    workers: int) -> dict:
    return build_vocabulary(warehouse, min_count=min_count, max_size=max_size, dataset=dataset,
                            workers=workers)


@flow(name="mvp-concepts", log_prints=True)
def concepts_flow(warehouse: str = WAREHOUSE, min_count: int = 50,
                  max_size: int = 100_000, dataset: str | None = None, workers: int = 1) -> dict:
    """The concept vocabulary of the current snapshot, built once per distinct input.

    Args:
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        min_count: captions a tuple must appear in (paper: 50)
        max_size: vocabulary size cap
        dataset: only this dataset's captions and regions (none: all)
        workers: processes that parse the captions (the vocabulary is the same for any number)
    """
    report = vocabulary_task(warehouse, min_count, max_size, dataset, workers)
    state = "already built" if report.get("skipped") else "built"
    print(f"vocabulary {report['vocab']} {state}: " + ", ".join(
        f"{k} {v}" for k, v in report.items() if k not in ("vocab", "skipped")
        and not isinstance(v, dict)))
    create_markdown_artifact(
        f"## Concept vocabulary `{report['vocab']}` ({state})\n\n| measure | value |\n|---|---:|\n"
        + "\n".join(f"| {k} | {v} |" for k, v in report.items() if not isinstance(v, dict)),
        key="concepts", description="mvp concepts")
    return report
