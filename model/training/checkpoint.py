"""Checkpoints: the one place that writes and reads them. They hold tensors and plain values only
and load weights-only, so opening a file someone handed over never runs code from it."""
from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from model.config import ModelConfig
from model.mvp import MVP

FORMAT = "mvp-checkpoint/1"
WEIGHTS = ("model", "model_config")   # what building a model from a checkpoint needs


class CheckpointError(ValueError):
    """A file that is not a usable mvp checkpoint. The message is one line naming the file."""


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` (tensors and plain values only) with the format marker. Atomic: a kill
    mid-write leaves the previous file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**state, "format": FORMAT}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, needs: tuple[str, ...] = WEIGHTS) -> dict:
    """The checkpoint at `path`, on the CPU, holding (non-None) every key of `needs`.
    FileNotFoundError when there is no file; CheckpointError when it is not one of ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # torch's notes on a foreign file's pickle protocol
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, empty, a broken zip, not a pickle...: many kinds
        # torch's weights-only unpickler names the first class/function it refused to call
        refused = re.search(r"GLOBAL (\S+)", str(e)) if isinstance(
            e, pickle.UnpicklingError) else None
        if refused:
            raise CheckpointError(f"{path}: refused: contains objects that are not plain "
                                  f"weights ({refused.group(1)})") from e
        detail = "" if isinstance(e, pickle.UnpicklingError) else str(e).strip()
        detail = type(e).__name__ + (f": {detail.splitlines()[0][:200]}" if detail else "")
        raise CheckpointError(f"{path}: unreadable: not a complete file written by torch.save "
                              f"({detail})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an mvp checkpoint (a {type(state).__name__}, "
                              "not a dict)")
    # no "format" key (written before it existed, or by hand): read if it holds what is needed
    if state.get("format", FORMAT) != FORMAT:
        raise CheckpointError(f"{path}: format {state['format']!r}; this code reads {FORMAT}")
    missing = [k for k in needs if state.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: not an mvp checkpoint (missing "
                              f"{', '.join(repr(k) for k in missing)})")
    return state


def save_weights_only(state: dict, path: str | Path) -> Path:
    """The weights and configs of a training checkpoint, without optimizer or RNG state (what
    a served model or a release needs)."""
    return save_checkpoint({k: state.get(k) for k in ("model", "model_config", "train_config")},
                           path)


def load_weights(task_or_model: nn.Module, checkpoint: str | Path | dict) -> None:
    """Load only the model weights of a checkpoint (stage2 starts from stage1 this way, with a
    fresh optimizer and schedule). Strict: a checkpoint of another architecture is an error."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model = getattr(task_or_model, "model", task_or_model)
    model.load_state_dict(state["model"])


def load_mvp(checkpoint: str | Path | dict) -> tuple[MVP, str | None]:
    """An MVP built from a checkpoint's own model_config, and the stage it was trained in."""
    state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model = MVP(ModelConfig(**state["model_config"]))
    load_weights(model, state)
    return model, (state.get("train_config") or {}).get("stage")
