"""The training task and loop: which losses each stage computes and trains, the lr schedule,
gradient accumulation, exact resume from a checkpoint, and stage2 starting from stage1."""
import math

import pytest
import torch
from helpers import make_trainer, synthetic_batch
from torch import nn

from model.training.checkpoint import load_checkpoint, load_weights, save_checkpoint
from model.training.config import ConfigError, TrainConfig, load_train_config
from model.training.trainer import Trainer, lr_factor

FUSION = ("model.cross_encoder.", "model.pooler.", "model.itm_head.")


def test_train_presets_load_and_bad_keys_fail():
    assert load_train_config("tiny").lr == 1e-3
    assert load_train_config("base").lr == 5e-5 and load_train_config("base").batch_size == 1024
    assert load_train_config("small").stage == "stage1"
    with pytest.raises(ConfigError, match="unknown train keys"):
        load_train_config("tiny", lr_rate=1.0)
    with pytest.raises(ConfigError, match="stage"):
        TrainConfig(stage="stage3")


def test_stage1_trains_only_the_unimodal_encoders():
    trainer, cfg = make_trainer("stage1")
    task = trainer.task
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    out = task(synthetic_batch(cfg, 0, 0), trainer.generator)
    assert set(out) == {"vsc", "mcr", "loss"}
    assert torch.allclose(out["loss"], out["vsc"] + out["mcr"])
    out["loss"].backward()
    for n, p in task.named_parameters():
        if n.startswith(FUSION):
            assert p.grad is None, n
    assert task.model.text_encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert task.model.visual_encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert task.model.region_embed.weight.grad.abs().sum() > 0
    assert task.model.text_proj.weight.grad.abs().sum() > 0
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.train_step([synthetic_batch(cfg, 0, 1)])
    untouched = FUSION + ("model.mlm_transform.", "model.mlm_bias")   # MCR has its own head
    for n, p in task.named_parameters():
        # AdamW skips grad-None parameters (no weight decay either): fusion stays as it was
        assert torch.equal(p, before[n]) == n.startswith(untouched), n


def test_text_side_mcr_flag_adds_a_concept_loss():
    trainer, cfg = make_trainer("stage1", text_mcr=True, mask_prob=0.5)
    out = trainer.task(synthetic_batch(cfg, 0, 0), trainer.generator)
    assert set(out) == {"vsc", "mcr", "text_mcr", "loss"}
    # a fresh model scores the 64 concepts about uniformly
    assert abs(out["text_mcr"].item() - math.log(cfg.n_concepts)) < 1.0
    assert torch.allclose(out["loss"], out["vsc"] + out["mcr"] + out["text_mcr"])


@pytest.mark.parametrize("stage", ["stage2", "joint"])
def test_stage2_and_joint_give_all_five_losses_and_train_fusion(stage):
    trainer, cfg = make_trainer(stage, mcr=0.5, wpg=2.0)
    out = trainer.task(synthetic_batch(cfg, 0, 0), trainer.generator)
    assert set(out) == {"vsc", "mcr", "itm", "mlm", "wpg", "loss"}
    assert all(torch.isfinite(v) for v in out.values())
    # fresh model: ITM ~ ln 2, MLM/MCR ~ ln(word vocab), WPG near its 0.2 margin
    assert abs(out["itm"].item() - math.log(2)) < 0.2
    assert abs(out["mlm"].item() - math.log(cfg.word_vocab)) < 1.0
    assert abs(out["wpg"].item() - 0.2) < 0.2
    expect = out["vsc"] + 0.5 * out["mcr"] + out["itm"] + out["mlm"] + 2.0 * out["wpg"]
    assert torch.allclose(out["loss"], expect)
    out["loss"].backward()
    for prefix in FUSION:
        grads = [p.grad for n, p in trainer.task.named_parameters() if n.startswith(prefix)]
        assert grads and all(g is not None for g in grads), prefix
        assert sum(g.abs().sum() for g in grads) > 0, prefix


def test_warmup_then_cosine_schedule():
    assert lr_factor(0, 4, 14) == 0.25 and lr_factor(3, 4, 14) == 1.0
    assert lr_factor(4, 4, 14) == 1.0
    assert lr_factor(9, 4, 14) == pytest.approx(0.5)       # half way through the decay
    assert lr_factor(14, 4, 14) == pytest.approx(0.0) and lr_factor(20, 4, 14) == 0.0
    trainer, cfg = make_trainer(warmup_steps=2, total_steps=6, lr=1e-3)
    lrs = [trainer.train_step([synthetic_batch(cfg, 0, i)])["lr"] for i in range(4)]
    assert lrs == pytest.approx([5e-4, 1e-3, 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi / 4))])


