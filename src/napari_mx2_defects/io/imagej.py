"""ImageJ/Fiji TIFF calibration: what Fiji writes after *Analyze ▸ Set Scale*.

Fiji stores the unit in the ImageJ image description (``unit=nm``; non-ASCII units as escapes such
as ``unit=\\u00B5m`` or ``unit=\\u00C5``; optionally ``yunit=``) and the scale as the TIFF
XResolution/YResolution tags in *pixels per unit*, with ResolutionUnit NONE (or whatever the file
had before). ImageJ itself ignores ResolutionUnit when the description names a unit, and so does
:func:`imagej_calibration`. rosettasciio's TIFF reader only recognises ``micron``; everything else
opened uncalibrated before.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .units import length_to_angstrom, normalise_unit

__all__ = ["decode_imagej_unit", "imagej_calibration"]

#: Pixel sizes outside this range (Å) are not a microscope calibration (e.g. 72 dpi defaults).
PLAUSIBLE_PIXEL_A = (1e-4, 1e9)


def decode_imagej_unit(unit: Any) -> str | None:
    """The unit text of an ImageJ description with Java ``\\uXXXX`` escapes decoded."""
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    if not isinstance(unit, str):
        return None
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), unit.strip())
    return text[:32] or None


def _pixels_per_unit(value: Any) -> float | None:
    """XResolution as tifffile returns it (a ``(numerator, denominator)`` pair or a number)."""
    try:
        if isinstance(value, (tuple, list)) and len(value) == 2:
            num, den = float(value[0]), float(value[1])
            if den == 0:
                return None
            value = num / den
        value = float(value)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def imagej_calibration(imagej_metadata: dict | None, x_resolution: Any,
                       y_resolution: Any = None) -> dict[str, Any] | None:
    """Per-axis pixel size from an ImageJ description and the resolution tags.

    Parameters
    ----------
    imagej_metadata : dict
        ``tifffile.TiffFile.imagej_metadata`` (the parsed ImageJ description).
    x_resolution, y_resolution : (int, int) or float
        The XResolution / YResolution tag values in pixels per unit; a missing YResolution means
        square pixels.

    Returns
    -------
    dict or None
        ``{"scale": (sy, sx), "units": (uy, ux), "scale_A": (sy_A, sx_A)}`` with the scale in the
        file's units, or None when the description names no length unit or the resolution is
        missing, zero, or implausible.
    """
    if not isinstance(imagej_metadata, dict):
        return None
    unit_x = decode_imagej_unit(imagej_metadata.get("unit"))
    unit_y = decode_imagej_unit(imagej_metadata.get("yunit")) or unit_x
    if normalise_unit(unit_x) is None or normalise_unit(unit_y) is None:
        return None
    per_x = _pixels_per_unit(x_resolution)
    per_y = _pixels_per_unit(y_resolution) if y_resolution is not None else per_x
    if per_x is None or per_y is None:
        return None
    sx, sy = 1.0 / per_x, 1.0 / per_y
    sx_A, sy_A = length_to_angstrom(sx, unit_x), length_to_angstrom(sy, unit_y)
    low, high = PLAUSIBLE_PIXEL_A
    if not (low <= sx_A <= high and low <= sy_A <= high):
        return None
    return {"scale": (sy, sx), "units": (unit_y, unit_x), "scale_A": (sy_A, sx_A)}
