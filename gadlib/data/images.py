"""Image and mask loading: one place that turns files into normalised tensors.

Images are squashed (not cropped) to ``image_size`` x ``image_size`` so that defects near the border
are never cut away; masks are resized with nearest-neighbour and binarised (> 0), so VisA's and
BraTS's non-0/255 masks read the same as MVTec's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a tensor: size, normalisation and resampling."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resample: str = "bicubic"

    def key(self) -> str:
        """A stable text form, part of the feature-cache key."""
        return f"size={self.image_size};mean={self.mean};std={self.std};resample={self.resample}"


_RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


def _decode(path: Path, mode: str, what: str) -> Image.Image:
    """Fully decode ``path`` into PIL ``mode``; a broken file becomes a ``ValueError`` naming it."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
                # 16-bit (or 32-bit integer) grey: PIL's convert would clip everything above 255 to white.
                wide = np.asarray(img, dtype=np.float64)
                top = 65535.0 if img.mode.startswith("I;16") or wide.max() <= 65535 else wide.max()
                img = Image.fromarray(np.clip(np.round(wide / top * 255.0), 0, 255).astype(np.uint8), "L")
            return img.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot decode {what} ({err}); replace or remove the corrupt file") from err


def read_image(path: str | Path) -> Image.Image:
    """Open an image fully as RGB, turning a broken file into a clear ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image not found; check the dataset path or re-run its parser")
    return _decode(path, "RGB", "image")


def read_mask(path: str | Path | None, image_size: tuple[int, int]) -> np.ndarray:
    """Read a mask as ``(H, W)`` uint8 in {0, 1}; ``None`` gives an all-zero mask.

    Args:
        path: mask file, or ``None`` for a normal image.
        image_size: ``(width, height)`` of the image the mask belongs to; a mask of another size
            is an error (it would silently shift every pixel metric).
    """
    if path is None or (isinstance(path, float) and np.isnan(path)):
        return np.zeros((image_size[1], image_size[0]), dtype=np.uint8)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask not found; check the dataset's ground_truth folder")
    mask = _decode(path, "L", "mask")
    if mask.size != tuple(image_size):
        raise ValueError(f"{path}: mask is {mask.size[0]}x{mask.size[1]} but its image is "
                         f"{image_size[0]}x{image_size[1]} (width x height); masks must match their image")
    return (np.asarray(mask) > 0).astype(np.uint8)


def to_tensor(image: Image.Image, prep: Preprocess) -> torch.Tensor:
    """Resize and normalise an RGB image to a ``(3, S, S)`` float tensor."""
    resized = image.resize((prep.image_size, prep.image_size), _RESAMPLE[prep.resample])
    array = torch.from_numpy(np.array(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(prep.mean).view(3, 1, 1)
    std = torch.tensor(prep.std).view(3, 1, 1)
    return (array - mean) / std


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a {0,1} mask to ``(size, size)``."""
    return np.asarray(Image.fromarray(mask * 255).resize((size, size), Image.NEAREST)) // 255


def load_rgb(path: str | Path, size: int | None = None) -> np.ndarray:
    """An image as ``(H, W, 3)`` uint8 for display, optionally squashed to ``size``."""
    image = read_image(path)
    if size is not None:
        image = image.resize((size, size), Image.BICUBIC)
    return np.asarray(image)


class ImageDataset(torch.utils.data.Dataset):
    """Images (and masks) of a schema DataFrame as tensors.

    Item ``i`` is ``{"image": (3, S, S) float, "mask": (S, S) uint8, "index": i}``.
    """

    def __init__(self, frame: pd.DataFrame, prep: Preprocess, with_masks: bool = True):
        self.image_paths: list[str] = list(frame["image_path"])
        masks = frame["mask_path"] if "mask_path" in frame else [None] * len(frame)
        self.mask_paths: list[str | None] = list(masks)
        self.prep = prep
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> dict:
        image = read_image(self.image_paths[index])
        item = {"image": to_tensor(image, self.prep), "index": index}
        if self.with_masks:
            mask = read_mask(self.mask_paths[index], image.size)
            item["mask"] = torch.from_numpy(resize_mask(mask, self.prep.image_size))
        return item


def load_masks(mask_paths: Sequence[str | None], image_paths: Sequence[str], size: int) -> np.ndarray:
    """Masks of several images as ``(N, size, size)`` uint8, checked against their image sizes."""
    masks = np.zeros((len(image_paths), size, size), dtype=np.uint8)
    for i, (mask_path, image_path) in enumerate(zip(mask_paths, image_paths)):
        if mask_path is None or (isinstance(mask_path, float) and np.isnan(mask_path)):
            continue
        with Image.open(image_path) as img:
            image_size = img.size
        masks[i] = resize_mask(read_mask(mask_path, image_size), size)
    return masks


def check_mask_sizes(frame: pd.DataFrame) -> None:
    """Raise ``ValueError`` (naming both files) if any mask's size differs from its image's.

    Reads only the file headers, so a whole dataset is checked in seconds before any scoring.
    """
    with_masks = frame[frame["mask_path"].notna()]
    for image_path, mask_path in zip(with_masks["image_path"], with_masks["mask_path"]):
        try:
            with Image.open(image_path) as img, Image.open(mask_path) as mask:
                image_size, mask_size = img.size, mask.size
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"{image_path} / {mask_path}: cannot read ({err}); replace the corrupt file") from err
        if image_size != mask_size:
            raise ValueError(f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image {image_path} is "
                             f"{image_size[0]}x{image_size[1]}; masks must match their image")
