"""The `mvp` commands that train, evaluate and run the whole pipeline (flows/cli.py has the data
commands). Each runs the Prefect flow of the same name as its deployment."""
from __future__ import annotations

from pathlib import Path

from flows.flags import Entrypoint, add_command
from model.training.config import STAGES, train_override

PRETRAIN = Entrypoint("flows.pretrain", "pretrain_flow")
PIPELINE = Entrypoint("flows.pipeline", "pipeline_flow")
EVALUATE = Entrypoint("flows.evaluate", "evaluate_flow")
FINETUNE = Entrypoint("flows.finetune", "finetune_flow")
COMPARE = Entrypoint("flows.compare", "compare_flow")
PREDICT = Entrypoint("flows.predict", "predict_flow")

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
    PRETRAIN(**PRETRAIN.kwargs(args), train_overrides=dict(args.overrides or ()))
    return 0


def cmd_pipeline(args) -> int:
    PIPELINE(**PIPELINE.kwargs(args))
    print(UI_HINT)
    return 0


def cmd_evaluate(args) -> int:
    from model.serving.source import is_local
    check_checkpoints(args.model if is_local(args.model) else None)
    EVALUATE(**EVALUATE.kwargs(args))
    return 0


def cmd_finetune(args) -> int:
    check_checkpoints(args.init_from)
    FINETUNE(**FINETUNE.kwargs(args))
    return 0


def cmd_predict(args) -> int:
    from model.serving.source import is_local
    check_checkpoints(args.model if is_local(args.model) else None)
    PREDICT(**PREDICT.kwargs(args))
    return 0


def cmd_compare(args) -> int:
    COMPARE(**COMPARE.kwargs(args))
    print(UI_HINT)
    return 0


def add_model_commands(sub) -> None:
    sp = add_command(sub, "pretrain", "run one pre-training stage, tracked in MLflow (Prefect "
                                      "flow)", PRETRAIN, skip=("train_overrides",),
                     options={"stage": {"required": True, "choices": STAGES}})
    sp.add_argument("--set", dest="overrides", type=train_override, action="append",
                    metavar="KEY=VALUE", help="train config override, e.g. --set wpg=0 "
                                              "(repeatable)")
    sp.set_defaults(func=cmd_pretrain)

    sp = add_command(sub, "pipeline", "the whole pipeline: data, stage1 -> stage2, fine-tune, "
                                      "evaluate, register (Prefect flow mvp-pipeline); its "
                                      "defaults are the CPU demo on the embedded data (shapes + "
                                      "easy-vqa)", PIPELINE, aliases=("demo",))
    sp.set_defaults(func=cmd_pipeline)

    sp = add_command(sub, "evaluate", "evaluation suite on a checkpoint or registered model "
                                      "(Prefect flow)", EVALUATE, positional=("model",))
    sp.set_defaults(func=cmd_evaluate)

    sp = add_command(sub, "finetune", "fine-tune a pre-trained checkpoint for retrieval, VQA, "
                                      "visual entailment (ve) or referring expressions "
                                      "(refexp) (Prefect flow)", FINETUNE, positional=("task",))
    sp.set_defaults(func=cmd_finetune)

    sp = add_command(sub, "predict", "write a fine-tuned model's results file for an "
                                     "unlabelled split, e.g. VQA v2 test-dev (Prefect flow)",
                     PREDICT, positional=("task", "model"))
    sp.set_defaults(func=cmd_predict)

    sp = add_command(sub, "compare", "pre-training variants side by side at an equal budget: "
                                     "retrieval R@1 and VQA accuracy (Prefect flow mvp-compare)",
                     COMPARE)
    sp.set_defaults(func=cmd_compare)
