"""Training variants for the comparisons (issue 5): the loss set of each stage and switch, a loss
of weight 0 that is not computed, the no-concept input, random ITM negatives, and the frozen
parameters that keep DDP from waiting on parts no loss reaches."""
import dataclasses
from collections import Counter

import pytest
import torch
from helpers import make_trainer, synthetic_batch

from model import losses
from model.training.config import STAGES, ConfigError, TrainConfig, load_train_config

VARIANTS = [   # (stage, train overrides, losses computed)
    ("stage1", {}, {"vsc", "mcr"}),
    ("stage1", {"text_mcr": True}, {"vsc", "mcr", "text_mcr"}),
    ("stage1", {"concepts": False}, {"vsc"}),
    ("joint", {}, {"vsc", "mcr", "itm", "mlm", "wpg"}),
    ("joint", {"wpg": 0}, {"vsc", "mcr", "itm", "mlm"}),
    ("joint", {"itm": 0}, {"vsc", "mcr", "mlm", "wpg"}),    # WPG then fuses the positives itself
    ("joint", {"concepts": False}, {"vsc", "itm", "mlm"}),
    ("stage2", {"negatives": "random"}, {"vsc", "mcr", "itm", "mlm", "wpg"}),
    ("albef", {}, {"vsc", "itm", "mlm"}),
    ("retrieval", {}, {"vsc", "itm"}),
    ("retrieval", {"negatives": "random"}, {"vsc", "itm"}),
    ("stage1", {"psl": 1.0}, {"vsc", "mcr", "psl"}),
    ("joint", {"psl": 0.5}, {"vsc", "mcr", "itm", "mlm", "wpg", "psl"}),
    ("stage1", {"psl": 1.0, "concepts": False}, {"vsc"}),
    ("stage2", {"mamo": 1.0}, {"vsc", "mcr", "itm", "mlm", "wpg", "mamo"}),
    ("albef", {"mamo": 1.0}, {"vsc", "itm", "mlm", "mamo"}),
    ("joint", {"mamo": 1.0, "mlm": 0}, {"vsc", "mcr", "itm", "wpg", "mamo"}),
    ("stage1", {"mamo": 1.0}, {"vsc", "mcr"}),                  # no fusion: nothing to mask
    ("stage2", {"mamo": 1.0, "mamo_target": "explicit"}, {"vsc", "mcr", "itm", "mlm", "wpg",
                                                            "mamo"}),
    ("stage2", {"mamo": 1.0, "mamo_momentum": 0.9}, {"vsc", "mcr", "itm", "mlm", "wpg", "mamo"}),
    ("stage2", {"xmm": 1.0}, {"vsc", "mcr", "itm", "mlm", "wpg", "xmm"}),
    ("joint", {"xmm": 1.0, "mlm": 0, "itm": 0, "wpg": 0}, {"vsc", "mcr", "xmm"}),
]


@pytest.mark.parametrize("stage,overrides,expected", VARIANTS)
def test_each_variant_computes_its_losses_and_trains_exactly_what_they_reach(stage, overrides,
                                                                            expected):
    trainer, cfg = make_trainer(stage, **overrides)
    tcfg = trainer.tcfg
    assert set(tcfg.losses) == expected
    out = trainer.task(synthetic_batch(cfg, 0, 0), trainer.generator)
    assert set(out) == expected | {"loss"}
    assert torch.allclose(out["loss"], sum(tcfg.weight(k) * out[k] for k in expected))
    out["loss"].backward()
    # the frozen parameters (model/training/task.py REACHES) are exactly those the backward never reaches
    named = dict(trainer.task.named_parameters())
    reached = {n for n, p in named.items() if p.grad is not None}
    assert reached == {n for n, p in named.items() if p.requires_grad}
    assert all(named[n].grad.abs().sum() > 0 for n in reached if n.endswith(".weight")
               and "ln" not in n), sorted(n for n in reached if not named[n].grad.abs().sum())
    fusion = {n for n in named if n.startswith("model.cross_encoder.")}
    assert (fusion <= reached) == bool(expected & {"itm", "mlm", "wpg", "mamo", "xmm"})


