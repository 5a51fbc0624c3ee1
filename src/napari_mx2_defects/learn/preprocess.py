"""The preprocessing training and inference share: robust normalisation and resampling to the model's pixel.

A model sees images at its own pixel size (``card.pixel_size_A``, 0.2 Å for the shipped one) with
intensities normalised per image; training (:mod:`.train`), fine-tuning (:mod:`.finetune`) and
inference (:mod:`.inference`, tile by tile) all take them from here, so what a model was trained on
is what it is given.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom

__all__ = ["NORMALISATION", "needs_resampling", "normalisation_stats", "normalise", "resample_to", "sample_step",
           "stats_of_sample"]


def normalisation_stats(image: np.ndarray) -> tuple[float, float]:
    """Offset and scale of :func:`normalise`: the median and the p99.5 − p0.5 range.

    Percentiles come from a strided sample (≤ ~1 M pixels) so large images need no sorted copy.
    """
    img = np.asarray(image)
    return stats_of_sample(img[:: sample_step(img.shape), :: sample_step(img.shape)])


def sample_step(shape: tuple[int, int]) -> int:
    """Stride of the ≤ ~1 M-pixel sample that :func:`normalisation_stats` takes of an image."""
    return max(1, int(np.sqrt(shape[0] * shape[1] / 1e6)))


def stats_of_sample(sample: np.ndarray) -> tuple[float, float]:
    """Median and p99.5 − p0.5 range of a sample of pixels."""
    lo, med, hi = np.percentile(np.asarray(sample, np.float32), [0.5, 50, 99.5])
    return float(med), float(max(hi - lo, 1e-6))


def normalise(image: np.ndarray, stats: tuple[float, float] | None = None) -> np.ndarray:
    """Robust intensity normalisation used in training and inference: (x − median) / (p99.5 − p0.5).

    ``stats`` (from :func:`normalisation_stats` of the whole image) lets a tile be normalised as
    part of a larger image.
    """
    offset, scale = normalisation_stats(image) if stats is None else stats
    out = np.subtract(image, np.float32(offset), dtype=np.float32)
    out /= np.float32(scale)
    return out


NORMALISATION = "(x - median) / (p99.5 - p0.5) per image"


def needs_resampling(pixel_size_A: float, target_A: float) -> bool:
    """Whether the pixel sizes differ by more than 0.1 % (less is used as it is)."""
    return abs(pixel_size_A / target_A - 1) >= 1e-3


def resample_to(image: np.ndarray, pixel_size_A: float, target_A: float, order: int = 1) -> np.ndarray:
    """Resample an image from ``pixel_size_A`` to ``target_A`` per pixel."""
    if not needs_resampling(pixel_size_A, target_A):
        return image
    factor = pixel_size_A / target_A
    return zoom(image, factor, order=order, grid_mode=True, mode="grid-constant" if order == 0 else "nearest")
