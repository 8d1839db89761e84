"""Image grids: model outputs in [-1, 1] to uint8 tiles and PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[-1, 1] float images (N, H, W, C) -> uint8 in [0, 255], rounded and clipped."""
    return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """uint8 (N, H, W, C) -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) uint8 mosaic."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncols)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + q * (w + pad) : pad + q * (w + pad) + w,
        ] = img
    return grid


def save_png(path: str | Path, grid: np.ndarray, scale: int = 1) -> None:
    """Write a uint8 (H, W, C) grid as PNG, optionally enlarged ``scale`` times (nearest)."""
    from PIL import Image

    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid).save(path)


def plot_curve(values: np.ndarray, path: str | Path, title: str = "", size=(640, 320)) -> None:
    """A minimal line plot (no matplotlib needed) of ``values`` against their index, as PNG."""
    from PIL import Image, ImageDraw

    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0
    w, h = size
    margin = 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([margin, margin // 2, w - margin // 2, h - margin], outline="black")
    xs = margin + np.linspace(0, w - 1.5 * margin, len(values))
    ys = h - margin - (values - lo) / (hi - lo) * (h - 1.5 * margin)
    draw.line(list(zip(xs.tolist(), np.nan_to_num(ys).tolist(), strict=True)), fill="navy")
    draw.text((margin, 2), f"{title}  min {lo:.3g}  max {hi:.3g}  n={len(values)}", fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
