"""Anomaly simulation on normal images: synthetic abnormal references and source anomalies.

Two families, both pure numpy (plus :mod:`scipy.ndimage`) and deterministic given the generator:

* :func:`cut_paste` -- CutPaste (Li et al., CVPR 2021): a rectangle cut from the image (or another
  image), colour-jittered, optionally rotated, pasted elsewhere.
* :func:`noise_blob` -- DRAEM-like (Zavrtanik et al., ICCV 2021): a smooth random blob, cut from
  thresholded smoothed noise, filled with a blend of a foreign texture.

Every simulator returns ``(image, mask)``: a new uint8 image of the input's shape and a non-empty
``(H, W)`` uint8 {0, 1} mask; pixels outside the mask are byte-identical to the input.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Simulated = tuple[np.ndarray, np.ndarray]


def _check_image(image: np.ndarray, name: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"{name} must be a uint8 numpy array, got {getattr(image, 'dtype', type(image))}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)) or min(image.shape[:2]) < 4:
        raise ValueError(f"{name} must be (H, W) or (H, W, C) with C in 1, 3, 4 and H, W >= 4; got {image.shape}")


def _check_range(value: tuple[float, float], name: str, low: float, high: float) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not low < lo <= hi <= high:
        raise ValueError(f"{name} must satisfy {low} < min <= max <= {high}, got {value}")
    return lo, hi


def _colour_jitter(patch: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Random brightness, contrast and (for colour) saturation factors in ``1 +- strength``."""
    out = patch.astype(np.float32) * rng.uniform(1 - strength, 1 + strength)
    out = out.mean() + (out - out.mean()) * rng.uniform(1 - strength, 1 + strength)
    if out.ndim == 3 and out.shape[2] >= 3:
        grey = out[..., :3].mean(axis=2, keepdims=True)
        out[..., :3] = grey + (out[..., :3] - grey) * rng.uniform(1 - strength, 1 + strength)
    return out


