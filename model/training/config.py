"""The training task's typed config, read from the `train:` section of the same YAML presets that
hold the model (`model/config.py`), so one file describes a whole experiment."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from model.config import ConfigError, load_section, require  # noqa: F401 (re-exported)
from model.losses import NEGATIVE_MODES

LOSSES = ("vsc", "mcr", "itm", "mlm", "wpg")
STAGE_LOSSES = {   # METHOD.md §3
    "stage1": ("vsc", "mcr"),          # the uni-modal encoders only
    "stage2": LOSSES,                  # from a stage-1 checkpoint
    "joint": LOSSES,                   # from the start (the authors' released code)
    "albef": ("vsc", "itm", "mlm"),    # the single-stage baseline; our VSC is ALBEF's ITC
    "retrieval": ("vsc", "itm"),       # fine-tuning from a pre-trained checkpoint
}
STAGES = tuple(STAGE_LOSSES)
CONCEPT_LOSSES = ("mcr", "text_mcr", "wpg", "psl")   # read phrase concepts or tags
MAMO_TARGETS = ("implicit", "explicit", "both")


@dataclass(frozen=True)
class TrainConfig:
    stage: str = "joint"
    # loss weights, one per task (METHOD.md: all 1 in the authors' code); 0: not computed at all
    vsc: float = 1.0
    mcr: float = 1.0
    itm: float = 1.0
    mlm: float = 1.0
    wpg: float = 1.0
    psl: float = 0.0           # SIMLA's keyword prediction from the image, added to a stage's
    #                            losses when > 0 (model/losses.py psl)
    mamo: float = 0.0          # MAMO's masked region modelling, added to a stage with MLM when > 0:
    #                            regions are then masked with the text (joint masking)
    # what a masked region recovers (MAMO's two kinds of target): implicit (its state in the
    # unmasked pass), explicit (its label as a word; regions without a label are skipped) or both
    mamo_target: str = "both"
    # the implicit target's teacher: 0 = the model itself, without gradient; m > 0 = a momentum
    # copy of the model, updated teacher <- m * teacher + (1 - m) * model after every step
    # (MAMO's choice, as ALBEF's momentum distillation)
    mamo_momentum: float = 0.0
    xmm: float = 0.0           # SIMLA's symmetric cross-modality reconstruction, added to a stage
    #                            with MLM when > 0: one side masked, the other whole
    text_mcr: bool = False     # also recover masked phrase concepts from the text encoder (MCR
    #                            weight); off by default: not shown to help
    concepts: bool = True      # false: no phrase concepts in the text, no tags in the image
    #                            (only [CLS] [SEP]); MCR and WPG are then dropped
    # how ITM picks in-batch negatives (model/losses.py itm_negatives): hard (MVP's authors) |
    # sampled (ALBEF) | random; None: sampled for albef, else hard
    negatives: str | None = None
    # ITM uses random negatives before this step, then `negatives`: the hardest negatives of a
    # random start are mostly noise or true matches
    easy_negative_steps: int = 0
    # ITM takes no negative that the labelled regions prove to match (a caption true of another
    # batch image too: features/caption_truth.py); a no-op on data without labelled regions
    drop_false_negatives: bool = False
    # VSC's negatives: rank (the authors': the rest of this process's batch) | global (the whole
    # batch gathered over the ranks, with gradient, so results do not change with the GPU count;
    # other captions of a text's image are then no negatives)
    negatives_scope: str = "rank"
    mask_prob: float = 0.15
    lr: float = 5e-5           # the paper's AdamW learning rate
    weight_decay: float = 0.01
    warmup_steps: int = 0      # linear warmup to lr, then cosine decay to 0 at total_steps
    total_steps: int = 1000    # optimizer steps
    grad_accum: int = 1        # micro-batches per optimizer step
    clip_norm: float = 10.0    # global gradient-norm clip (the authors' DeepSpeed config); 0: none
    batch_size: int = 1024     # micro-batch size over all processes (each of N DDP ranks
    #                            takes 1/N of it); global batch = batch_size * grad_accum
    seed: int = 0
    # DataLoader worker processes per rank (0: load in the training process); they share the
    # feature cache's pages with it
    num_workers: int = 0

    def __post_init__(self):
        if self.negatives is None:
            object.__setattr__(self, "negatives", "sampled" if self.stage == "albef" else "hard")
        _validate(self)

    def negatives_at(self, step: int) -> str:
        """The ITM negative mode of optimizer step `step` (the curriculum's)."""
        return "random" if step < self.easy_negative_steps else self.negatives

    def weight(self, loss: str) -> float:
        """Weight of a loss (a field named after it); text-side MCR shares MCR's."""
        return getattr(self, "mcr" if loss == "text_mcr" else loss)

    @property
    def losses(self) -> tuple[str, ...]:
        """The losses this config computes: the stage's, plus text_mcr next to MCR when on,
        minus those of weight 0 and, without concepts, those that need concepts."""
        stage = STAGE_LOSSES[self.stage]
        if self.text_mcr and "mcr" in stage:
            stage += ("text_mcr",)
        stage += ("psl",)   # only with a weight: it is 0 unless set
        if "mlm" in stage:   # MAMO and XMM mask regions beside MLM's masked words
            stage += ("mamo", "xmm")
        return tuple(k for k in stage if self.weight(k) > 0
                     and (self.concepts or k not in CONCEPT_LOSSES))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _validate(c: TrainConfig) -> None:
    require(c.stage in STAGES, f"stage must be one of {STAGES}, got {c.stage!r}")
    for name in LOSSES + ("psl", "mamo", "xmm", "lr", "weight_decay", "clip_norm"):
        v = getattr(c, name)
        require(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
             f"{name} must be a non-negative number, got {v!r}")
    require(c.lr > 0, f"lr must be positive, got {c.lr!r}")
    for name, low in (("warmup_steps", 0), ("total_steps", 1), ("grad_accum", 1),
                      ("batch_size", 1), ("seed", 0), ("easy_negative_steps", 0),
                      ("num_workers", 0)):
        v = getattr(c, name)
        require(isinstance(v, int) and not isinstance(v, bool) and v >= low,
             f"{name} must be an integer >= {low}, got {v!r}")
    require(c.warmup_steps <= c.total_steps,
         f"warmup_steps ({c.warmup_steps}) > total_steps ({c.total_steps})")
    require(isinstance(c.mask_prob, (int, float)) and 0.0 < c.mask_prob < 1.0,
         f"mask_prob must be in (0, 1), got {c.mask_prob!r}")
    require(isinstance(c.drop_false_negatives, bool),
            f"drop_false_negatives must be true or false, got {c.drop_false_negatives!r}")
    require(c.mamo_target in MAMO_TARGETS,
            f"mamo_target must be one of {MAMO_TARGETS}, got {c.mamo_target!r}")
    require(isinstance(c.mamo_momentum, (int, float)) and 0.0 <= c.mamo_momentum < 1.0,
            f"mamo_momentum must be in [0, 1), got {c.mamo_momentum!r}")
    require(c.negatives_scope in ("rank", "global"),
            f"negatives_scope must be rank or global, got {c.negatives_scope!r}")
    require(c.negatives in NEGATIVE_MODES,
            f"negatives must be one of {NEGATIVE_MODES}, got {c.negatives!r}")
    for name in ("text_mcr", "concepts"):
        v = getattr(c, name)
        require(isinstance(v, bool), f"{name} must be true/false, got {v!r}")
    require(bool(c.losses), f"stage {c.stage} has no loss left to train (weights "
                         f"{ {k: c.weight(k) for k in STAGE_LOSSES[c.stage]} }, "
                         f"concepts={c.concepts})")


def load_train_config(path_or_name: str | Path, **overrides) -> TrainConfig:
    """TrainConfig from the `train:` section of a preset or YAML file, updated by `overrides`."""
    return load_section(path_or_name, "train", TrainConfig, overrides)


def train_override(text: str) -> tuple[str, object]:
    """`key=value` with a YAML value (`wpg=0`, `concepts=false`); YAML 1.1 reads `1e-4` as a
    string, so a string that parses as a number is one."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        with contextlib.suppress(ValueError):
            parsed = float(parsed)
    return key.strip(), parsed


def schedule_for(config, steps: int) -> dict:
    """Overrides that fit the lr schedule to a run of `steps` optimizer steps (warmup at most a
    tenth of it, cosine down to 0 at its end): for fine-tuning and pipeline stages, whose length
    is set per run rather than by the preset's total_steps."""
    warmup = load_train_config(config).warmup_steps
    return {"total_steps": max(1, steps), "warmup_steps": min(warmup, steps // 10)}
