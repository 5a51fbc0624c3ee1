"""The pixel size as the cached physics sees it.

Forward models, phase references and fitted source sizes are cached per (material, pixel size,
optics).  A calibration read twice (from a file's metadata, from a layer's scale, after a float
round trip) must reuse one cached model, so every cache is keyed on the same rounded value, made
here and nowhere else.
"""

from __future__ import annotations

__all__ = ["PIXEL_SIZE_KEY_DECIMALS", "pixel_size_key"]

#: 10⁻⁴ Å: far finer than any calibration is known (vendor pixel sizes are often 3–15 % off), far
#: coarser than the float noise of a scale read back from a layer or a file.
PIXEL_SIZE_KEY_DECIMALS = 4


def pixel_size_key(pixel_size_A: float) -> float:
    """``pixel_size_A`` rounded to :data:`PIXEL_SIZE_KEY_DECIMALS` decimals: the key of every cached
    forward model, phase reference and source-size fit."""
    return round(float(pixel_size_A), PIXEL_SIZE_KEY_DECIMALS)
