"""Procedural segmentation data: seeded images of overlapping objects with exact instance masks.

Every sample is a pure function of `(domain, split, index)`, so splits are held out by construction
(different seed streams) and any sample can be regenerated without storing it. Runtime needs only
numpy and PIL; `synthetic_dataset` wraps the generator as a `datasets.Dataset` for the evaluation and
fine-tuning code.

Domains:
    shapes: the pretraining domain. Colour or gray objects (ellipses, polygons, stars, blobs, thin
        curves, rings and shapes with holes), sizes from a few pixels to most of the image, textured
        fills, cluttered textured backgrounds, noise and blur.
    cells: a shifted domain for fine-tuning and cross-domain evaluation: gray, fluorescence-like
        round and elongated cells on a dark noisy background, touching and with bright rims.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "DOMAINS",
    "SPLITS",
    "SyntheticSample",
    "generate_sample",
    "synthetic_dataset",
    "synthetic_samples",
]

DOMAINS: tuple[str, ...] = ("shapes", "cells")
# Each split draws from its own seed stream: (domain id, split id, index) -> numpy SeedSequence.
SPLITS: dict[str, int] = {"train": 0, "validation": 1, "test": 2}

_MIN_VISIBLE_AREA = 12  # pixels; a smaller visible remnant of an occluded object is dropped


@dataclass
class SyntheticSample:
    """One generated image.

    Attributes:
        image: `(H, W, 3)` uint8 RGB.
        masks: `(num_objects, H, W)` bool visible instance masks, in drawing order (later ones occlude).
    """

    image: np.ndarray
    masks: np.ndarray


def generate_sample(
    index: int, split: str = "train", domain: str = "shapes", image_size: int = 256
) -> SyntheticSample:
    """Generate sample `index` of a split.

    Args:
        index: sample number (any non-negative integer).
        split: one of `SPLITS`; splits use disjoint seed streams.
        domain: one of `DOMAINS`.
        image_size: side of the square image in pixels.

    Returns:
        The image and its visible instance masks (at least one object).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {list(DOMAINS)}, got {domain!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    if index < 0:
        raise ValueError(f"index must be non-negative, got {index}")
    rng = np.random.default_rng((DOMAINS.index(domain), SPLITS[split], index))
    draw = _draw_shapes if domain == "shapes" else _draw_cells
    return draw(rng, image_size)


def synthetic_samples(
    num_samples: int, split: str = "train", domain: str = "shapes", image_size: int = 256, start: int = 0
) -> Iterator[SyntheticSample]:
    """Yield samples `start .. start + num_samples - 1` of a split."""
    for index in range(start, start + num_samples):
        yield generate_sample(index, split, domain, image_size)


def synthetic_dataset(num_samples: int, split: str = "test", domain: str = "shapes", image_size: int = 256):
    """A `datasets.Dataset` with columns `image` (PIL RGB) and `masks` (`(num_objects, H, W)` uint8)."""
    import datasets

    def rows():
        for sample in synthetic_samples(num_samples, split, domain, image_size):
            yield {"image": Image.fromarray(sample.image), "masks": sample.masks.astype(np.uint8)}

    features = datasets.Features(
        {"image": datasets.Image(), "masks": datasets.Array3D((None, image_size, image_size), "uint8")}
    )
    return datasets.Dataset.from_generator(rows, features=features, split=split)


# ----------------------------------------------------------------------------------------------- textures


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """`(size, size)` float in [0, 1]: bicubic upsampling of a `cells x cells` random grid."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """`(size, size)` float texture in [0, 1]: noise, stripes, checks, dots or a gradient."""
    kind = rng.integers(6)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:
        return _smooth_noise(rng, size, int(rng.integers(3, 24)))
    if kind in (1, 2):
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(3, 24)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period
        wave = 0.5 + 0.5 * np.sin(phase)
        return wave if kind == 1 else (wave > 0.5).astype(np.float32)
    if kind == 3:
        period = rng.uniform(4, 24)
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(np.float32)
    if kind == 4:
        dots = np.zeros((size, size), np.float32)
        count = int(rng.integers(10, 200))
        ys, xs = rng.integers(0, size, (2, count))
        dots[ys, xs] = 1.0
        radius = rng.uniform(0.5, 2.5)
        img = Image.fromarray((dots * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
        out = np.asarray(img, np.float32)
        return out / max(out.max(), 1.0)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    return (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)


def _colour(rng: np.random.Generator, gray: bool) -> np.ndarray:
    if gray:
        return np.full(3, rng.uniform(0, 255), np.float32)
    return rng.uniform(0, 255, 3).astype(np.float32)


def _fill(rng: np.random.Generator, size: int, gray: bool, contrast: float) -> np.ndarray:
    """`(size, size, 3)` float RGB: two colours blended by a texture."""
    first, second = _colour(rng, gray), _colour(rng, gray)
    second = first + (second - first) * contrast
    weight = _texture(rng, size)[..., None]
    return first * (1 - weight) + second * weight


# --------------------------------------------------------------------------------------------------- shapes


def _polygon_points(rng: np.random.Generator, kind: str, cx: float, cy: float, radius: float) -> list:
    """Outline of a closed shape as `[(x, y), ...]` around `(cx, cy)`."""
    rotation = rng.uniform(0, 2 * np.pi)
    if kind == "ellipse":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        ratio = rng.uniform(0.3, 1.0)
        r = np.ones_like(t)
        x, y = np.cos(t) * r, np.sin(t) * r * ratio
    elif kind == "polygon":
        n = int(rng.integers(3, 9))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        r = rng.uniform(0.5, 1.0, n)
        x, y = np.cos(t) * r, np.sin(t) * r
    elif kind == "star":
        n = int(rng.integers(4, 9))
        t = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.3, 0.6))
        x, y = np.cos(t) * r, np.sin(t) * r
    else:  # blob: a radius with a few random harmonics
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        r = np.ones_like(t)
        for k in range(2, 6):
            r += rng.uniform(0, 0.25) * np.sin(k * t + rng.uniform(0, 2 * np.pi))
        r /= r.max()
        x, y = np.cos(t) * r, np.sin(t) * r
    xr = x * np.cos(rotation) - y * np.sin(rotation)
    yr = x * np.sin(rotation) + y * np.cos(rotation)
    return list(zip((cx + radius * xr).tolist(), (cy + radius * yr).tolist(), strict=True))


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """`(size, size)` bool mask of one random object, sizes log-uniform from a few pixels to most of the image."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    radius = float(np.exp(rng.uniform(np.log(3), np.log(size * 0.45))))
    cx, cy = rng.uniform(0, size, 2)
    kind = rng.choice(
        ["ellipse", "polygon", "star", "blob", "thin", "ring", "holed"],
        p=[0.18, 0.18, 0.14, 0.18, 0.12, 0.1, 0.1],
    )
    if kind == "thin":
        count = int(rng.integers(2, 6))
        start = np.array([cx, cy])
        points = [tuple(start)]
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(count):
            heading += rng.uniform(-1.0, 1.0)
            start = start + radius * rng.uniform(0.5, 1.2) * np.array([np.cos(heading), np.sin(heading)])
            points.append(tuple(start))
        draw.line(points, fill=255, width=int(rng.integers(2, 6)), joint="curve")
    elif kind in ("ring", "holed"):
        outer = "ellipse" if kind == "ring" else str(rng.choice(["polygon", "blob", "star"]))
        draw.polygon(_polygon_points(rng, outer, cx, cy, radius), fill=255)
        holes = 1 if kind == "ring" else int(rng.integers(1, 4))
        for _ in range(holes):
            hole_radius = radius * (rng.uniform(0.35, 0.7) if kind == "ring" else rng.uniform(0.12, 0.3))
            offset = radius * (0 if kind == "ring" else 0.4) * rng.uniform(-1, 1, 2)
            hole = _polygon_points(rng, "ellipse", cx + offset[0], cy + offset[1], hole_radius)
            draw.polygon(hole, fill=0)
    else:
        draw.polygon(_polygon_points(rng, str(kind), cx, cy, radius), fill=255)
    return np.asarray(canvas) > 127


def _compose(
    rng: np.random.Generator, canvas: np.ndarray, shapes: list[np.ndarray], fills: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Paint shapes in order; return the image and the visible masks of those still large enough."""
    covered = np.zeros(canvas.shape[:2], bool)
    visible = []
    for shape in reversed(shapes):  # from the top: what is already covered is hidden
        visible.append(shape & ~covered)
        covered |= shape
    visible.reverse()
    for shape, fill in zip(shapes, fills, strict=True):
        canvas[shape] = fill[shape]
    keep = [
        m
        for m, s in zip(visible, shapes, strict=True)
        if m.sum() >= min(_MIN_VISIBLE_AREA, s.sum()) and m.any()
    ]
    return canvas, np.stack(keep) if keep else np.zeros((0, *canvas.shape[:2]), bool)


def _finish(
    rng: np.random.Generator, canvas: np.ndarray, max_noise: float, max_blur: float, gray: bool
) -> np.ndarray:
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, max_blur)))
    out = np.asarray(image, np.float32)
    noise_shape = (*out.shape[:2], 1) if gray else out.shape
    out = out + rng.normal(0, rng.uniform(0, max_noise), noise_shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def _draw_shapes(rng: np.random.Generator, size: int) -> SyntheticSample:
    gray = rng.random() < 0.25
    canvas = _fill(rng, size, gray, contrast=rng.uniform(0.1, 1.0))
    # Clutter: unlabelled low-contrast strokes and patches that belong to the background.
    clutter = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(clutter)
    for _ in range(int(rng.integers(0, 12))):
        points = [tuple(p) for p in rng.uniform(0, size, (int(rng.integers(2, 4)), 2))]
        draw.line(points, fill=int(rng.integers(30, 120)), width=int(rng.integers(1, 3)))
    shade = (np.asarray(clutter, np.float32) / 255)[..., None]
    canvas = canvas * (1 - shade) + _colour(rng, gray) * shade

    while True:
        count = int(rng.integers(1, 16))
        shapes = [_shape_mask(rng, size) for _ in range(count)]
        fills = [_fill(rng, size, gray, contrast=rng.uniform(0.0, 0.6)) for _ in shapes]
        image, masks = _compose(rng, canvas.copy(), [s for s in shapes], fills)
        if len(masks):
            return SyntheticSample(_finish(rng, image, max_noise=12.0, max_blur=1.5, gray=gray), masks)


def _draw_cells(rng: np.random.Generator, size: int) -> SyntheticSample:
    background = 20 + 30 * _smooth_noise(rng, size, int(rng.integers(2, 8)))
    canvas = np.repeat(background[..., None], 3, axis=2)
    while True:
        count = int(rng.integers(3, 25))
        shapes, fills = [], []
        for _ in range(count):
            canvas_l = Image.new("L", (size, size), 0)
            draw = ImageDraw.Draw(canvas_l)
            radius = rng.uniform(size * 0.03, size * 0.12)
            cx, cy = rng.uniform(0, size, 2)
            elongation = rng.uniform(1.0, 2.5)
            angle = rng.uniform(0, np.pi)
            t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
            wobble = 1 + 0.08 * np.sin(3 * t + rng.uniform(0, 6))
            x, y = np.cos(t) * radius * elongation * wobble, np.sin(t) * radius * wobble
            pts = list(
                zip(
                    cx + x * np.cos(angle) - y * np.sin(angle),
                    cy + x * np.sin(angle) + y * np.cos(angle),
                    strict=True,
                )
            )
            draw.polygon(pts, fill=255)
            shape = np.asarray(canvas_l) > 127
            # Bright rim, dimmer textured interior: cells are told apart by their boundaries.
            interior = (
                np.asarray(Image.fromarray(shape.astype(np.uint8) * 255).filter(ImageFilter.MinFilter(5)))
                > 127
            )
            level = rng.uniform(90, 200)
            body = level * (0.6 + 0.4 * _smooth_noise(rng, size, int(rng.integers(4, 16))))
            body = np.where(interior, body * rng.uniform(0.5, 0.8), body)
            fills.append(np.repeat(body[..., None], 3, axis=2))
            shapes.append(shape)
        image, masks = _compose(rng, canvas.copy(), shapes, fills)
        if len(masks):
            return SyntheticSample(_finish(rng, image, max_noise=20.0, max_blur=2.0, gray=True), masks)
