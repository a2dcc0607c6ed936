"""The procedural synthetic inspection suite: seeded categories x defect families, with pixel masks.

Normal images come from the painters in :mod:`gadlib.data.synth_painters` (textures and simple
manufactured objects under even lighting); :func:`apply_defect` paints one defect and returns the
exact mask of the pixels it changed; :func:`generate_suite` writes a whole suite in the MVTec AD
folder layout and returns the shared table (:mod:`gadlib.data.schema`).

Every image is determined by ``(seed, category, split, defect, index)`` through
:class:`numpy.random.SeedSequence`, so changing the count of one split leaves all others unchanged.
"""
from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage

from gadlib.data.schema import make_frame
from gadlib.data.synth_painters import (
    OBJECT_CATEGORIES, PAINTERS, border_pixels, draw_pixels, estimate_foreground, jagged_walk, pick_centre,
    pixel_grid, polar, polyline, short_side, smooth_noise, wobble,
)
from gadlib.data.synth_photos import PHOTO_PAINTERS

CATEGORIES: tuple[str, ...] = tuple(PAINTERS)     # the default suite's categories (procedural)
PHOTO_CATEGORIES: tuple[str, ...] = tuple(PHOTO_PAINTERS)     # cut from real photographs, by name only
ALL_CATEGORIES: tuple[str, ...] = CATEGORIES + PHOTO_CATEGORIES
DEFECTS: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "missing_part", "contamination")
# More defect families, painted only when named (the default suite keeps the six above, image for image).
EXTRA_DEFECTS: tuple[str, ...] = ("burn", "thread", "discolouration", "fold")
ALL_DEFECTS: tuple[str, ...] = DEFECTS + EXTRA_DEFECTS
_ALL_PAINTERS = {**PAINTERS, **PHOTO_PAINTERS}
SUITE_VERSION = 1  # bump when the generator changes, so cached suites on disk are regenerated
MANIFEST = "suite.json"
MASK_THRESHOLD = 0.2  # defect coverage below this is left unpainted, so the mask is exactly what changed
MAX_TRIES = 20
_LIGHT = math.radians(-135)  # light from the upper left, shared by every shading term
_DIRT = np.array([[0.08, 0.07, 0.06], [0.55, 0.3, 0.12], [0.95, 0.95, 0.9], [0.25, 0.35, 0.65]], np.float32)
_STAIN = np.array([[0.35, 0.24, 0.1], [0.12, 0.12, 0.14], [0.85, 0.78, 0.45], [0.5, 0.6, 0.75]], np.float32)


