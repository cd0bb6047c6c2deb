"""The image tower region features come from: an OpenCLIP vision model chosen by name.

One forward pass per image gives a spatial feature map and the global image vector; region
vectors are RoIAlign pools over that map (features/roi.py) followed by `project`, which maps them
into the same joint image-text space as the global vector:

- ViT: the map is the last block's patch tokens after `ln_post` ([B, width, gh, gw]); `project`
  is the tower's own `proj`. LayerNorm is per token, so it must come before pooling; `proj` is
  linear, so applying it after pooling equals pooling projected tokens, at a fraction of the
  cost.
- ModifiedResNet (RN50, ...): the map is layer4's output, before the attention pool
  ([B, 2048, 7, 7] for RN50); `project` is the attention pool's value path, c_proj(v_proj(x))
  (as in MaskCLIP, Zhou et al. 2022). It is affine and RoIAlign weights sum to one inside the
  map, so again pooling first is exact.

Region vectors therefore have the width of the global vector (`dim` = the model's embed_dim) and
can be compared with it and with text-tower embeddings (zero-shot region tagging).

Preprocessing is OpenCLIP's eval transform with resize mode "squash": the image is resized to
image_size x image_size without a center crop, so no box ever falls outside the backbone's view
and a box maps to input pixels by two scale factors (features/geometry.py).
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from warehouse.hashing import file_sha256

CONFIG_DIR = Path(__file__).parent / "model_configs"  # "mvp-tiny": a seconds-fast test tower
RANDOM_INIT_SEED = 0

_registered = False
_cache: dict[tuple, "Backbone"] = {}
_cache_lock = threading.Lock()


class UnsupportedBackbone(ValueError):
    """The named model has no spatial feature map this module knows how to pool."""


def register_configs() -> None:
    """Make the project's model configs (features/model_configs/*.json) known to OpenCLIP."""
    global _registered
    if not _registered:
        import open_clip
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def resolve_pretrained(pretrained: str | None) -> tuple[str | None, str]:
    """(what OpenCLIP loads, what a feature set records): None/"none" is random init; an
    existing file is a local checkpoint, recorded by file name so moving it keeps the feature-set
    id (its bytes are hashed); anything else is an OpenCLIP tag (downloaded by users online)."""
    if pretrained is None or str(pretrained).strip().lower() in ("", "none"):
        return None, "none"
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path.resolve()), path.name
    return str(pretrained), str(pretrained)


def state_dict_sha256(module: torch.nn.Module) -> str:
    """A hash of the weights themselves (names, dtypes, shapes and bytes), for weights that have
    no file of their own: random init, or a tag resolved by OpenCLIP."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    # bf16 on GPU (2x throughput, no loss scaling needed for inference); fp32 on CPU,
    # where bf16 matmuls are slower than fp32 on most machines.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@dataclass(eq=False)
class Backbone:
    name: str
    pretrained: str              # as recorded: tag, checkpoint file name, or "none"
    weights_sha256: str
    visual: torch.nn.Module      # the OpenCLIP image tower, eval mode, on `device`
    kind: str                    # "vit" | "resnet"
    image_size: int              # square input side in pixels
    stride: int                  # input pixels per feature-map cell
    map_channels: int            # C of the feature map
    dim: int                     # region and global vector width (the joint embedding space)
    preprocess: Callable         # PIL RGB image -> [3, image_size, image_size] tensor
    device: torch.device

    @property
    def autocast(self):
        return _autocast(self.device)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, S, S] -> (feature map [B, C, S/stride, S/stride], global [B, dim])."""
        images = images.to(self.device, non_blocking=True)
        with self.autocast:
            out = self.visual.forward_intermediates(images, indices=1,
                                                    normalize_intermediates=True)
        return out["image_intermediates"][-1], out["image_features"]

    @torch.inference_mode()
    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled map features [n, C] -> region vectors [n, dim] in the global vector's space."""
        pooled = pooled.to(self.device)
        with self.autocast:
            if self.kind == "vit":
                proj = self.visual.proj
                return pooled if proj is None else pooled @ proj.to(pooled.dtype)
            pool = self.visual.attnpool
            return pool.c_proj(pool.v_proj(pooled))


