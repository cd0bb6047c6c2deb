"""VQA fine-tuning (METHOD.md §4): an answer classifier on the fused [CLS] hidden state,
initialised from the MLM head, trained with soft-score BCE; evaluation by answer and question type."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from features.feature_sets import list_feature_sets
from model.config import DEFAULT_PRESET, ModelConfig, load_config
from model.downstream.vqa.data import VQABatch, VQAData
from model.downstream.vqa.metrics import majority_predictions, score_report
from model.mvp import MVP
from model.text import bpe
from model.training import tracking
from model.training.checkpoint import load_checkpoint, load_weights
from model.training.config import load_train_config, schedule_for
from model.training.progress import Progress
from model.training.trainer import Trainer
from warehouse.store import Warehouse
from warehouse.version import code_version

EXPERIMENT = "mvp-finetune"
HEAD_DROPOUT = 0.3   # the authors' run_vqa.py setting


class VQAModel(nn.Module):
    """MVP + answer head, as the authors' `BiImageBertForVQA`: dropout on the fused [CLS] hidden
    state (not the tanh pooler, which only ITM trains), a copy of the MLM transform, a classifier.
    forward(batch, generator) -> {"loss", "train_score"}, so that Trainer trains it as it is. The
    answer vocabulary is the module's extra state: any load_state_dict checks it."""

    def __init__(self, mvp: MVP, answer_vocab: list[str]):
        super().__init__()
        if not answer_vocab:
            raise ValueError("empty answer vocabulary: no training question has an answer")
        self.mvp, self.answer_vocab = mvp, list(answer_vocab)
        self.dropout = nn.Dropout(HEAD_DROPOUT)
        self.transform = copy.deepcopy(mvp.mlm_transform)
        self.classifier = nn.Linear(mvp.cfg.hidden, len(self.answer_vocab))
        # with the copied transform and a linear decoder, logit a starts as the mean of the MLM
        # head's logits for a's BPE pieces (exactly the MLM score of a one-piece answer: "yes",
        # "2", "red"); the MVP's own MLM head stays unused
        with torch.no_grad():
            for k, a in enumerate(self.answer_vocab):
                pieces = torch.tensor(bpe(a), dtype=torch.long)
                self.classifier.weight[k] = mvp.word_embeddings[pieces].mean(0)
                self.classifier.bias[k] = mvp.mlm_bias[pieces].mean()

    @property
    def cfg(self) -> ModelConfig:   # Trainer.save records it as the checkpoint's model_config
        return self.mvp.cfg

    def logits(self, batch: VQABatch) -> torch.Tensor:
        """[B, n_answers]."""
        m = self.mvp
        text = m.encode_text(batch.token_ids, batch.token_mask)
        visual = m.encode_visual(batch.visual)
        cls = m.fuse(text, visual).hidden[:, 0]
        return self.classifier(self.transform(self.dropout(cls)))

    def forward(self, batch: VQABatch, generator: torch.Generator | None = None) -> dict:
        logits = self.logits(batch)
        targets = batch.targets.to(logits.dtype)
        # summed over answers, averaged over the batch (as the usual VQA code): its scale does
        # not shrink as the answer vocabulary grows
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        # the soft target at the argmax IS the VQA score of the predicted answer
        score = targets.gather(1, logits.argmax(1, keepdim=True)).mean()
        return {"loss": loss, "train_score": score.detach()}

    def get_extra_state(self) -> dict:
        return {"answer_vocab": self.answer_vocab}

    def set_extra_state(self, state: dict) -> None:
        if state["answer_vocab"] != self.answer_vocab:
            raise ValueError("checkpoint's answer vocabulary differs from this model's")