@pytest.mark.parametrize("stage", ["stage1", "joint"])
def test_disentangled_fusion_trains_both_projections_only_where_fusion_is_trained(stage):
    trainer, cfg = make_trainer(stage, model={"disentangled_fusion": True})
    out = trainer.task(synthetic_batch(cfg, 0, 0), trainer.generator)
    out["loss"].backward()
    named = dict(trainer.task.named_parameters())
    second = [n for n in named if ".qkv_second." in n]
    assert len(second) == 2 * cfg.cross_layers
    reached = {n for n, p in named.items() if p.grad is not None}
    assert reached == {n for n, p in named.items() if p.requires_grad}
    assert all(n in reached for n in second) == (stage == "joint")
    assert not any(n in reached for n in second) == (stage == "stage1")


@pytest.mark.parametrize("target", ["implicit", "explicit", "both"])
def test_mamo_is_its_implicit_explicit_or_mean_target(target):
    """The mamo loss by hand from the task's own passes: both = the mean of the two."""
    trainer, cfg = make_trainer("stage2", mamo=1.0, mamo_target=target)
    task = trainer.task
    batch = synthetic_batch(cfg, 0, 0)
    seen = {}
    real = losses.mamo, losses.mamo_explicit

    def spy(name, fn):
        def wrapped(*args):
            seen[name] = fn(*args)
            return seen[name]
        return wrapped
    try:
        losses.mamo, losses.mamo_explicit = spy("implicit", real[0]), spy("explicit", real[1])
        out = task(batch, torch.Generator().manual_seed(0))
    finally:
        losses.mamo, losses.mamo_explicit = real
    assert set(seen) == ({"implicit", "explicit"} if target == "both" else {target})
    assert out["mamo"].item() == pytest.approx(sum(v.item() for v in seen.values()) / len(seen))


def test_the_momentum_teacher_starts_as_the_model_and_follows_it_by_ema():
    trainer, cfg = make_trainer("stage2", mamo=1.0, mamo_momentum=0.9, lr=1e-2)
    task = trainer.task
    trainer.train_step([synthetic_batch(cfg, 0, 0)])
    # the first step copied the model (before its update), then moved 10% toward the update
    first = {k: v.clone() for k, v in task.teacher.state_dict().items()}
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    trainer.train_step([synthetic_batch(cfg, 0, 1)])
    after = task.model.state_dict()
    name = "cross_encoder.blocks.0.attn.qkv.weight"
    assert not torch.equal(after[name], before[name])   # the model moved
    expected = 0.9 * first[name] + 0.1 * after[name]
    assert torch.allclose(task.teacher.state_dict()[name], expected, atol=1e-6)
    assert not any(p.requires_grad for p in task.teacher.parameters())


def test_psl_targets_are_the_captions_concepts():
    trainer, cfg = make_trainer("stage1", psl=1.0)
    batch = synthetic_batch(cfg, 0, 0)
    targets = trainer.task.concept_targets(batch, cfg.n_concepts)
    for row, (ids, mask) in enumerate(zip(batch.concept_ids, batch.concept_mask)):
        want = {int(i) - cfg.concept_offset for i, m in zip(ids, mask) if m}
        assert set(targets[row].nonzero().flatten().tolist()) == want and want


def test_a_loss_of_weight_zero_is_not_computed(monkeypatch):
    def no_wpg(*args, **kwargs):
        raise AssertionError("wpg computed")
    monkeypatch.setattr(losses, "wpg", no_wpg)
    trainer, cfg = make_trainer("joint", wpg=0)
    trainer.task(synthetic_batch(cfg, 0, 0), trainer.generator)      # does not call it
    trainer, cfg = make_trainer("joint")
    with pytest.raises(AssertionError, match="wpg computed"):
        trainer.task(synthetic_batch(cfg, 0, 0), trainer.generator)


