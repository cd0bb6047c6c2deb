"""OpenCLIP image towers as region-feature backbones: maps, projections, weights identity."""
import hashlib
import time

import pytest
import torch
from PIL import Image

from features.backbone import UnsupportedBackbone, build_open_clip, load_backbone
from features.extract import encode_regions
from features.roi import pool_regions


@pytest.fixture(scope="module")
def tiny():
    return load_backbone("mvp-tiny", device="cpu")


def _pixels(bb, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, bb.image_size, bb.image_size, generator=g)


def test_tiny_vit_map_global_and_dims(tiny):
    assert (tiny.kind, tiny.image_size, tiny.stride, tiny.map_channels, tiny.dim) == \
        ("vit", 64, 16, 64, 32)
    fmap, glob = tiny.forward(_pixels(tiny))
    assert fmap.shape == (2, 64, 4, 4) and glob.shape == (2, 32)
    assert tiny.project(torch.zeros(5, 64)).shape == (5, 32)
    # the global vector is the tower's own image embedding
    with torch.inference_mode():
        assert torch.allclose(glob, tiny.visual(_pixels(tiny)), atol=1e-5)


def test_vit_regions_are_projected_patch_tokens_in_grid_order(tiny):
    """Whole image = mean of all patch tokens; quadrants = their 2x2 patches, row-major, which
    catches a transposed or misordered map."""
    x = _pixels(tiny, n=1)
    visual = tiny.visual
    visual.output_tokens = True
    try:
        with torch.inference_mode():
            _, tokens = visual(x)                   # [1, 16, 64] after ln_post, row-major
    finally:
        visual.output_tokens = False
    projected = tokens[0] @ visual.proj             # [16, 32]
    s = tiny.image_size
    boxes = torch.tensor([[0, 0, s, s], [0, 0, s / 2, s / 2], [s / 2, 0, s, s / 2],
                          [0, s / 2, s / 2, s]], dtype=torch.float32)
    regions, _ = encode_regions(tiny, x, [boxes])
    expected = torch.stack([projected.mean(0), projected[[0, 1, 4, 5]].mean(0),
                            projected[[2, 3, 6, 7]].mean(0), projected[[8, 9, 12, 13]].mean(0)])
    assert torch.allclose(regions, expected, atol=1e-5)


def test_random_init_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    a = build_open_clip("mvp-tiny", None, "none", None, torch.device("cpu"))
    after_first = torch.rand(1)
    torch.manual_seed(123)
    b = build_open_clip("mvp-tiny", None, "none", None, torch.device("cpu"))
    assert torch.rand(1) == after_first                   # the caller's random state is intact
    assert a.weights_sha256 == b.weights_sha256 and len(a.weights_sha256) == 64
    assert torch.equal(a.visual.conv1.weight, b.visual.conv1.weight)
    c = build_open_clip("mvp-tiny", None, "none", 32, torch.device("cpu"))  # another input size
    assert c.image_size == 32 and c.weights_sha256 != a.weights_sha256


def test_local_checkpoint_is_loaded_and_hashed_by_its_bytes(tmp_path):
    import open_clip
    load_backbone("mvp-tiny", device="cpu")  # registers the config
    torch.manual_seed(7)                     # weights unlike the seeded random init
    model = open_clip.create_model("mvp-tiny")
    path = tmp_path / "tiny-weights.pt"
    torch.save(model.state_dict(), path)
    bb = load_backbone("mvp-tiny", str(path), device="cpu")
    assert bb.pretrained == "tiny-weights.pt"
    assert bb.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(bb.visual.conv1.weight, model.visual.conv1.weight)
    random_init = load_backbone("mvp-tiny", device="cpu").visual.conv1.weight
    assert not torch.equal(bb.visual.conv1.weight, random_init)


def test_backbones_are_cached_per_process(tiny):
    assert load_backbone("mvp-tiny", "none", device="cpu") is tiny
    assert load_backbone("mvp-tiny", None, image_size=64, device="cpu") is tiny


def test_unknown_or_unusable_backbones_are_refused():
    with pytest.raises(UnsupportedBackbone, match="unknown OpenCLIP model"):
        load_backbone("no-such-model")
    with pytest.raises(UnsupportedBackbone, match="not a multiple"):
        load_backbone("mvp-tiny", image_size=72)


def test_vit_b_32_random_init_runs_one_image():
    started = time.time()
    bb = load_backbone("ViT-B-32", None, device="cpu")
    pixels = bb.preprocess(Image.new("RGB", (320, 200), (90, 140, 200))).unsqueeze(0)
    assert pixels.shape == (1, 3, 224, 224)
    regions, glob = encode_regions(bb, pixels, [torch.tensor([[0., 0., 112., 224.]])])
    assert (bb.map_channels, bb.dim, bb.stride) == (768, 512, 32)
    assert regions.shape == (1, 512) and glob.shape == (1, 512)
    assert torch.isfinite(regions).all()
    assert time.time() - started < 20  # ~4 s alone on 2 cores; generous for a loaded machine


def test_rn50_map_is_layer4_and_regions_use_the_attention_pool_value_path():
    bb = load_backbone("RN50", None, image_size=64, device="cpu")  # 64 px keeps it fast
    assert (bb.kind, bb.map_channels, bb.dim, bb.stride) == ("resnet", 2048, 1024, 32)
    x = _pixels(bb, n=1)
    fmap, glob = bb.forward(x)
    assert fmap.shape == (1, 2048, 2, 2) and glob.shape == (1, 1024)
    with torch.inference_mode():
        layer4 = bb.visual.forward_intermediates(x, indices=1)["image_intermediates"][-1]
        pool = bb.visual.attnpool
        expected = pool.c_proj(pool.v_proj(layer4.mean(dim=(2, 3))))
    whole = pool_regions(fmap, [torch.tensor([[0., 0., 64., 64.]])], 64)
    assert torch.allclose(whole, layer4.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(bb.project(whole), expected, atol=1e-4)
