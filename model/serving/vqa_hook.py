"""The optional VQA head of a served model: a packaged VQA checkpoint answered through
model/downstream/vqa/finetune.py, imported only when a package holds one, so serving does not
depend on the VQA code."""
from __future__ import annotations

import importlib
import importlib.util

import torch

from model.batch import VisualInputs, pad_rows
from model.text import question_tokens

MODULE = "model.downstream.vqa.finetune"
ENTRY_POINTS = ("load_vqa", "answer")


def available() -> bool:
    """Whether model/downstream/vqa/finetune.py exists and offers load_vqa and answer."""
    if importlib.util.find_spec(MODULE) is None:
        return False
    module = importlib.import_module(MODULE)
    return all(hasattr(module, name) for name in ENTRY_POINTS)


def require() -> None:
    if not available():
        raise ModuleNotFoundError(f"a VQA checkpoint can be served only where {MODULE} defines "
                                  f"{' and '.join(ENTRY_POINTS)} (see model/serving/vqa_hook.py)")


class Answerer:
    def __init__(self, vqa_module, checkpoint_path):
        self.vqa = vqa_module
        self.model = vqa_module.load_vqa(checkpoint_path)

    @torch.no_grad()
    def answer(self, questions: list[str], concept_ids: list[list[int]], visual: VisualInputs
               ) -> list[str]:
        """Answers for questions (with their concept ids, offset) on images given as
        encode_visual's input; the text is built as fine-tuning builds it (question_tokens)."""
        from model.downstream.vqa.data import VQABatch
        cfg, B = self.model.cfg, len(questions)
        words = [ids[m][1:-1].tolist() for ids, m in zip(visual.tag_ids, visual.tag_mask)]  # no [CLS]/[SEP]
        tokens, token_mask = pad_rows([torch.tensor(question_tokens(q, w, cfg, c))
                                       for q, w, c in zip(questions, words, concept_ids)],
                                      cfg.pad_id)
        batch = VQABatch(token_ids=tokens, token_mask=token_mask, visual=visual,
                         image_index=torch.arange(B),
                         targets=torch.zeros(B, len(self.model.answer_vocab)),
                         index=torch.arange(B), question_ids=[""] * B, image_ids=[""] * B)
        return self.vqa.answer(self.model, batch)


def load(checkpoint_path) -> Answerer | None:
    """The answerer of a packaged VQA checkpoint, or None when none is packaged. A package
    that holds one but cannot answer is an error, never a silent 'no answer'."""
    if checkpoint_path is None:
        return None
    require()
    return Answerer(importlib.import_module(MODULE), checkpoint_path)
