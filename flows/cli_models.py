"""The `mvp` commands that train, evaluate and run the whole pipeline (flows/cli.py has the data
commands). Each runs the Prefect flow of the same name as its deployment."""
from __future__ import annotations

import inspect
from pathlib import Path

from model.training.config import STAGES, train_override

UI_HINT = """
Look at it in the UIs:  make serve   (then open the printed Prefect UI and MLflow UI URLs;
                                      they read the same .prefect/ and mlflow.db this run wrote)"""


def check_checkpoints(*paths) -> None:
    """Read the local checkpoints a command was given before its flow starts, so that a
    missing, foreign or unsafe file is a one-line error (exit 2) rather than a failed flow run's
    tracebacks. Reading is safe: checkpoints load weights-only (model/training/checkpoint.py)."""
    from model.training.checkpoint import load_checkpoint
    for path in paths:
        if path is not None:
            load_checkpoint(path)


def cmd_pretrain(args) -> int:
    last = Path(args.out_dir) / args.stage / "last.pt"
    # a missing resume file is pretrain's own error ("nothing to resume")
    check_checkpoints(args.init_from, last if args.resume and last.exists() else None)
    from flows.pretrain import pretrain_flow
    pretrain_flow(warehouse=args.warehouse, stage=args.stage, config=args.config,
                  feature_set=args.feature_set, vocab=args.vocab, steps=args.steps,
                  out_dir=args.out_dir, resume=args.resume, init_from=args.init_from,
                  train_overrides=dict(args.overrides), nproc_per_node=args.nproc_per_node,
                  checkpoint_every=args.checkpoint_every)
    return 0


def cmd_pipeline(args) -> int:
    from flows.pipeline import pipeline_flow
    params = {k: v for k, v in vars(args).items()
              if k in inspect.signature(pipeline_flow.fn).parameters and v is not None}
    pipeline_flow(**params)
    print(UI_HINT)
    return 0


def cmd_evaluate(args) -> int:
    from model.serving.source import is_local
    check_checkpoints(args.model if is_local(args.model) else None)
    from flows.evaluate import evaluate_flow
    evaluate_flow(model=args.model, warehouse=args.warehouse, split=args.split,
                  k_text=args.k_text, k_image=args.k_image, out=args.out)
    return 0


def cmd_finetune(args) -> int:
    check_checkpoints(args.init_from)
    from flows.finetune import finetune_flow
    finetune_flow(task=args.task, init_from=args.init_from, warehouse=args.warehouse,
                  config=args.config, steps=args.steps, out_dir=args.out_dir)
    return 0


def cmd_compare(args) -> int:
    from flows.compare import compare_flow
    compare_flow(warehouse=args.warehouse, config=args.config, budget=args.budget,
                 vqa_steps=args.vqa_steps, variants=args.variants, split=args.split,
                 k_text=args.k_text, k_image=args.k_image, out_dir=args.out_dir)
    print(UI_HINT)
    return 0


