"""The training-run diagnostics (model/training/diagnostics.py): another image for every row, metrics in
range, each loss's own gradient, and a diagnosed run that trains exactly like one that is not."""
import dataclasses

import torch
from helpers import make_trainer, synthetic_batch

from model.training.diagnostics import diagnose, gradient_norms, mlm_image_gap, other_image


def test_other_image_never_returns_the_same_image():
    images = torch.tensor([0, 0, 0, 1, 2, 2, 3])
    other = other_image(images)
    assert (images[other] != images).all()
    assert other.tolist() == [3, 3, 3, 4, 6, 6, 0]
    assert other_image(torch.tensor([5, 5, 5])).tolist() == [0, 1, 2]   # nothing else to take
    assert other_image(torch.tensor([4])).tolist() == [0]


def test_diagnostics_are_in_range_and_each_loss_has_its_own_gradient():
    trainer, cfg = make_trainer("joint")
    batch = synthetic_batch(cfg, 0, 0)
    out = diagnose(trainer.task, batch, step=7)
    assert set(out) == {f"diag/{k}" for k in (
        "grad_norm_itm", "grad_norm_mlm", "grad_norm_wpg", "itm_acc_positive",
        "itm_acc_random_negative", "itm_acc_chosen_negative", "mlm_acc_matched",
        "mlm_acc_shuffled")}
    assert all(0 <= out[k] <= 1 for k in out if "acc" in k)
    norms = [out[f"diag/grad_norm_{k}"] for k in ("itm", "mlm", "wpg")]
    assert all(n > 0 for n in norms) and len(set(norms)) == 3
    assert all(p.grad is None for p in trainer.task.parameters())   # nothing accumulated


def test_matched_and_shuffled_agree_when_every_row_shows_one_image():
    trainer, cfg = make_trainer("joint")
    batch = synthetic_batch(cfg, 0, 0)
    first_image = batch.visual.take(torch.zeros(len(batch), dtype=torch.long))
    one = dataclasses.replace(batch, visual=first_image)
    with torch.no_grad():
        gap = mlm_image_gap(trainer.task.eval(), one, step=3)
    assert gap["mlm_acc_matched"] == gap["mlm_acc_shuffled"]


def test_a_diagnosed_run_trains_like_one_that_is_not():
    runs = []
    for diagnosed in (False, True):
        trainer, cfg = make_trainer("joint", dropout=0.1)
        logs = []
        for index in range(3):
            if diagnosed:
                diagnose(trainer.task, synthetic_batch(cfg, 0, index), trainer.step)
            logs.append(trainer.train_step([synthetic_batch(cfg, 0, index)]))
        runs.append((logs, trainer.generator.get_state()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_stage1_has_no_fusion_gradient_to_report():
    trainer, cfg = make_trainer("stage1")
    assert gradient_norms(trainer.task, synthetic_batch(cfg, 0, 0), 0) == {}
    assert diagnose(trainer.task, synthetic_batch(cfg, 0, 0), 0) == {}
