"""Prefect flow `mvp-cache`: the memory-mapped training cache of one split
(model/training/feature_cache.py), built once per data and tokenization settings."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE

from flows.defaults import WAREHOUSE
from model.config import DEFAULT_PRESET


# the cache is keyed by its inputs and skips a finished build itself: Prefect need not cache
@task(name="build-feature-cache", retries=1, cache_policy=NONE)
def cache_task(**params) -> dict:
    from model.training.pretrain import prepare_cache
    return prepare_cache(**params)


@flow(name="mvp-cache", log_prints=True)
def cache_flow(warehouse: str = WAREHOUSE, config: str = DEFAULT_PRESET,
               feature_set: str | None = None, vocab: str | None = None,
               split: str | None = "train", dataset: str | None = None) -> dict:
    """The feature cache that `mvp pretrain --feature-cache` reads with this config.

    Args:
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        config: preset name or YAML path (its text settings decide the tokenization)
        feature_set: feature-set id (none: the latest)
        vocab: concept vocabulary id (none: the latest)
        split: the captions' split (none: all)
        dataset: only this dataset's captions (none: all)
    """
    report = cache_task(warehouse=warehouse, config=config, feature_set=feature_set,
                        vocab=vocab, split=split, dataset=dataset)
    print(f"feature cache {report['folder']}: {report['captions']} captions, "
          f"{report['images']} images, {report['regions']} regions, {report['bytes']} bytes")
    return report