def add_model_commands(sub, warehouse_arg) -> None:
    sp = sub.add_parser("pretrain", help="run one pre-training stage, tracked in MLflow "
                                         "(Prefect flow)")
    warehouse_arg(sp)
    sp.add_argument("--stage", required=True, choices=STAGES)
    sp.add_argument("--config", default="small", help="preset name or YAML path (model + train)")
    sp.add_argument("--steps", type=int, help="stop at this global step (default: the "
                                              "config's total_steps; the lr schedule keeps it)")
    sp.add_argument("--resume", action="store_true",
                    help="continue <out-dir>/<stage>/last.pt exactly, in the same MLflow run")
    sp.add_argument("--init-from", help="checkpoint whose weights the stage starts from "
                                        "(stage2 default: <out-dir>/stage1/last.pt)")
    sp.add_argument("--out-dir", default="runs/pretrain")
    sp.add_argument("--checkpoint-every", type=int, default=500,
                    help="save <out-dir>/<stage>/last.pt every N steps (and at the end); a "
                         "killed run resumes from it with --resume")
    sp.add_argument("--feature-set", help="feature-set id (default: the latest)")
    sp.add_argument("--vocab", help="concept vocabulary id (default: the latest)")
    sp.add_argument("--set", dest="overrides", type=train_override, action="append", default=[],
                    metavar="KEY=VALUE", help="train config override, e.g. --set wpg=0")
    sp.add_argument("--nproc-per-node", type=int, default=1,
                    help="processes for DDP under torchrun (GPUs, or CPU processes with gloo)")
    sp.set_defaults(func=cmd_pretrain)

    for name, helptext in (("pipeline", "the whole pipeline: data, stage1 -> stage2, fine-tune, "
                                        "evaluate, register (Prefect flow mvp-pipeline)"),
                           ("demo", "the pipeline on the embedded default data (shapes + "
                                    "easy-vqa), small config, on this CPU")):
        sp = sub.add_parser(name, help=helptext)
        warehouse_arg(sp)
        sp.add_argument("--n-images", type=int, help="shapes scenes (default 2000)")
        sp.add_argument("--easy-vqa-images", type=int,
                        help="easy-vqa images with features (0: skip easy-vqa; default 500)")
        sp.add_argument("--backbone", help="image tower (default efficientnet-lite0, ImageNet)")
        sp.add_argument("--config", help="model/train preset (default small)")
        sp.add_argument("--schedule", choices=["sequential", "joint"])
        sp.add_argument("--batch-size", type=int, help="training batch (default 32 on the CPU demo)")
        for steps in ("stage1", "stage2", "retrieval", "vqa"):
            sp.add_argument(f"--{steps}-steps", type=int)
        sp.add_argument("--min-count", type=int,
                        help="captions a concept must appear in (default 20)")
        sp.add_argument("--k-text", type=int, help="captions re-ranked per image (default 16)")
        sp.add_argument("--k-image", type=int, help="images re-ranked per caption (default 8)")
        sp.add_argument("--out-dir", help="where checkpoints go (default runs/pipeline)")
        sp.add_argument("--no-register", dest="register", action="store_false", default=None)
        sp.set_defaults(func=cmd_pipeline)

    sp = sub.add_parser("evaluate", help="evaluation suite on a checkpoint or registered model "
                                         "(Prefect flow)")
    sp.add_argument("model", help="checkpoint file or MLflow URI, e.g. "
                                  "models:/mvp-retrieval@champion")
    warehouse_arg(sp)
    sp.add_argument("--split", default="test")
    sp.add_argument("--k-text", type=int, default=128, help="captions re-ranked per image")
    sp.add_argument("--k-image", type=int, default=64, help="images re-ranked per caption")
    sp.add_argument("--out", default="runs/evaluate/results.json")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("finetune", help="fine-tune a pre-trained checkpoint for retrieval or "
                                         "VQA (Prefect flow)")
    sp.add_argument("task", choices=["retrieval", "vqa"])
    sp.add_argument("--init-from", required=True, help="pre-training checkpoint")
    warehouse_arg(sp)
    sp.add_argument("--config", default="small")
    sp.add_argument("--steps", type=int)
    sp.add_argument("--out-dir", default="runs/finetune")
    sp.set_defaults(func=cmd_finetune)

    sp = sub.add_parser("compare", help="pre-training variants side by side at an equal budget: "
                                        "retrieval R@1 and VQA accuracy (Prefect flow "
                                        "mvp-compare)")
    warehouse_arg(sp)
    sp.add_argument("--config", default="small")
    sp.add_argument("--budget", type=int, default=600,
                    help="pre-training optimizer steps of every variant (two stages: half each)")
    sp.add_argument("--vqa-steps", type=int, default=200,
                    help="VQA fine-tuning steps per variant (0: retrieval only)")
    sp.add_argument("--variants", nargs="+", metavar="VARIANT",
                    help="default: every variant of model/pipeline/compare.py VARIANTS")
    sp.add_argument("--split", default="test")
    sp.add_argument("--k-text", type=int, default=128, help="captions re-ranked per image")
    sp.add_argument("--k-image", type=int, default=64, help="images re-ranked per caption")
    sp.add_argument("--out-dir", default="runs/compare")
    sp.set_defaults(func=cmd_compare)
