"""The VQA v2 results file of an unlabelled split (test-dev, test-std) for the official server:
`[{"question_id": int, "answer": str}]`, one entry for every question of the split."""
from __future__ import annotations

import json
import os
from pathlib import Path

from model.downstream.vqa.data import VQAData
from model.downstream.vqa.finetune import load_vqa, predict
from warehouse.catalog import connect
from warehouse.store import Warehouse

QUESTION_PREFIX = "vqa:q:"   # how the vqa reader names a question (warehouse/ingest/readers/vqa.py)


def official_question_id(question_id: str) -> int:
    """The VQA v2 question id of a warehouse question id ("vqa:q:458752000" -> 458752000)."""
    number = question_id.removeprefix(QUESTION_PREFIX)
    if number == question_id or not number.isdigit():
        raise ValueError(f"{question_id!r} is not a VQA v2 question (ingested with --dataset vqa)")
    return int(number)


def write_results(vqa_checkpoint, warehouse, split: str, out, dataset: str = "vqa",
                  batch_size: int = 64) -> dict:
    """Answer every question of `split` with the fine-tuned VQA model and write the results
    file `out` (atomically). The server scores a file only when it answers every question, so a
    question whose image has no region features gets the most frequent training answer, and the
    report counts them. Returns {"out", "questions", "answered_by_model", "answered_by_prior"}."""
    wh = warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)
    model = load_vqa(vqa_checkpoint)
    with connect(wh) as con:
        every = [r[0] for r in con.execute(
            "SELECT id FROM questions WHERE split = ? AND dataset = ? ORDER BY id",
            [split, dataset]).fetchall()]
    if not every:
        raise LookupError(f"no {dataset} questions of split {split!r} in {wh.root}")
    data = VQAData(wh, model.cfg.feature_set, model.cfg, answer_vocab=model.answer_vocab,
                   split=split, dataset=dataset)
    answered = dict(zip(data.question_ids, predict(model, data, batch_size))) if len(data) else {}
    prior = model.answer_vocab[0]   # the vocabulary lists the most frequent answer first
    results = [{"question_id": official_question_id(q), "answer": answered.get(q, prior)}
               for q in every]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results))
    os.replace(tmp, out)
    return {"out": str(out), "questions": len(results), "answered_by_model": len(answered),
            "answered_by_prior": len(results) - len(answered)}
