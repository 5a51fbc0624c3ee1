"""Multiscale (pyramid) layer data, as napari holds it, read at full resolution."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["full_resolution"]


def full_resolution(data):
    """The full-resolution level of napari multiscale data (a ``MultiScaleData`` or a list of levels,
    largest first), other data as given.  ``np.asarray`` of a ``MultiScaleData`` is its *smallest*
    level, so a pyramid read naively would be analysed or saved at a fraction of its pixels with the
    full image's calibration."""
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)) and len(data) \
            and hasattr(data[0], "shape") and np.ndim(data[0]) >= 2:
        return data[0]
    return data