def load_vqa(checkpoint: str | Path | dict) -> VQAModel:
    """A fine-tuned VQAModel from a checkpoint written by `finetune_vqa` (on CPU)."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    vocab = state["model"]["_extra_state"]["answer_vocab"]
    model = VQAModel(MVP(ModelConfig(**state["model_config"])), vocab)
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def answer(model: VQAModel, batch: VQABatch) -> list[str]:
    """The highest-scoring vocabulary answer of each question of the batch."""
    model.eval()
    device = next(model.parameters()).device
    best = model.logits(batch.to(device)).argmax(1).tolist()
    return [model.answer_vocab[k] for k in best]


def predict(model: VQAModel, data: VQAData, batch_size: int = 64) -> list[str]:
    loader = DataLoader(data, batch_size=batch_size, collate_fn=data.collate)
    return [a for batch in loader for a in answer(model, batch)]


def _report(predictions: list[str], data: VQAData) -> dict:
    """score_report over the questions that have ground truth (test-dev style questions have
    none and cannot be scored), with the dataset's counts."""
    keep = [k for k, a in enumerate(data.answers) if a]
    report = score_report([predictions[k] for k in keep], [data.answers[k] for k in keep],
                          [data.questions[k] for k in keep])
    report.update(n_out_of_vocab=data.n_out_of_vocab, n_unanswered=len(data) - len(keep),
                  n_without_features=data.n_without_features)
    return report


def evaluate_vqa(checkpoint_or_model, warehouse, split: str | None, dataset: str | None = None,
                 feature_set: str | None = None, batch_size: int = 64,
                 device: str | None = None) -> dict:
    """Accuracy of a fine-tuned model on a split: {"vqa_acc", "by_answer_type",
    "by_question_type", "n_questions", "n_out_of_vocab", "n_unanswered", "n_without_features"}.
    The feature set defaults to the one the model was built for."""
    model = (checkpoint_or_model if isinstance(checkpoint_or_model, VQAModel)
             else load_vqa(checkpoint_or_model))
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    feature_set = feature_set or model.cfg.feature_set
    if feature_set is None:
        raise ValueError("the model names no feature set: pass feature_set")
    data = VQAData(warehouse, feature_set, model.cfg, model.answer_vocab, split, dataset)
    return _report(predict(model, data, batch_size), data)


def baselines(train: VQAData, data: VQAData) -> dict:
    """Accuracy on `data` of answering every question with the training set's most common
    answer ("majority") and with the most common answer of its question type ("type_prior")."""
    majority, prior = majority_predictions(train.answers, train.questions, data.questions)
    return {"majority": _report(majority, data), "type_prior": _report(prior, data)}


def _model_config(wh: Warehouse, config: str, init_state: dict | None,
                  feature_set: str | None) -> ModelConfig:
    """The init checkpoint's model config, else the preset sized for the feature set."""
    if init_state is not None:
        return ModelConfig(**init_state["model_config"])
    specs = list_feature_sets(wh)
    spec = next((s for s in reversed(specs) if feature_set in (None, s.id)), None)
    if spec is None:
        raise LookupError(f"no feature set {feature_set or ''} in warehouse {wh.root}")
    return load_config(config, feat_dim=spec.dim, feature_set=spec.id)


def _flat_metrics(prefix: str, report: dict) -> dict:
    out = {f"{prefix}_vqa_acc": report["vqa_acc"]}
    out.update({f"{prefix}_acc_{t.replace('/', '_')}": v["vqa_acc"]
                for t, v in report["by_answer_type"].items()})
    return out


