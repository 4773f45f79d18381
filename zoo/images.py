"""PNG output: image grids for image models, 2-D histograms for toy data."""

import math
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["image_grid", "save_grid", "save_points"]


def image_grid(images: np.ndarray, *, ncol: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) floats in [0, 1] -> one uint8 (rows, cols, C) grid (C = 1 or 3).
    Non-finite pixels (a diverged sample) are drawn mid-grey."""
    images = np.clip(np.nan_to_num(np.asarray(images, dtype=np.float32), nan=0.5, posinf=1.0, neginf=0.0), 0.0, 1.0)
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    grid = np.ones((c, nrow * (h + pad) + pad, ncol * (w + pad) + pad), np.float32)
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top : top + h, left : left + w] = images[i]
    return (grid.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)


def save_grid(images: np.ndarray, path, **kwargs) -> Path:
    grid = image_grid(images, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path


def save_points(points: np.ndarray, path, *, bins: int = 200, bounds=None) -> Path:
    """A 2-D histogram of (N, 2) points as a grayscale PNG (dark = dense)."""
    points = np.asarray(points, dtype=np.float64).reshape(len(points), -1)[:, :2]
    points = points[np.all(np.isfinite(points), axis=1)]
    if bounds is None and not len(points):  # nothing finite to show: a blank image, not an IndexError
        bounds = [(-1.0, 1.0), (-1.0, 1.0)]
    if bounds is None:
        lo, hi = np.percentile(points, 0.5, axis=0), np.percentile(points, 99.5, axis=0)
        pad = 0.1 * (hi - lo)
        bounds = [(lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])]
    hist, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=bins, range=[bounds[1], bounds[0]])
    img = 1.0 - np.sqrt(hist / max(hist.max(), 1.0))  # sqrt keeps sparse tails visible
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((img[::-1] * 255).astype(np.uint8)).save(path)  # y axis points up
    return path
