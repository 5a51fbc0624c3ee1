"""Atomic columns: peak finding with sub-pixel refinement and per-site integrated intensity."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, minimum_filter
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max

from ..core.integration import disc_intensity

__all__ = ["find_peaks", "integrated_intensity", "local_background", "real_image", "refine_positions", "values_at"]


def real_image(image: np.ndarray) -> np.ndarray:
    """``image`` as a floating-point array, copied only when it is not one: float32 stays float32 and
    integers (detector counts) become float32, exact up to 2²⁴ counts a pixel.

    Whole-image steps (smoothing, background, peak finding) then work in the image's own precision: a
    million-atom field (74 MPix) is 0.3 GB a copy in float32 against 0.6 GB in float64, and scipy's filters
    accumulate in double inside either way.  Per-site results (disc sums, profiles) are float64.
    """
    img = np.asarray(image)
    return img if np.issubdtype(img.dtype, np.floating) else img.astype(np.float32)


def find_peaks(image: np.ndarray, min_distance_px: float, smooth_px: float = 1.0,
               threshold_rel: float = 0.2) -> np.ndarray:
    """Intensity maxima (x, y in pixels, sub-pixel) at least ``min_distance_px`` apart."""
    img = gaussian_filter(real_image(image), smooth_px)
    span = np.ptp(img)
    if not np.isfinite(span) or span == 0:
        return np.zeros((0, 2))
    # a small maximum filter first: a wide one would lose dim chalcogen columns under the
    # tails of their bright metal neighbours; then Euclidean non-maximum suppression. The filter is
    # given as a footprint (min_distance=1): skimage's own spacing step at min_distance > 1 (a Python
    # loop per peak, 80 % of the time on 38,000 columns) is redundant with the suppression below,
    # whose radius is wider — the same peaks come out (checked on a 2068² twin), 4.6× faster.
    floor = threshold_rel * float(np.percentile(img, 99))
    size = 2 * max(1, int(0.4 * min_distance_px)) + 1
    coords = peak_local_max(img, min_distance=1, footprint=np.ones((size, size), bool), threshold_abs=floor,
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
    tails of neighbouring columns, unlike a centroid over a wide disc. All maxima are fitted at once
    (one pseudo-inverse applied to every 3×3 neighbourhood, the 2×2 Hessians solved in closed form);
    a position whose fit is not a maximum or moves more than a pixel is kept as given.
    """
    ny, nx = image.shape
    xy = np.asarray(xy, float).reshape(-1, 2)
    out = xy.copy()
    dy, dx = np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij")
    design = np.column_stack([np.ones(9), dx.ravel(), dy.ravel(), dx.ravel() ** 2, dy.ravel() ** 2,
                              (dx * dy).ravel()])
    pinv = np.linalg.pinv(design)
    i0, j0 = np.rint(xy[:, 1]).astype(int), np.rint(xy[:, 0]).astype(int)
    inside = np.flatnonzero((i0 >= 1) & (i0 < ny - 1) & (j0 >= 1) & (j0 < nx - 1))
    if not len(inside):
        return out
    rows, cols = i0[inside], j0[inside]
    patches = np.asarray(image)[rows[:, None] + dy.ravel()[None], cols[:, None] + dx.ravel()[None]].astype(float)
    c = patches @ pinv.T  # (n, 6): 1, x, y, x², y², xy
    hxx, hyy, hxy = 2 * c[:, 3], 2 * c[:, 4], c[:, 5]
    det = hxx * hyy - hxy**2
    ok = (det > 0) & (hxx < 0)
    safe = np.where(ok, det, 1.0)
    shift_x = -(hyy * c[:, 1] - hxy * c[:, 2]) / safe
    shift_y = -(hxx * c[:, 2] - hxy * c[:, 1]) / safe
    ok &= (np.abs(shift_x) <= 1.0) & (np.abs(shift_y) <= 1.0)
    out[inside[ok], 0] = cols[ok] + shift_x[ok]
    out[inside[ok], 1] = rows[ok] + shift_y[ok]
    return out


def values_at(array: np.ndarray, x_px, y_px) -> np.ndarray:
    """The pixel of a 2-D map (a mask, a label image) nearest each (x, y) position in pixels, positions
    outside clipped to the edge."""
    rows = np.clip(np.rint(np.asarray(y_px, float)).astype(int), 0, array.shape[0] - 1)
    cols = np.clip(np.rint(np.asarray(x_px, float)).astype(int), 0, array.shape[1] - 1)
    return array[rows, cols]


def local_background(image: np.ndarray, a_px: float) -> np.ndarray:
    """Slowly varying background: the minimum over one lattice cell of the lightly smoothed
    image, then smoothed over one lattice constant.

    Removes contamination and gain drifts while keeping column contrast.
    """
    size = max(3, int(round(1.2 * a_px)))
    # smooth first so that shot noise does not drag the minimum down; the minimum and the second smoothing
    # work in place (separable filters through line buffers: the same values, one full-size array)
    floor = gaussian_filter(real_image(image), 0.1 * a_px)
    minimum_filter(floor, size=size, mode="nearest", output=floor)
    return gaussian_filter(floor, 1.0 * a_px, mode="nearest", output=floor)


def integrated_intensity(image: np.ndarray, xy: np.ndarray, radius_px: float) -> np.ndarray:
    """Sum of pixel values within ``radius_px`` of each (x, y) (pixels), on the shared sub-pixel disc
    (:func:`~napari_mx2_defects.core.integration.disc_intensity`), so the result does not jump with
    the sub-pixel position of the column."""
    xy = np.asarray(xy, float).reshape(-1, 2)
    return disc_intensity(image, xy[:, 0], xy[:, 1], radius_px)