def load_backbone(name: str, pretrained: str | None = None, image_size: int | None = None,
                  device: str | torch.device | None = None) -> Backbone:
    """The image tower of OpenCLIP model `name`, cached per process by its arguments."""
    source, recorded = resolve_pretrained(pretrained)
    device = torch.device(device) if device is not None else default_device()
    key = (name, source, image_size, str(device))
    with _cache_lock:
        if key not in _cache:
            bb = _build(name, source, recorded, image_size, device)
            # the default size and the same size asked for explicitly are one backbone
            _cache[key] = _cache[(name, source, bb.image_size, str(device))] = bb
        return _cache[key]


def _create_model(name: str, source: str | None, image_size: int | None):
    """(OpenCLIP model, eval preprocess) with these weights; random init is seeded."""
    import open_clip

    register_configs()
    if open_clip.get_model_config(name) is None and not name.startswith(("hf-hub:",
                                                                           "local-dir:")):
        raise UnsupportedBackbone(f"unknown OpenCLIP model {name!r} (see open_clip.list_models())")
    # Seeded so that random init is reproducible: the same config gives the same weights, hash
    # and feature-set id. fork_rng keeps the caller's random state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=source, force_image_size=image_size,
                image_resize_mode="squash")
        except Exception as e:
            if source is None:
                raise
            raise RuntimeError(f"cannot load weights {source!r} for {name}: {e} (offline? pass a "
                               "local checkpoint path, or pretrained=None)") from e
    return model, preprocess


def _weights_sha256(source: str | None, visual: torch.nn.Module) -> str:
    """The checkpoint file's hash, else the image tower's weights' (random init, tags)."""
    return file_sha256(source) if source and Path(source).is_file() else \
        state_dict_sha256(visual)


def _build(name: str, source: str | None, recorded: str, image_size: int | None,
           device: torch.device) -> Backbone:
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    model, preprocess = _create_model(name, source, image_size)
    visual = model.visual
    del model  # the text tower is not needed here
    if isinstance(visual, VisionTransformer) and visual.attn_pool is None:
        kind, stride, channels = "vit", visual.patch_size[0], visual.ln_post.normalized_shape[0]
    elif isinstance(visual, ModifiedResNet):
        kind, stride, channels = "resnet", 32, visual.attnpool.v_proj.in_features
    else:
        raise UnsupportedBackbone(
            f"{name}: image tower {type(visual).__name__} is not supported for region features "
            "(supported: OpenCLIP VisionTransformer without attentional pooler, ModifiedResNet)")
    size = visual.preprocess_cfg["size"]
    size = size if isinstance(size, int) else size[0]
    if size % stride:
        raise UnsupportedBackbone(f"{name}: image size {size} is not a multiple of the backbone "
                                  f"stride {stride}; the feature map would not cover the input")
    visual.eval().requires_grad_(False)
    weights = _weights_sha256(source, visual)
    return Backbone(name=name, pretrained=recorded, weights_sha256=weights,
                    visual=visual.to(device), kind=kind, image_size=size, stride=stride,
                    map_channels=channels, dim=visual.output_dim, preprocess=preprocess,
                    device=device)


@dataclass(eq=False)
class TextTower:
    """The text tower of the same OpenCLIP weights as an image tower, for zero-shot tagging of
    region vectors (which live in the joint space, see the module docstring)."""
    name: str
    pretrained: str              # as recorded, like Backbone.pretrained
    weights_sha256: str          # computed as Backbone.weights_sha256 is: equal iff same weights
    model: torch.nn.Module       # the OpenCLIP model, image tower dropped, eval mode
    tokenizer: Callable          # list[str] -> token ids [n, context_length]
    device: torch.device

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """texts -> L2-normalised embeddings [n, dim], float32."""
        tokens = self.tokenizer(texts).to(self.device)
        with _autocast(self.device):
            return self.model.encode_text(tokens, normalize=True).float()


def load_text_tower(name: str, pretrained: str | None = None, image_size: int | None = None,
                    device: str | torch.device | None = None) -> TextTower:
    """The text tower of OpenCLIP model `name` with these weights. `image_size` only matters
    for the weights hash of random init or a tag, which covers the image tower as loaded for
    a feature set (so it must be the feature set's size)."""
    import open_clip

    source, recorded = resolve_pretrained(pretrained)
    device = torch.device(device) if device is not None else default_device()
    model, _ = _create_model(name, source, image_size)
    weights = _weights_sha256(source, model.visual)
    model.visual = torch.nn.Identity()  # only encode_text is used
    model.eval().requires_grad_(False)
    return TextTower(name=name, pretrained=recorded, weights_sha256=weights,
                     model=model.to(device), tokenizer=open_clip.get_tokenizer(name),
                     device=device)
