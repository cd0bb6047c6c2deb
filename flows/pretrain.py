"""Prefect flow `mvp-pretrain`: one pre-training stage (model/training/pretrain.py), tracked in MLflow;
with nproc_per_node > 1 the task runs it under torchrun (DDP)."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NONE

from flows.defaults import WAREHOUSE
from model.config import DEFAULT_PRESET


# No retries: a failed run resumes explicitly (resume=True) from its last checkpoint, which
# keeps the MLflow run and the data position; a blind retry would restart from step 0.
@task(name="pretrain-stage", retries=0, cache_policy=NONE)
def pretrain_task(nproc_per_node: int = 1, nnodes: int = 1, node_rank: int = 0,
                  rdzv_endpoint: str | None = None, **params) -> dict:
    if nproc_per_node > 1 or nnodes > 1:
        from model.training.launch import torchrun_pretrain
        result = torchrun_pretrain(nproc_per_node, nnodes, node_rank, rdzv_endpoint, **params)
        if result is None:   # another node than 0: node 0 tracks and saves the run
            return {"node_rank": node_rank}
    else:
        from model.training.pretrain import pretrain
        result = pretrain(**params)
    from model.serving.pyfunc import log_to_run
    return {**result, "model_uri": log_to_run(result, params["warehouse"],
                                              params.get("tracking_uri"))}


@flow(name="mvp-pretrain", log_prints=True)
def pretrain_flow(warehouse: str = WAREHOUSE, stage: str = "stage1",
                  config: str = DEFAULT_PRESET, feature_set: str | None = None,
                  vocab: str | None = None, steps: int | None = None,
                  out_dir: str = "runs/pretrain", resume: bool = False,
                  init_from: str | None = None, tracking_uri: str | None = None,
                  train_overrides: dict | None = None, nproc_per_node: int = 1,
                  checkpoint_every: int = 500, feature_cache: bool = False, nnodes: int = 1,
                  node_rank: int = 0, rdzv_endpoint: str | None = None,
                  reshard: bool = False) -> dict:
    """One pre-training stage; its checkpoint is <out_dir>/<stage>/last.pt.

    Args:
        warehouse: warehouse root, a local folder or an object-store URL (s3://bucket/prefix)
        stage: the stage to train (model/training/config.py: what each trains)
        config: preset name or YAML path (model + train)
        feature_set: feature-set id (none: the latest)
        vocab: concept vocabulary id (none: the latest)
        steps: stop at this global step (none: the config's total_steps; the lr schedule
            keeps it)
        out_dir: where checkpoints go
        resume: continue <out_dir>/<stage>/last.pt exactly, in the same MLflow run
        init_from: checkpoint whose weights the stage starts from (none for stage2:
            <out_dir>/stage1/last.pt)
        tracking_uri: MLflow tracking URI (none: $MLFLOW_TRACKING_URI, else mlflow.db in the
            project folder)
        train_overrides: updates of the preset's `train:` section, e.g. {"wpg": 0}
        nproc_per_node: processes for DDP under torchrun (GPUs, or CPU processes with gloo)
        checkpoint_every: save <out_dir>/<stage>/last.pt every N steps (and at the end), where
            a killed run resumes from
        feature_cache: read the train split through the memory-mapped feature cache (built
            first if missing; `mvp cache` builds it ahead), one copy per node for every rank
        nnodes: machines the run spans; start this flow (or `mvp pretrain`) once on each
        node_rank: this machine's number, 0 to nnodes - 1 (node 0 tracks and saves the run)
        rdzv_endpoint: HOST:PORT on node 0 where the nodes meet (torchrun's c10d rendezvous)
        reshard: with resume, continue a checkpoint written by another number of processes:
            the same global data order, new random streams per rank
    """
    result = pretrain_task(warehouse=warehouse, stage=stage, config=config,
                           feature_set=feature_set, vocab=vocab, steps=steps, out_dir=out_dir,
                           resume=resume, init_from=init_from, tracking_uri=tracking_uri,
                           train_overrides=train_overrides, nproc_per_node=nproc_per_node,
                           checkpoint_every=checkpoint_every, feature_cache=feature_cache,
                           nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint,
                           reshard=reshard)
    if node_rank != 0:
        print(f"{stage}: node {node_rank} of {nnodes} done; node 0 holds the run and checkpoint")
        return result
    print(f"{stage}: {result['steps']} steps, checkpoint {result['checkpoint']}, MLflow run "
          f"{result['run_id']}, final " + ", ".join(f"{k} {v:.4g}"
                                                     for k, v in result["final"].items()))
    return result
