"""The hexagonal lattice of an MX2 image: FFT estimate, least-squares fit, ideal sites.

In projection along c, 2H-MX2 is a honeycomb: metal columns on one
triangular sublattice, chalcogen columns on the other, shifted by
(1/3, 2/3) of the cell.  Vacant sites have no intensity peak, so sites are
generated from the fitted lattice rather than only from detected peaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, maximum_filter

__all__ = ["LatticeFit", "fft_lattice_spacing_px", "fit_lattice", "ideal_sites"]


@dataclass
class LatticeFit:
    """A fitted 2-D hexagonal lattice, in pixel units (x, y order).

    Attributes
    ----------
    a1, a2 : ndarray (2,)
        Primitive vectors in pixels (x, y).
    origin : ndarray (2,)
        Position of one sublattice-A column in pixels (x, y).
    offset : ndarray (2,)
        Fractional offset of sublattice B relative to A (≈ (1/3, 2/3)).
    rms_residual_px : float
        RMS distance of the matched peaks from the fitted lattice.
    n_peaks : int
    """

    a1: np.ndarray
    a2: np.ndarray
    origin: np.ndarray
    offset: np.ndarray
    rms_residual_px: float
    n_peaks: int

    @property
    def a_px(self) -> float:
        """Area-equivalent lattice constant: the a of a regular hexagonal cell of the fitted area.

        Scan distortions shear real images (one test image has 69° between its
        lattice vectors); the cell area, which sets every concentration per cm²,
        is still measured correctly, so ``a`` is reported from it.
        """
        return float(np.sqrt(self.cell_area_px2 * 2 / np.sqrt(3)))

    @property
    def cell_area_px2(self) -> float:
        return float(abs(self.a1[0] * self.a2[1] - self.a1[1] * self.a2[0]))

    @property
    def lengths_px(self) -> tuple[float, float]:
        return float(np.linalg.norm(self.a1)), float(np.linalg.norm(self.a2))

    @property
    def angle_deg(self) -> float:
        """Angle between the lattice vectors, folded to 60° ± distortion."""
        cos = np.dot(self.a1, self.a2) / (np.linalg.norm(self.a1) * np.linalg.norm(self.a2))
        angle = float(np.degrees(np.arccos(np.clip(cos, -1, 1))))
        return 180 - angle if angle > 90 else angle

    @property
    def matrix(self) -> np.ndarray:
        return np.column_stack([self.a1, self.a2])

    @property
    def rotation_deg(self) -> float:
        angle = float(np.degrees(np.arctan2(self.a1[1], self.a1[0])) % 60)
        return angle - 60 if angle > 30 else angle


def fft_lattice_spacing_px(image: np.ndarray, a_px_range: tuple[float, float] | None = None
                           ) -> tuple[float, np.ndarray]:
    """Lattice constant (pixels) from the first-order ring of the power spectrum.

    For a hexagonal lattice the first-order spots lie at |g| = 2 / (a √3). ``a_px_range`` (from a
    calibration, a factor of two either side of the expected constant) keeps the search to spots a
    lattice of such a constant can give: a blurred probe damps the first-order spots until the
    low-frequency power of scan noise and contamination is stronger (a 0.8 Å source at 0.2 Å/px
    otherwise gives a = 137 px instead of 16).

    Returns
    -------
    a_px, g_vectors
        The lattice constant and the reciprocal vectors (cycles per pixel,
        (x, y)) of the six strongest first-order spots.
    """
    # |fftshift(fft2((img - mean) · window))|², one full-size array at a time (a 8613² image held ~5 GB of
    # float64 and complex copies here; each step frees the last), in the image's own precision: a float32
    # image gives a complex64 spectrum (scipy.fft keeps single precision; numpy's is complex128, 1.2 GB there)
    from scipy import fft as sp_fft

    from .columns import real_image

    img = np.array(real_image(image))  # a copy: centred and windowed in place
    img -= img.mean()
    ny, nx = img.shape
    img *= np.hanning(ny).astype(img.dtype)[:, None]
    img *= np.hanning(nx).astype(img.dtype)[None, :]
    spectrum = sp_fft.fft2(img, workers=-1)
    del img
    power = np.abs(spectrum)
    del spectrum
    power **= 2
    power = np.fft.fftshift(power)
    fy = np.fft.fftshift(np.fft.fftfreq(ny))
    fx = np.fft.fftshift(np.fft.fftfreq(nx))
    radius = np.hypot(fx.astype(np.float32)[None, :], fy.astype(np.float32)[:, None])
    # ignore the low-frequency background (contamination, gain) and everything beyond Nyquist/√2
    min_g = 4.0 / min(ny, nx)
    valid = (radius > min_g) & (radius < 0.45)
    if a_px_range is not None:
        lo, hi = (2.0 / (np.sqrt(3) * a) for a in (max(a_px_range), min(a_px_range)))
        valid &= (radius >= lo) & (radius <= hi)
    smooth = gaussian_filter(power, 1.0)
    peaks = (smooth == maximum_filter(smooth, size=5)) & valid
    idx = np.flatnonzero(peaks.ravel())
    if len(idx) < 6:
        raise ValueError("no lattice found in the image's power spectrum; is this an atomic-resolution image?")
    strength = smooth.ravel()[idx]
    top = idx[np.argsort(strength)[::-1][:24]]
    r_top = radius.ravel()[top]
    s_top = smooth.ravel()[top]
    # the first-order ring: the innermost radius that holds strong spots
    strong = s_top > 0.2 * s_top.max()
    g1 = np.min(r_top[strong])
    ring = top[(np.abs(r_top - g1) < 0.12 * g1) & strong]
    vecs = []
    for k in ring:
        i, j = np.unravel_index(k, power.shape)
        # parabolic sub-pixel refinement of the spot
        di = _parabola(np.log(smooth[i - 1 : i + 2, j] + 1e-30)) if 0 < i < ny - 1 else 0.0
        dj = _parabola(np.log(smooth[i, j - 1 : j + 2] + 1e-30)) if 0 < j < nx - 1 else 0.0
        vecs.append((fx[j] + dj / nx, fy[i] + di / ny))
    vecs = np.array(vecs)
    g = float(np.median(np.hypot(vecs[:, 0], vecs[:, 1])))
    return 2.0 / (np.sqrt(3) * g), vecs


def _parabola(values: np.ndarray) -> float:
    a, b, c = values
    denom = a - 2 * b + c
    return 0.0 if denom == 0 else float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))


def _neighbour_basis(peaks_xy: np.ndarray, a_px: float) -> tuple[np.ndarray, np.ndarray]:
    from scipy.spatial import cKDTree

    tree = cKDTree(peaks_xy)
    pairs = tree.query_pairs(1.25 * a_px, output_type="ndarray")
    vec = peaks_xy[pairs[:, 1]] - peaks_xy[pairs[:, 0]]
    length = np.hypot(vec[:, 0], vec[:, 1])
    vec = vec[(length > 0.8 * a_px) & (length < 1.25 * a_px)]
    if len(vec) < 6:
        return np.array([a_px, 0.0]), np.array([a_px / 2, a_px * np.sqrt(3) / 2])
    # fold the six directions onto one 60° sector, find the dominant angle
    angle = np.arctan2(vec[:, 1], vec[:, 0])
    folded = np.mod(angle, np.pi / 3)
    hist, edges = np.histogram(folded, bins=60, range=(0, np.pi / 3))
    hist = hist + np.roll(hist, 1) + np.roll(hist, -1)
    theta0 = edges[np.argmax(hist)] + (edges[1] - edges[0]) / 2
    basis = []
    for k in (0, 1):
        direction = theta0 + k * np.pi / 3
        d = np.angle(np.exp(1j * (angle - direction)))
        d_opposite = np.angle(np.exp(1j * (angle - direction - np.pi)))
        sel = np.abs(d) < np.radians(8)
        sel_opp = np.abs(d_opposite) < np.radians(8)
        members = np.vstack([vec[sel], -vec[sel_opp]])
        basis.append(np.median(members, axis=0) if len(members) else
                     a_px * np.array([np.cos(direction), np.sin(direction)]))
    return basis[0], basis[1]


def fit_lattice(peaks_xy: np.ndarray, a_px_guess: float, g_vectors: np.ndarray | None = None) -> LatticeFit:
    """Fit a honeycomb (two offset triangular sublattices) to detected column positions.

    Parameters
    ----------
    peaks_xy : ndarray (n, 2)
        Column positions in pixels (x, y).
    a_px_guess : float
        Lattice constant estimate in pixels (e.g. from :func:`fft_lattice_spacing_px`).
    g_vectors : ndarray, optional
        Reciprocal vectors from the FFT, used to orient the first guess.
    """
    peaks_xy = np.asarray(peaks_xy, float)
    if len(peaks_xy) < 6:
        raise ValueError(f"only {len(peaks_xy)} atomic columns found; cannot fit a lattice")
    # first guess of a1, a2: the commonest vectors between columns about one lattice constant
    # apart (same-sublattice neighbours), which is robust to noise peaks and missing columns
    a1, a2 = _neighbour_basis(peaks_xy, a_px_guess)
    centre = peaks_xy.mean(axis=0)
    origin = peaks_xy[np.argmin(np.linalg.norm(peaks_xy - centre, axis=1))]
    # sublattice B sits at (1/3, 1/3) of a 60° basis, (1/3, 2/3) of a 120° one
    obtuse = float(np.dot(a1, a2)) < 0
    offset = np.array([1 / 3, 2 / 3]) if obtuse else np.array([1 / 3, 1 / 3])
    radius_from_origin = np.linalg.norm(peaks_xy - origin, axis=1)
    # grow the fitted region outwards so that a slightly wrong first guess of the
    # lattice vectors cannot mis-index columns far from the origin
    for reach in (4, 6, 9, 14, 22, 35, 60, np.inf, np.inf):
        A = np.column_stack([a1, a2])
        frac = np.linalg.solve(A, (peaks_xy - origin).T).T
        # assign each peak to sublattice A (offset 0), B (+offset) or B' (−offset)
        cands = np.stack([np.zeros(2), offset, -offset])
        resid = [(frac - c) - np.round(frac - c) for c in cands]
        dist = np.stack([np.linalg.norm(r @ A.T, axis=1) for r in resid], axis=1)
        which = np.argmin(dist, axis=1)
        near = radius_from_origin <= reach * a_px_guess
        if ((which == 2) & near).sum() > ((which == 1) & near).sum():  # B sits at −offset: flip
            offset = -offset
            which = np.where(which == 2, 1, np.where(which == 1, 2, which))
            dist = dist[:, [0, 2, 1]]
        good = (dist[np.arange(len(frac)), which] < 0.25 * a_px_guess) & (radius_from_origin <= reach * a_px_guess)
        sub = np.where(which == 0, 0, 1)
        shift = np.where(sub[:, None] == 1, offset, 0.0)
        n = np.round(frac - shift)
        # linear least squares for origin, a1, a2 (and the B offset in pixels)
        rows = []
        rhs = []
        for k in np.flatnonzero(good):
            for axis in range(2):
                row = np.zeros(8)
                row[axis] = 1.0  # origin
                row[2 + axis] = n[k, 0]
                row[4 + axis] = n[k, 1]
                if sub[k] == 1:
                    row[6 + axis] = 1.0
                rows.append(row)
                rhs.append(peaks_xy[k, axis])
        sol, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
        origin, a1, a2, delta = sol[0:2], sol[2:4], sol[4:6], sol[6:8]
        A = np.column_stack([a1, a2])
        offset = np.linalg.solve(A, delta)
        fitted = origin + n @ A.T + np.where(sub[:, None] == 1, delta, 0.0)
        residual = np.linalg.norm(fitted[good] - peaks_xy[good], axis=1)
        if reach == np.inf and residual.size and np.sqrt(np.mean(residual**2)) < 1e-6:
            break
    return LatticeFit(a1=a1, a2=a2, origin=origin, offset=offset,
                      rms_residual_px=float(np.sqrt(np.mean(residual**2))), n_peaks=int(good.sum()))


def ideal_sites(fit: LatticeFit, shape: tuple[int, int], margin_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Every site of both sublattices inside the image, at least ``margin_px`` from the edges.

    Returns
    -------
    xy : ndarray (n, 2)
        Positions in pixels (x, y).
    sublattice : ndarray (n,)
        0 for sublattice A (the one holding ``origin``), 1 for B.
    """
    ny, nx = shape
    A = fit.matrix
    corners = np.array([[0, 0], [nx, 0], [0, ny], [nx, ny]], float) - fit.origin
    frac = np.linalg.solve(A, corners.T).T
    lo = np.floor(frac.min(axis=0)) - 1
    hi = np.ceil(frac.max(axis=0)) + 1
    n1, n2 = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    grid = np.column_stack([n1.ravel(), n2.ravel()])
    xy_a = fit.origin + grid @ A.T
    xy_b = fit.origin + (grid + fit.offset) @ A.T
    xy = np.vstack([xy_a, xy_b])
    sub = np.concatenate([np.zeros(len(xy_a), int), np.ones(len(xy_b), int)])
    inside = (xy[:, 0] >= margin_px) & (xy[:, 1] >= margin_px) & (xy[:, 0] <= nx - 1 - margin_px) & (
        xy[:, 1] <= ny - 1 - margin_px)
    return xy[inside], sub[inside]