def finetune_vqa(warehouse, init_from, config: str = DEFAULT_PRESET, steps: int | None = None,
                 dataset: str | None = None, out_dir="runs/finetune",
                 tracking_uri: str | None = None, seed: int | None = None,
                 device: str | None = None, batch_size: int | None = None,
                 lr: float | None = None, feature_set: str | None = None,
                 train_split: str = "train", eval_split: str | None = "val",
                 experiment: str = EXPERIMENT, parent_run_id: str | None = None,
                 run_name: str = "vqa", resume: bool = False,
                 checkpoint_every: int = 500) -> dict:
    """Fine-tune on `train_split` for `steps` optimizer steps (default: the config's total_steps;
    the lr warms up over min(config warmup, steps/10) and decays to 0 at `steps`) from `init_from`
    (a pre-training checkpoint; None: random init), then evaluate on `eval_split` (VQA v2 names
    its splits train2014 / val2014). `resume` continues <out_dir>/vqa/last.pt exactly (weights,
    optimizer, data position, RNG; the same MLflow run), which is saved every `checkpoint_every`
    steps. Returns {"steps",
    "checkpoint", "run_id", "final" (last step's log), "eval", "baselines", "n_answers"}."""
    mlflow = tracking.mlflow
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    init_state = None if init_from is None else load_checkpoint(init_from)
    cfg = _model_config(wh, config, init_state, feature_set)
    base = load_train_config(config)
    total = base.total_steps if steps is None else steps
    overrides = schedule_for(config, total)
    overrides.update({k: v for k, v in (("seed", seed), ("batch_size", batch_size), ("lr", lr))
                      if v is not None})
    tcfg = load_train_config(config, **overrides)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    fs = feature_set or cfg.feature_set

    train = VQAData(wh, fs, cfg, split=train_split, dataset=dataset)
    if len(train) == 0:
        raise LookupError(f"no training questions with features in {fs}")
    torch.manual_seed(tcfg.seed)  # model and head init
    mvp = MVP(cfg)
    if init_state is not None:
        load_weights(mvp, init_state)
    model = VQAModel(mvp, train.answer_vocab)
    trainer = Trainer(model, tcfg, device=device)
    ckpt = Path(out_dir) / "vqa" / "last.pt"
    position = {"epoch": 0, "index": 0, "mlflow_run_id": None}
    if resume:
        if not ckpt.exists():
            raise FileNotFoundError(f"nothing to resume: no checkpoint {ckpt}")
        position.update(trainer.load(ckpt) or {})

    run, new_run = tracking.start_run(experiment, run_name, tracking_uri,
                                      run_id=position["mlflow_run_id"],
                                      parent_run_id=parent_run_id)
    with run:
        position["mlflow_run_id"] = run.info.run_id
        if new_run:
            mlflow.log_params({**{f"model.{k}": v for k, v in cfg.to_dict().items()},
                               **{f"train.{k}": v for k, v in tcfg.to_dict().items()},
                               "config": str(config), "init_from": str(init_from),
                               "dataset": str(dataset), "n_train_questions": len(train),
                               "n_answers": len(train.answer_vocab),
                               "n_train_out_of_vocab": train.n_out_of_vocab})
            mlflow.set_tags({"feature_set": fs, "vocab": str(cfg.vocab_version),
                             "task": "vqa", "git_commit": code_version()})
        progress = Progress(run_name, total, start=trainer.step, keys=("loss", "train_score"))

        def on_step(step: int, last: dict, group: list) -> None:
            mlflow.log_metrics(last, step=step)
            progress.step(step, last)

        final = trainer.run(train, position, total, ckpt, checkpoint_every, on_step)
        trainer.save(ckpt, data_position=position)
        mlflow.log_artifact(str(ckpt), artifact_path="checkpoints")
        mlflow.log_dict(train.answer_vocab, "answer_vocab.json")
        result = {"steps": trainer.step, "checkpoint": str(ckpt), "run_id": run.info.run_id,
                  "final": final, "eval": None, "baselines": None,
                  "n_answers": len(train.answer_vocab)}
        if eval_split is not None:
            data = VQAData(wh, fs, cfg, train.answer_vocab, eval_split, dataset)
            if len(data):
                result["eval"] = _report(predict(model, data, tcfg.batch_size), data)
                result["baselines"] = baselines(train, data)
                mlflow.log_metrics({
                    **_flat_metrics(eval_split, result["eval"]),
                    **_flat_metrics(f"{eval_split}_majority", result["baselines"]["majority"]),
                    f"{eval_split}_n_out_of_vocab": data.n_out_of_vocab})
                mlflow.log_text(json.dumps({"eval": result["eval"], **result["baselines"]},
                                           indent=1), f"eval_{eval_split}.json")
        return result