def test_the_trainer_walks_the_negative_curriculum(monkeypatch):
    """easy_negative_steps: 2 -> the first two optimizer steps draw random negatives, then the
    configured mode; the task learns the step from the Trainer."""
    modes, real = [], losses.itm_negatives

    def record(*args, **kwargs):
        modes.append(kwargs["mode"])
        return real(*args, **kwargs)
    monkeypatch.setattr(losses, "itm_negatives", record)
    trainer, cfg = make_trainer("joint", easy_negative_steps=2)
    for index in range(4):
        trainer.train_step([synthetic_batch(cfg, 0, index)])
    assert modes == ["random", "random", "hard", "hard"]


def _other_concepts_and_tags(batch, cfg):
    """The same captions and regions with different concepts (and spans) and different tags."""
    B, C = batch.concept_ids.shape
    g = torch.Generator().manual_seed(7)
    tags = torch.randint(3000, 4000, (B, 9), generator=g)
    tags[:, 0], tags[:, -1] = cfg.cls_id, cfg.sep_id
    return dataclasses.replace(
        batch, concept_ids=cfg.concept_offset + torch.randint(0, cfg.n_concepts, (B, C + 1),
                                                              generator=g),
        concept_mask=torch.ones(B, C + 1, dtype=torch.bool),
        concept_spans=torch.tensor([1, 3]).repeat(B, C + 1, 1),
        visual=dataclasses.replace(batch.visual, tag_ids=tags,
                                   tag_mask=torch.ones(B, 9, dtype=torch.bool)))


@pytest.mark.parametrize("concepts", [False, True])
def test_without_concepts_the_model_never_sees_concepts_or_tags(concepts):
    trainer, cfg = make_trainer("joint", concepts=concepts)
    batch = synthetic_batch(cfg, 0, 0)
    other = _other_concepts_and_tags(batch, cfg)
    a = trainer.task(batch, torch.Generator().manual_seed(3))
    b = trainer.task(other, torch.Generator().manual_seed(3))
    if concepts:   # guard: with concepts the same change does move the losses
        assert a["vsc"] != b["vsc"] and a["mcr"] != b["mcr"]
    else:
        assert all(torch.equal(a[k], b[k]) for k in a), {k: (a[k], b[k]) for k in a}


# Texts 0 and 1 are captions of one image, so they are not each other's negatives.
SIM = torch.tensor([[9., 8., 1., 5.],
                    [8., 9., 2., 7.],
                    [1., 3., 9., 0.],
                    [6., 2., 4., 9.]])
SAME_IMAGE = torch.tensor([0, 0, 1, 2])
ALLOWED_IMAGES = {0: {2, 3}, 1: {2, 3}, 2: {0, 1, 3}, 3: {0, 1, 2}}   # of each text
ALLOWED_TEXTS = {0: {2, 3}, 1: {2, 3}, 2: {0, 1, 3}, 3: {0, 1, 2}}    # of each image


def _negatives(mode: str, seed: int):
    """(text -> image chosen for text rows, image -> text chosen for image columns)."""
    t, i, y = losses.itm_negatives(SIM, torch.Generator().manual_seed(seed), SAME_IMAGE,
                                   mode=mode)
    assert y.tolist() == [1] * 4 + [0] * 4 and t[:4].tolist() == i[:4].tolist() == [0, 1, 2, 3]
    return dict(zip(t[4:6].tolist(), i[4:6].tolist())), dict(zip(i[6:].tolist(), t[6:].tolist()))


