"""Painters of normal images for the procedural synthetic suite (:mod:`gadlib.data.synth`).

Each painter takes ``(size, rng)`` and returns ``(rgb, foreground)``: ``rgb`` is a float
``(size, size, 3)`` array in [0, 1] before lighting and sensor noise, ``foreground`` is a bool
``(size, size)`` mask of the object for object categories and ``None`` for textures. All lengths
are fractions of the image side, so a category looks the same at every resolution. The module
also holds the small drawing and object-awareness helpers that the defect painters in
:mod:`gadlib.data.synth` share.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

Painted = tuple[np.ndarray, "np.ndarray | None"]
SUPERSAMPLE = 4  # PIL shapes are drawn at 4x and box-filtered down, for anti-aliased edges
PCB_LAYOUT_SEED = 20240601  # one fixed board layout: every pcb image shows the same design


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(yy, xx)`` pixel-centre coordinates in [0, 1), each ``(size, size)`` float32."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="ij")


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def lerp_colour(t: np.ndarray, dark, light) -> np.ndarray:
    """Map a scalar field ``t`` in [0, 1] onto the colour segment ``dark -> light``: ``(H, W, 3)``."""
    dark, light = np.asarray(dark, np.float32), np.asarray(light, np.float32)
    return dark + np.clip(t, 0.0, 1.0)[..., None] * (light - dark)


def jitter_colour(rng: np.random.Generator, colour, amount: float = 0.03) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0.0, 1.0)


def draw_alpha(size: int, draw: Callable[[ImageDraw.ImageDraw, float], None]) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of shapes drawn by ``draw(canvas, scale)``.

    ``draw`` receives a PIL canvas and the factor that maps unit coordinates to canvas pixels.
    """
    big = size * SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw(ImageDraw.Draw(canvas), float(big))
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def rotated_coords(size: int, centre, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(u, v)``: pixel coordinates in a frame centred at ``centre`` and turned by ``angle``."""
    yy, xx = pixel_grid(size)
    a = math.radians(angle_deg)
    dx, dy = xx - centre[0], yy - centre[1]
    return dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)


def draw_pixels(shape: tuple[int, ...], draw) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of shapes drawn by ``draw(canvas, k)`` in pixel units times ``k``."""
    h, w = shape[:2]
    canvas = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    draw(ImageDraw.Draw(canvas), float(SUPERSAMPLE))
    return np.asarray(canvas.resize((w, h), Image.Resampling.BOX), dtype=np.float32) / 255.0


def polyline(canvas, k, points, widths) -> None:
    """Draw a polyline whose i-th segment is ``widths[i]`` pixels wide."""
    for (a, b), width in zip(zip(points[:-1], points[1:]), widths):
        canvas.line([(a[0] * k, a[1] * k), (b[0] * k, b[1] * k)], fill=255, width=max(1, int(round(width * k))))


def jagged_walk(rng, origin, heading, steps, step) -> np.ndarray:
    """A jagged, mean-reverting random walk of ``steps`` segments from ``origin``."""
    angle, points = heading, [origin]
    for _ in range(steps):
        angle = heading + 0.5 * (angle - heading) + rng.normal(0, 0.6)
        points.append(points[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
    return np.array(points)


def polar(img, centre) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ``(radius, angle)`` around ``centre = (x, y)`` in pixels, for an image-shaped array."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    return np.hypot(xx - centre[0], yy - centre[1]), np.arctan2(yy - centre[1], xx - centre[0])


def wobble(rng, phi, amount):
    """A random smooth radius factor ``1 +- amount`` over angle ``phi``: irregular round outlines."""
    return 1 + amount * sum(rng.uniform(-1, 1) * np.cos(n * phi + rng.uniform(0, 2 * np.pi)) for n in (2, 3, 5))


# ---------------------------------------------------------------------- object awareness
def estimate_foreground(image: np.ndarray) -> np.ndarray | None:
    """Object mask of an object-on-plain-background image, or ``None`` for a texture."""
    img = image.astype(np.float32) / 255.0
    border = border_pixels(img)
    background = np.median(border, axis=0)
    spread = np.abs(border - background).max(axis=1)
    if np.quantile(spread, 0.9) > 0.06:  # a busy border: a texture, not an object
        return None
    foreground = ndimage.binary_opening(np.abs(img - background).max(axis=2) > 0.1)
    labels, count = ndimage.label(foreground)
    if count == 0 or not 0.01 < foreground.mean() < 0.8:
        return None
    largest = np.bincount(labels.ravel())[1:].max()
    return foreground if largest >= 0.9 * foreground.sum() else None  # one dominant part: an object


def border_pixels(img: np.ndarray, width: int = 2) -> np.ndarray:
    """The pixels of the image's outer frame, ``(N, C)``."""
    ring = np.ones(img.shape[:2], bool)
    ring[width:-width, width:-width] = False
    return img[ring]


def short_side(img: np.ndarray) -> float:
    return float(min(img.shape[:2]))


def pick_centre(rng, img, foreground, margin=0.15) -> np.ndarray:
    """A defect centre ``(x, y)`` in pixels: on the object if there is one, else away from the border."""
    if foreground is not None and foreground.any():
        core = ndimage.binary_erosion(foreground, iterations=max(1, int(short_side(img) / 40)))
        candidates = np.argwhere(core if core.any() else foreground)
        y, x = candidates[rng.integers(len(candidates))]
        return np.array([x + 0.5, y + 0.5])
    h, w = img.shape[:2]
    return np.array([rng.uniform(margin * w, (1 - margin) * w), rng.uniform(margin * h, (1 - margin) * h)])


# ----------------------------------------------------------------------------------- textures
def paint_brushed_metal(size: int, rng: np.random.Generator) -> Painted:
    big = int(size * 1.5)
    streaks = smooth_noise(rng, (big, big), (0.45, size * 0.2))
    fibres = smooth_noise(rng, (big, big), (0.35, size * 0.03))
    field = ndimage.rotate(0.75 * streaks + 0.45 * fibres, rng.uniform(-5, 5), reshape=False, order=1, mode="reflect")
    start = (big - size) // 2
    field = field[start:start + size, start:start + size]
    yy, _ = pixel_grid(size)
    sheen = 0.04 * np.cos(2 * np.pi * (yy * rng.uniform(0.5, 0.9) + rng.uniform(0, 1)))
    value = rng.uniform(0.56, 0.64) + 0.045 * field + sheen
    tint = jitter_colour(rng, (0.97, 0.99, 1.03), 0.01)
    return value[..., None] * tint, None


def paint_woven_fabric(size: int, rng: np.random.Generator) -> Painted:
    cells = rng.uniform(10.5, 11.5)  # crossings per image side
    u, v = rotated_coords(size, (0.5, 0.5), rng.uniform(-3, 3))
    u, v = u * cells + rng.uniform(0, 2), v * cells + rng.uniform(0, 2)
    cu, cv = np.floor(u), np.floor(v)
    fu, fv = u - cu, v - cv
    warp_on_top = (cu + cv) % 2 == 0  # plain weave: threads alternate over and under
    across_warp = np.clip(np.cos(np.pi * (fu - 0.5) * 1.2), 0, 1) ** 0.7
    across_weft = np.clip(np.cos(np.pi * (fv - 0.5) * 1.2), 0, 1) ** 0.7
    warp = across_warp * (0.72 + 0.28 * np.sin(np.pi * fv))
    weft = across_weft * (0.72 + 0.28 * np.sin(np.pi * fu))
    height = np.where(warp_on_top, warp, weft)
    fuzz = smooth_noise(rng, (size, size), 0.6)
    value = 0.25 + 0.75 * height + 0.05 * fuzz
    colour = lerp_colour(value, (0.16, 0.2, 0.3), jitter_colour(rng, (0.45, 0.55, 0.72), 0.02))
    return colour, None


def paint_wood_grain(size: int, rng: np.random.Generator) -> Painted:
    u, v = rotated_coords(size, (0.5, 0.5), rng.uniform(-4, 4))
    warp = 0.9 * smooth_noise(rng, (size, size), size * 0.15) + 0.15 * smooth_noise(rng, (size, size), size * 0.04)
    rings = v * rng.uniform(6.5, 7.5) + 0.35 * np.sin(2 * np.pi * (u * 0.6 + rng.uniform(0, 1))) + 0.35 * warp
    phase = rings - np.floor(rings)
    latewood = smoothstep(0.55, 0.85, phase) * (1 - smoothstep(0.9, 1.0, phase))
    fibres = smooth_noise(rng, (size, size), (0.4, size * 0.08))
    value = 0.85 - 0.5 * latewood + 0.06 * fibres
    colour = lerp_colour(value, (0.36, 0.2, 0.1), jitter_colour(rng, (0.84, 0.64, 0.42), 0.02))
    return colour, None


def paint_leather(size: int, rng: np.random.Generator) -> Painted:
    pebbles = 0.6 * smooth_noise(rng, (size, size), size * 0.012) + 0.4 * smooth_noise(rng, (size, size), size * 0.03)
    crease_field = smooth_noise(rng, (size, size), size * 0.06)
    creases = np.exp(-((crease_field / 0.12) ** 2))
    height = pebbles - 1.6 * creases
    gy, gx = np.gradient(ndimage.gaussian_filter(height, 0.7))
    light = rng.uniform(0.6, 0.8)  # light from the upper left, a little jitter
    shade = 1.0 + 0.9 * (gx * light + gy * math.sqrt(1 - light**2))
    value = (0.55 + 0.08 * height) * shade
    base = jitter_colour(rng, (0.42, 0.26, 0.16), 0.015)
    return np.clip(value, 0, 1.5)[..., None] * base * 1.1, None


def paint_tile(size: int, rng: np.random.Generator) -> Painted:
    tiles = rng.uniform(3.7, 4.1)
    u, v = rotated_coords(size, (0.5, 0.5), rng.uniform(-1.5, 1.5))
    u, v = u * tiles + rng.uniform(0, 1), v * tiles + rng.uniform(0, 1)
    fu, fv = u - np.floor(u), v - np.floor(v)
    edge = np.minimum(np.minimum(fu, 1 - fu), np.minimum(fv, 1 - fv))
    grout_half = 0.035
    face = smoothstep(grout_half, grout_half + 0.02, edge)
    bevel = np.where(edge < 0.09, 1.0, 0.0) * face
    lit = np.where(np.minimum(fu, fv) < np.minimum(1 - fu, 1 - fv), 0.06, -0.06) * bevel
    tone_table = rng.uniform(-0.025, 0.025, 64)
    tone = tone_table[((np.floor(u) * 7 + np.floor(v) * 13) % 64).astype(int)]
    speckle = smooth_noise(rng, (size, size), 0.6)
    tile_colour = jitter_colour(rng, (0.86, 0.84, 0.79), 0.015)
    grout_colour = np.array([0.5, 0.49, 0.47], np.float32)
    value = 1.0 + tone + lit + 0.02 * speckle
    grout = grout_colour * (1 + 0.05 * speckle[..., None])
    rgb = face[..., None] * tile_colour * value[..., None] + (1 - face[..., None]) * grout
    return rgb, None


@lru_cache(maxsize=1)
def _pcb_layout() -> dict:
    """The fixed board design in unit coordinates (traces, pads, vias, one chip)."""
    rng = np.random.default_rng(PCB_LAYOUT_SEED)
    grid = np.linspace(0.08, 0.92, 12)
    traces = []
    for _ in range(16):
        x0, y0 = rng.choice(grid, 2)
        x1 = float(rng.choice(grid))
        bend = abs(x1 - x0) * rng.choice([-1, 1])
        y1 = float(np.clip(y0 + bend * rng.uniform(0.3, 1.0), 0.05, 0.95))
        elbow = (x0 + (x1 - x0) * 0.4, y0)
        knee = (elbow[0] + abs(y1 - y0) * np.sign(x1 - x0 or 1.0), y1)
        traces.append([(float(x0), float(y0)), elbow, knee, (float(x1), float(y1))])
    vias = [tuple(float(c) for c in rng.choice(grid, 2)) for _ in range(8)]
    chip = (0.56, 0.18, 0.84, 0.42)
    return {"traces": traces, "vias": vias, "chip": chip}


def paint_pcb(size: int, rng: np.random.Generator) -> Painted:
    layout = _pcb_layout()
    shift = rng.uniform(-0.02, 0.02, 2)

    def pt(p):
        return (p[0] + shift[0], p[1] + shift[1])

    def traces(canvas, scale):
        for path in layout["traces"]:
            points = [(x * scale, y * scale) for x, y in map(pt, path)]
            canvas.line(points, fill=255, width=int(0.018 * scale), joint="curve")

    def pads(canvas, scale):
        for path in layout["traces"]:
            for x, y in map(pt, (path[0], path[-1])):
                r = 0.03 * scale
                canvas.ellipse((x * scale - r, y * scale - r, x * scale + r, y * scale + r), fill=255)
        x0, y0, x1, y1 = layout["chip"]
        for i in range(6):  # chip pins along the two long sides
            px = x0 + (i + 0.5) * (x1 - x0) / 6
            for py in (y0 - 0.035, y1 + 0.005):
                (ax, ay), (bx, by) = pt((px - 0.012, py)), pt((px + 0.012, py + 0.03))
                canvas.rectangle((ax * scale, ay * scale, bx * scale, by * scale), fill=255)

    def chip(canvas, scale):
        (ax, ay), (bx, by) = pt(layout["chip"][:2]), pt(layout["chip"][2:])
        canvas.rounded_rectangle((ax * scale, ay * scale, bx * scale, by * scale), radius=0.01 * scale, fill=255)

    def holes(canvas, scale):
        for x, y in map(pt, layout["vias"]):
            r = 0.012 * scale
            canvas.ellipse((x * scale - r, y * scale - r, x * scale + r, y * scale + r), fill=255)

    board = jitter_colour(rng, (0.09, 0.34, 0.17), 0.015)
    rgb = board * (1 + 0.04 * smooth_noise(rng, (size, size), 0.8))[..., None]
    layers = [(traces, (0.2, 0.52, 0.26)), (pads, (0.86, 0.76, 0.46)),
              (chip, (0.09, 0.09, 0.1)), (holes, (0.05, 0.07, 0.05))]
    for draw, colour in layers:
        alpha = draw_alpha(size, draw)[..., None]
        rgb = rgb * (1 - alpha) + jitter_colour(rng, colour, 0.01) * alpha
    return rgb, None


# ------------------------------------------------------------------------------------ objects
def _object_on_background(rng, size, alpha, surface, background, shadow_offset=0.015):
    """Composite an object (coverage ``alpha``, colours ``surface``) with a soft drop shadow."""
    shift = int(round(shadow_offset * size))
    shadow = ndimage.gaussian_filter(np.roll(alpha, (shift, shift), axis=(0, 1)), size * 0.012)
    bg = jitter_colour(rng, background, 0.01) * (1 - 0.12 * shadow)[..., None]
    bg = bg * (1 + 0.01 * smooth_noise(rng, (size, size), 1.0))[..., None]
    rgb = bg * (1 - alpha[..., None]) + surface * alpha[..., None]
    return rgb, alpha > 0.5


def paint_screw(size: int, rng: np.random.Generator) -> Painted:
    centre = 0.5 + rng.uniform(-0.03, 0.03, 2)
    u, v = rotated_coords(size, centre, 25 + rng.uniform(-12, 12))
    px = 1.0 / size
    half, head_len, radius, head_r, pitch = 0.3, 0.09, 0.06, 0.105, 0.034
    shaft_end = half - head_len
    crest = 1 + 0.16 * np.abs(((u / pitch) % 1.0) * 2 - 1)  # saw-tooth thread profile
    taper = np.clip((u + half) / 0.08, 0.15, 1.0)  # pointed tip
    shaft_r = radius * crest * taper
    in_shaft = np.clip((shaft_r - np.abs(v)) / px + 0.5, 0, 1) * np.clip((u + half) / px + 0.5, 0, 1)
    in_shaft *= np.clip((shaft_end - u) / px + 0.5, 0, 1)
    dome = head_r * np.sqrt(np.clip(1 - ((u - shaft_end) / (head_len * 1.6)) ** 2, 0, 1))
    in_head = np.clip((dome - np.abs(v)) / px + 0.5, 0, 1) * np.clip((u - shaft_end) / px + 0.5, 0, 1) * (dome > 0)
    alpha = np.maximum(in_shaft, in_head)
    across = np.clip(np.abs(v) / np.where(u < shaft_end, shaft_r, np.maximum(dome, px)), 0, 1)
    cylinder = 0.25 + 0.5 * np.sqrt(1 - across**2) + 0.25 * np.exp(-(((v / radius) + 0.35) / 0.2) ** 2)
    threads = np.where(u < shaft_end, 0.78 + 0.22 * np.sin(2 * np.pi * (u + 0.3 * v) / pitch), 1.0)
    slot = (np.abs(v) < 0.012) & (u > shaft_end + 0.015)
    shade = cylinder * threads * np.where(slot, 0.35, 1.0)
    surface = lerp_colour(shade, (0.12, 0.12, 0.13), jitter_colour(rng, (0.66, 0.66, 0.64), 0.02))
    return _object_on_background(rng, size, alpha, surface, (0.86, 0.86, 0.84))


def paint_washer(size: int, rng: np.random.Generator) -> Painted:
    centre = 0.5 + rng.uniform(-0.03, 0.03, 2)
    u, v = rotated_coords(size, centre, 0.0)
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    px = 1.0 / size
    outer, inner = 0.3 + rng.uniform(-0.005, 0.005), 0.13
    alpha = np.clip((outer - r) / px + 0.5, 0, 1) * np.clip((r - inner) / px + 0.5, 0, 1)
    light = math.radians(-135 + rng.uniform(-15, 15))
    band = (r - inner) / (outer - inner)
    bevel = 1 - 0.35 * (np.exp(-((band / 0.08) ** 2)) + np.exp(-(((1 - band) / 0.08) ** 2)))
    turning = 0.035 * np.sin(2 * np.pi * r * size / 2.6)  # fine lathe marks, kept above Nyquist
    shade = (0.55 + 0.2 * np.cos(phi - light) + turning) * bevel
    shade = shade + 0.02 * smooth_noise(rng, (size, size), 0.7)
    surface = lerp_colour(shade, (0.1, 0.1, 0.1), jitter_colour(rng, (0.82, 0.8, 0.76), 0.02))
    return _object_on_background(rng, size, alpha, surface, (0.2, 0.21, 0.23))


def paint_bottle_top(size: int, rng: np.random.Generator) -> Painted:
    centre = 0.5 + rng.uniform(-0.025, 0.025, 2)
    u, v = rotated_coords(size, centre, 0.0)
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    px = 1.0 / size
    outer = 0.33 + rng.uniform(-0.005, 0.005)
    alpha = np.clip((outer - r) / px + 0.5, 0, 1)
    ribs = np.where(r > outer * 0.86, 0.82 + 0.18 * np.cos(phi * 72 + rng.uniform(0, 2 * np.pi)), 1.0)
    groove = 1 - 0.45 * np.exp(-(((r - outer * 0.84) / (outer * 0.025)) ** 2))
    ring = 1 - 0.25 * np.exp(-(((r - outer * 0.45) / (outer * 0.03)) ** 2))
    light = math.radians(-120 + rng.uniform(-15, 15))
    dome = 0.85 + 0.15 * np.cos(phi - light) * np.clip(r / outer, 0, 1)
    shade = ribs * groove * ring * dome
    surface = jitter_colour(rng, (0.72, 0.12, 0.1), 0.02) * shade[..., None]
    return _object_on_background(rng, size, alpha, surface, (0.9, 0.9, 0.88), shadow_offset=0.02)


PAINTERS: dict[str, Callable[[int, np.random.Generator], Painted]] = {
    "brushed_metal": paint_brushed_metal,
    "woven_fabric": paint_woven_fabric,
    "wood_grain": paint_wood_grain,
    "leather": paint_leather,
    "tile": paint_tile,
    "pcb": paint_pcb,
    "screw": paint_screw,
    "washer": paint_washer,
    "bottle_top": paint_bottle_top,
}
OBJECT_CATEGORIES: frozenset[str] = frozenset({"screw", "washer", "bottle_top"})
