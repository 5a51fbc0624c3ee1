"""HAADF-STEM images of a structure: abTEM multislice / PRISM, and a calibrated fast mode.

This module is the twin engine's one entry point for images; the work is split by job:

* :mod:`.columns` — projected columns and their occupancy signatures;
* :mod:`.render` — the fast mode: a Fourier-space sum of calibrated per-signature kernels
  (FINUFFT for exact sub-pixel placement), tiled so memory stays bounded;
* :mod:`.calibration` — the kernels fitted to abTEM per parent, optics and signature set, cached;
* :mod:`.abtem_runner` — abTEM multislice / PRISM, optionally with frozen phonons.

Fast mode (``method="fast"``) is incoherent imaging with kernels calibrated **per column
occupancy** (``"S+S"``, ``"S"``, ``"Mo"``, ``"W"``, ``"Mo+S"``, …) against abTEM on a calibration
cell of the same parent and optics, because channelling makes an X2 column differ from twice a
single X and a heavy dopant's column is sharper than the host's.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from .abtem_runner import (
    MAX_POTENTIAL_SAMPLING_A,
    SLICE_THICKNESS_A,
    FrozenPhononSettings,
    estimate_seconds,
    simulate_abtem,
)
from .calibration import COMPARE_SAMPLING_A, Calibration, cache_dir, calibrate_column_weights, calibration_cell
from .columns import column_examples, column_intensities, integration_radius_A, projected_columns, signature
from ..core.jobs import CancelFn, Cancelled, ProgressFn, never, no_progress
from .microscope import Microscope
from .render import BASIS_SIGMAS_A, render_columns

__all__ = [
    "BASIS_SIGMAS_A",
    "COMPARE_SAMPLING_A",
    "MAX_POTENTIAL_SAMPLING_A",
    "METHODS",
    "SLICE_THICKNESS_A",
    "CancelFn",
    "Calibration",
    "Cancelled",
    "FrozenPhononSettings",
    "ProgressFn",
    "apply_source_size",
    "cache_dir",
    "calibrate_column_weights",
    "calibration_cell",
    "column_examples",
    "column_intensities",
    "estimate_seconds",
    "integration_radius_A",
    "never",
    "no_progress",
    "projected_columns",
    "render_columns",
    "render_incoherent",
    "render_incoherent_periodic",
    "signature",
    "simulate_abtem",
]

METHODS = ("fast", "prism", "multislice")


def render_incoherent(
    x_A: np.ndarray,
    y_A: np.ndarray,
    weights_A2: np.ndarray,
    shape: tuple[int, int],
    extent_xy_A: tuple[float, float],
    microscope: Microscope,
    periodic: bool,
    object_sigma_A: float = 0.0,
) -> np.ndarray:
    """Incoherent HAADF image: Σ weight × (probe intensity ⊗ Gaussian of ``object_sigma_A``)(r − r_column).

    One Gaussian width for every column; :func:`.render.render_columns` takes a calibrated kernel per
    column.  Pixel (i, j) samples the position (x = j·Δx, y = i·Δy); the image is in units of the
    fraction of the incident beam scattered onto the detector.  No source-size blur is applied.
    """
    w = np.asarray(weights_A2, float)[:, None]
    return render_columns(x_A, y_A, w, shape, extent_xy_A, microscope, periodic,
                          basis_sigmas_A=(float(object_sigma_A),), source_size_A=0.0)


def render_incoherent_periodic(
    x_A: np.ndarray,
    y_A: np.ndarray,
    weights_A2: np.ndarray,
    shape: tuple[int, int],
    extent_xy_A: tuple[float, float],
    microscope: Microscope,
    object_sigma_A: float = 0.0,
) -> np.ndarray:
    """:func:`render_incoherent` for a periodic cell (the Fourier renderer is exact at any output grid)."""
    return render_incoherent(x_A, y_A, weights_A2, shape, extent_xy_A, microscope, True, object_sigma_A)


def apply_source_size(image: np.ndarray, pixel_size_A: tuple[float, float], microscope: Microscope,
                      periodic: bool) -> np.ndarray:
    """Partial spatial coherence of an abTEM image: Gaussian blur of standard deviation ``source_size_A``.

    (The fast mode applies the same envelope in Fourier space while rendering.)
    """
    if microscope.source_size_A <= 0:
        return image
    sigma = (microscope.source_size_A / pixel_size_A[0], microscope.source_size_A / pixel_size_A[1])
    return gaussian_filter(image, sigma, mode="wrap" if periodic else "nearest")