def cut_paste(
    image: np.ndarray,
    rng: np.random.Generator,
    source: np.ndarray | None = None,
    area_range: tuple[float, float] = (0.002, 0.02),
    aspect_range: tuple[float, float] = (0.3, 3.3),
    rotate: bool = True,
    jitter: float = 0.1,
) -> Simulated:
    """CutPaste: paste a jittered, possibly rotated rectangle at a random place.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` uint8 normal image.
        rng: the generator that decides every random choice.
        source: image to cut the patch from (same channel count); ``image`` itself when ``None``.
        area_range: patch area as a fraction of the image area, ``(min, max)``.
        aspect_range: patch width / height, sampled log-uniformly.
        rotate: rotate the patch by a uniform angle in [-45, 45] degrees.
        jitter: colour-jitter strength (0 disables).

    Returns:
        ``(image, mask)``: the new image (input shape and dtype) and the ``(H, W)`` uint8 mask of
        exactly the pasted pixels.
    """
    _check_image(image)
    source = image if source is None else source
    _check_image(source, "source")
    if source.shape[2:] != image.shape[2:]:
        raise ValueError(f"source must have the image's channels: {source.shape} vs {image.shape}")
    area_lo, area_hi = _check_range(area_range, "area_range", 0.0, 1.0)
    aspect_lo, aspect_hi = _check_range(aspect_range, "aspect_range", 0.0, np.inf)
    h, w = image.shape[:2]
    area = rng.uniform(area_lo, area_hi) * h * w
    aspect = np.exp(rng.uniform(np.log(aspect_lo), np.log(aspect_hi)))
    ph = int(np.clip(round(np.sqrt(area / aspect)), 1, min(h, source.shape[0]) - 1))
    pw = int(np.clip(round(np.sqrt(area * aspect)), 1, min(w, source.shape[1]) - 1))
    top, left = rng.integers(0, source.shape[0] - ph + 1), rng.integers(0, source.shape[1] - pw + 1)
    patch = _colour_jitter(source[top:top + ph, left:left + pw], rng, jitter)
    footprint = np.ones((ph, pw), bool)
    if rotate:
        angle = rng.uniform(-45, 45)
        turned = ndimage.rotate(np.ones((ph, pw), np.float32), angle, reshape=True, order=1) > 0.999
        fits = turned.shape[0] <= h and turned.shape[1] <= w
        if turned.any() and fits:  # keep only pixels whose interpolation saw no padding
            patch = ndimage.rotate(patch, angle, reshape=True, order=1, mode="constant", cval=0.0)
            footprint = turned
    fh, fw = footprint.shape
    y, x = rng.integers(0, h - fh + 1), rng.integers(0, w - fw + 1)
    out = image.copy()
    region = out[y:y + fh, x:x + fw]
    region[footprint] = np.clip(np.rint(patch[footprint]), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[y:y + fh, x:x + fw] = footprint
    return out, mask


def _texture(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A foreign texture in [0, 255]: smoothed colour noise at a random scale, or random stripes."""
    h, w = shape[:2]
    channels = shape[2] if len(shape) == 3 else 1
    scale = min(h, w) * rng.uniform(0.01, 0.05)
    noise = ndimage.gaussian_filter(rng.standard_normal((h, w, channels)), (scale, scale, 0), mode="wrap")
    noise = (noise - noise.mean()) / (noise.std() + 1e-8)
    if rng.random() < 0.3:  # stripes: a strongly structured alternative to blotches
        yy, xx = np.mgrid[0:h, 0:w]
        angle, period = rng.uniform(0, np.pi), min(h, w) * rng.uniform(0.03, 0.1)
        stripes = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
        noise = 0.4 * noise + stripes[..., None]
    base = rng.uniform(40, 215, channels)
    texture = base + noise * rng.uniform(25, 60)
    return texture if len(shape) == 3 else texture[..., 0]


def noise_blob(
    image: np.ndarray,
    rng: np.random.Generator,
    source: np.ndarray | None = None,
    area_range: tuple[float, float] = (0.005, 0.05),
    opacity_range: tuple[float, float] = (0.3, 0.9),
    smoothness: float = 0.04,
) -> Simulated:
    """DRAEM-like: blend a foreign texture into one smooth random blob.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` uint8 normal image.
        rng: the generator that decides every random choice.
        source: texture image to blend in, same shape as ``image``; random smoothed noise or
            stripes when ``None``.
        area_range: blob area as a fraction of the image area, ``(min, max)``.
        opacity_range: weight of the foreign texture inside the blob, ``(min, max)``.
        smoothness: noise smoothing as a fraction of the image side (larger = rounder blobs).

    Returns:
        ``(image, mask)``: the new image (input shape and dtype) and the ``(H, W)`` uint8 blob mask.
    """
    _check_image(image)
    area_lo, area_hi = _check_range(area_range, "area_range", 0.0, 1.0)
    opacity_lo, opacity_hi = _check_range(opacity_range, "opacity_range", 0.0, 1.0)
    if smoothness <= 0:
        raise ValueError(f"smoothness must be > 0, got {smoothness}")
    if source is not None:
        _check_image(source, "source")
        if source.shape != image.shape:
            raise ValueError(f"source must have the image's shape: {source.shape} vs {image.shape}")
    h, w = image.shape[:2]
    sigma = max(1.0, smoothness * min(h, w))
    field = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma, mode="wrap")
    field = (field - field.mean()) / (field.std() + 1e-8)
    # a broad window around a random centre keeps the thresholded noise to one local blob
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    yy, xx = np.mgrid[0:h, 0:w]
    reach = np.sqrt(area_hi * h * w) * 1.5
    field = field + 3.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * reach**2))
    fraction = rng.uniform(area_lo, area_hi)
    blob = field >= np.quantile(field, 1 - fraction)
    labels, count = ndimage.label(blob)
    if count > 1:  # keep the component holding the strongest response
        blob = labels == labels.flat[np.argmax(np.where(blob, field, -np.inf))]
    texture = _texture(rng, image.shape) if source is None else source.astype(np.float32)
    opacity = rng.uniform(opacity_lo, opacity_hi)
    blended = (1 - opacity) * image.astype(np.float32) + opacity * texture
    out = image.copy()
    out[blob] = np.clip(np.rint(blended[blob]), 0, 255).astype(np.uint8)
    return out, blob.astype(np.uint8)


SIMULATORS: dict[str, Callable[..., Simulated]] = {"cut_paste": cut_paste, "noise_blob": noise_blob}


def simulate(image: np.ndarray, method: str, rng: np.random.Generator, **kwargs) -> Simulated:
    """Run the simulator named ``method`` (one of :data:`SIMULATORS`) with extra keyword arguments.

    Raises:
        ValueError: for an unknown method name (the message lists the valid ones).
    """
    if method not in SIMULATORS:
        raise ValueError(f"unknown simulation method {method!r}; valid methods: {', '.join(SIMULATORS)}")
    return SIMULATORS[method](image, rng, **kwargs)


# -- global anomalies ---------------------------------------------------------------------------------------
GLOBAL_CHANGES = ("coarser", "flatter", "blurred")


def global_change(image: np.ndarray, kind: str) -> np.ndarray:
    """A whole-image anomaly that no single patch shows (for validating global scores on source data).

    ``"coarser"``: the content zoomed in by 8 % (bilinear, centre crop): every structure slightly larger;
    ``"flatter"``: contrast cut to 85 % about the image mean; ``"blurred"``: Gaussian smoothing, sigma 1 px.
    Deterministic; returns a new uint8 image of the input's shape.
    """
    _check_image(image)
    if kind not in GLOBAL_CHANGES:
        raise ValueError(f"unknown global change {kind!r}; valid: {', '.join(GLOBAL_CHANGES)}")
    data = image.astype(np.float64)
    if kind == "coarser":
        h, w = data.shape[:2]
        zoomed = ndimage.zoom(data, (1.08, 1.08) + (1,) * (data.ndim - 2), order=1)
        top, left = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
        data = zoomed[top:top + h, left:left + w]
    elif kind == "flatter":
        data = data.mean() + 0.85 * (data - data.mean())
    else:
        data = ndimage.gaussian_filter(data, sigma=(1.0, 1.0) + (0,) * (data.ndim - 2))
    return np.clip(np.rint(data), 0, 255).astype(np.uint8)
