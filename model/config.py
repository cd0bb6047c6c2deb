"""The model's typed config and its YAML presets: the `model:` section of a file in `configs/` (other
sections belong to other readers, so one file can describe a whole experiment)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "small"   # the preset of the commands and flows unless told otherwise: CPU-sized

# The CLIP BPE tokenizer's start/end-of-text ids double as [CLS]/[SEP].
CLIP_WORD_VOCAB, CLIP_SOT, CLIP_EOT = 49408, 49406, 49407


class ConfigError(ValueError):
    """A config file or override that does not describe a valid model."""


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 768                # width of every encoder (paper: BERT-base, 768)
    heads: int = 12
    text_layers: int = 6
    visual_layers: int = 6
    cross_layers: int = 6
    mlp_ratio: int = 4               # MLP width = mlp_ratio * hidden
    dropout: float = 0.1
    max_text_len: int = 40           # text incl. [CLS]/[SEP]: 35 caption tokens + 5 concepts
    max_tags: int = 20               # tag-token sequence incl. [CLS]/[SEP] (position table size)
    max_regions: int = 50
    feat_dim: int = 512              # region vector width (ViT-B-32 feature set: 512, VinVL: 2048)
    embed_dim: int = 256             # width of the VSC global vectors g_t, g_v
    word_vocab: int = CLIP_WORD_VOCAB
    n_concepts: int = 0              # set from the warehouse's concept vocabulary
    temperature_init: float = 0.07   # VSC softmax temperature; the model learns 1/temperature
    # DiMBERT: the cross encoder projects text and region positions to queries, keys and values
    # with separate weights (its own attention space per modality); False: one projection (MVP)
    disentangled_fusion: bool = False
    cls_id: int = CLIP_SOT
    sep_id: int = CLIP_EOT
    feature_set: str | None = None   # feature-set id the model is built for (data path checks it)
    vocab_version: str | None = None  # concept-vocabulary version, likewise

    def __post_init__(self):
        _validate(self)

    # The shared embedding table: words [0, word_vocab) (CLIP BPE, [CLS]/[SEP] = its sot/eot),
    # then [MASK], [PAD], then concept c (the warehouse's `concepts` id) at concept_offset + c.
    @property
    def mask_id(self) -> int:
        return self.word_vocab

    @property
    def pad_id(self) -> int:
        return self.word_vocab + 1

    @property
    def concept_offset(self) -> int:
        return self.word_vocab + 2

    @property
    def vocab_size(self) -> int:
        return self.concept_offset + self.n_concepts

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def require(ok: bool, msg: str) -> None:
    """Config validation: a ConfigError with `msg` unless `ok`."""
    if not ok:
        raise ConfigError(msg)


def _validate(c: ModelConfig) -> None:
    for name in ("hidden", "heads", "mlp_ratio", "max_regions", "feat_dim", "embed_dim",
                 "word_vocab"):
        v = getattr(c, name)
        require(isinstance(v, int) and not isinstance(v, bool) and v > 0,
             f"{name} must be a positive integer, got {v!r}")
    for name in ("text_layers", "visual_layers", "cross_layers", "n_concepts"):
        v = getattr(c, name)
        require(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
             f"{name} must be a non-negative integer, got {v!r}")
    require(isinstance(c.disentangled_fusion, bool),
            f"disentangled_fusion must be true/false, got {c.disentangled_fusion!r}")
    require(c.hidden % c.heads == 0,
         f"hidden ({c.hidden}) must be divisible by heads ({c.heads})")
    # [CLS] + [SEP] + at least one token on each stream
    require(isinstance(c.max_text_len, int) and c.max_text_len >= 3,
         f"max_text_len must be an integer >= 3 ([CLS], a token, [SEP]), got {c.max_text_len!r}")
    require(isinstance(c.max_tags, int) and c.max_tags >= 2,
         f"max_tags must be an integer >= 2 ([CLS] and [SEP]), got {c.max_tags!r}")
    require(isinstance(c.dropout, (int, float)) and 0.0 <= c.dropout < 1.0,
         f"dropout must be in [0, 1), got {c.dropout!r}")
    require(isinstance(c.temperature_init, (int, float)) and 0.0 < c.temperature_init <= 1.0,
         f"temperature_init must be in (0, 1], got {c.temperature_init!r}")
    require(0 <= c.cls_id < c.word_vocab and 0 <= c.sep_id < c.word_vocab and c.cls_id != c.sep_id,
         f"cls_id ({c.cls_id}) and sep_id ({c.sep_id}) must be distinct word ids "
         f"below word_vocab ({c.word_vocab})")




def config_file(path_or_name: str | Path) -> Path:
    """The YAML file a preset name or path stands for."""
    return _resolve(path_or_name)


def _resolve(path_or_name: str | Path) -> Path:
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        return p
    preset = PRESET_DIR / f"{path_or_name}.yaml"
    if not preset.exists():
        names = sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown config preset {str(path_or_name)!r}; presets: {names}")
    return preset


def load_section(path_or_name: str | Path, section: str, cls, overrides: dict):
    """`cls` built from one section of a preset name ("tiny") or YAML path, updated by
    `overrides`. Unknown keys are errors: a typo must not silently fall back to a default."""
    path = _resolve(path_or_name)
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict) or not isinstance(doc.get(section, {}), dict):
        raise ConfigError(f"{path}: expected a mapping whose `{section}:` section is a mapping")
    values = dict(doc.get(section) or {})
    values.update(overrides)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown {section} keys {unknown}; known: {sorted(known)}")
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_config(path_or_name: str | Path, **overrides) -> ModelConfig:
    """ModelConfig from the `model:` section of a preset or YAML file, updated by `overrides`."""
    return load_section(path_or_name, "model", ModelConfig, overrides)
