"""The one disc integration of column intensities, shared by the twin engine and the analysis.

The twin engine measures its columns (fast mode against abTEM) and the analysis measures every site
of a real image with the same integral: the image summed over a disc around each position, sampled
on a sub-pixel grid with bilinear interpolation so the result does not jump with the sub-pixel
position of the column. scipy's ``map_coordinates`` does the interpolation; the positions are
processed in chunks so memory stays bounded for a million sites.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

__all__ = ["disc_intensity"]

#: Sub-pixel sampling of the disc (pixels); coarsened for wide discs so that a disc holds at most
#: about (2 × 32)² samples (a disc of more than 8 pixels in radius is smooth at any step ≤ 1/32 of it).
SUBPIXEL_STEP_PX = 0.25
#: Samples interpolated at once (positions × disc samples), to bound memory.
CHUNK_SAMPLES = 1_000_000


def disc_intensity(image: np.ndarray, x, y, radius: float, pixel_size: tuple[float, float] = (1.0, 1.0),
                   periodic: bool = False, outside: str = "nearest") -> np.ndarray:
    """Image summed over a disc of ``radius`` around each (x, y), times the sample area.

    ``x``, ``y`` and ``radius`` are in the unit of ``pixel_size`` (y, x): pixels by default, Å when
    the pixel size in Å is given (then the result is in intensity × Å²). Pixel ``(i, j)`` is centred
    at ``(j · dx, i · dy)``. ``periodic`` wraps the image (a periodic twin cell); otherwise samples
    outside the image take the nearest edge value (``outside="nearest"``) or zero
    (``outside="zero"``).
    """
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        image = image.astype(float)
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    dy, dx = (float(v) for v in pixel_size)
    finest = min(dx, dy)
    step = max(SUBPIXEL_STEP_PX, radius / finest / 32.0) * finest
    half = np.ceil(radius / step) * step
    offsets = np.arange(-half, half + step / 2, step)
    oy, ox = np.meshgrid(offsets, offsets, indexing="ij")
    inside = np.hypot(oy, ox) <= radius
    oy, ox = oy[inside] / dy, ox[inside] / dx
    mode = "grid-wrap" if periodic else {"nearest": "nearest", "zero": "constant"}[outside]
    out = np.empty(len(x))
    chunk = max(1, CHUNK_SAMPLES // max(1, len(oy)))
    for start in range(0, len(x), chunk):
        rows = (y[start:start + chunk] / dy)[:, None] + oy[None, :]
        cols = (x[start:start + chunk] / dx)[:, None] + ox[None, :]
        # float64 samples of the image as it is (no float64 copy of a float32 image: scipy reads either)
        values = map_coordinates(image, [rows.ravel(), cols.ravel()], order=1, mode=mode, cval=0.0,
                                 output=np.float64)
        out[start:start + chunk] = values.reshape(rows.shape).sum(axis=1)
    return out * step * step
