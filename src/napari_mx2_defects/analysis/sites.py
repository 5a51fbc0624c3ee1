"""Per-site measurement of an MX2 image: lattice → every M and X site → normalised intensity → class.

Sites are measured by their integrated intensity, normalised so that the
median chalcogen column is 1.0.  The expected level of every site type
(X2, X1 = one chalcogen missing, empty X, M, empty M, substitutions) comes
from a forward model: a fast-mode twin of the same parent with each defect,
imaged at the same pixel size and optics, blurred and made as noisy as the
image, and measured by exactly this code.  :mod:`.classes` turns levels and
intensities into classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..twin.parents import Parent
from .columns import find_peaks, integrated_intensity, local_background, real_image
from .lattice import LatticeFit, fft_lattice_spacing_px, fit_lattice, ideal_sites

__all__ = [
    "SITE_CLASSES",
    "ForwardModel",
    "column_profile",
    "column_rings",
    "relative_noise",
    "fit_source_size",
    "profile_misfit",
    "forward_model",
    "microscope_for",
    "SiteMeasurement",
    "find_holes",
    "measure_sites",
    "left_out",
    "measure_twin_sites",
    "reference_levels",
    "FIELD_NEIGHBOURS",
    "follow_the_field",
]

#: Classes told apart by site intensity, per sublattice.  Interstitials and adatoms
#: sit off the lattice sites and are left to the segmentation model.
SITE_CLASSES = {"X": ["V_XX", "V_X", "", "S_X", "M_X"], "M": ["V_M", "X_M", "", "TM_D"]}


@dataclass
class SiteMeasurement:
    """Sites of one image with their normalised intensities."""

    sites: pd.DataFrame  # x_px, y_px, sublattice, intensity_raw, intensity, peak_found, x/y_ideal_px
    fit: LatticeFit
    a_px: float
    fft_a_px: float
    notes: list[str] = field(default_factory=list)


def left_out(sites: pd.DataFrame) -> np.ndarray:
    """Sites the counts and the class fits leave out: on amorphous contamination (``in_contamination``)
    or where the flake is not the parent's monolayer (``in_other_phase``: a bi-/trilayer or another
    phase, :mod:`.phases`); an analysis that mapped neither leaves none out."""
    out = np.zeros(len(sites), bool)
    for column in ("in_contamination", "in_other_phase"):
        if column in sites:
            out |= sites[column].to_numpy(bool)
    return out


def _nn_px(a_px: float) -> float:
    return a_px / np.sqrt(3)


def measure_sites(image: np.ndarray, a_px_hint: float | None, m_brighter: bool | None,
                  border_px: float, true_metal_xy: np.ndarray | None = None) -> SiteMeasurement:
    """Find the lattice and measure every M and X site.

    Parameters
    ----------
    image : 2-D array
    a_px_hint : float, optional
        Expected lattice constant in pixels (from a calibration); the FFT value is used if None.
    m_brighter : bool, optional
        Whether metal columns are brighter than chalcogen columns (from the
        forward model); ignored when ``true_metal_xy`` is given.
    border_px : float
        Sites closer than this to the edge are not analysed.
    true_metal_xy : ndarray, optional
        Known metal positions (pixels), used for the forward-model twin.
    """
    img = real_image(image)
    notes = []
    fft_a, g = fft_lattice_spacing_px(img, None if a_px_hint is None else (0.5 * a_px_hint, 2.0 * a_px_hint))
    a_px = fft_a
    if a_px_hint is not None and abs(fft_a - a_px_hint) > 0.15 * a_px_hint:
        notes.append(
            f"FFT lattice constant {fft_a:.2f} px differs from the expected {a_px_hint:.2f} px by "
            f"{100 * (fft_a / a_px_hint - 1):+.0f} %: check the pixel size"
        )
    nn = _nn_px(a_px)
    flat = local_background(img, a_px)
    np.subtract(img, flat, out=flat)  # image − background, in the background's array
    peaks = find_peaks(flat, min_distance_px=0.6 * nn, smooth_px=max(0.5, 0.12 * a_px), threshold_rel=0.1)
    fit = fit_lattice(peaks, a_px, g)
    _check_second_sublattice(fit, flat)
    xy, sub = ideal_sites(fit, img.shape, border_px)
    if len(xy) == 0:
        raise ValueError("no lattice site lies inside the analysed area; the image is too small for its border")
    # snap to a detected peak when one is close, else keep the ideal position (vacancies)
    tree = cKDTree(peaks)
    dist, idx = tree.query(xy)
    found = dist < 0.3 * nn
    pos = np.where(found[:, None], peaks[np.minimum(idx, len(peaks) - 1)], xy)
    radius = 0.5 * nn
    raw = integrated_intensity(flat, pos, radius)
    # which sublattice holds the metal
    if true_metal_xy is not None:
        d_a = cKDTree(true_metal_xy).query(xy[sub == 0])[0]
        metal_is_a = np.median(d_a) < 0.3 * nn
    else:
        mean_a, mean_b = np.median(raw[sub == 0]), np.median(raw[sub == 1])
        metal_is_a = (mean_a > mean_b) == bool(m_brighter if m_brighter is not None else True)
    sublattice = np.where((sub == 0) == metal_is_a, "M", "X")
    x_raw = raw[sublattice == "X"]
    norm = np.median(x_raw)
    if not np.isfinite(norm) or norm <= 0:
        raise ValueError("chalcogen columns have no intensity above background; is the contrast inverted?")
    sites = pd.DataFrame({
        "x_px": pos[:, 0], "y_px": pos[:, 1], "sublattice": sublattice,
        "intensity_raw": raw, "intensity": raw / norm, "peak_found": found,
        "x_ideal_px": xy[:, 0], "y_ideal_px": xy[:, 1],  # on the fitted lattice (strain, displacements)
    })
    return SiteMeasurement(sites=sites, fit=fit, a_px=float(fit.a_px), fft_a_px=float(fft_a), notes=notes)


#: Columns of the same sublattice whose median is a column's local intact level (:func:`follow_the_field`).
#: The median of N intact columns scatters by ≈ 1.25 σ/√N: at 96 that widens the intact peak by < 1 %, and
#: dopants or vacancies up to a third of a neighbourhood leave the median on the intact peak.  96 columns of
#: one sublattice cover a disc of ≈ 5.5 lattice constants radius (18 Å in WSe2): a drift slower than that is
#: followed.  On the real Ti:WSe2 scan any count from 32 to 300 gave the same Ti F1 within 0.01
#: (docs/real_data.md), so the value is set by the noise argument, not by that scan.
FIELD_NEIGHBOURS = 96
#: Sites per block of the nearest-neighbour query (memory ∝ block × neighbours).
_FIELD_BLOCK = 32_768


def follow_the_field(sites: pd.DataFrame, reference: np.ndarray | None = None,
                     neighbours: int = FIELD_NEIGHBOURS) -> dict:
    """Measure each column against its own neighbourhood of the same sublattice (in place).

    A slow drift of intensity across the field — contamination, thickness, scan, detector gain — moves
    whole neighbourhoods together; one global level per sublattice reads the dim side's intact columns as
    light dopants or vacancies (on a real Ti-doped WSe2 scan W's 5th percentile sat at 0.72 of its median
    and 40 % of the "Ti" the physics named were intact W).  Here each site's ``intensity`` becomes
    ``intensity_raw`` divided by the median ``intensity_raw`` of its :data:`FIELD_NEIGHBOURS` nearest
    ``reference`` sites of the same sublattice (a robust local intact level: defects are a minority), times
    that sublattice's global median, over the chalcogen one — so the intact chalcogen column is still 1 and
    the intact M/X2 ratio the image's own.  ``local_level`` keeps each site's local level relative to its
    sublattice's median (the drift map).  ``reference`` (default: every site) leaves out sites that are no
    guide to the intact level (contamination, another phase).  Returns what ``lattice.json`` records.
    """
    raw = sites.intensity_raw.to_numpy(float)
    sub = sites.sublattice.to_numpy()
    xy = sites[["x_px", "y_px"]].to_numpy(float)
    reference = np.ones(len(sites), bool) if reference is None else np.asarray(reference, bool)
    x_ref = reference & (sub == "X")
    if x_ref.sum() < 10:
        return {"applied": False, "why": "fewer than 10 chalcogen columns to take a level from"}
    x_median = float(np.median(raw[x_ref]))
    intensity = raw / x_median
    level = np.ones(len(sites))
    record: dict = {"applied": True, "neighbours": int(neighbours), "drift_p5_p95": {}, "radius_px": {}}
    for name in ("M", "X"):
        mine, ref = sub == name, reference & (sub == name)
        if ref.sum() < 10 or not mine.any():
            continue
        k = int(min(neighbours, ref.sum()))
        values = raw[ref]
        tree = cKDTree(xy[ref])
        local = np.empty(int(mine.sum()))
        reach = np.empty_like(local)
        points = xy[mine]
        for start in range(0, len(points), _FIELD_BLOCK):
            d, idx = tree.query(points[start:start + _FIELD_BLOCK], k=k, workers=-1)
            idx = idx.reshape(len(idx), -1)
            local[start:start + len(idx)] = np.median(values[idx], axis=1)
            reach[start:start + len(idx)] = np.asarray(d).reshape(len(idx), -1)[:, -1]
        median = float(np.median(values))
        ok = np.isfinite(local) & (local > 0)
        rel = np.where(ok, local / median, 1.0)
        level[mine] = rel
        intensity[mine] = raw[mine] / rel / x_median
        record["drift_p5_p95"][name] = [float(v) for v in np.percentile(rel, [5, 95])]
        record["radius_px"][name] = float(np.median(reach))
    sites["intensity"] = intensity
    sites["local_level"] = level
    return record


def _check_second_sublattice(fit: LatticeFit, flat: np.ndarray) -> None:
    """Put sublattice B where the image is bright, not on the empty hollow sites.

    When one sublattice is much dimmer than the other (S2 beside W), few of its columns pass the
    peak threshold and the fitted offset is unreliable; of the two honeycomb positions (+o, −o)
    the chalcogen sits on the brighter one, the hollow site on the darker.
    """
    from scipy.ndimage import map_coordinates

    obtuse = float(np.dot(fit.a1, fit.a2)) < 0
    theory = np.array([1 / 3, 2 / 3]) if obtuse else np.array([1 / 3, 1 / 3])
    fitted = fit.offset
    # the fitted offset if it is a honeycomb position, else the theoretical one
    base = fitted if min(np.linalg.norm((fitted - t) - np.round(fitted - t)) for t in (theory, -theory)) < 0.08 \
        else theory
    ny, nx = flat.shape
    n1, n2 = np.meshgrid(np.arange(-6, 7), np.arange(-6, 7), indexing="ij")
    cells = np.column_stack([n1.ravel(), n2.ravel()])
    means = []
    for candidate in (base, -base):
        pts = fit.origin + (cells + candidate) @ fit.matrix.T
        ok = (pts[:, 0] >= 0) & (pts[:, 1] >= 0) & (pts[:, 0] < nx) & (pts[:, 1] < ny)
        means.append(float(np.mean(map_coordinates(flat, [pts[ok, 1], pts[ok, 0]], order=1))) if ok.any() else -np.inf)
    fit.offset = base if means[0] >= means[1] else -base


def find_holes(sites: pd.DataFrame, classes: np.ndarray, a_px: float, min_sites: int = 4) -> np.ndarray:
    """Sites in beam-damage holes: connected groups of ≥ ``min_sites`` empty sites on both sublattices."""
    empty = np.isin(classes, ["V_XX", "V_M"])
    in_hole = np.zeros(len(sites), bool)
    idx = np.flatnonzero(empty)
    if len(idx) < min_sites:
        return in_hole
    xy = sites[["x_px", "y_px"]].to_numpy()[idx]
    pairs = cKDTree(xy).query_pairs(1.2 * _nn_px(a_px), output_type="ndarray")
    from scipy.sparse import coo_matrix

    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(idx), len(idx))) if len(
        pairs) else coo_matrix((len(idx), len(idx)))
    n, labels = connected_components(graph, directed=False)
    subl = sites.sublattice.to_numpy()[idx]
    for comp in range(n):
        members = labels == comp
        if members.sum() >= min_sites and {"M", "X"} <= set(subl[members]):
            in_hole[idx[members]] = True
    return in_hole


@dataclass(frozen=True)
class ForwardModel:
    """What the forward-model twin says about each site type of a parent at given optics.

    ``levels[sublattice][class]``: expected normalised intensity; ``m_brighter``: whether metal
    columns outshine chalcogen columns; ``compositions[sublattice][class]``: atomic numbers of the
    atoms in that site's column in the twin (used to re-scale levels to the image's own Z contrast,
    :func:`~.classes.z_contrast_levels`); ``profiles[sublattice]``: the intact columns' radial
    profile (:func:`column_profile`), against which the image's blur is fitted; ``microscope``: the
    optics the twin was imaged with.
    """

    levels: dict
    m_brighter: bool
    compositions: dict
    profiles: dict = field(default_factory=dict)
    microscope: object = None


def reference_levels(parent_key: str, pixel_size_A: float, energy_keV: float,
                     dopant: str | None = None) -> tuple[dict[str, dict[str, float]], bool]:
    """Expected normalised intensity of each site type, from a noise-free fast-mode twin.

    Returns
    -------
    levels, m_brighter
        ``levels[sublattice][class]`` and whether metal columns outshine chalcogen columns.
    """
    from ..twin.microscope import Microscope

    model = forward_model(parent_key, pixel_size_A, Microscope(energy_keV=float(energy_keV)), dopant)
    return model.levels, model.m_brighter


def microscope_for(energy_keV: float, optics: dict | None = None):
    """The forward model's microscope: the defaults, with the beam energy and whatever optics the file
    records (convergence semi-angle, detector inner/outer angles) — so an ADF image is modelled as ADF."""
    from ..twin.microscope import Microscope

    optics = optics or {}
    kwargs = {"energy_keV": float(energy_keV)}
    for key, name in (("convergence_semiangle_mrad", "semiangle_mrad"), ("detector_inner_mrad", "detector_inner_mrad"),
                      ("detector_outer_mrad", "detector_outer_mrad")):
        value = optics.get(key)
        if value is not None and np.isfinite(value) and value > 0:
            kwargs[name] = float(value)
    try:
        microscope = Microscope(**kwargs)
    except ValueError:  # recorded angles the simulator cannot take (e.g. inner ≥ outer): the energy alone
        return Microscope(energy_keV=float(energy_keV))
    if microscope.detector_inner_mrad < microscope.semiangle_mrad:
        # the direct beam falls on the detector: bright-field (or ABF) contrast, where a column's intensity does
        # not grow with its atoms' Z (a 20–70 mrad detector at 25 mrad found no lattice in its own forward model)
        raise ValueError(f"the detector's inner angle ({microscope.detector_inner_mrad:g} mrad) lies inside the "
                         f"probe's convergence semi-angle ({microscope.semiangle_mrad:g} mrad): that is a bright-field "
                         f"signal, and the site physics models annular dark field; give the angles of an ADF or "
                         f"HAADF detector (inner above {microscope.semiangle_mrad:g} mrad)")
    return microscope


#: Radii (in units of the projected M–X distance) of the column profile's rings. They reach the three
#: neighbouring columns of the other sublattice, across the saddle between them: within half that distance
#: the profile normalised from centre to outer ring tends to one parabola for any blur ≥ 0.6 Å (0.6, 0.8 and
#: 1.0 Å source sizes differed by ≤ 0.013 at 0.2 Å/px, MoS2, 80 kV), while blur fills the saddle.
PROFILE_RADII = np.linspace(0.0, 1.0, 13)
#: Angles per ring: the outer rings cross the neighbours' narrow peaks; with 12 angles a ring's mean would
#: alias their 12th angular harmonic, i.e. depend on the lattice's rotation against the sampling (with 36,
#: a 0.6 Å source fits 0.67 Å with the lattice at 0° and at 15°).
PROFILE_ANGLES = 36
#: Most columns a profile is averaged over (a fixed random sample above that: 13 rings × 36 angles of a
#: million-atom image's 330,000 metal columns would be 150 million interpolations for one mean shape).
PROFILE_SAMPLE = 20_000


def neighbour_centres_px(sites: pd.DataFrame) -> np.ndarray:
    """(x, y) pixels of every site on the fitted lattice, moved by the median displacement of its six
    nearest same-sublattice neighbours with a detected peak — not by its own.

    A column's own peak position follows its own shot noise: profiles averaged about noisy maxima are
    centred on noise spikes and come out sharper than the columns are (a 0.6 Å source was fitted as 0.0 at
    1e5 e/Å², 0.15 Å/px MoS2; these centres alone gave 0.48). The neighbours' median follows scan
    distortion and strain, which vary over many columns, and is independent of the column's own pixels.
    """
    ideal = sites[["x_ideal_px", "y_ideal_px"]].to_numpy(float)
    centres = ideal.copy()
    found = sites.peak_found.to_numpy(bool)
    displacement = sites[["x_px", "y_px"]].to_numpy(float) - ideal
    for sub in np.unique(sites.sublattice.to_numpy()):
        mine = sites.sublattice.to_numpy() == sub
        donors = np.flatnonzero(mine & found)
        if len(donors) < 8:
            continue
        targets = np.flatnonzero(mine)
        near = donors[cKDTree(ideal[donors]).query(ideal[targets], k=7)[1]]
        # a site with a peak of its own is its own nearest donor: skip it; otherwise the first six
        six = np.where((near[:, 0] == targets)[:, None], near[:, 1:], near[:, :6])
        centres[targets] = ideal[targets] + np.median(displacement[six], axis=1)
    return centres


def column_rings(image: np.ndarray, sites: pd.DataFrame, a_px: float, sublattice: str,
                 intact: np.ndarray | None = None) -> np.ndarray | None:
    """Mean intensity of the background-flattened image on rings about each of one sublattice's intact
    columns (:data:`PROFILE_RADII` of the projected M–X distance): one row per column, one column per
    ring; None where fewer than five columns qualify.

    Each column is centred by :func:`neighbour_centres_px` (its lattice site moved with its neighbours),
    not on its own noisy maximum. ``intact`` marks the columns to use; by default those within 15 % of the
    sublattice's median intensity (defects are rare; their columns are left out).
    """
    from scipy.ndimage import map_coordinates

    img = real_image(image)
    flat = local_background(img, a_px)
    np.subtract(img, flat, out=flat)  # image − background, in the background's array
    sel = (sites.sublattice == sublattice).to_numpy()
    if intact is None:
        med = np.median(sites.intensity[sel])
        # not also "with a detected peak": at low dose that keeps the columns whose noise happened to peak
        # near their centre, a sharper profile (a 0.6 Å source fitted as 0.09 Å at 1e4 e/Å²)
        intact = sel & (np.abs(sites.intensity.to_numpy() / med - 1) < 0.15)
    else:
        intact = sel & intact
    if intact.sum() < 5:
        return None
    xy = neighbour_centres_px(sites)[intact]
    if len(xy) > PROFILE_SAMPLE:  # a mean shape: a fixed random sample is enough, and bounds the memory
        xy = xy[np.sort(np.random.default_rng(0).choice(len(xy), PROFILE_SAMPLE, replace=False))]
    angles = np.linspace(0, 2 * np.pi, PROFILE_ANGLES, endpoint=False)
    radius = _nn_px(a_px)
    rings = []
    for r in PROFILE_RADII * radius:
        dx, dy = r * np.cos(angles), r * np.sin(angles)
        rings.append(map_coordinates(flat, [(xy[:, 1:2] + dy).ravel(), (xy[:, 0:1] + dx).ravel()], order=1,
                                     mode="nearest").reshape(len(xy), len(angles)).mean(axis=1))
    return np.stack(rings, axis=1)


def column_profile(image: np.ndarray, sites: pd.DataFrame, a_px: float, sublattice: str,
                   intact: np.ndarray | None = None) -> np.ndarray | None:
    """Mean radial profile of one sublattice's intact columns (:func:`column_rings`), from 1 at the centre
    to 0 at the projected M–X distance: the shape the probe and the source size give a column and the
    saddle to its neighbours."""
    rings = column_rings(image, sites, a_px, sublattice, intact)
    if rings is None:
        return None
    means = rings.mean(axis=0)
    span = means[0] - means[-1]
    # relative to the outer ring: an offset of the background (a minimum filter of noisy data is biased
    # low by the noise) cancels, so a noisy image and the noise-free model compare shape for shape
    return (means - means[-1]) / span if span > 0 else None


def profile_misfit(rings: np.ndarray, profile: np.ndarray | None) -> float:
    """How far a model's normalised :func:`column_profile` is from an image's :func:`column_rings`: the
    reduced χ² of the ring means against ``A · profile + B``, with the scale A and offset B fitted by
    weighted least squares (weights: each ring mean's standard error over the columns).

    Neither the image's centre ring (one sample per column, the noisiest) nor its outer ring sets the
    normalisation, and noisy rings weigh less: normalising by them made a 0.6 Å source at 1e4 e/Å² look
    like 1.0 Å on three seeds of three (this: 1.0, 0.68, 0.68)."""
    return _weighted_misfit(_ring_statistics(rings), profile)


def _ring_statistics(rings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each ring's mean over the columns (rows of :func:`column_rings`) and that mean's standard error."""
    return rings.mean(axis=0), rings.std(axis=0, ddof=1) / np.sqrt(len(rings))


def _weighted_misfit(statistics: tuple[np.ndarray, np.ndarray], profile: np.ndarray | None) -> float:
    """:func:`profile_misfit` from the ring means and standard errors (:func:`_ring_statistics`), so a fit
    over many model profiles reduces the columns once."""
    if profile is None:
        return float("inf")
    means, errors = statistics
    w = 1.0 / np.maximum(errors, 1e-9 * max(float(np.ptp(means)), 1e-12))
    design = np.column_stack([profile, np.ones_like(profile)]) * w[:, None]
    coef, *_ = np.linalg.lstsq(design, means * w, rcond=None)
    residual = design @ coef - means * w
    return float(np.sum(residual**2) / max(len(means) - 2, 1))


@lru_cache(maxsize=64)
def forward_model(parent_key: str, pixel_size_A: float, microscope, dopant: str | None = None,
                  noise_rel: float = 0.0) -> ForwardModel:
    """The forward model of :func:`reference_levels` at ``microscope``, with each site type's column composition.

    ``noise_rel`` (the image's shot noise at its mean intensity, relative: :func:`relative_noise`)
    measures the levels on :data:`NOISE_REALIZATIONS` noisy copies of the twin, because the local
    background (a minimum filter) of a noisy image is biased low and lifts every level with it: a
    noise-free model puts one missing S at 0.25 of S2 where a real image puts it at ~0.5.
    """
    from ase.data import atomic_numbers

    from ..twin.api import TwinRequest, simulate_twin
    from ..twin.parents import get_parent

    parent: Parent = get_parent(parent_key)
    pieces = ["V_X=3", "V_M=3", "X_M=3", "M_X=3", "S_X=3"]
    if parent.phase == "2H":
        pieces.append("V_XX=3")
    if dopant:
        pieces.append(f"TM_D({dopant})=3")
    twin = simulate_twin(TwinRequest(material=parent_key, defects=",".join(pieces), fov_A=45.0,
                                     pixel_size_A=float(pixel_size_A),
                                     microscope=microscope, seed=7))
    meas, labels, pooled, pooled_labels = measure_twin_sites(twin, parent.a_A, noise_rel, ("defect_class",))
    cls, pooled_cls = labels["defect_class"], pooled_labels["defect_class"]
    truth = twin.sites
    atoms = cKDTree(twin.atoms[["x_A", "y_A"]].to_numpy())
    elements = twin.atoms.element.to_numpy()
    levels: dict[str, dict[str, float]] = {}
    compositions: dict[str, dict[str, tuple[int, ...]]] = {}
    for sub, names in SITE_CLASSES.items():
        levels[sub], compositions[sub] = {}, {}
        for name in names:
            if name == "TM_D" and not dopant:
                continue
            if name == "V_XX" and parent.phase != "2H":
                continue
            sel = (pooled.sublattice.to_numpy() == sub) & (pooled_cls == name)
            if sel.any():
                levels[sub][name] = float(np.median(pooled.intensity.to_numpy()[sel]))
            site = truth[(truth.sublattice == sub) & (truth.defect_class == name)]
            if len(site):
                members = atoms.query_ball_point([site.x_A.iloc[0], site.y_A.iloc[0]], 0.3)
                compositions[sub][name] = tuple(sorted(atomic_numbers[e] for e in elements[members]))
    m_median = float(np.median(meas.sites.intensity_raw[meas.sites.sublattice == "M"]))
    x_median = float(np.median(meas.sites.intensity_raw[meas.sites.sublattice == "X"]))
    # the profile of intact columns away from the planted defects (a bright antisite's tail would lift
    # its neighbours' rings; in an image defects are rare and its own median selects the columns)
    xy = meas.sites[["x_px", "y_px"]].to_numpy()
    defective = cls != ""
    near = np.zeros(len(xy), bool)
    if defective.any():
        near = cKDTree(xy[defective]).query(xy)[0] < 1.5 * meas.a_px
    clean = (cls == "") & ~near
    profiles = {sub: column_profile(twin.image, meas.sites, meas.a_px, sub, intact=clean) for sub in ("M", "X")}
    return ForwardModel(levels, m_median > x_median, compositions, profiles, microscope)


def measure_twin_sites(twin, a_A: float, noise_rel: float, truth_columns: tuple[str, ...]):
    """A forward-model twin's sites measured as an image's are, each labelled with the truth.

    The sites of the noise-free twin, or, with ``noise_rel`` > 0, of :data:`NOISE_REALIZATIONS` noisy
    copies pooled (the minimum-filter background of a noisy image is biased low and lifts every level
    with it).  Each site is labelled, per name in ``truth_columns``, with that column of ``twin.sites``
    ("?" where no truth site lies within 0.3 of the M–X distance).  Returns ``(measurement, labels,
    pooled, pooled_labels)``: the noise-free measurement and its labels, and the pooled sites the levels
    are taken from (``realization`` says which copy each came from) with theirs.
    """
    px = twin.pixel_size_A[1]
    truth = twin.sites
    a_px = a_A / px
    metal_xy = truth.loc[truth.sublattice == "M", ["x_A", "y_A"]].to_numpy() / px
    tree = cKDTree(truth[["x_A", "y_A"]].to_numpy() / px)

    def measure(image):
        sites = measure_sites(image, a_px, None, border_px=2.0 / px, true_metal_xy=metal_xy)
        d, idx = tree.query(sites.sites[["x_px", "y_px"]].to_numpy())
        near = d < 0.3 * _nn_px(a_px)
        return sites, {c: np.where(near, truth[c].to_numpy()[idx], "?") for c in truth_columns}

    meas, labels = measure(twin.image)
    measured = [(meas.sites, labels)]
    if noise_rel > 0:
        rng = np.random.default_rng(11)
        clean_image = np.clip(twin.image, 0, None)
        scale = np.sqrt(clean_image * clean_image.mean()) * noise_rel
        measured = []
        for _ in range(NOISE_REALIZATIONS):
            noisy, noisy_labels = measure(clean_image + rng.normal(size=clean_image.shape) * scale)
            measured.append((noisy.sites, noisy_labels))
    pooled = pd.concat([m.assign(realization=k) for k, (m, _) in enumerate(measured)], ignore_index=True)
    pooled_labels = {c: np.concatenate([lab[c] for _, lab in measured]) for c in truth_columns}
    return meas, labels, pooled, pooled_labels


#: Noisy copies of the forward-model twin its levels are measured on when the image is noisy.
NOISE_REALIZATIONS = 6


#: Rows of the image :func:`relative_noise` takes at a time.
NOISE_BLOCK_ROWS = 512


def relative_noise(image: np.ndarray) -> float:
    """The image's shot noise at its mean intensity, relative to that mean (Poisson-like noise).

    From differences of neighbouring pixels along the scan lines, whose variance is twice the noise
    variance where the signal changes little from one pixel to the next (columns span ~10 pixels at
    the sizes analysed): variance ∝ intensity is fitted as the median of d² / (2 I), a gain g, and
    the relative noise at the mean μ is √(g / μ).  Rounded to two significant digits (a cache key).
    """
    img = real_image(image)
    mean = float(img.mean())
    if mean <= 0:
        return 0.0
    ratios = []  # d² / (2 I) where the signal is well above zero, a block of rows at a time
    for i0 in range(0, img.shape[0], NOISE_BLOCK_ROWS):
        block = img[i0:i0 + NOISE_BLOCK_ROWS]
        d = np.diff(block, axis=1)
        level = 0.5 * (block[:, 1:] + block[:, :-1])
        ok = level > 0.2 * mean
        ratios.append(d[ok] ** 2 / (2 * level[ok]))
    ratios = np.concatenate(ratios)
    if len(ratios) < 100:
        return 0.0
    gain = float(np.median(ratios)) / 0.4549  # median of χ²₁ is 0.4549 of its mean
    rel = float(np.sqrt(max(gain, 0.0) / mean))
    return float(f"{rel:.2g}") if rel > 0.005 else 0.0


#: Source sizes (Å, Gaussian σ) tried when fitting the image's blur: from a point source to a
#: blurred microscope (the range the issue's real instruments span, 0.2–1.0 Å, and none).
SOURCE_SIZES_A = (0.0, 0.15, 0.3, 0.45, 0.6, 0.8, 1.0)
#: A probe without aberrations replaces the nominal one only when its profile misfit is below this fraction
#: of the nominal point-source misfit: shot noise alone must not switch the optics of a twin-like image.
PROBE_SWITCH_RATIO = 0.5


def _parabola_minimum(x: Sequence[float], costs: Sequence[float], k: int) -> float:
    """The minimum of the parabola through the grid's best point ``k`` and its neighbours (``x[k]`` at an
    end of the grid or where the three points are not convex)."""
    x = np.asarray(x, float)
    if 0 < k < len(x) - 1 and np.all(np.isfinite(costs[k - 1:k + 2])):
        a, b, _ = np.polyfit(x[k - 1:k + 2], np.asarray(costs[k - 1:k + 2], float), 2)
        if a > 0:
            return float(np.clip(-b / (2 * a), x[k - 1], x[k + 1]))
    return float(x[k])


#: Bootstrap resamples of the columns behind the source size's interval (:func:`_bootstrap_interval`).
BOOTSTRAP_RESAMPLES = 200


def _bootstrap_interval(rings: np.ndarray, profiles: Sequence[np.ndarray | None], x: Sequence[float]) -> list[float]:
    """The 16th–84th percentile of σ refitted on :data:`BOOTSTRAP_RESAMPLES` resamples of the columns
    (rows of ``rings``), each against the model ``profiles`` evaluated at the grid points ``x`` (None: not
    evaluated): the fit's uncertainty from the columns' own scatter — shot noise, jitter and column
    variation — without assuming the rings independent."""
    rng = np.random.default_rng(0)
    done = [i for i, p in enumerate(profiles) if p is not None]
    grid = np.asarray(x, float)[done]
    fits = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        sample = _ring_statistics(rings[rng.integers(0, len(rings), len(rings))])
        costs = np.array([_weighted_misfit(sample, profiles[i]) for i in done])
        fits.append(_parabola_minimum(grid, costs, int(np.argmin(costs))))
    low, high = np.percentile(fits, [16, 84])
    return [round(float(low), 2), round(float(high), 2)]


def fit_source_size(image: np.ndarray, sites: pd.DataFrame, a_px: float, parent_key: str, pixel_size_A: float,
                    microscope, dopant: str | None = None, noise_rel: float = 0.0) -> tuple[ForwardModel, dict]:
    """The forward model whose intact columns have the image's own radial profile: the probe's blur fitted.

    The source size σ (the probe's partial spatial coherence, the blur the calibration leaves
    out) is chosen from :data:`SOURCE_SIZES_A` by the :func:`profile_misfit` between the image's
    :func:`column_rings` and the model's :func:`column_profile` of the brighter sublattice, refined by a
    parabola through the best three.

    When even a point source leaves the model's columns broader than the image's (the best σ is 0) and
    the nominal probe has aberrations (the defaults: Cs 40 µm, 40 Å defocus), the image came from a better
    corrected probe: σ is fitted again on the same semi-angle without aberrations (one more abTEM
    calibration per parent and optics, cached), kept when it fits clearly better
    (:data:`PROBE_SWITCH_RATIO`).  Only that one probe is tried: a smaller semi-angle and a larger σ make
    nearly the same column profile (measured on a real 60 kV MoS2 image: corrected 20 mrad with σ 0.3 Å
    misfit 0.004, 21.8 mrad with 0.3 Å 0.007), so the profile cannot tell them apart and σ carries both.
    The levels of the returned model are measured at the image's ``noise_rel``.  Returns the forward
    model (its ``microscope`` is the fitted optics) and a record (σ and its 68 % interval,
    :func:`_bootstrap_interval`;
    the profile misfit before and after; the noise; under ``probe`` the probe when it is not the nominal
    one).  At low dose the profile may not pin σ down: at 1e4 e/Å² (MoS2, 0.15 Å/px, 1,100 metal columns)
    a 0.6 Å source's misfit is flat from 0.6 to 1.0 Å, and the interval says so.
    """
    from dataclasses import replace

    # the brighter sublattice's columns: the dim ones sit in the tails of their bright neighbours,
    # where shot noise and the background estimate distort the shape more than the blur does
    raw = sites.groupby("sublattice").intensity_raw.median()
    brighter = str(raw.idxmax()) if len(raw) else "M"
    target = column_rings(image, sites, a_px, brighter)
    if target is None:
        return forward_model(parent_key, pixel_size_A, microscope, dopant, noise_rel), {
            "source_size_A": None, "relative_noise": noise_rel}

    statistics = _ring_statistics(target)

    def fit_source(probe) -> tuple[float, np.ndarray, list]:
        # σ in order, stopped two steps past the minimum (the misfit has one minimum over σ)
        costs, profiles = np.full(len(SOURCE_SIZES_A), np.nan), [None] * len(SOURCE_SIZES_A)
        for i, s in enumerate(SOURCE_SIZES_A):
            profiles[i] = forward_model(parent_key, pixel_size_A, replace(probe, source_size_A=float(s)),
                                        dopant).profiles.get(brighter)
            costs[i] = _weighted_misfit(statistics, profiles[i])
            k = int(np.nanargmin(costs))
            if i >= k + 2:
                break
        return round(_parabola_minimum(SOURCE_SIZES_A, costs, k), 2), costs, profiles

    best, costs, profiles = fit_source(microscope)
    probe, record = microscope, {}
    if best == 0.0 and (microscope.Cs_A != 0 or microscope.defocus_A != 0):
        corrected = replace(microscope, Cs_A=0.0, defocus_A=0.0)
        best_corrected, corrected_costs, corrected_profiles = fit_source(corrected)
        if np.nanmin(corrected_costs) < PROBE_SWITCH_RATIO * costs[0]:
            probe, best, profiles = corrected, best_corrected, corrected_profiles
            record["probe"] = {"aberration_free": True, "semiangle_mrad": corrected.semiangle_mrad,
                               "Cs_A": 0.0, "defocus_A": 0.0,
                               "profile_misfit_nominal_probe": float(costs[0])}
    model = forward_model(parent_key, pixel_size_A, replace(probe, source_size_A=best), dopant, noise_rel)
    return model, {"source_size_A": best, "source_size_interval_A": _bootstrap_interval(target, profiles,
                                                                                     SOURCE_SIZES_A),
                   "profile_misfit_point_source": float(costs[0]),
                   "profile_misfit": _weighted_misfit(statistics, model.profiles.get(brighter)),
                   "relative_noise": noise_rel, **record}
