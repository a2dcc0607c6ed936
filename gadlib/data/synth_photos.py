"""Source categories cut from real photographs: the synthetic suite made less procedural.

The painters of :mod:`gadlib.data.synth_painters` draw every normal image from formulas. The painters
here start from real photographs that installed packages ship (scikit-image's bundled images: its
textures ``brick``, ``grass`` and ``gravel``, microscopy, a fundus, astronomy, print and everyday
photographs), so the
suite's normal variation is a real one. Two kinds:

* **textures** (:data:`PHOTO_TEXTURES`): each normal image is a random crop (random place, a scale
  jitter, and a flip and a quarter turn where the texture has no up) of one photograph, resized to the
  suite's size, so that no two images are the same crop but all share the photograph's statistics (like
  MVTec AD's carpet or wood);
* **objects** (:data:`PHOTO_OBJECTS`): each normal image is the whole photograph, centre-cropped to a
  square, under a small pose jitter (shift, rotation, scale), like MVTec AD's aligned objects.

Painters follow :mod:`gadlib.data.synth_painters`' contract, ``(size, rng) -> (rgb in [0, 1], None)``
(no object mask: defects may land anywhere), and are registered as categories of
:func:`gadlib.data.synth.generate_suite` by name (they are not in the default suite, whose images stay as
they were). Greyscale photographs are tinted with a fixed per-category colour, jittered per image.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image

from gadlib.data.synth_painters import Painted, jitter_colour

# name -> (skimage.data function, crop side as a fraction of the photo's short side, tint for greyscale,
#          the region of the photo to crop from as (top, bottom, left, right) fractions, whether crops may
#          be flipped and turned: not for textures with an up, like brickwork and print).
PHOTO_TEXTURES: dict[str, tuple[str, tuple[float, float], tuple[float, float, float], tuple[float, ...], bool]] = {
    "brick": ("brick", (0.25, 0.4), (0.78, 0.52, 0.42), (0, 1, 0, 1), False),
    "grass": ("grass", (0.25, 0.4), (0.55, 0.72, 0.4), (0, 1, 0, 1), True),
    "gravel": ("gravel", (0.25, 0.4), (0.72, 0.7, 0.66), (0, 1, 0, 1), True),
    "moon_surface": ("moon", (0.3, 0.45), (0.85, 0.85, 0.82), (0, 1, 0, 1), True),
    "tissue": ("immunohistochemistry", (0.3, 0.45), (1, 1, 1), (0, 1, 0, 1), True),
    "fundus": ("retina", (0.15, 0.25), (1, 1, 1), (0.25, 0.75, 0.25, 0.75), True),
    "star_field": ("hubble_deep_field", (0.3, 0.45), (1, 1, 1), (0, 1, 0, 1), True),
    "print": ("page", (0.5, 0.7), (0.95, 0.93, 0.88), (0, 1, 0, 1), False),
    "lettering": ("text", (0.6, 0.8), (0.9, 0.9, 0.9), (0, 1, 0, 1), False),
    "coins": ("coins", (0.35, 0.5), (0.82, 0.72, 0.5), (0, 1, 0, 1), True),
}
# name -> (skimage.data function, tint for greyscale, the square region (top, bottom, left, right)).
PHOTO_OBJECTS: dict[str, tuple[str, tuple[float, float, float], tuple[float, ...]]] = {
    "horse": ("horse", (0.6, 0.45, 0.3), (0, 1, 0.05, 0.95)),
    "phantom": ("shepp_logan_phantom", (0.92, 0.92, 0.95), (0, 1, 0, 1)),
    "motorcycle": ("stereo_motorcycle", (1, 1, 1), (0, 1, 0.1, 0.9)),
    "logo": ("logo", (1, 1, 1), (0, 1, 0, 1)),
    "cup": ("coffee", (1, 1, 1), (0, 1, 0.15, 0.82)),
    "cat": ("chelsea", (1, 1, 1), (0, 1, 0.1, 0.77)),
    "camera": ("camera", (0.92, 0.92, 0.92), (0, 1, 0, 1)),
    "astronaut": ("astronaut", (1, 1, 1), (0, 1, 0, 1)),
}
OBJECT_JITTER = dict(shift=0.02, degrees=3.0, scale=(0.97, 1.03))    # a few pixels, like an aligned part


@lru_cache(maxsize=None)
def photograph(name: str) -> np.ndarray:
    """One of scikit-image's bundled photographs as float RGB in [0, 1] (read once per process).

    Greyscale photographs come back with three equal channels; an alpha channel is composited onto white.
    """
    import skimage.data

    image = getattr(skimage.data, name)()
    image = np.asarray(image[0] if isinstance(image, tuple) else image, dtype=np.float32)   # stereo: the left view
    image = image / (255.0 if image.max() > 1.5 else 1.0)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 4:
        image = image[..., :3] * image[..., 3:] + (1 - image[..., 3:])
    image.setflags(write=False)
    return image


def _region(image: np.ndarray, region: tuple[float, ...]) -> np.ndarray:
    h, w = image.shape[:2]
    top, bottom, left, right = region
    return image[int(top * h):int(round(bottom * h)), int(left * w):int(round(right * w))]


def _resize(rgb: np.ndarray, size: int) -> np.ndarray:
    channels = [np.asarray(Image.fromarray(rgb[..., c].astype(np.float32), mode="F").resize(
        (size, size), Image.Resampling.BICUBIC)) for c in range(3)]
    return np.clip(np.stack(channels, axis=2), 0, 1)


def _tinted(rgb: np.ndarray, tint, rng: np.random.Generator) -> np.ndarray:
    colour = jitter_colour(rng, tint, 0.02)
    return rgb * colour if tuple(tint) != (1, 1, 1) else rgb * rng.uniform(0.97, 1.03)


def texture_painter(name: str) -> Callable[[int, np.random.Generator], Painted]:
    """The painter of photo texture ``name`` (:data:`PHOTO_TEXTURES`): random crops of one photograph."""
    source, crop, tint, region, turn = PHOTO_TEXTURES[name]

    def paint(size: int, rng: np.random.Generator) -> Painted:
        photo = _region(photograph(source), region)
        h, w = photo.shape[:2]
        side = int(round(rng.uniform(*crop) * min(h, w)))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        patch = photo[top:top + side, left:left + side]
        if turn:
            patch = np.rot90(patch[:, ::-1] if rng.random() < 0.5 else patch, k=int(rng.integers(4)))
        return _tinted(_resize(np.ascontiguousarray(patch), size), tint, rng), None

    paint.__name__ = f"paint_{name}"
    return paint


def object_painter(name: str) -> Callable[[int, np.random.Generator], Painted]:
    """The painter of photo object ``name`` (:data:`PHOTO_OBJECTS`): one photograph under a pose jitter."""
    source, tint, region = PHOTO_OBJECTS[name]

    def paint(size: int, rng: np.random.Generator) -> Painted:
        photo = _region(photograph(source), region)
        h, w = photo.shape[:2]
        side = min(h, w)
        square = photo[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        big = _resize(np.ascontiguousarray(square), 2 * size)
        margin = size // 4            # room to zoom out and shift into: the photo's edge, continued
        big = np.pad(big, ((margin, margin), (margin, margin), (0, 0)), mode="edge")
        centre = big.shape[0] / 2
        scale = rng.uniform(*OBJECT_JITTER["scale"])
        angle = rng.uniform(-OBJECT_JITTER["degrees"], OBJECT_JITTER["degrees"])
        shift = rng.uniform(-OBJECT_JITTER["shift"], OBJECT_JITTER["shift"], 2) * 2 * size
        crop = 2 * size / scale
        box = (centre - crop / 2, centre - crop / 2, centre + crop / 2, centre + crop / 2)
        channels = []
        for c in range(3):
            plane = Image.fromarray(big[..., c].astype(np.float32), mode="F")
            plane = plane.rotate(angle, resample=Image.Resampling.BICUBIC, translate=tuple(shift),
                                 fillcolor=float(np.median(big[..., c])))
            channels.append(np.asarray(plane.resize((size, size), Image.Resampling.BICUBIC, box=box)))
        return _tinted(np.clip(np.stack(channels, axis=2), 0, 1), tint, rng), None

    paint.__name__ = f"paint_{name}"
    return paint


PHOTO_PAINTERS: dict[str, Callable[[int, np.random.Generator], Painted]] = {
    **{name: texture_painter(name) for name in PHOTO_TEXTURES},
    **{name: object_painter(name) for name in PHOTO_OBJECTS},
}
