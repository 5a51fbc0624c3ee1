"""Phase and stacking map: where the flake is a monolayer, a 2H or 3R bi-/trilayer, or 1T.

What the beam passes through at one place shows in how bright the three positions of the honeycomb
are (:mod:`~..twin.stacking`): in projection a 2H monolayer holds the metal on A, the chalcogen pair
on B and nothing on the hollow C; a 2H bilayer fills A and B equally (metal + pair on each) and leaves
C empty; a 3R bilayer puts a metal on A, metal + pair on B and a pair on C; a 3R trilayer fills all
three equally; a 1T layer splits the pair into one chalcogen on B and one on C.  So the map:

1. measures, at every metal site of the fitted lattice, the mean intensity in a disc (radius
   :data:`COLUMN_RADIUS_NN` of the M–X distance) at A, at A + d and at A − d (d: the fitted M→X vector;
   A − d is the hollow), and the floor between them (small discs at the six bond centres), on the
   image as it is (no background removed: a stack lifts its floor too);
2. averages these over a Gaussian window of each site's neighbours and sorts the three positions
   (which of B and C holds what depends on the stacking's sense): four features per site;
3. asks whether the wide windows (:data:`WINDOW_A_UNITS`) form more than one population at all
   (:func:`populations`); one population is the parent's monolayer, because a single phase cannot be
   named from the pattern of its levels alone at an unknown dose, offset and detector (the limits below);
4. otherwise compares the wide windows with the same features measured on a noise-free
   **forward-model twin** of every phase the parent forms (:func:`phase_references`: the stacked twin
   engine at the image's fitted optics and pixel size), up to one scale and one offset shared by the
   whole image (dose, gain, detector offset), fitted together with the assignment (alternating, started
   from each phase as the image's commonest; the lowest total misfit wins);
5. names each site by the misfit of its narrow window (:data:`NARROW_WINDOW_A_UNITS`) to each phase,
   averaged over its neighbours (:data:`MISFIT_WINDOW_A_UNITS`): a site near a boundary takes the side
   it is on; a site is unassigned (label 0) where no site near it comes within
   :data:`UNASSIGNED_FRACTION` phase-to-phase distances of any phase beyond the noise (vacuum, thick
   contamination, a phase the parent does not form);
6. draws the sites' phases as a pixel map; bands narrower than a window (the boundaries themselves)
   and regions smaller than two wide windows take the phase beside them.

The map is a physics classifier, not a trained network: its references come from the same calibrated
forward model as the site levels, so it follows the image's own optics (detector, blur) without
retraining.  Limits: phases are told apart by contrast *between* regions; a field of one phase is reported as the
parent's monolayer (its pattern alone depends on the detector's Z contrast more than on the stacking: a
real monolayer fits a 3R bilayer's slightly better at the nominal detector), with the best-fitting phase
in the record.  A 3R trilayer alone looks like a triangular lattice of a/√3 and its lattice cannot be
fitted as the parent's; a field mostly of stacks at 0.4 Å/px misled the lattice fit by −3 % (the
lattice-constant note says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from ..core.pixels import pixel_size_key

__all__ = ["UNASSIGNED_FRACTION", "WINDOW_A_UNITS", "PhaseMap", "map_phases", "phase_references",
           "phase_triplets"]

#: Gaussian window of the triplet averages, in lattice constants: ~65 metal sites weigh in (2πσ² over
#: the cell), which brings a window's scatter at 1e5 e/Å² (MoS2, 0.2 Å/px) to ~1/4 of the distance
#: between the two closest phases; phase regions narrower than ~2σ are not resolved.
WINDOW_A_UNITS = 3.0
#: Narrow window (lattice constants) of each site's own features, and the window its misfits to each
#: phase are averaged over: a site near a boundary takes the phase of the side it is on.
NARROW_WINDOW_A_UNITS = 1.0
MISFIT_WINDOW_A_UNITS = 2.0
#: A site further from every phase than this multiple of the distance between the two closest phases
#: (1L-2H and 1L-1T for a 2H parent), beyond the commonest misfit, is unassigned (vacuum, a thick
#: amorphous layer, a phase not considered: vacuum lies ~6 such distances from a MoS2 monolayer).
UNASSIGNED_FRACTION = 2.0


@dataclass
class PhaseMap:
    """The phase of every pixel and site, and what was fitted.

    ``labels`` (ny, nx) uint8: 1 + index in :data:`~..twin.stacking.PHASES`, 0 = unassigned (the
    sites' phases are read off it); ``record``: the fit for lattice.json.
    """

    labels: np.ndarray
    record: dict


def _metal_to_chalcogen(metal_xy: np.ndarray, chalcogen_xy: np.ndarray, near=None) -> np.ndarray:
    """The M→X vector of a lattice: from the metal site nearest ``near`` (default: the sites' centroid) to
    that site's nearest chalcogen (on a fitted or a twin's ideal lattice every metal site gives one of the
    three equivalent vectors)."""
    near = metal_xy.mean(axis=0) if near is None else np.asarray(near, float)
    centre = metal_xy[np.argmin(np.linalg.norm(metal_xy - near, axis=1))]
    return chalcogen_xy[cKDTree(chalcogen_xy).query(centre)[1]] - centre


#: Radius of the column discs, in M–X distances: the columns' peaks (a wide disc takes in the floor).
COLUMN_RADIUS_NN = 0.4
#: Radius of the floor samples at the bond centres, in M–X distances (the columns' discs take half of it).
FLOOR_RADIUS_NN = 0.2


def phase_triplets(image: np.ndarray, metal_xy_px: np.ndarray, d_px: np.ndarray, radius_px: float) -> np.ndarray:
    """(n, 4) mean intensity per pixel of the image in a disc at each metal site A, at A + d (B), at
    A − d (C, the hollow), and the floor: the mean over small discs at the three bond centres A + d/2,
    B − d/2 rotated… (A ± d/2 and A + d/2 rotated by 120°) where no column of any stacking stands."""
    from ..core.integration import disc_intensity
    from .columns import real_image

    img = real_image(image)
    xy = np.asarray(metal_xy_px, float).reshape(-1, 2)
    d = np.asarray(d_px, float)

    def mean_in_disc(points: np.ndarray, r: float) -> np.ndarray:
        return disc_intensity(img, points[:, 0], points[:, 1], r) / (np.pi * r * r)

    columns = [mean_in_disc(xy + k * d, radius_px) for k in (0, 1, -1)]
    r_floor = FLOOR_RADIUS_NN * float(np.linalg.norm(d))
    turn = np.array([[-0.5, -np.sqrt(3) / 2], [np.sqrt(3) / 2, -0.5]])  # 120°
    # the midpoints between A and B and between A and C (B = A + d, C = A − d), in the three
    # directions: every one sits halfway between two honeycomb positions, the lowest point of a stack
    mids = [0.5 * v for v in (d, turn @ d, turn @ turn @ d)]
    floor = np.mean([mean_in_disc(xy + m, r_floor) for m in mids] + [mean_in_disc(xy - m, r_floor) for m in mids],
                    axis=0)
    return np.column_stack(columns + [floor])


def phase_features(triplets: np.ndarray) -> np.ndarray:
    """(n, 4): the three honeycomb positions' intensities, brightest first (which of B and C holds what
    depends on the stacking's sense), and the floor between them.  The floor keeps an image's offset
    apart from its phase: a 3R trilayer fills all three positions equally, and only the floor tells
    its lattice from a uniform offset."""
    return np.column_stack([np.sort(triplets[:, :3], axis=1)[:, ::-1], triplets[:, 3]])


def _windowed(xy: np.ndarray, values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-weighted mean of ``values`` over the sites within 2σ of each site (a sparse k-d tree sum:
    linear in the number of sites)."""
    tree = cKDTree(xy)
    pairs = tree.sparse_distance_matrix(tree, 2.0 * sigma, output_type="coo_matrix")
    # the matrix leaves the zero self-distances out: add each site's own weight 1
    w = np.exp(-0.5 * (pairs.data / sigma) ** 2)
    total = np.bincount(pairs.row, weights=w, minlength=len(xy)) + 1.0
    out = np.empty_like(values, dtype=float)
    for k in range(values.shape[1]):
        out[:, k] = (np.bincount(pairs.row, weights=w * values[pairs.col, k], minlength=len(xy)) + values[:, k]) / total
    return out


def _neighbour_min(xy: np.ndarray, values: np.ndarray, radius: float) -> np.ndarray:
    """The least of ``values`` over the sites within ``radius`` of each site (itself included)."""
    tree = cKDTree(xy)
    pairs = tree.sparse_distance_matrix(tree, radius, output_type="coo_matrix")
    out = np.asarray(values, float).copy()
    np.minimum.at(out, pairs.row, out[pairs.col])
    return out


@lru_cache(maxsize=16)
def phase_references(parent_key: str, pixel_size_A: float, microscope) -> dict[str, tuple[float, float, float]]:
    """Each phase's sorted triplet (brightest first) on a noise-free forward-model twin of every phase the
    parent forms, side by side as stripes (:mod:`~..twin.stacking`), at ``microscope`` (the image's
    fitted optics) and ``pixel_size_A``; medians over the metal sites at least 1.5 a inside a stripe."""
    from ..twin.api import TwinRequest, simulate_twin
    from ..twin.parents import get_parent
    from ..twin.stacking import phases_for
    from .sites import _nn_px

    parent = get_parent(parent_key)
    phases = list(phases_for(parent))
    stripe_A = 5.0 * parent.a_A
    twin = simulate_twin(TwinRequest(material=parent_key, stacking=",".join(phases), defects="",
                                     fov_A=stripe_A * len(phases), pixel_size_A=float(pixel_size_A),
                                     microscope=microscope, seed=11))
    py, px = twin.pixel_size_A
    sites = twin.sites
    xy_A = sites[sites.sublattice == "M"][["x_A", "y_A"]].to_numpy()
    d_A = _metal_to_chalcogen(xy_A, sites[sites.sublattice == "X"][["x_A", "y_A"]].to_numpy(),
                              near=np.asarray(twin.extent_xy_A) / 2)
    a_px = parent.a_A / px
    triplets = phase_triplets(twin.clean_image, xy_A / [px, py], d_A / [px, py], COLUMN_RADIUS_NN * _nn_px(a_px))
    width = twin.extent_xy_A[0] / len(phases)
    margin = 1.5 * parent.a_A
    out = {}
    for k, phase in enumerate(phases):
        x = xy_A[:, 0]
        inside = (x > k * width + margin) & (x < (k + 1) * width - margin) & \
            (xy_A[:, 1] > margin) & (xy_A[:, 1] < twin.extent_xy_A[1] - margin)
        out[phase] = tuple(float(v) for v in np.median(phase_features(triplets[inside]), axis=0))
    return out


def _fit_scale(features: np.ndarray, refs: np.ndarray, assigned: np.ndarray) -> tuple[float, float]:
    """Least-squares scale and offset of ``features ≈ scale · refs[assigned] + offset``."""
    r = refs[assigned].ravel()
    design = np.column_stack([r, np.ones_like(r)])
    (scale, offset), *_ = np.linalg.lstsq(design, features.ravel(), rcond=None)
    return float(scale), float(offset)


def _assign(features: np.ndarray, refs: np.ndarray, scale: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    distances = np.linalg.norm(features[:, None, :] - (scale * refs[None, :, :] + offset), axis=2)
    best = np.argmin(distances, axis=1)
    return best, distances[np.arange(len(features)), best]


def _start(features: np.ndarray, ref: np.ndarray, unit: float) -> tuple[float, float]:
    """Scale and offset of the image if ``ref`` is its commonest phase: each window's own least-squares
    scale and offset to ``ref``, the median over the windows whose shape it fits within the unassigned
    limit (all windows when none does)."""
    centred = ref - ref.mean()
    scales = (features - features.mean(axis=1, keepdims=True)) @ centred / float(centred @ centred)
    offsets = features.mean(axis=1) - scales * ref.mean()
    misfit = np.linalg.norm(features - scales[:, None] * ref[None, :] - offsets[:, None], axis=1)
    fits = (scales > 0) & (misfit <= UNASSIGNED_FRACTION * np.abs(scales) * unit)
    use = fits if fits.sum() >= 3 else slice(None)
    return float(np.median(scales[use])), float(np.median(offsets[use]))


def classify_windows(features: np.ndarray, refs: np.ndarray, unit: float, iterations: int = 30
                     ) -> tuple[np.ndarray, float, float]:
    """Each window's phase (index into ``refs``, −1 unassigned) and the image's scale and offset.

    Alternates the assignment and a joint least-squares scale and offset on the assigned windows,
    started from each phase taken as the image's commonest, and keeps the start with the lowest total
    misfit relative to the scale (each window's distance capped at the unassigned limit, so vacuum and
    contamination do not steer the fit).  ``unit`` is the distance between the two closest references,
    in which :data:`UNASSIGNED_FRACTION` is measured.
    """
    best = None
    for start in range(len(refs)):
        scale, offset = _start(features, refs[start], unit)
        for _ in range(iterations):
            if not scale > 0:
                break
            assigned, dist = _assign(features, refs, scale, offset)
            near = dist <= UNASSIGNED_FRACTION * scale * unit
            if near.sum() < 3:
                break
            new_scale, new_offset = _fit_scale(features[near], refs, assigned[near])
            if np.isclose(new_scale, scale, rtol=1e-7, atol=0) and np.isclose(new_offset, offset, rtol=1e-7,
                                                                                 atol=1e-9 * scale * unit):
                break
            scale, offset = new_scale, new_offset
        if not scale > 0:
            continue
        assigned, dist = _assign(features, refs, scale, offset)
        limit = UNASSIGNED_FRACTION * scale * unit
        cost = float(np.sum(np.minimum(dist, limit) ** 2)) / (scale * unit) ** 2
        if best is None or cost < best[0] - 1e-9:
            best = (cost, np.where(dist <= limit, assigned, -1), scale, offset)
    if best is None:
        return np.full(len(features), -1), 0.0, 0.0
    return best[1], best[2], best[3]


#: Most windows the population test fits (a fixed random sample above that; neighbouring windows overlap).
POPULATION_SAMPLE = 20_000


def populations(features: np.ndarray, monolayer_ref: np.ndarray, unit: float) -> int:
    """1 when the windows form one population, 2 when they form more (different phases side by side).

    The windows' features relative to their median brightest level are fitted with one and with two
    Gaussians (scikit-learn); more than one population when BIC prefers two, the smaller holds at least
    2 % of the windows and their means lie at least half the distance between the two closest phases
    apart (``unit``, relative to the monolayer's brightest level ``monolayer_ref[0]``). A single
    population's scatter (noise, strain, a slow drift) is far below that: 0.02 of the level on a real
    MoS2 image, against 0.16 for half of 1L-2H to 1L-1T.
    """
    from sklearn.mixture import GaussianMixture

    x = features / float(np.median(features[:, 0]))
    if len(x) > POPULATION_SAMPLE:
        x = x[np.sort(np.random.default_rng(0).choice(len(x), POPULATION_SAMPLE, replace=False))]
    if len(x) < 20:
        return 1
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():  # one population fitted with two Gaussians converges slowly; BIC then says one
        warnings.simplefilter("ignore", ConvergenceWarning)
        one = GaussianMixture(1, random_state=0).fit(x)
        two = GaussianMixture(2, random_state=0, n_init=3).fit(x)
    separation = float(np.linalg.norm(two.means_[0] - two.means_[1]))
    several = (two.bic(x) < one.bic(x) and two.weights_.min() >= 0.02
               and separation >= 0.5 * unit / float(monolayer_ref[0]))
    return 2 if several else 1


def _rasterise(shape: tuple[int, int], xy_px: np.ndarray, ids: np.ndarray, a_px: float) -> np.ndarray:
    """Pixel map of each site's id (nearest metal site within one lattice constant, else 0), drawn on a
    grid of a/4 and repeated up to the image; unassigned bands narrower than a misfit window (phase
    boundaries, the unanalysed image border) and phase regions smaller than two wide windows take the
    id around them."""
    ny, nx = shape
    step = max(1, int(a_px / 4))
    gy, gx = np.mgrid[step // 2:ny:step, step // 2:nx:step]
    dist, idx = cKDTree(xy_px).query(np.column_stack([gx.ravel(), gy.ravel()]))
    coarse = np.where(dist <= a_px, ids[idx], 0).reshape(gy.shape).astype(np.uint8)
    # bands narrower than a window are boundaries, not regions: where the windows straddle a boundary
    # their misfits can favour a phase between the two (a 3-layer to 1-layer step passes through
    # 2-layer-like mixtures) or none; they take the phase beside them. An unassigned region must be
    # wider than a misfit window, a phase region wider than the lattice constant; and a phase region
    # smaller than two wide windows is not resolved
    def disc(radius_A_units: float) -> np.ndarray:
        r = radius_A_units * a_px / step
        yy, xx = np.mgrid[-int(r):int(r) + 1, -int(r):int(r) + 1]
        return np.hypot(yy, xx) <= r

    kept = np.zeros(coarse.shape, bool)
    smallest = 2 * np.pi * (WINDOW_A_UNITS * a_px / step) ** 2
    for value in np.unique(coarse):
        mask = ndimage.binary_opening(coarse == value, structure=disc(MISFIT_WINDOW_A_UNITS if value == 0 else 1.0))
        if value:
            labels, n = ndimage.label(mask)
            if n:
                sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
                mask &= ~np.isin(labels, np.flatnonzero(sizes < smallest) + 1)
        kept |= mask
    small = ~kept
    if small.any() and not small.all():
        _, (rows, cols) = ndimage.distance_transform_edt(small, return_indices=True)
        coarse = coarse[rows, cols]
    full = np.repeat(np.repeat(coarse, step, axis=0), step, axis=1)
    out = np.zeros(shape, np.uint8)
    out[:min(ny, full.shape[0]), :min(nx, full.shape[1])] = full[:ny, :nx]
    if full.shape[0] < ny:
        out[full.shape[0]:] = out[full.shape[0] - 1]
    if full.shape[1] < nx:
        out[:, full.shape[1]:] = out[:, [full.shape[1] - 1]]
    return out


def map_phases(image: np.ndarray, sites: pd.DataFrame, a_px: float, parent_key: str, pixel_size_A: float,
               microscope) -> PhaseMap:
    """The phase map of an image whose sites were measured (:func:`~.sites.measure_sites`; ``x_px``,
    ``y_px``, ``x_ideal_px``, ``y_ideal_px``, ``sublattice``), against the references at ``microscope``."""
    from ..twin.parents import get_parent
    from ..twin.stacking import PHASES, monolayer_phase
    from .sites import _nn_px

    parent = get_parent(parent_key)
    references = phase_references(parent.key, pixel_size_key(pixel_size_A), microscope)
    names = list(references)
    refs = np.array([references[n] for n in names])
    monolayer = monolayer_phase(parent)
    metal = sites.sublattice.to_numpy() == "M"
    xy = sites.loc[metal, ["x_px", "y_px"]].to_numpy(float)
    record = {"window_A_units": WINDOW_A_UNITS, "phases_considered": names,
              "references": {n: list(v) for n, v in references.items()}}
    if len(xy) < 10:
        record["note"] = "too few metal sites to map phases"
        return PhaseMap(np.zeros(np.shape(image), np.uint8), record)
    ideal = sites[["x_ideal_px", "y_ideal_px"]].to_numpy(float)
    d = _metal_to_chalcogen(ideal[metal], ideal[~metal])
    raw = phase_triplets(image, xy, d, COLUMN_RADIUS_NN * _nn_px(a_px))
    unit = float(min(np.linalg.norm(refs[i] - refs[j]) for i in range(len(refs)) for j in range(i)))
    wide = phase_features(_windowed(xy, raw, WINDOW_A_UNITS * a_px))
    # the image's scale and offset from wide windows (quiet, though mixed across phase boundaries) ...
    wide_assigned, scale, offset = classify_windows(wide, refs, unit)
    if populations(wide, refs[names.index(monolayer)], unit) == 1:
        # one phase over the field: its name cannot be read from the levels' pattern alone at an unknown
        # dose, detector offset and Z contrast (a real 60 kV MoS2 monolayer fits the 3R bilayer's pattern
        # a little better than the monolayer's at the nominal detector); it is the parent's monolayer
        commonest = names[int(np.bincount(wide_assigned[wide_assigned >= 0], minlength=len(names)).argmax())] \
            if (wide_assigned >= 0).any() else ""
        labels = np.full(np.shape(image), PHASES.index(monolayer) + 1, np.uint8)
        record.update({"populations": 1, "monolayer": monolayer, "best_single_phase_fit": commonest})
        return PhaseMap(labels, record)
    # ... then each site by the misfit of its narrow window to each phase, averaged over its neighbours:
    # near a boundary the narrow windows on either side are pure, so the misfits (not the features)
    # are averaged and a site takes the phase whose side it is on
    narrow = phase_features(_windowed(xy, raw, NARROW_WINDOW_A_UNITS * a_px))
    misfit = np.sum((narrow[:, None, :] - (scale * refs[None, :, :] + offset)) ** 2, axis=2)
    smoothed = _windowed(xy, misfit, MISFIT_WINDOW_A_UNITS * a_px)
    assigned = np.argmin(smoothed, axis=1)
    # unassigned: where no site within a misfit window fits any phase (a site's own narrow window
    # straddles a boundary within ~2a of it, but a site on either side fits its phase); "fits" is
    # within UNASSIGNED_FRACTION phase-to-phase distances beyond the commonest misfit (the noise)
    own_best = misfit.min(axis=1)
    noise = float(np.median(own_best))
    nearby_best = _neighbour_min(xy, own_best, MISFIT_WINDOW_A_UNITS * a_px)
    assigned = np.where(nearby_best <= noise + (UNASSIGNED_FRACTION * scale * unit) ** 2, assigned, -1)
    ids = np.where(assigned >= 0, np.array([PHASES.index(n) + 1 for n in names])[np.maximum(assigned, 0)], 0)
    labels = _rasterise(np.shape(image), xy, ids.astype(np.uint8), a_px)
    # each phase's share of the sites is recorded by the analysis (lattice.json "areas"), from these labels
    record.update({"populations": 2, "scale": scale, "offset": offset, "monolayer": monolayer, "misfit_noise": noise})
    return PhaseMap(labels, record)
