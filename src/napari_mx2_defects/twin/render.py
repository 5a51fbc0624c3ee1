"""The fast-mode renderer: incoherent HAADF images as a Fourier-space sum over projected columns.

Model
-----
The clean image is a sum over projected columns of a kernel that depends on the column's occupancy
(its *signature*, ``"Mo"``, ``"S+S"``, ``"W"``, …)::

    I(r) = Σ_columns K_sig(r − r_col),   K̂_sig(q) = P(q) · Σ_b w_sig,b · exp(−2π² σ_b² q²)

``P(q)`` is the Fourier transform of abTEM's probe intensity (normalised to P(0) = 1), so it is
exactly zero beyond the probe's band limit 2α/λ; the Gaussian basis (widths :data:`BASIS_SIGMAS_A`)
describes how each kind of column spreads the scattered intensity (channelling, the object's own
width).  The weights ``w_sig,b`` (Å², scattered fraction × area) come from a fit to abTEM
(:mod:`.calibration`).  A Gaussian source size multiplies by exp(−2π² s² q²).

Rendering
---------
Because the image is band-limited, it is computed exactly from its Fourier coefficients: the
structure factor of every column set, Σ_j w_j,b · exp(−2πi q·r_j), is a type-1 non-uniform FFT
(FINUFFT, exact sub-pixel placement to 1e-9), multiplied by the kernel, folded onto the output
grid (so a coarse scan aliases exactly like a real one) and inverse-FFT'd.  Periodic cells are
one Fourier series; anything else (rotated grains, grain boundaries, large fields) is rendered in
tiles of at most ``tile_px`` pixels, each a periodic canvas with a margin wider than the kernel's
reach, so memory is bounded whatever the image size.  FINUFFT and scipy.fft do the transforms;
what is written here is only the bookkeeping between them (which columns fall in a tile, and the
mode folding, which neither library offers).
"""

from __future__ import annotations

import os

import numpy as np
from scipy import fft as sfft

from .microscope import Microscope

__all__ = [
    "BASIS_SIGMAS_A",
    "ProbeTransfer",
    "kernel_reach_A",
    "probe_transfer",
    "render_columns",
    "render_kernel_images",
]

#: Widths (Å) of the Gaussian basis of a column's spreading kernel, from a sharp column (0) to the
#: spread that channelling and coherent low-angle scattering give the neighbour sites 1–3 Å away.
#: Fitted weights are non-negative, so the kernel cannot ring.  Measured on the 6×4 MoS2 test cell at
#: 60 kV with a 40–200 mrad ADF detector: basis widths up to 1.2 Å left the empty S2 column 2.5 % of a
#: Mo column off multislice; adding 1.5 and 2.2 Å brought it to 1.3 %, every column to ≤ 1.0 %.
BASIS_SIGMAS_A: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.7, 1.0, 1.5, 2.2)
#: FINUFFT's requested relative precision (far below shot noise at any dose).
NUFFT_EPS = 1e-7
#: Problems smaller than this (points + modes) run FINUFFT on one thread: measured here, its
#: OpenMP start-up costs 4–15× the work of a 256² twin.
SINGLE_THREAD_BELOW = 2_000_000
#: Largest tile (pixels per side, before its margins) of a non-periodic image.
TILE_PX = 3072
#: Largest periodic image (pixels per side) rendered as one canvas: it needs no margins, so one
#: 4800² canvas costs about what a 3072² tile with its margins does (~0.2 GB of spectrum).
PERIODIC_CANVAS_PX = 4800

_TRANSFER_CACHE: dict = {}


