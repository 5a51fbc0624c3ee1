"""Seedable imaging imperfections, each a separate composable transform.

Every transform takes and returns an :class:`ImageState`: the image (in
fraction of the incident beam until dose noise turns it into counts) plus the
scan-distortion map that tells where each pixel really sampled the specimen,
so the ground truth can follow geometric distortions exactly.

Order used by :func:`apply_imperfections`: geometric distortions (drift, flyback,
scan jitter) → contamination → probe-current variation → Poisson dose noise →
Gaussian read noise.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

__all__ = [
    "Contamination",
    "Flyback",
    "ImageState",
    "Imperfections",
    "LinearDrift",
    "NonlinearDrift",
    "PoissonDose",
    "ProbeCurrentVariation",
    "ReadNoise",
    "ScanJitter",
    "apply_imperfections",
]


@dataclass
class ImageState:
    """An image and where its pixels sampled the specimen.

    Attributes
    ----------
    image : ndarray (ny, nx)
    pixel_size_A : (float, float)
        (y, x) pixel size.
    periodic : bool
        Whether the specimen repeats across the image edges.
    offset_y_A, offset_x_A : ndarray (ny, nx) float32, or None
        Where each pixel really sampled the specimen, relative to its nominal position (i·Δy, j·Δx);
        None until a geometric distortion is applied (an undistorted million-atom twin builds no
        such maps).
    counts : bool
        The image is in detected electrons (after dose noise).
    """

    image: np.ndarray
    pixel_size_A: tuple[float, float]
    periodic: bool
    offset_y_A: np.ndarray | None = None
    offset_x_A: np.ndarray | None = None
    counts: bool = False

    @property
    def distorted(self) -> bool:
        return self.offset_y_A is not None


#: Rows resampled at a time, so a distortion of a large image needs no full-size coordinate arrays.
RESAMPLE_ROWS = 512
#: Images at least this large draw their dose noise in parallel blocks (one random stream per block).
PARALLEL_NOISE_PIXELS = 4 * 1024 * 1024


def _resample(state: ImageState, dy_A: np.ndarray, dx_A: np.ndarray, reference: np.ndarray) -> ImageState:
    """Re-sample ``reference`` (the undistorted image) where each pixel now samples the specimen: its
    previous offset plus (dy, dx) (arrays broadcastable to the image; per-row shifts stay cheap).

    Cubic-spline interpolation (scipy's spline filter once, then ``map_coordinates`` in blocks of
    :data:`RESAMPLE_ROWS` rows).
    """
    from scipy.ndimage import spline_filter

    ny, nx = state.image.shape
    py, px = state.pixel_size_A
    off_y = np.broadcast_to(np.asarray(dy_A, np.float32), (ny, nx)).copy()
    off_x = np.broadcast_to(np.asarray(dx_A, np.float32), (ny, nx)).copy()
    if state.distorted:
        off_y += state.offset_y_A
        off_x += state.offset_x_A
    mode = "grid-wrap" if state.periodic else "nearest"
    coefficients = spline_filter(np.asarray(reference, float), order=3, mode=mode)
    image = np.empty((ny, nx), float)
    cols = np.arange(nx)[None, :]
    for i0 in range(0, ny, RESAMPLE_ROWS):
        i1 = min(ny, i0 + RESAMPLE_ROWS)
        rows = np.arange(i0, i1)[:, None]
        coords = np.stack([rows + off_y[i0:i1] / py, cols + off_x[i0:i1] / px])
        map_coordinates(coefficients, coords, order=3, mode=mode, prefilter=False, output=image[i0:i1])
    return ImageState(image, state.pixel_size_A, state.periodic, off_y, off_x, state.counts)


@dataclass
class LinearDrift:
    """Constant specimen drift during the scan (Å per scan line, fast axis x)."""

    vx_A_per_line: float = 0.0
    vy_A_per_line: float = 0.0

    def __call__(self, state: ImageState, reference: np.ndarray, rng: np.random.Generator) -> ImageState:
        rows = np.arange(state.image.shape[0], dtype=float)[:, None]
        return _resample(state, self.vy_A_per_line * rows, self.vx_A_per_line * rows, reference)


@dataclass
class NonlinearDrift:
    """Smooth random drift: a sum of low-order sinusoids in scan time, up to ``amplitude_A``."""

    amplitude_A: float = 0.0
    n_modes: int = 3

    def __call__(self, state: ImageState, reference: np.ndarray, rng: np.random.Generator) -> ImageState:
        ny, nx = state.image.shape
        t = ((np.arange(ny)[:, None] * nx + np.arange(nx)[None, :]) / (ny * nx)).astype(np.float32)
        dy = np.zeros_like(t)
        dx = np.zeros_like(t)
        for k in range(1, self.n_modes + 1):
            a, b = rng.normal(0, self.amplitude_A / self.n_modes, 2)
            phase_a, phase_b = rng.uniform(0, 2 * np.pi, 2)
            dy += a * np.sin(np.pi * k * t + phase_a)
            dx += b * np.sin(np.pi * k * t + phase_b)
        return _resample(state, dy, dx, reference)


@dataclass
class Flyback:
    """Scan flyback: after each line's flyback the beam lags at the start of the next line and settles.

    Every row samples the specimen displaced along the fast axis by ``amplitude_A · exp(−x / length_A)``
    (x from the start of the line): the first columns of the image are stretched, the rest is not
    (the distortion that a too-short flyback delay leaves; its decay length of a few nm is the scan
    coil's settling time times the scan speed).
    """

    amplitude_A: float = 0.0
    length_A: float = 15.0

    def __call__(self, state: ImageState, reference: np.ndarray, rng: np.random.Generator) -> ImageState:
        x_A = np.arange(state.image.shape[1]) * state.pixel_size_A[1]
        return _resample(state, np.zeros((1, 1)), (self.amplitude_A * np.exp(-x_A / self.length_A))[None, :],
                         reference)


@dataclass
class ScanJitter:
    """Random shift of each scan line along the fast axis (Gaussian, ``sigma_A``)."""

    sigma_A: float = 0.0

    def __call__(self, state: ImageState, reference: np.ndarray, rng: np.random.Generator) -> ImageState:
        ny, nx = state.image.shape
        shifts = rng.normal(0, self.sigma_A, ny)[:, None]
        if state.periodic and not state.distorted:
            return _shift_rows_periodic(state, shifts[:, 0], reference)
        return _resample(state, np.zeros((1, 1)), shifts, reference)


def _shift_rows_periodic(state: ImageState, shifts_A: np.ndarray, reference: np.ndarray) -> ImageState:
    """:func:`_resample` for a periodic image whose rows are only shifted along x (scan jitter on an
    undistorted image), as a 4-tap filter per row.

    Equal to the general 2-D cubic-spline resampling (at integer row coordinates the tensor-product
    spline reduces to the 1-D spline of that row; tested), at a quarter of the taps: a training twin
    spends most of its imperfection time here.
    """
    from scipy.ndimage import spline_filter1d

    ny, nx = state.image.shape
    s = np.asarray(shifts_A, float) / state.pixel_size_A[1]
    whole = np.floor(s)
    t = (s - whole)[:, None]
    weights = ((1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6)
    coefficients = spline_filter1d(np.asarray(reference, float), order=3, axis=1, mode="grid-wrap")
    whole = whole.astype(np.int64)
    image = np.empty((ny, nx))
    # rows that share the whole-pixel part of their shift read the same four column windows of their
    # periodically continued coefficients (slices, no index arrays); jitter gives few such groups
    for w in np.unique(whole):
        rows = np.flatnonzero(whole == w)
        for r0 in range(0, len(rows), RESAMPLE_ROWS):
            block = rows[r0 : r0 + RESAMPLE_ROWS]
            c = np.roll(coefficients[block], -((w - 1) % nx), axis=1)  # first tap at column 0
            window = np.pad(c, ((0, 0), (0, 3)), mode="wrap")  # the three further taps
            tw = [wk[block] for wk in weights]
            out = tw[0] * window[:, 0:nx]
            for k in (1, 2, 3):
                out += tw[k] * window[:, k : k + nx]
            image[block] = out
    off_x = np.broadcast_to(np.asarray(shifts_A, np.float32)[:, None], (ny, nx)).copy()
    return ImageState(image, state.pixel_size_A, state.periodic, np.zeros((ny, nx), np.float32), off_x,
                      state.counts)


@dataclass
class Contamination:
    """Low-frequency additive background (hydrocarbon contamination).

    ``level`` is its standard deviation relative to the mean image intensity;
    ``length_A`` its correlation length.
    """

    level: float = 0.0
    length_A: float = 20.0

    def __call__(self, state: ImageState, rng: np.random.Generator) -> ImageState:
        if self.level <= 0:
            return state
        field_ = gaussian_filter(rng.normal(size=state.image.shape),
                                 (self.length_A / state.pixel_size_A[0], self.length_A / state.pixel_size_A[1]),
                                 mode="wrap")
        field_ = (field_ - field_.min()) / max(np.ptp(field_), 1e-12)  # 0..1, never negative
        field_ *= self.level * float(state.image.mean()) / max(field_.std(), 1e-12)
        state.image = state.image + field_
        return state


@dataclass
class ProbeCurrentVariation:
    """Scan-line gain fluctuations of relative size ``relative_sigma`` (random walk, smoothed)."""

    relative_sigma: float = 0.0

    def __call__(self, state: ImageState, rng: np.random.Generator) -> ImageState:
        if self.relative_sigma <= 0:
            return state
        ny = state.image.shape[0]
        walk = gaussian_filter(rng.normal(size=ny), 2.0)
        walk = walk / max(walk.std(), 1e-12) * self.relative_sigma
        state.image = state.image * np.clip(1.0 + walk, 0.0, None)[:, None]
        return state


@dataclass
class PoissonDose:
    """Shot noise for an electron dose in e/Å² (the image must be in fraction of the beam).

    Counts per pixel are Poisson with mean ``image × dose × pixel area``; the
    result is in detected electrons.
    """

    dose_e_per_A2: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.dose_e_per_A2) and self.dose_e_per_A2 > 0):
            raise ValueError(f"dose must be a positive number of e/Å², got {self.dose_e_per_A2}")

    def expected_counts(self, state: ImageState) -> np.ndarray:
        return np.clip(state.image, 0, None) * self.dose_e_per_A2 * state.pixel_size_A[0] * state.pixel_size_A[1]

    def __call__(self, state: ImageState, rng: np.random.Generator) -> ImageState:
        # in blocks of rows, so a large image never holds float64 expectations and int64 counts whole
        scale = self.dose_e_per_A2 * state.pixel_size_A[0] * state.pixel_size_A[1]
        out = np.empty(state.image.shape, np.float32)
        starts = range(0, state.image.shape[0], RESAMPLE_ROWS)
        if state.image.size < PARALLEL_NOISE_PIXELS:
            for i0 in starts:
                block = slice(i0, i0 + RESAMPLE_ROWS)
                out[block] = rng.poisson(np.clip(state.image[block], 0, None) * scale)
        else:
            # one child stream per block of rows (numpy's SeedSequence spawning), drawn in threads: numpy
            # releases the GIL while sampling, and the result does not depend on the number of threads
            from concurrent.futures import ThreadPoolExecutor

            from .render import default_threads

            streams = rng.spawn(len(starts))

            def draw(k: int) -> None:
                block = slice(starts[k], starts[k] + RESAMPLE_ROWS)
                out[block] = streams[k].poisson(np.clip(state.image[block], 0, None) * scale)

            with ThreadPoolExecutor(default_threads() or os.cpu_count() or 1) as pool:
                list(pool.map(draw, range(len(starts))))
        state.image = out
        state.counts = True
        return state


@dataclass
class ReadNoise:
    """Additive Gaussian detector noise with standard deviation ``sigma`` (in counts after dose)."""

    sigma: float = 0.0

    def __call__(self, state: ImageState, rng: np.random.Generator) -> ImageState:
        if self.sigma > 0:
            state.image = state.image + rng.normal(0, self.sigma, state.image.shape)
        return state


@dataclass
class Imperfections:
    """All imperfections of one twin, with neutral defaults (a perfect microscope)."""

    dose_e_per_A2: float | None = None
    read_noise: float = 0.0
    scan_jitter_A: float = 0.0
    drift_A_per_line: tuple[float, float] = (0.0, 0.0)  # (x, y)
    nonlinear_drift_A: float = 0.0
    contamination: float = 0.0
    contamination_length_A: float = 20.0
    #: Fraction of the field covered by patches of amorphous carbon on the layer (0: none), and the
    #: carbon atoms per Å² in a patch (1.0 ≈ 1 nm at 2 g/cm³: 2.0 / 12.011 g/mol · N_A = 0.10 atoms/Å³).
    #: Patches have the correlation length ``contamination_length_A``; their atoms are imaged by the
    #: fast mode (see :func:`amorphous_carbon`).
    amorphous_carbon_coverage: float = 0.0
    amorphous_carbon_atoms_per_A2: float = 1.0
    probe_current_variation: float = 0.0
    #: Scan flyback: the start of each line displaced by this much along the fast axis (Å), decaying
    #: over 15 Å (:class:`Flyback`).
    flyback_A: float = 0.0
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def apply_imperfections(image: np.ndarray, pixel_size_A: tuple[float, float], periodic: bool,
                        settings: Imperfections, rng: np.random.Generator) -> ImageState:
    """Apply ``settings`` to a noise-free image; returns the state with the distortion map."""
    state = ImageState(np.asarray(image, dtype=float), pixel_size_A, periodic)
    reference = state.image
    geometric = []
    if any(settings.drift_A_per_line):
        geometric.append(LinearDrift(settings.drift_A_per_line[0], settings.drift_A_per_line[1]))
    if settings.nonlinear_drift_A > 0:
        geometric.append(NonlinearDrift(settings.nonlinear_drift_A))
    if settings.flyback_A:
        geometric.append(Flyback(settings.flyback_A))
    if settings.scan_jitter_A > 0:
        geometric.append(ScanJitter(settings.scan_jitter_A))
    for transform in geometric:
        state = transform(state, reference, rng)
    state = Contamination(settings.contamination, settings.contamination_length_A)(state, rng)
    state = ProbeCurrentVariation(settings.probe_current_variation)(state, rng)
    if settings.dose_e_per_A2 is not None:
        state = PoissonDose(settings.dose_e_per_A2)(state, rng)
    state = ReadNoise(settings.read_noise)(state, rng)
    return state


def distorted_positions(state: ImageState, x_A: np.ndarray, y_A: np.ndarray, iterations: int = 8):
    """Where true specimen positions appear in the distorted image (Å, image frame).

    Inverts the pixel → specimen map by fixed-point iteration (distortions are
    smooth and small).
    """
    x_A, y_A = np.asarray(x_A, float), np.asarray(y_A, float)
    if not state.distorted:
        return x_A.copy(), y_A.copy()
    py, px = state.pixel_size_A
    offset_y, offset_x = state.offset_y_A, state.offset_x_A
    u, v = x_A.copy(), y_A.copy()
    mode = "grid-wrap" if state.periodic else "nearest"
    for _ in range(iterations):
        coords = np.array([v / py, u / px])
        oy = map_coordinates(offset_y, coords, order=1, mode=mode)
        ox = map_coordinates(offset_x, coords, order=1, mode=mode)
        u_new, v_new = x_A - ox, y_A - oy
        converged = len(u) == 0 or max(np.abs(u_new - u).max(), np.abs(v_new - v).max()) < 1e-6
        u, v = u_new, v_new
        if converged:
            break
    return u, v


def patch_mask(shape: tuple[int, int], pixel_size_A: tuple[float, float], coverage: float, length_A: float,
               periodic: bool, rng: np.random.Generator) -> np.ndarray:
    """Random blobs covering ``coverage`` of the field: smooth Gaussian noise of correlation length
    ``length_A`` above its (1 − coverage) quantile."""
    field_ = gaussian_filter(rng.normal(size=shape), (length_A / pixel_size_A[0], length_A / pixel_size_A[1]),
                             mode="wrap" if periodic else "reflect")
    return field_ > np.quantile(field_, 1.0 - coverage)


def amorphous_carbon(mask: np.ndarray, pixel_size_A: tuple[float, float], atoms_per_A2: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Positions (x, y in Å) of carbon atoms scattered uniformly over the ``mask`` pixels: a Poisson number
    with mean ``atoms_per_A2`` × the masked area; no order, as in amorphous carbon."""
    py, px = pixel_size_A
    rows, cols = np.nonzero(mask)
    n = rng.poisson(atoms_per_A2 * len(rows) * py * px)
    pick = rng.integers(0, len(rows), n) if len(rows) else np.zeros(0, int)
    x = (cols[pick] + rng.uniform(-0.5, 0.5, n)) * px
    y = (rows[pick] + rng.uniform(-0.5, 0.5, n)) * py
    return x, y