class _Regression(nn.Module):
    """A task with a per-sample-mean loss: accumulation must reproduce the big batch exactly."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, batch, generator):
        x, y = batch
        return {"loss": ((self.lin(x).squeeze(-1) - y) ** 2).mean()}


class _Pair(tuple):
    def __len__(self):
        return self[0].shape[0]


def test_grad_accumulation_equals_the_concatenated_batch():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, generator=g)
    torch.manual_seed(0)
    task = _Regression()
    tcfg = TrainConfig(lr=1e-3, grad_accum=2)
    trainer = Trainer(task, tcfg)
    trainer.backward([_Pair((x[:4], y[:4])), _Pair((x[4:], y[4:]))])
    accumulated = [p.grad.clone() for p in task.parameters()]
    task.zero_grad()
    trainer.backward([_Pair((x, y))])
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(accumulated, task.parameters()))
    assert accumulated[0].abs().sum() > 0 and trainer.samples_seen == 16


def test_a_checkpoint_of_two_processes_resumes_in_one_only_when_resharded(tmp_path):
    first, cfg = make_trainer(dropout=0.1)
    first.train_step([synthetic_batch(cfg, 0, 0)])
    first.save(tmp_path / "one.pt", data_position={"epoch": 0, "index": 8})
    state = load_checkpoint(tmp_path / "one.pt")
    state["rng"] = state["rng"] * 2      # as two ranks write it: one RNG entry each
    save_checkpoint(state, tmp_path / "two.pt")
    second, _ = make_trainer(dropout=0.1, seed=5)
    with pytest.raises(ValueError, match="2 process"):
        second.load(tmp_path / "two.pt")
    position = second.load(tmp_path / "two.pt", reshard=True)
    assert position == {"epoch": 0, "index": 8} and second.step == 1   # the global data order
    for a, b in zip(first.task.parameters(), second.task.parameters()):
        assert torch.equal(a, b)
    again, _ = make_trainer(dropout=0.1, seed=7)
    again.load(tmp_path / "two.pt", reshard=True)   # new random streams, but reproducible ones
    assert torch.equal(again.generator.get_state(), second.generator.get_state())


@pytest.mark.parametrize("extra", [{}, {"mamo": 1.0, "mamo_momentum": 0.5}],
                         ids=["plain", "mamo-momentum-teacher"])
def test_resume_is_exact(tmp_path, extra):
    """6 steps uninterrupted == 3 steps, checkpoint, a new trainer from it, 3 more steps. Dropout
    is on, so the torch RNG state must be restored; masks use the task generator's state; a
    momentum teacher is part of the state too."""
    def run(trainer, cfg, start, stop):
        return [trainer.train_step([synthetic_batch(cfg, 0, i)]) for i in range(start, stop)]

    trainer, cfg = make_trainer(dropout=0.1, warmup_steps=2, total_steps=6, **extra)
    full = run(trainer, cfg, 0, 6)

    first, cfg = make_trainer(dropout=0.1, warmup_steps=2, total_steps=6, **extra)
    part = run(first, cfg, 0, 3)
    first.save(tmp_path / "ckpt.pt", data_position={"epoch": 0, "index": 3})
    torch.manual_seed(123)   # disturb every RNG the resumed run must not depend on
    torch.rand(10)
    second, cfg = make_trainer(dropout=0.1, warmup_steps=2, total_steps=6, seed=99, **extra)
    position = second.load(tmp_path / "ckpt.pt")
    assert position == {"epoch": 0, "index": 3} and second.step == 3 and second.samples_seen == 12
    part += run(second, cfg, position["index"], 6)

    assert [log["loss"] for log in part] == [log["loss"] for log in full]
    assert part == full   # every loss, lr and grad norm
    assert len({log["loss"] for log in full}) == 6   # the steps really differ
    for a, b in zip(trainer.task.parameters(), second.task.parameters()):   # teacher included
        assert torch.equal(a, b)


def test_dropout_makes_resume_depend_on_the_torch_rng(tmp_path):
    """Guard for the test above: without restoring the torch RNG, the losses would differ."""
    trainer, cfg = make_trainer(dropout=0.1)
    trainer.save(tmp_path / "ckpt.pt")
    a = trainer.train_step([synthetic_batch(cfg, 0, 0)])["loss"]
    trainer.load(tmp_path / "ckpt.pt")
    torch.manual_seed(5)
    b = trainer.train_step([synthetic_batch(cfg, 0, 0)])["loss"]
    assert a != b


def test_stage2_starts_from_stage1_weights_with_a_fresh_optimizer(tmp_path):
    stage1, cfg = make_trainer("stage1")
    for i in range(3):
        stage1.train_step([synthetic_batch(cfg, 0, i)])
    assert stage1.step == 3
    stage1.save(tmp_path / "stage1.pt", data_position={"epoch": 0, "index": 3})
    assert not (tmp_path / "stage1.pt.tmp").exists()

    stage2, cfg = make_trainer("stage2", seed=7)
    load_weights(stage2.task, tmp_path / "stage1.pt")
    for a, b in zip(stage1.task.parameters(), stage2.task.parameters()):
        assert torch.equal(a, b)
    assert stage2.step == 0 and not stage2.optimizer.state
    log = stage2.train_step([synthetic_batch(cfg, 1, 0)])
    assert {"vsc", "mcr", "itm", "mlm", "wpg"} <= set(log) and math.isfinite(log["loss"])
    assert log["lr"] == pytest.approx(1e-3 / 10)   # tiny preset: warmup 10, first step