def default_threads() -> int | None:
    """Threads for FINUFFT and scipy.fft: ``$MX2_DEFECTS_THREADS`` (e.g. 1 in dataset workers), else None
    (all cores for large transforms, one for small ones)."""
    value = os.environ.get("MX2_DEFECTS_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


class ProbeTransfer:
    """Radial Fourier transform ``P(q)`` of the probe intensity, P(0) = 1, zero beyond ``q_max``.

    Computed from abTEM's probe (same energy, aperture, defocus and Cs as the multislice runs):
    the intensity on a 96 Å grid at 0.08 Å (well inside the intensity's band limit for 60–300 kV),
    Fourier transformed and averaged over rings of width 1/96 Å⁻¹, each ring placed at its mean |q|.
    """

    def __init__(self, microscope: Microscope, extent_xy_A: float = 96.0, sampling_A: float = 0.08):
        import abtem

        probe = microscope.abtem_probe(extent=extent_xy_A, sampling=sampling_A)
        # FFTW_ESTIMATE: the same plan in every process. abTEM's default FFTW_MEASURE picks a plan by timing,
        # so the probe's last digits varied between runs, and with them the forward model's levels: one run in
        # ~10 of the real Ti:WSe2 scan then kept V_XX, S_X and M_X on its X sites (25 other-class calls)
        with abtem.config.set({"fftw.planning_effort": "FFTW_ESTIMATE"}):
            waves = probe.build(scan=(0.0, 0.0))  # centred on the origin: a real, even transform
            intensity = np.asarray(waves.intensity().compute(progress_bar=False).array, dtype=float)
        spectrum = np.fft.fft2(intensity).real
        spectrum /= spectrum[0, 0]
        n = intensity.shape[0]
        q1 = np.fft.fftfreq(n, d=sampling_A)
        qq = np.hypot(*np.meshgrid(q1, q1, indexing="ij")).ravel()
        dq = 1.0 / extent_xy_A
        which = np.rint(qq / dq).astype(int)
        self.q_max_per_A = 2 * microscope.semiangle_mrad * 1e-3 / microscope.wavelength_A
        keep = which * dq <= self.q_max_per_A + dq
        sums = np.bincount(which[keep], weights=spectrum.ravel()[keep])
        q_sums = np.bincount(which[keep], weights=qq[keep])
        counts = np.bincount(which[keep])
        ok = counts > 0
        self.q_per_A = q_sums[ok] / counts[ok]
        self.value = sums[ok] / counts[ok]
        self.value[self.q_per_A >= self.q_max_per_A] = 0.0
        # encircled intensity against radius, for the real-space reach of the kernel
        coords = np.minimum(np.arange(n), n - np.arange(n)) * sampling_A  # distance from the origin, wrapped
        radii = np.hypot(coords[:, None], coords[None, :]).ravel()
        order = np.argsort(radii)
        self._radii_A = radii[order]
        encircled = np.cumsum(intensity.ravel()[order])
        self._outside = 1.0 - encircled / encircled[-1]

    def reach_A(self, outside_fraction: float = 1e-3) -> float:
        """Radius outside which the probe carries less than ``outside_fraction`` of its intensity.

        The probe's Airy tails are long: at 80 kV / 25 mrad, 1 % of the intensity lies beyond 13 Å and
        0.1 % beyond 36 Å.
        """
        k = int(np.searchsorted(-self._outside, -outside_fraction))
        return float(self._radii_A[min(k, len(self._radii_A) - 1)])

    def __call__(self, q_per_A: np.ndarray) -> np.ndarray:
        out = np.interp(q_per_A, self.q_per_A, self.value, right=0.0)
        out[q_per_A >= self.q_max_per_A] = 0.0
        return out


def probe_transfer(microscope: Microscope) -> ProbeTransfer:
    """:class:`ProbeTransfer` for these optics (cached per process; the source size is not part of it)."""
    key = (microscope.energy_keV, microscope.semiangle_mrad, microscope.defocus_A, microscope.Cs_A)
    if key not in _TRANSFER_CACHE:
        _TRANSFER_CACHE[key] = ProbeTransfer(microscope)
    return _TRANSFER_CACHE[key]


def kernel_reach_A(microscope: Microscope, basis_sigmas_A=BASIS_SIGMAS_A, outside_fraction: float = 1e-3) -> float:
    """A tile's margin: the radius outside which every kernel carries less than about
    ``outside_fraction`` of its intensity (the probe's reach plus three widths of the widest Gaussian,
    source size included), so a tile misses at most that fraction of any pixel's signal."""
    reach = probe_transfer(microscope).reach_A(outside_fraction)
    sigma = float(max(basis_sigmas_A)) if len(basis_sigmas_A) else 0.0
    return reach + 3.0 * float(np.hypot(sigma, microscope.source_size_A))


def _fold(coeffs: np.ndarray, axis: int, half: int, n: int) -> np.ndarray:
    """Fold Fourier modes −half…half along ``axis`` onto the ``n`` FFT bins they alias to (index k mod n)."""
    size = coeffs.shape[axis]
    reps = int(np.ceil(size / n))
    pad = [(0, 0)] * coeffs.ndim
    pad[axis] = (0, reps * n - size)
    padded = np.pad(coeffs, pad)
    shape = list(padded.shape)
    shape[axis : axis + 1] = [reps, n]
    folded = padded.reshape(shape).sum(axis=axis)  # bin p ↔ k = p − half (mod n)
    return np.roll(folded, -half, axis=axis)


def _mode_grid(transfer: ProbeTransfer, period_A: tuple[float, float], source_size_A: float):
    """Fourier modes inside the band limit for a canvas of period (Lx, Ly): half-widths, q², envelope."""
    lx, ly = period_A
    half_x = int(np.floor(transfer.q_max_per_A * lx))
    half_y = int(np.floor(transfer.q_max_per_A * ly))
    qx = np.arange(-half_x, half_x + 1) / lx
    qy = np.arange(-half_y, half_y + 1) / ly
    q2 = qy[:, None] ** 2 + qx[None, :] ** 2
    envelope = transfer(np.sqrt(q2)) * np.exp(-2 * np.pi**2 * source_size_A**2 * q2)
    return (half_y, half_x), q2, envelope


def _structure_factors(x_A, y_A, strengths: np.ndarray, period_A, half: tuple[int, int],
                       nthreads: int | None) -> np.ndarray:
    """Σ_j strengths[s, j] · exp(−2πi q·r_j) on the mode grid, for each row s: (n_s, 2hy+1, 2hx+1)."""
    import finufft

    lx, ly = period_A
    n_s = strengths.shape[0]
    modes = (2 * half[0] + 1, 2 * half[1] + 1)
    if not len(x_A):
        return np.zeros((n_s, *modes), complex)
    opts = {"nthreads": nthreads} if nthreads else {}
    c = np.ascontiguousarray(strengths, dtype=np.complex128)
    out = finufft.nufft2d1(2 * np.pi * np.asarray(y_A, float) / ly, 2 * np.pi * np.asarray(x_A, float) / lx,
                           c if n_s > 1 else c[0], modes, eps=NUFFT_EPS, isign=-1, **opts)
    return out.reshape(n_s, *modes)


def _modes_to_images(coeffs: np.ndarray, half: tuple[int, int], shape: tuple[int, int], period_A,
                     nthreads: int | None) -> np.ndarray:
    """Fourier coefficients (n, 2hy+1, 2hx+1) → real images (n, ny, nx) sampled on the canvas grid.

    Modes are folded onto the bins they alias to, which is what point sampling does.
    """
    ny, nx = shape
    hy, hx = half
    if 2 * hy + 1 <= ny and 2 * hx + 1 <= nx:  # no aliasing: place the modes directly in the half spectrum
        folded = np.zeros((coeffs.shape[0], ny, nx // 2 + 1), complex)
        folded[:, : hy + 1, : hx + 1] = coeffs[:, hy:, hx:]
        if hy:
            folded[:, ny - hy :, : hx + 1] = coeffs[:, :hy, hx:]
    else:
        folded = _fold(_fold(coeffs, 1, hy, ny), 2, hx, nx)[..., : nx // 2 + 1]
    images = sfft.irfft2(folded, s=(ny, nx), workers=nthreads or -1)
    images *= nx * ny / (period_A[0] * period_A[1])
    return images


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_inverse=True)`` by hashing each row's bytes (several times
    faster: ``axis=0`` sorts a structured view field by field)."""
    rows = np.ascontiguousarray(rows, dtype=float)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return rows[first], np.ravel(inverse)


def _canvas_image(x_A, y_A, weights: np.ndarray, period_A, shape, transfer: ProbeTransfer,
                  basis_sigmas_A, source_size_A: float, nthreads: int | None) -> np.ndarray:
    """Periodic band-limited image of one canvas; ``weights`` is (n_columns, n_basis).

    Columns sharing a kernel (a signature) share one structure factor, so the transforms number the
    distinct kernels (or the basis widths, if fewer).
    """
    half, q2, envelope = _mode_grid(transfer, period_A, source_size_A)
    if nthreads is None and len(x_A) + shape[0] * shape[1] < SINGLE_THREAD_BELOW:
        nthreads = 1
    gauss = [np.exp(-2 * np.pi**2 * sigma**2 * q2) for sigma in basis_sigmas_A]
    kernels, group = _unique_rows(weights) if len(weights) else (weights, None)
    coeffs = np.zeros(q2.shape, complex)
    if 0 < len(kernels) <= len(basis_sigmas_A):
        strengths = (np.ravel(group)[None, :] == np.arange(len(kernels))[:, None]).astype(float)
        structure = _structure_factors(x_A, y_A, strengths, period_A, half, nthreads)
        for k, kernel in enumerate(kernels):
            coeffs += sum(w * g for w, g in zip(kernel, gauss) if w) * structure[k]
    elif len(kernels):
        structure = _structure_factors(x_A, y_A, weights.T, period_A, half, nthreads)
        for b, g in enumerate(gauss):
            coeffs += g * structure[b]
    return _modes_to_images((envelope * coeffs)[None], half, shape, period_A, nthreads)[0]


def render_columns(
    x_A: np.ndarray,
    y_A: np.ndarray,
    weights_A2: np.ndarray,
    shape: tuple[int, int],
    extent_xy_A: tuple[float, float],
    microscope: Microscope,
    periodic: bool,
    basis_sigmas_A: tuple[float, ...] = BASIS_SIGMAS_A,
    source_size_A: float | None = None,
    tile_px: int | None = None,
    nthreads: int | None = None,
) -> np.ndarray:
    """Fast-mode image of columns at (``x_A``, ``y_A``).

    Parameters
    ----------
    weights_A2 : array (n_columns, n_basis) or (n_columns,)
        Kernel weights per column over ``basis_sigmas_A`` (a 1-D array: one weight on the first basis
        width).
    shape : (ny, nx)
        Pixel (i, j) samples the position (x = j·Δx, y = i·Δy), Δx = extent_x / nx.
    extent_xy_A : (x, y)
    periodic : bool
        The field of view is one period of the structure.
    source_size_A : float, optional
        Gaussian source size (σ); default ``microscope.source_size_A``.

    Returns
    -------
    numpy.ndarray
        float64 image, fraction of the incident beam scattered onto the detector.
    """
    x_A = np.asarray(x_A, float)
    y_A = np.asarray(y_A, float)
    w = np.asarray(weights_A2, float)
    if w.ndim == 1:
        w = w[:, None]
        basis_sigmas_A = tuple(basis_sigmas_A[:1])
    if w.shape != (len(x_A), len(basis_sigmas_A)):
        raise ValueError(f"weights of shape {w.shape} do not match {len(x_A)} columns × {len(basis_sigmas_A)} widths")
    if not (np.all(np.isfinite(x_A)) and np.all(np.isfinite(y_A)) and np.all(np.isfinite(w))):
        raise ValueError("column positions and weights must be finite numbers")
    source = microscope.source_size_A if source_size_A is None else float(source_size_A)
    nthreads = nthreads or default_threads()
    transfer = probe_transfer(microscope)
    ny, nx = shape
    lx, ly = float(extent_xy_A[0]), float(extent_xy_A[1])
    dx, dy = lx / nx, ly / ny
    live = np.any(w != 0, axis=1)
    x_A, y_A, w = x_A[live], y_A[live], w[live]
    whole_px = tile_px if tile_px is not None else PERIODIC_CANVAS_PX
    tile_px = tile_px if tile_px is not None else TILE_PX
    if periodic and nx <= whole_px and ny <= whole_px:
        return _canvas_image(np.mod(x_A, lx), np.mod(y_A, ly), w, (lx, ly), (ny, nx), transfer,
                             basis_sigmas_A, source, nthreads)
    used = [sigma for sigma, any_weight in zip(basis_sigmas_A, np.any(w != 0, axis=0)) if any_weight]
    reach = kernel_reach_A(microscope, used or [0.0])
    margin_x, margin_y = int(np.ceil(reach / dx)), int(np.ceil(reach / dy))
    if periodic:  # periodic images of the columns that reach into the field from beyond its edges
        shifts = [(sx, sy) for sx in (-1, 0, 1) for sy in (-1, 0, 1)]
        near = [(x_A + sx * lx, y_A + sy * ly) for sx, sy in shifts]
        keep = [(-reach <= px_) & (px_ < lx + reach) & (-reach <= py_) & (py_ < ly + reach) for px_, py_ in near]
        x_A = np.concatenate([p[0][k] for p, k in zip(near, keep)])
        y_A = np.concatenate([p[1][k] for p, k in zip(near, keep)])
        w = np.concatenate([w[k] for k in keep])
    image = np.zeros((ny, nx))
    order = np.argsort(x_A, kind="stable")
    xs, ys, ws = x_A[order], y_A[order], w[order]
    # tiles of equal size, at most tile_px per side
    step_y = int(np.ceil(ny / np.ceil(ny / max(1, int(tile_px)))))
    step_x = int(np.ceil(nx / np.ceil(nx / max(1, int(tile_px)))))
    for i0 in range(0, ny, step_y):
        for j0 in range(0, nx, step_x):
            th, tw = min(step_y, ny - i0), min(step_x, nx - j0)
            cny = sfft.next_fast_len(th + 2 * margin_y, real=True)
            cnx = sfft.next_fast_len(tw + 2 * margin_x, real=True)
            ox, oy = (j0 - margin_x) * dx, (i0 - margin_y) * dy  # canvas origin in Å
            lo, hi = np.searchsorted(xs, [ox, ox + (tw + 2 * margin_x) * dx])
            sel = slice(lo, hi)
            yy = ys[sel]
            inside = (yy >= oy) & (yy < oy + (th + 2 * margin_y) * dy)
            canvas = _canvas_image(xs[sel][inside] - ox, yy[inside] - oy, ws[sel][inside], (cnx * dx, cny * dy),
                                   (cny, cnx), transfer, basis_sigmas_A, source, nthreads)
            image[i0 : i0 + th, j0 : j0 + tw] = canvas[margin_y : margin_y + th, margin_x : margin_x + tw]
    return image


def render_kernel_images(
    x_A: np.ndarray,
    y_A: np.ndarray,
    shape: tuple[int, int],
    extent_xy_A: tuple[float, float],
    microscope: Microscope,
    basis_sigmas_A: tuple[float, ...] = BASIS_SIGMAS_A,
) -> np.ndarray:
    """Images of a periodic set of unit-weight columns, one per basis width: (n_basis, ny, nx).

    The design matrix of the calibration fit: one NUFFT and one batched inverse FFT.
    """
    transfer = probe_transfer(microscope)
    period = (float(extent_xy_A[0]), float(extent_xy_A[1]))
    x_A, y_A = np.mod(np.asarray(x_A, float), period[0]), np.mod(np.asarray(y_A, float), period[1])
    half, q2, envelope = _mode_grid(transfer, period, 0.0)
    structure = _structure_factors(x_A, y_A, np.ones((1, len(x_A))), period, half, None)[0]
    coeffs = np.stack([envelope * np.exp(-2 * np.pi**2 * s**2 * q2) * structure for s in basis_sigmas_A])
    return _modes_to_images(coeffs, half, tuple(shape), period, None)
