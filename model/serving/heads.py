"""The optional task heads of a served model (VQA, visual entailment, referring expressions,
model/downstream/tasks.py): a packaged fine-tuned checkpoint per head, each answering one request
column. A head's code is imported only when a package holds its checkpoint."""
from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import torch

from model.batch import SentenceBatch, VisualInputs, pad_rows
from model.config import ModelConfig
from model.downstream.tasks import TASKS, DownstreamTask
from model.text import question_tokens


def artifact(task: DownstreamTask) -> str:
    """The serving package's artifact that holds the task's checkpoint."""
    return f"{task.name}_checkpoint"


def available(task: DownstreamTask) -> bool:
    """Whether the task's module exists and offers its loader and `serve`."""
    if importlib.util.find_spec(task.module) is None:
        return False
    module = importlib.import_module(task.module)
    return all(hasattr(module, name) for name in (task.loader, "serve"))


def require(task: DownstreamTask) -> None:
    if not available(task):
        raise ModuleNotFoundError(f"a {task.name} checkpoint can be served only where "
                                  f"{task.module} defines {task.loader} and serve "
                                  "(see model/serving/heads.py)")


def sentence_inputs(cfg: ModelConfig, sentences: list[str], concept_ids: list[list[int]],
                    visual: VisualInputs) -> SentenceBatch:
    """The heads' text built as fine-tuning builds it (question_tokens), on the request's tags."""
    words = [ids[m][1:-1].tolist() for ids, m in zip(visual.tag_ids, visual.tag_mask)]  # no [CLS]/[SEP]
    tokens, token_mask = pad_rows([torch.tensor(question_tokens(s, w, cfg, c))
                                   for s, w, c in zip(sentences, words, concept_ids)],
                                  cfg.pad_id)
    return SentenceBatch(token_ids=tokens, token_mask=token_mask, visual=visual)


class ServedHead:
    def __init__(self, task: DownstreamTask, checkpoint_path):
        self.task = task
        self.model = task.function("loader")(checkpoint_path)

    @torch.no_grad()
    def respond(self, sentences: list[str], concept_ids: list[list[int]], visual: VisualInputs,
                boxes: list[np.ndarray]) -> list[dict]:
        """The head's output cells for each sentence on its image (`boxes`: the image's region
        boxes in pixels, in the order of its regions)."""
        inputs = sentence_inputs(self.model.cfg, sentences, concept_ids, visual)
        return self.task.function("serve")(self.model, inputs, boxes)


def load(task: DownstreamTask, checkpoint_path) -> ServedHead | None:
    """The head of a packaged checkpoint, or None when none is packaged. A package that holds
    one but cannot serve it is an error, never a silent 'no answer'."""
    if checkpoint_path is None:
        return None
    require(task)
    return ServedHead(task, checkpoint_path)


HEADS = tuple(TASKS.values())