def test_hardest_negatives_on_a_crafted_similarity():
    t, i, _ = losses.itm_negatives(SIM, None, SAME_IMAGE)   # no generator: rows in batch order
    # texts 0, 1 take their most similar other image (3: sims 5, 7); images 2, 3 their most
    # similar other text (column 2: text 3 at 4; column 3: text 1 at 7)
    assert t.tolist() == [0, 1, 2, 3, 0, 1, 3, 1]
    assert i.tolist() == [0, 1, 2, 3, 3, 3, 2, 3]
    hardest_image, hardest_text = {0: 3, 1: 3, 2: 1, 3: 0}, {0: 3, 1: 2, 2: 3, 3: 1}
    for seed in range(20):   # whatever the direction split, every negative is the hardest one
        by_text, by_image = _negatives("hard", seed)
        assert all(hardest_image[k] == v for k, v in by_text.items())
        assert all(hardest_text[k] == v for k, v in by_image.items())


def test_random_negatives_are_uniform_among_the_allowed_partners():
    images, texts = {k: Counter() for k in range(4)}, {k: Counter() for k in range(4)}
    for seed in range(400):
        by_text, by_image = _negatives("random", seed)
        for k, v in by_text.items():
            images[k][v] += 1
        for k, v in by_image.items():
            texts[k][v] += 1
    for k in range(4):
        assert set(images[k]) == ALLOWED_IMAGES[k] and set(texts[k]) == ALLOWED_TEXTS[k]
        for counts in (images[k], texts[k]):
            n = sum(counts.values())
            assert all(abs(c / n - 1 / len(counts)) < 0.12 for c in counts.values()), counts
    # unlike the hardest choice, text 0 is also paired with image 2 (sim 1, the easiest)
    assert images[0][2] > 0


def test_sampled_negatives_follow_the_softmax_of_similarity():
    """ALBEF's rule: every text gets one image and every image one text (2B negatives), each
    drawn with probability softmax(sim) over the allowed partners."""
    sim = SIM / 4   # a temperature that keeps every allowed partner likely enough to be seen
    images, texts = {k: Counter() for k in range(4)}, {k: Counter() for k in range(4)}
    n = 3000
    for seed in range(n):
        t, i, y = losses.itm_negatives(sim, torch.Generator().manual_seed(seed), SAME_IMAGE,
                                       mode="sampled")
        assert y.tolist() == [1] * 4 + [0] * 8
        assert t[4:8].tolist() == [0, 1, 2, 3] and i[8:].tolist() == [0, 1, 2, 3]
        for k in range(4):
            images[k][i[4 + k].item()] += 1
            texts[k][t[8 + k].item()] += 1
    for k in range(4):
        allowed_i, allowed_t = sorted(ALLOWED_IMAGES[k]), sorted(ALLOWED_TEXTS[k])
        assert set(images[k]) == set(allowed_i) and set(texts[k]) == set(allowed_t)
        p_image = sim[k, allowed_i].softmax(0)
        p_text = sim[allowed_t, k].softmax(0)
        for j, p in zip(allowed_i, p_image.tolist()):
            assert abs(images[k][j] / n - p) < 0.03, (k, j, images[k][j] / n, p)
        for j, p in zip(allowed_t, p_text.tolist()):
            assert abs(texts[k][j] / n - p) < 0.03, (k, j, texts[k][j] / n, p)


def test_train_config_variants_validate():
    assert {"albef", "retrieval"} <= set(STAGES)
    tcfg = load_train_config("tiny", stage="joint", wpg=0, concepts=False, negatives="random")
    assert tcfg.losses == ("vsc", "itm", "mlm") and tcfg.to_dict()["negatives"] == "random"
    # ALBEF's negatives by default for the albef stage, MVP's hardest elsewhere
    assert TrainConfig(stage="albef").negatives == "sampled"
    assert TrainConfig(stage="stage2").negatives == "hard"
    curriculum = TrainConfig(stage="stage2", easy_negative_steps=3)
    assert [curriculum.negatives_at(s) for s in range(5)] == ["random"] * 3 + ["hard"] * 2
    with pytest.raises(ConfigError, match="negatives must be one of"):
        TrainConfig(negatives="hardest")
    with pytest.raises(ConfigError, match="no loss left"):
        TrainConfig(stage="stage1", vsc=0, concepts=False)
    with pytest.raises(ConfigError, match="concepts must be true/false"):
        TrainConfig(concepts="no")
