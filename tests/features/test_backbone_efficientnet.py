"""EfficientNet-Lite0 with the packaged ImageNet weights as a region-feature backbone."""
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from features.backbone import (
    UnsupportedBackbone,
    efficientnet_weights_file,
    load_backbone,
    timm_efficientnet_state_dict,
)
from features.extract import (
    backbone_for_feature_set,
    encode_image,
    encode_regions,
    extract_features,
    plan_feature_set,
)
from features.feature_sets import FeatureSetSpec, require_feature_set
from features.geometry import to_input_pixels
from features.load import load_region_features
from warehouse.ingest.build import ingest
from warehouse.ingest.readers import shapes


@pytest.fixture(scope="module")
def effnet():
    return load_backbone("efficientnet-lite0", device="cpu")


def _scene(i: int, seed: int = 0) -> tuple[Image.Image, np.ndarray, list[dict]]:
    s = shapes.scene(seed, i)
    image = Image.open(io.BytesIO(shapes.render(s["objects"], s["background"]))).convert("RGB")
    return image, np.array([o["box"] for o in s["objects"]], np.float32), s["objects"]


def test_packaged_imagenet_weights_load_with_no_missing_or_unexpected_keys(effnet):
    import timm
    path = efficientnet_weights_file()
    model = timm.create_model("tf_efficientnet_lite0")
    mapped = timm_efficientnet_state_dict(torch.load(path, map_location="cpu",
                                                     weights_only=True), model)
    expected = model.state_dict()
    assert set(mapped) == set(expected)
    assert all(mapped[k].shape == v.shape for k, v in expected.items())
    assert effnet.pretrained == "imagenet"
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert effnet.weights_sha256 == digest
    assert Path(path).stem.endswith(digest[:8])  # the file is named by its own hash: intact
    assert load_backbone("efficientnet-lite0", "imagenet", 224, device="cpu") is effnet


def test_renamed_weights_compute_what_the_reference_implementation_computes():
    """Every layer takes part in the logits, so equal logits mean a complete, correct mapping."""
    reference = pytest.importorskip("efficientnet_lite_pytorch")
    import timm
    path = efficientnet_weights_file()
    ref = reference.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
    model = timm.create_model("tf_efficientnet_lite0").eval()
    model.load_state_dict(timm_efficientnet_state_dict(
        torch.load(path, map_location="cpu", weights_only=True), model))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(model(x), ref(x), atol=1e-4)


def test_stride_16_map_and_a_region_vector_per_box(effnet):
    assert (effnet.kind, effnet.image_size, effnet.stride, effnet.map_channels, effnet.dim) == \
        ("efficientnet", 224, 16, 112, 112)
    fmap, glob = effnet.forward(torch.zeros(2, 3, 224, 224))
    assert fmap.shape == (2, 112, 14, 14) and glob.shape == (2, 112)

    image, boxes, _ = _scene(0)
    whole = np.array([[0, 0, *image.size]], np.float32)
    encoded = encode_image(effnet, image, np.concatenate([boxes, whole]), grid=4,
                           max_regions=50)
    assert encoded.box_source == "given" and encoded.vectors.shape == (len(boxes) + 1, 112)
    assert torch.isfinite(encoded.vectors).all()
    # the global vector is the whole-image box's region vector
    assert torch.allclose(encoded.vectors[-1], encoded.global_vector, atol=1e-4)

    small = load_backbone("efficientnet-lite0", image_size=64, device="cpu")
    assert small.forward(torch.zeros(1, 3, 64, 64))[0].shape == (1, 112, 4, 4)
    with pytest.raises(UnsupportedBackbone, match="not a multiple"):
        load_backbone("efficientnet-lite0", image_size=72, device="cpu")


def test_feature_set_is_its_own_and_extraction_stores_its_vectors(tmp_path, effnet):
    wh = tmp_path / "wh"
    ingest("shapes", tmp_path / "img", wh, n_images=2, workers=1)
    spec = plan_feature_set(wh, backbone="efficientnet-lite0")
    assert (spec.backbone, spec.pretrained, spec.dim, spec.image_size) == \
        ("efficientnet-lite0", "imagenet", 112, 224)
    assert spec.weights_sha256 == effnet.weights_sha256
    random_init = plan_feature_set(wh, backbone="efficientnet-lite0", pretrained="none")
    vit = plan_feature_set(wh, backbone="ViT-B-32")
    assert len({spec.id, random_init.id, vit.id}) == 3
    assert len({spec.weights_sha256, random_init.weights_sha256, vit.weights_sha256}) == 3
    # a record read back (no load path in it) finds the same weights again, either kind
    assert backbone_for_feature_set(FeatureSetSpec.from_row(spec.row())) is effnet
    assert backbone_for_feature_set(FeatureSetSpec.from_row(random_init.row())).pretrained == \
        "none"

    result = extract_features(wh, backbone="efficientnet-lite0", progress=False)
    assert result["feature_set"] == spec.id and result["rejected"] == 0
    assert require_feature_set(wh, spec.id).pretrained == "imagenet"
    loaded = load_region_features(wh, spec.id)
    assert loaded.vectors.shape == (result["regions"], 112) and result["regions"] >= 4


def test_region_vectors_tell_colours_apart(effnet):
    """A linear probe on a few dozen generated objects reads their colour far above chance
    (1/6; random init of the same tower scores about 0.36 here)."""
    scenes = [_scene(i, seed=3) for i in range(48)]
    pixels = torch.stack([effnet.preprocess(image) for image, _, _ in scenes])
    rois = [torch.from_numpy(to_input_pixels(boxes, *image.size, effnet.image_size))
            for image, boxes, _ in scenes]
    x = encode_regions(effnet, pixels, rois)[0]
    names = sorted(shapes.COLOURS)
    y = torch.tensor([names.index(o["colour"]) for _, _, objects in scenes for o in objects])
    fit = torch.arange(len(y)) < len(y) // 2          # earlier scenes fit, later ones test
    x = (x - x[fit].mean(0)) / (x[fit].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], len(names), requires_grad=True)
    b = torch.zeros(len(names), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(x[fit] @ w + b, y[fit]) + 1e-2 * w.pow(2).sum()
        value.backward()
        return value

    opt.step(loss)
    accuracy = ((x[~fit] @ w + b).argmax(1) == y[~fit]).float().mean().item()
    assert accuracy > 0.6, accuracy