# ------------------------------------------------------------------------------ normal images
def render_normal(category: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Paint one normal image of ``category``.

    Args:
        category: one of :data:`ALL_CATEGORIES`.
        size: side length in pixels (>= 32).
        rng: the generator that decides every random choice.

    Returns:
        ``(size, size, 3)`` uint8 RGB image.
    """
    return _render(_check_category(category), _check_size(size), rng)[0]


def _render(category: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    rgb, foreground = _ALL_PAINTERS[category](size, rng)
    yy, xx = pixel_grid(size)
    tilt = rng.uniform(0, 2 * np.pi)  # gentle illumination gradient and exposure jitter
    light = rng.uniform(0.97, 1.03) * (1 + 0.04 * ((xx - 0.5) * np.cos(tilt) + (yy - 0.5) * np.sin(tilt)))
    rgb = rgb * light[..., None] + rng.normal(0, 0.008, rgb.shape)
    return _to_uint8(rgb), foreground


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ defects
def apply_defect(
    image: np.ndarray,
    defect: str,
    rng: np.random.Generator,
    category: str | None = None,
    foreground: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect onto a copy of ``image``.

    Args:
        image: ``(H, W, 3)`` uint8 RGB image (normally from :func:`render_normal`).
        defect: one of :data:`ALL_DEFECTS`.
        rng: the generator that decides every random choice.
        category: the image's category; object categories place defects on the object and make
            ``missing_part`` bite the object. ``None`` guesses from the image border.
        foreground: optional ``(H, W)`` bool object mask; when omitted it is estimated from the
            border for object categories (and for ``category=None``), and textures get none.

    Returns:
        ``(defective, mask)``: the new uint8 image and the ``(H, W)`` uint8 {0, 1} mask, non-empty,
        equal to 1 exactly where the defect was painted (pixels outside are byte-identical).
    """
    if defect not in ALL_DEFECTS:
        raise ValueError(f"unknown defect {defect!r}; valid defects: {', '.join(ALL_DEFECTS)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise ValueError(f"apply_defect expects an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if category is not None:
        _check_category(category)
    if foreground is not None:
        foreground = np.asarray(foreground, bool)
        if foreground.shape != image.shape[:2]:
            raise ValueError(f"foreground must be {image.shape[:2]}, got {foreground.shape}")
    elif category is None or category in OBJECT_CATEGORIES:
        foreground = estimate_foreground(image)
    foreground = foreground if foreground is not None and foreground.any() else None
    img = image.astype(np.float32) / 255.0
    min_pixels = max(4, int(4e-4 * image.shape[0] * image.shape[1]))
    on_object = None if foreground is None else ndimage.binary_dilation(foreground)
    for _ in range(MAX_TRIES):
        target, alpha = _DEFECT_PAINTERS[defect](img, rng, foreground)
        drawn = int((alpha >= MASK_THRESHOLD).sum())
        if on_object is not None:  # defects stay on the object; retry if most of one fell outside
            alpha = alpha * on_object
        mask = alpha >= MASK_THRESHOLD
        if mask.sum() >= max(min_pixels, 0.7 * drawn):
            break
    else:  # pragma: no cover - the painters' size ranges make this practically impossible
        raise RuntimeError(f"could not place a visible {defect!r} on a {image.shape} image")
    blended = _to_uint8(img * (1 - alpha[..., None]) + target * alpha[..., None])
    return np.where(mask[..., None], blended, image), mask.astype(np.uint8)


# Each defect painter takes (image in [0, 1], rng, foreground or None) and returns (target, alpha):
# the fully defective appearance and its per-pixel coverage; apply_defect blends and thresholds them.
def _contrasting(rng, img, palette) -> np.ndarray:
    """One of the two palette colours farthest from the image's mean colour."""
    distance = np.abs(palette - img.reshape(-1, 3).mean(axis=0)).sum(axis=1)
    return palette[np.argsort(distance)[-2:][rng.integers(2)]]


def _scratch(img, rng, foreground):
    side, centre = short_side(img), pick_centre(rng, img, foreground)
    theta, length = rng.uniform(0, np.pi), rng.uniform(0.15, 0.35) * side
    direction, normal = np.array([np.cos(theta), np.sin(theta)]), np.array([-np.sin(theta), np.cos(theta)])
    bow = centre + normal * rng.uniform(-0.2, 0.2) * length
    t = np.linspace(0, 1, 24)[:, None]
    ends = centre - direction * length / 2, centre + direction * length / 2
    points = (1 - t) ** 2 * ends[0] + 2 * (1 - t) * t * bow + t**2 * ends[1]
    width = max(1.0, rng.uniform(0.8, 1.5) * side / 128)
    widths = width * np.sqrt(np.sin(np.pi * (t[:-1, 0] + t[1:, 0]) / 2) + 0.15)
    alpha = draw_pixels(img.shape, lambda c, k: polyline(c, k, points, widths))
    target = img + (1 - img) * 0.7 if rng.random() < 0.5 else img * 0.3
    return target, alpha


def _crack(img, rng, foreground):
    side, start = short_side(img), pick_centre(rng, img, foreground)
    theta, step = rng.uniform(0, 2 * np.pi), 0.018 * side
    width = max(1.0, rng.uniform(1.0, 1.8) * side / 128)
    main = jagged_walk(rng, start, theta, max(3, int(rng.uniform(0.18, 0.35) * side / step)), step)
    strokes = [main]
    for _ in range(rng.integers(1, 3)):  # side branches leave the main crack at an angle
        node = main[rng.integers(len(main) // 4, 3 * len(main) // 4 + 1)]
        heading = theta + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
        strokes.append(jagged_walk(rng, node, heading, max(2, int(len(main) * rng.uniform(0.25, 0.5))), step))

    def draw(canvas, k):
        for rank, stroke in enumerate(strokes):
            t = np.linspace(0, 1, len(stroke) - 1)
            taper = 1 - 0.6 * t if rank else 1 - 0.6 * np.abs(2 * t - 1)  # branches thin towards their tips
            polyline(canvas, k, stroke, width * (0.6 if rank else 1.0) * taper)

    return img * rng.uniform(0.12, 0.25), draw_pixels(img.shape, draw)


def _hole(img, rng, foreground):
    side, centre = short_side(img), pick_centre(rng, img, foreground)
    r, phi = polar(img, centre)
    radius = max(2.0, rng.uniform(0.025, 0.05) * side) * wobble(rng, phi, 0.05)
    inside = np.clip(radius - r + 0.5, 0, 1)
    alpha = np.clip(1.4 * radius - r + 0.5, 0, 1)
    wall = np.clip(np.cos(phi - _LIGHT - np.pi), 0, 1) * np.clip(r / radius, 0, 1) ** 2  # far wall catches the light
    void = np.repeat((0.05 + 0.18 * wall)[..., None], 3, axis=2)
    rim = img * (1 + 0.4 * np.cos(phi - _LIGHT))[..., None]
    return inside[..., None] * void + (1 - inside[..., None]) * rim, alpha


def _stain(img, rng, foreground):
    side, centre = short_side(img), pick_centre(rng, img, foreground)
    r, phi = polar(img, centre)
    radius = rng.uniform(0.05, 0.11) * side
    stretch = rng.uniform(0.65, 1.0)
    squash = np.sqrt(np.cos(phi - rng.uniform(0, np.pi)) ** 2 * (1 - stretch**2) + stretch**2)  # an ellipse
    radius = radius * wobble(rng, phi, 0.15) / squash
    edge = 1 - r / radius + 0.12 * smooth_noise(rng, img.shape[:2], max(1.0, side * 0.03))
    alpha = np.clip(edge / 0.35, 0, 1) ** 1.5
    strength = rng.uniform(0.3, 0.5)
    return img * (1 - strength) + _contrasting(rng, img, _STAIN) * strength, alpha


def _missing_part(img, rng, foreground):
    side = short_side(img)
    if foreground is not None and foreground.any():  # bite a chunk out of the object's outline
        outline = np.argwhere(foreground & ~ndimage.binary_erosion(foreground))
        y, x = outline[rng.integers(len(outline))]
        r, phi = polar(img, (x + 0.5, y + 0.5))
        radius = rng.uniform(0.06, 0.1) * side * wobble(rng, phi, 0.12)
        alpha = np.clip(radius - r + 0.5, 0, 1) * ndimage.binary_dilation(foreground, iterations=2)
        background = np.median(border_pixels(img), axis=0)
        return background + rng.normal(0, 0.008, img.shape), alpha
    centre = pick_centre(rng, img, None)
    half = rng.uniform(0.05, 0.1, 2) * side
    turn = rng.uniform(0, np.pi)
    corners = [np.array([sx * half[0], sy * half[1]]) for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    corners = [centre + rot @ c * rng.uniform(0.8, 1.2) for c in corners]  # a jittered quadrilateral patch
    alpha = draw_pixels(img.shape, lambda c, k: c.polygon([(p[0] * k, p[1] * k) for p in corners], fill=255))
    flat = np.median(img[alpha > 0.5], axis=0) if (alpha > 0.5).any() else img.reshape(-1, 3).mean(axis=0)
    flat = flat * rng.uniform(0.92, 1.08)
    return flat + rng.normal(0, 0.01, img.shape).astype(np.float32), alpha


def _contamination(img, rng, foreground):
    side, centre = short_side(img), pick_centre(rng, img, foreground)
    spread = rng.uniform(0.02, 0.05) * side
    particles = []
    for _ in range(rng.integers(3, 9)):
        at = centre + rng.normal(0, spread, 2)
        radius = max(0.8, rng.uniform(0.006, 0.02) * side)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
        particles.append(at + np.stack([np.cos(angles), np.sin(angles)], 1) * radius * rng.uniform(0.6, 1.3, (7, 1)))

    def draw(canvas, k):
        for outline in particles:
            canvas.polygon([(x * k, y * k) for x, y in outline], fill=255)

    return np.broadcast_to(_contrasting(rng, img, _DIRT), img.shape), draw_pixels(img.shape, draw) * 0.95


def _burn(img, rng, foreground):
    """A scorch mark: a dark brown core fading through a browned halo."""
    side, centre = short_side(img), pick_centre(rng, img, foreground)
    r, phi = polar(img, centre)
    radius = max(2.0, rng.uniform(0.03, 0.07) * side) * wobble(rng, phi, 0.2)
    core = np.clip(1 - r / radius, 0, 1)
    alpha = np.clip(1.6 * (1 - r / (1.8 * radius)), 0, 1)
    brown = np.array([0.36, 0.22, 0.1], np.float32)
    scorch = core[..., None] * (brown * 0.3) + (1 - core[..., None]) * (0.55 * img + 0.45 * brown)
    return scorch.astype(np.float32), alpha


def _thread(img, rng, foreground):
    """A loose fibre lying on the surface: a long, thin, wandering curve of a contrasting colour."""
    side, centre = short_side(img), pick_centre(rng, img, foreground)
    steps = 48
    angles = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.12, steps))
    step = rng.uniform(0.3, 0.55) * side / steps
    points = np.cumsum(np.stack([np.cos(angles), np.sin(angles)], axis=1) * step, axis=0)
    points = points - points.mean(axis=0) + centre
    width = max(0.8, rng.uniform(0.5, 0.9) * side / 128)
    alpha = draw_pixels(img.shape, lambda c, k: polyline(c, k, points, np.full(steps - 1, width))) * 0.9
    return np.broadcast_to(_contrasting(rng, img, _DIRT), img.shape), alpha


_TINTS = np.array([[1.08, 0.98, 0.7], [0.8, 0.95, 1.1], [1.1, 0.85, 0.9]], np.float32)   # yellowed, cold, reddish


def _discolouration(img, rng, foreground):
    """A large, faint, soft-edged change of colour (yellowing, fading): no edge to find, only a tint."""
    side, centre = short_side(img), pick_centre(rng, img, foreground)
    r, phi = polar(img, centre)
    radius = rng.uniform(0.12, 0.22) * side * wobble(rng, phi, 0.2)
    alpha = np.clip((1 - r / radius) / 0.5, 0, 1) ** 1.2 * rng.uniform(0.55, 0.75)
    tint = _TINTS[rng.integers(len(_TINTS))]
    return np.clip(0.7 * img * tint + 0.18 * tint, 0, 1), alpha        # the additive part tints black too


def _fold(img, rng, foreground):
    """A crease: a straight band shaded light on one side and dark on the other (a change of relief)."""
    side, centre = short_side(img), pick_centre(rng, img, foreground)
    theta, length = rng.uniform(0, np.pi), rng.uniform(0.3, 0.6) * side
    half = max(1.5, rng.uniform(0.015, 0.03) * side)
    yy, xx = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(np.float32) + 0.5
    along = (xx - centre[0]) * np.cos(theta) + (yy - centre[1]) * np.sin(theta)
    across = (yy - centre[1]) * np.cos(theta) - (xx - centre[0]) * np.sin(theta)
    ends = np.clip((length / 2 - np.abs(along)) / (0.15 * length), 0, 1)
    shade = 1 - 1.4 * (across / half) * np.exp(0.5 - 0.5 * (across / half) ** 2) * rng.choice([-1, 1])
    alpha = np.exp(-0.5 * (across / (1.5 * half)) ** 2) * ends
    shade = np.clip(shade, 0.3, 1.7)[..., None]
    return np.clip(img * shade + 0.15 * (shade - 1), 0, 1), alpha       # the additive part shows on black too


_DEFECT_PAINTERS = {
    "scratch": _scratch, "crack": _crack, "hole": _hole, "stain": _stain,
    "missing_part": _missing_part, "contamination": _contamination,
    "burn": _burn, "thread": _thread, "discolouration": _discolouration, "fold": _fold,
}


# -------------------------------------------------------------------------------------- suite
def generate_suite(
    root: str | os.PathLike,
    categories: list[str] | tuple[str, ...] | None = None,
    defects: list[str] | tuple[str, ...] | None = None,
    n_train: int = 20,
    n_test_normal: int = 10,
    n_test_per_defect: int = 5,
    size: int = 128,
    seed: int = 0,
    domain: str = "synthetic",
) -> pd.DataFrame:
    """Write a synthetic suite in the MVTec AD layout and return its table.

    Layout: ``root/<category>/train/good/000.png``, ``root/<category>/test/<defect or good>/000.png``
    and ``root/<category>/ground_truth/<defect>/000_mask.png`` (mask values 0/255). A ``suite.json``
    written last records the arguments and files; a later call with the same arguments finds it and
    returns at once without touching the images.

    Args:
        root: output folder (created if needed).
        categories: names from :data:`ALL_CATEGORIES`; ``None`` means :data:`CATEGORIES` (the procedural
            nine; the photo categories are generated only when named).
        defects: names from :data:`ALL_DEFECTS`; ``None`` means :data:`DEFECTS` (the original six).
        n_train: normal training images per category.
        n_test_normal: normal test images per category.
        n_test_per_defect: defective test images per category and defect.
        size: image side in pixels (>= 32).
        seed: non-negative suite seed; each image's generator derives from
            ``(seed, category, split, defect, index)``.
        domain: value of the ``domain`` column.

    Returns:
        The schema DataFrame (:func:`gadlib.data.schema.make_frame`) with absolute paths.
    """
    categories = _check_names(categories, ALL_CATEGORIES, "category", default=CATEGORIES)
    defects = _check_names(defects, ALL_DEFECTS, "defect", default=DEFECTS)
    counts = {"n_train": n_train, "n_test_normal": n_test_normal, "n_test_per_defect": n_test_per_defect, "seed": seed}
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"generate_suite: {name} must be a non-negative integer, got {value!r}")
    if n_train + n_test_normal + n_test_per_defect * len(defects) == 0:
        raise ValueError("generate_suite: nothing to generate; set n_train, n_test_normal or n_test_per_defect > 0")
    args = {"version": SUITE_VERSION, "categories": categories, "defects": defects, "size": _check_size(size),
            "domain": str(domain), **{name: int(value) for name, value in counts.items()}}
    root = Path(root).resolve()
    previous = _read_manifest(root)
    if previous is not None and previous["args"] == args:
        if all((root / f).is_file() for f in _files(previous["rows"])):
            return _frame(root, previous["rows"])
    (root / MANIFEST).unlink(missing_ok=True)  # no stale "complete" marker while we rewrite

    from gadlib.parallel import starmap

    # Every image is determined by its own seed: on the study's worker pool, category by category, the same files.
    numbers = (n_train, n_test_normal, n_test_per_defect)
    rows = [row for part in starmap(_render_category, [(root, category, defects, numbers, args)
                                                       for category in categories]) for row in part]
    if previous is not None:  # files of an earlier, different suite would confuse folder parsers
        for stale in set(_files(previous["rows"])) - set(_files(rows)):
            (root / stale).unlink(missing_ok=True)
    scratch = root / (MANIFEST + ".tmp")
    scratch.write_text(json.dumps({"args": args, "rows": rows}, indent=1))
    os.replace(scratch, root / MANIFEST)
    return _frame(root, rows)


def _render_category(root: Path, category: str, defects: Sequence[str], numbers: tuple[int, int, int],
                     args: dict) -> list[dict]:
    """Write one category's images and masks; return their rows (see :func:`generate_suite`)."""
    n_train, n_test_normal, n_test_per_defect = numbers
    plan = [("train", "good", n_train), ("test", "good", n_test_normal)]
    plan += [("test", defect, n_test_per_defect) for defect in defects]
    rows = []
    for split, defect, count in plan:
        for index in range(count):
            key = _key(category, split, defect, index)
            rng = np.random.default_rng(np.random.SeedSequence(args["seed"], spawn_key=key))
            image, foreground = _render(category, args["size"], rng)
            row = {"image_path": f"{category}/{split}/{defect}/{index:03d}.png", "mask_path": None,
                   "label": int(defect != "good"), "defect": defect, "category": category,
                   "domain": args["domain"], "split": split}
            if defect != "good":
                image, mask = apply_defect(image, defect, rng, category, foreground)
                row["mask_path"] = f"{category}/ground_truth/{defect}/{index:03d}_mask.png"
                _save_png(root / row["mask_path"], mask * 255)
            _save_png(root / row["image_path"], image)
            rows.append(row)
    return rows


def _key(*parts: str | int) -> tuple[int, ...]:
    # crc32, not hash(): Python salts str hashes per process
    return tuple(p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts)


def _save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def load_suite(root: str | os.PathLike) -> pd.DataFrame:
    """The suite at ``root`` as it was generated (any arguments); the default suite if none is there.

    This is the ``synth`` manifest's parser: ``synth:PATH`` reads a custom suite (e.g. a small one made
    for a test) instead of regenerating the default suite over it.
    """
    root = Path(root).resolve()
    previous = _read_manifest(root)
    if previous is not None and all((root / f).is_file() for f in _files(previous["rows"])):
        return _frame(root, previous["rows"])
    return generate_suite(root)


def _files(rows: list[dict]) -> list[str]:
    return [r["image_path"] for r in rows] + [r["mask_path"] for r in rows if r["mask_path"]]


def _read_manifest(root: Path) -> dict | None:
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and {"args", "rows"} <= manifest.keys() else None


def _frame(root: Path, rows: list[dict]) -> pd.DataFrame:
    absolute = [{**r, "image_path": str(root / r["image_path"]),
                 "mask_path": str(root / r["mask_path"]) if r["mask_path"] else None} for r in rows]
    return make_frame(absolute)


def _check_category(category: str) -> str:
    if category not in _ALL_PAINTERS:
        raise ValueError(f"unknown category {category!r}; valid categories: {', '.join(ALL_CATEGORIES)}")
    return category


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an integer >= 32 pixels, got {size!r}")
    return int(size)


def _check_names(names, valid: tuple[str, ...], kind: str, default: tuple[str, ...] | None = None) -> list[str]:
    if names is None:
        return list(valid if default is None else default)
    names = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(f"unknown or empty {kind} list {unknown or names}; valid {kind} names: {', '.join(valid)}")
    return names


# ------------------------------------------------------------------------------ contact sheet
def contact_sheet(frame: pd.DataFrame, n_per_category: int = 4, tile: int = 128) -> np.ndarray:
    """A grid to look at a dataset: per category row, a few normals then one image per defect.

    Args:
        frame: a schema DataFrame (any dataset, e.g. from :func:`generate_suite`).
        n_per_category: normal images shown per category.
        tile: side in pixels of each thumbnail.

    Returns:
        ``(H, W, 3)`` uint8 image; defect masks are outlined in red, each tile is captioned.
    """
    caption, pad = 12, 2
    categories = list(dict.fromkeys(frame["category"]))
    cells = []
    for category in categories:
        rows = frame[frame["category"] == category]
        normal = rows[rows["label"] == 0].sort_values("split").head(n_per_category)
        abnormal = rows[rows["label"] == 1].drop_duplicates("defect").sort_values("defect")
        cells.append([(r, category if i == 0 else "good") for i, r in enumerate(normal.itertuples())]
                     + [(r, r.defect) for r in abnormal.itertuples()])
    n_cols = max(len(c) for c in cells)
    sheet = Image.new("RGB", (n_cols * (tile + pad) + pad, len(cells) * (tile + caption + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, row_cells in enumerate(cells):
        for j, (record, text) in enumerate(row_cells):
            image = Image.open(record.image_path).convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR)
            image = np.array(image)
            if record.mask_path:
                mask = Image.open(record.mask_path).convert("L").resize((tile, tile), Image.Resampling.NEAREST)
                mask = np.asarray(mask) > 0
                image[mask & ~ndimage.binary_erosion(mask)] = (255, 0, 0)
            x, y = pad + j * (tile + pad), pad + i * (tile + caption + pad)
            draw.text((x + 1, y), text, fill=(0, 0, 0))
            sheet.paste(Image.fromarray(image), (x, y + caption))
    return np.asarray(sheet)
