"""Atomic columns: peak finding with sub-pixel refinement and per-site integrated intensity."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, minimum_filter
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max

from ..core.integration import disc_intensity

__all__ = ["find_peaks", "integrated_intensity", "local_background", "refine_positions"]


def find_peaks(image: np.ndarray, min_distance_px: float, smooth_px: float = 1.0,
               threshold_rel: float = 0.2) -> np.ndarray:
    """Intensity maxima (x, y in pixels, sub-pixel) at least ``min_distance_px`` apart."""
    img = gaussian_filter(np.asarray(image, float), smooth_px)
    span = np.ptp(img)
    if not np.isfinite(span) or span == 0:
        return np.zeros((0, 2))
    # a small maximum filter first: a wide one would lose dim chalcogen columns under the
    # tails of their bright metal neighbours; then Euclidean non-maximum suppression
    floor = threshold_rel * float(np.percentile(img, 99))
    coords = peak_local_max(img, min_distance=max(1, int(0.4 * min_distance_px)), threshold_abs=floor,
                            exclude_border=False)
    values = img[coords[:, 0], coords[:, 1]]
    order = np.argsort(values)[::-1]
    coords = coords[order]
    keep = np.ones(len(coords), bool)
    tree = cKDTree(coords)
    for k in range(len(coords)):
        if keep[k]:
            for j in tree.query_ball_point(coords[k], min_distance_px):
                if j > k:
                    keep[j] = False
    xy = coords[keep][:, ::-1].astype(float)
    return refine_positions(img, xy)


def refine_positions(image: np.ndarray, xy: np.ndarray, radius_px: float | None = None) -> np.ndarray:
    """Sub-pixel positions: a 2-D quadratic fitted to the 3×3 neighbourhood of each maximum.

    A least-squares quadratic around the brightest pixel is unbiased by the
    tails of neighbouring columns, unlike a centroid over a wide disc.
    """
    ny, nx = image.shape
    out = xy.copy()
    dy, dx = np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij")
    design = np.column_stack([np.ones(9), dx.ravel(), dy.ravel(), dx.ravel() ** 2, dy.ravel() ** 2,
                              (dx * dy).ravel()])
    pinv = np.linalg.pinv(design)
    for k, (x, y) in enumerate(xy):
        i0, j0 = int(round(y)), int(round(x))
        if not (1 <= i0 < ny - 1 and 1 <= j0 < nx - 1):
            continue
        c = pinv @ image[i0 - 1 : i0 + 2, j0 - 1 : j0 + 2].ravel()
        hess = np.array([[2 * c[3], c[5]], [c[5], 2 * c[4]]])
        if np.linalg.det(hess) <= 0 or hess[0, 0] >= 0:
            continue  # not a maximum: keep the pixel position
        shift = -np.linalg.solve(hess, c[1:3])
        if np.all(np.abs(shift) <= 1.0):
            out[k] = (j0 + shift[0], i0 + shift[1])
    return out


def local_background(image: np.ndarray, a_px: float) -> np.ndarray:
    """Slowly varying background: the minimum over one lattice cell of the lightly smoothed
    image, then smoothed over one lattice constant.

    Removes contamination and gain drifts while keeping column contrast.
    """
    size = max(3, int(round(1.2 * a_px)))
    # smooth first so that shot noise does not drag the minimum down
    denoised = gaussian_filter(np.asarray(image, float), 0.1 * a_px)
    floor = minimum_filter(denoised, size=size, mode="nearest")
    return gaussian_filter(floor, 1.0 * a_px, mode="nearest")


def integrated_intensity(image: np.ndarray, xy: np.ndarray, radius_px: float) -> np.ndarray:
    """Sum of pixel values within ``radius_px`` of each (x, y) (pixels), on the shared sub-pixel disc
    (:func:`~napari_mx2_defects.core.integration.disc_intensity`), so the result does not jump with
    the sub-pixel position of the column."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    return disc_intensity(image, xy[:, 0], xy[:, 1], radius_px)
