"""Prefect flow `mvp-clip-bootstrap`: a CLIP trained on the warehouse's own image-caption pairs
with open_clip_train (features/clip_bootstrap.py), whose weights `mvp features --backbone <model>
--pretrained <weights>` then extracts region features with: a pretrained tower for when none can
be downloaded."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE

from flows.defaults import WAREHOUSE


# open_clip_train resumes from its latest epoch: a retry continues, it does not start over
@task(name="train-bootstrap-clip", retries=1, cache_policy=NONE)
def bootstrap_task(**params) -> dict:
    from features.clip_bootstrap import bootstrap_clip
    return bootstrap_clip(**params)


@flow(name="mvp-clip-bootstrap", log_prints=True)
def clip_bootstrap_flow(warehouse: str = WAREHOUSE, out_dir: str = "runs/clip-bootstrap",
                        model: str = "mvp-clip-small", epochs: int = 5, batch_size: int = 64,
                        lr: float = 5e-4, seed: int = 0, dataset: str | None = None) -> dict:
    """Train a CLIP contrastively on the train split's pairs; print the `mvp features` command
    that uses it.

    Args:
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        out_dir: where the pairs, open_clip_train's run and the weights go (rerun: resumes)
        model: OpenCLIP model config (mvp-clip-small: a ViT sized for CPU minutes)
        epochs: passes over the pairs
        batch_size: pairs per step (the contrastive negatives)
        lr: AdamW learning rate
        seed: open_clip_train's seed
        dataset: only this dataset's captions (none: all)
    """
    report = bootstrap_task(warehouse=warehouse, out_dir=out_dir, model=model, epochs=epochs,
                            batch_size=batch_size, lr=lr, seed=seed, dataset=dataset)
    print(f"trained {model} on {report['pairs']} pairs ({report['skipped']} captions left out) "
          f"for {epochs} epochs: {report['weights']}\nuse it: mvp features --warehouse "
          f"{warehouse} --backbone {model} --pretrained {report['weights']}")
    return report
