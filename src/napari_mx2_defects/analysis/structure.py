"""Around the defects: class-averaged images, picometre displacements of the neighbouring columns, strain.

Lee et al. (the million-atom WSe2–Te study) average hundreds of identical defects to see their
structure and measure how far the neighbouring columns move, to a fraction of a picometre.  Here,
from one analysed image (:class:`~.api.AnalysisResult`: every site on the fitted lattice with its
measured column position):

* :func:`class_averages` — every instance of a defect class cut out on a grid centred on its site of
  the fitted lattice (sub-pixel, by spline interpolation), aligned to the class mean by upsampled
  cross-correlation (skimage's ``phase_cross_correlation``, unnormalised, which is the robust choice
  at low dose) and averaged; intact metal and chalcogen sites as references.
* :func:`neighbour_displacements` — for each isolated defect, the measured positions of its first
  (other sublattice, a/√3) and second (same sublattice, a) neighbour shells relative to their sites
  on the fitted lattice, less the local drift of the lattice around it (median over intact columns
  2a–4a away), resolved into radial (positive = away from the defect) and tangential components;
  mean and standard error over defects, in pm (tangential > 0 turns from +x towards +y: clockwise on
  screen, where y points down).  The same measurement around intact sites is the
  null: it says what the image's noise and scan distortion leave.
* :func:`strain_map` — the gradient of the displacement field of intact columns relative to the
  fitted lattice, by a Gaussian-weighted local linear fit on a grid: ε_xx, ε_yy, ε_xy and the
  rotation, relative to the image's mean lattice.

Positions come from the column finder (:func:`~.columns.find_peaks`: a quadratic over the 3×3
pixels around each maximum of the lightly smoothed, background-flattened image).  An empty
neighbouring column changes a column's tails, so an image alone gives an *apparent* displacement
even where the atoms did not move; docs/structure.md gives its size on twins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from .columns import real_image

__all__ = [
    "DISPLACEMENT_COLUMNS",
    "STRUCTURE_FILES",
    "ClassAverage",
    "DefectStructure",
    "class_averages",
    "defect_structure",
    "neighbour_displacements",
    "strain_map",
]

#: What :meth:`DefectStructure.save` writes.
STRUCTURE_FILES = ["class_averages.tif", "class_averages.png", "displacements.csv", "strain.tif"]
DISPLACEMENT_COLUMNS = [
    "defect_class",
    "shell",
    "neighbour_sublattice",
    "distance_A",
    "n_defects",
    "n_columns",
    "radial_pm",
    "radial_sem_pm",
    "tangential_pm",
    "tangential_sem_pm",
]
#: A defect is isolated when no other defect sits within this many lattice constants.
ISOLATION_A_UNITS = 2.0
#: The local drift around a defect is the median displacement of intact columns this far away (units of a).
REFERENCE_ANNULUS_A_UNITS = (2.0, 4.0)
#: Intact sites per sublattice averaged as references (their mean is already smooth at a few hundred).
INTACT_REFERENCES = 300
#: Strain components, in the order strain.tif holds them.
STRAIN_COMPONENTS = ("e_xx", "e_yy", "e_xy", "rotation_deg")


@dataclass
class ClassAverage:
    """The aligned mean of every instance of one class (or of intact sites: ``intact M``, ``intact X``)."""

    defect_class: str
    n: int
    image: np.ndarray  # (n_px, n_px), the site at the centre pixel, image units
    pixel_size_A: float
    alignment_rms_pm: float  # RMS of the per-instance shifts the cross-correlation applied


@dataclass
class StrainMap:
    """Strain relative to the image's mean lattice on a grid: ``components[name]`` of shape (ny, nx)."""

    components: dict[str, np.ndarray]
    step_A: float  # grid spacing
    origin_A: tuple[float, float]  # (x, y) of grid point [0, 0], Å from the image origin
    window_A: float  # Gaussian σ of the local fit


@dataclass
class DefectStructure:
    averages: list[ClassAverage]
    displacements: pd.DataFrame
    strain: StrainMap
    notes: list[str] = field(default_factory=list)

    def save(self, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
        """Write :data:`STRUCTURE_FILES` into ``out_dir`` together; existing ones are kept unless ``overwrite``."""
        from ..io.atomic import StagedOutput

        with StagedOutput(out_dir, STRUCTURE_FILES, overwrite=overwrite) as staging:
            self.write(staging)
        return [Path(out_dir) / n for n in STRUCTURE_FILES]

    def write(self, folder: Path) -> None:
        """Write every file into ``folder`` (a staging folder: no checks, no atomicity)."""
        import json

        from ..io.writer import write_calibrated_tiff
        from .plots import class_average_figure

        folder = Path(folder)
        if self.averages:
            stack = np.stack([a.image for a in self.averages]).astype(np.float32)
            names = {"classes": [a.defect_class for a in self.averages], "n": [a.n for a in self.averages]}
            write_calibrated_tiff(
                folder / "class_averages.tif",
                stack,
                self.averages[0].pixel_size_A,
                title="class averages " + json.dumps(names),
            )
        else:
            write_calibrated_tiff(
                folder / "class_averages.tif",
                np.zeros((1, 1, 1), np.float32),
                1.0,
                title="class averages: none",
            )
        class_average_figure(self).savefig(folder / "class_averages.png", dpi=120)
        self.displacements.to_csv(folder / "displacements.csv", index=False)
        stack = np.stack([self.strain.components[c] for c in STRAIN_COMPONENTS]).astype(np.float32)
        write_calibrated_tiff(
            folder / "strain.tif",
            stack,
            self.strain.step_A,
            title="strain " + json.dumps({"components": STRAIN_COMPONENTS, "origin_A": self.strain.origin_A}),
        )


def _patch_grid(half_px: int) -> np.ndarray:
    offsets = np.arange(-half_px, half_px + 1, dtype=float)
    return np.stack(np.meshgrid(offsets, offsets, indexing="ij"))  # (2, n, n): dy, dx


def _cut(coefficients: np.ndarray, centres_px: np.ndarray, half_px: int) -> np.ndarray:
    """Patches (k, n, n) centred on sub-pixel (x, y) centres by cubic spline interpolation from the image's
    spline ``coefficients`` (``ndimage.spline_filter``, computed once per image); all in one call."""
    grid = _patch_grid(half_px)
    centres_px = np.asarray(centres_px, float).reshape(-1, 2)
    coords = [grid[0][None] + centres_px[:, 1, None, None], grid[1][None] + centres_px[:, 0, None, None]]
    return ndimage.map_coordinates(coefficients, coords, order=3, mode="nearest", prefilter=False)


def _align_and_average(
    patches: np.ndarray, max_shift_px: float, iterations: int = 2
) -> tuple[np.ndarray, float]:
    """Mean of ``patches`` after registering each to the running mean (upsampled cross-correlation)."""
    from skimage.registration import phase_cross_correlation

    aligned = patches
    shifts = np.zeros((len(patches), 2))
    for _ in range(iterations):
        reference = aligned.mean(axis=0)
        for k, patch in enumerate(patches):
            shift, _, _ = phase_cross_correlation(reference, patch, upsample_factor=20, normalization=None)
            shifts[k] = shift if np.hypot(*shift) <= max_shift_px else 0.0
        aligned = np.stack([ndimage.shift(p, s, order=3, mode="nearest") for p, s in zip(patches, shifts)])
    return aligned.mean(axis=0), float(np.sqrt(np.mean(np.sum(shifts**2, axis=1)))) if len(shifts) else 0.0


def _classes(sites: pd.DataFrame) -> pd.Series:
    """The class reported per site: the model-and-physics answer when a model's detections were given
    (``reported_class``), else the site physics' own (``defect_class``); "" is intact."""
    column = "reported_class" if "reported_class" in sites else "defect_class"
    return sites[column].fillna("").astype(str)


def _usable(sites: pd.DataFrame) -> np.ndarray:
    """Sites outside holes, contamination and other phases (an analysis that mapped none has no such sites)."""
    from .sites import left_out

    usable = ~left_out(sites)
    if "in_hole" in sites:
        usable &= ~sites.in_hole.to_numpy(bool)
    return usable


def _defect_sites(sites: pd.DataFrame) -> np.ndarray:
    return (_classes(sites) != "").to_numpy() & _usable(sites)


def _instances(sites: pd.DataFrame, name: str) -> np.ndarray:
    """Sites of class ``name`` on the sublattice the class belongs to (a model may put a V_M, an empty
    column, on a chalcogen site; averaged with the metal ones it would mix two environments)."""
    from ..core.classes import on_home_sublattice

    on = (_classes(sites) == name).to_numpy() & _defect_sites(sites)
    on &= on_home_sublattice([name] * len(sites), sites.sublattice.to_numpy())
    return np.flatnonzero(on)


def _intact(sites: pd.DataFrame) -> np.ndarray:
    """Intact sites the physics is sure of, outside holes, with a column found: the references."""
    ok = (_classes(sites) == "").to_numpy() & _usable(sites)
    for column, good in (("flagged", False), ("peak_found", True)):
        if column in sites:
            ok &= sites[column].to_numpy(bool) == good
    return ok


def _isolated(sites: pd.DataFrame, candidates: np.ndarray, a_A: float) -> np.ndarray:
    """Of the ``candidates`` (indices), those with no other defect within :data:`ISOLATION_A_UNITS` · a."""
    defect = np.flatnonzero(_defect_sites(sites))
    if not len(candidates):
        return candidates
    xy = sites[["x_ideal_A", "y_ideal_A"]].to_numpy()
    if not len(defect):
        return candidates
    near = cKDTree(xy[defect]).query_ball_point(xy[candidates], ISOLATION_A_UNITS * a_A)
    keep = [c for c, hits in zip(candidates, near) if not (set(defect[hits]) - {c})]
    return np.asarray(keep, int)


def _intact_sample(sites: pd.DataFrame, sublattice: str, n: int, a_A: float) -> np.ndarray:
    """Up to ``n`` intact, isolated sites of a sublattice, evenly spread through the table."""
    pool = np.flatnonzero((sites.sublattice == sublattice).to_numpy() & _intact(sites))
    pool = _isolated(sites, pool, a_A)
    if len(pool) > n:
        pool = pool[np.linspace(0, len(pool) - 1, n).astype(int)]
    return pool


def class_averages(
    image: np.ndarray,
    sites: pd.DataFrame,
    pixel_size_A: float,
    a_A: float,
    half_width_A: float | None = None,
    max_instances: int = 1000,
) -> list[ClassAverage]:
    """Aligned class averages of every defect class present, then of intact M and X sites.

    Each instance is cut on a (2h+1)² grid at the image's pixel size around its site on the fitted
    lattice; ``half_width_A`` (default 1.5 a) reaches the second neighbours.  Instances whose patch
    leaves the image are skipped; at most ``max_instances`` per class (evenly spread).
    """
    img = real_image(image)
    half_px = int(round((half_width_A or 1.5 * a_A) / pixel_size_A))
    ny, nx = img.shape
    centres = sites[["x_ideal_A", "y_ideal_A"]].to_numpy() / pixel_size_A
    inside = (
        (centres[:, 0] >= half_px)
        & (centres[:, 1] >= half_px)
        & (centres[:, 0] <= nx - 1 - half_px)
        & (centres[:, 1] <= ny - 1 - half_px)
    )
    classes = _classes(sites)
    groups = [
        (name, np.intersect1d(_instances(sites, name), np.flatnonzero(inside)), max_instances)
        for name in sorted(set(classes) - {""})
    ]
    groups += [
        (
            f"intact {sub}",
            np.intersect1d(_intact_sample(sites, sub, len(sites), a_A), np.flatnonzero(inside)),
            INTACT_REFERENCES,
        )
        for sub in ("M", "X")
    ]
    out = []
    coefficients = ndimage.spline_filter(img, order=3, mode="nearest")
    for name, idx, cap in groups:
        if not len(idx):
            continue
        if len(idx) > cap:  # evenly through the table, so through the image
            idx = idx[np.linspace(0, len(idx) - 1, cap).astype(int)]
        patches = _cut(coefficients, centres[idx], half_px)
        mean, rms_px = _align_and_average(patches, max_shift_px=0.25 * a_A / pixel_size_A)
        out.append(ClassAverage(name, int(len(idx)), mean, float(pixel_size_A), 100 * rms_px * pixel_size_A))
    return out


def _local_drift(
    xy_ideal: np.ndarray, u: np.ndarray, reference: np.ndarray, tree: cKDTree, centre: np.ndarray, a_A: float
) -> np.ndarray | None:
    lo, hi = REFERENCE_ANNULUS_A_UNITS
    hits = np.asarray(tree.query_ball_point(centre, hi * a_A), int)
    hits = hits[reference[hits]]
    hits = hits[np.linalg.norm(xy_ideal[hits] - centre, axis=1) >= lo * a_A]
    return np.median(u[hits], axis=0) if len(hits) >= 6 else None


def neighbour_displacements(sites: pd.DataFrame, a_A: float) -> pd.DataFrame:
    """Mean radial and tangential displacement (pm, with standard errors) of the first and second
    neighbour shells around each isolated defect of each class, and around intact sites (the null)."""
    xy_ideal = sites[["x_ideal_A", "y_ideal_A"]].to_numpy()
    u = sites[["x_A", "y_A"]].to_numpy() - xy_ideal
    reference = _intact(sites)
    tree = cKDTree(xy_ideal)
    sublattice = sites.sublattice.to_numpy()
    classes = _classes(sites)
    centres = [(name, _instances(sites, name)) for name in sorted(set(classes) - {""})]
    centres += [(f"intact {sub}", _intact_sample(sites, sub, 2000, a_A)) for sub in ("M", "X")]
    # shells by neighbour rank on the fitted lattice, not by distance: a scan-sheared image stretches
    # some bonds by 10 % and more. 1st: the 3 nearest sites of the other sublattice; 2nd: the 6 nearest
    # of the same sublattice.
    shells = [("1st", a_A / np.sqrt(3), 3, False), ("2nd", a_A, 6, True)]
    trees = {
        sub: (cKDTree(xy_ideal[sublattice == sub]), np.flatnonzero(sublattice == sub))
        for sub in ("M", "X")
        if (sublattice == sub).sum() >= 7
    }
    rows = []
    for name, idx in centres:
        idx = _isolated(sites, idx, a_A)
        per_shell: dict[str, list] = {s: [] for s, _, _, _ in shells}
        for c in idx:
            drift = _local_drift(xy_ideal, u, reference, tree, xy_ideal[c], a_A)
            if drift is None:
                continue
            for shell, radius, count, same in shells:
                target = sublattice[c] if same else ("X" if sublattice[c] == "M" else "M")
                if target not in trees:
                    continue
                sub_tree, members = trees[target]
                dist, j = sub_tree.query(xy_ideal[c], k=count + int(same))
                ring = members[j[int(same) :]][
                    dist[int(same) :] < 1.3 * radius
                ]  # beyond: the analysed area ends
                ring = ring[reference[ring]]
                if not len(ring):
                    continue
                vec = xy_ideal[ring] - xy_ideal[c]
                r_hat = vec / np.linalg.norm(vec, axis=1, keepdims=True)
                d = u[ring] - drift
                radial = np.sum(d * r_hat, axis=1)
                tangential = d[:, 1] * r_hat[:, 0] - d[:, 0] * r_hat[:, 1]
                per_shell[shell].append(
                    (
                        radial.mean(),
                        tangential.mean(),
                        len(ring),
                        target,
                        float(np.linalg.norm(vec, axis=1).mean()),
                    )
                )
        for shell, _, _, _ in shells:
            values = per_shell[shell]
            if not values:
                continue
            radial, tangential = np.array([v[0] for v in values]), np.array([v[1] for v in values])
            n = len(values)

            def sem(x):
                return float(100 * x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")

            rows.append(
                {
                    "defect_class": name,
                    "shell": shell,
                    "neighbour_sublattice": values[0][3],
                    "distance_A": float(np.mean([v[4] for v in values])),
                    "n_defects": n,
                    "n_columns": int(sum(v[2] for v in values)),
                    "radial_pm": float(100 * radial.mean()),
                    "radial_sem_pm": sem(radial),
                    "tangential_pm": float(100 * tangential.mean()),
                    "tangential_sem_pm": sem(tangential),
                }
            )
    return pd.DataFrame(rows, columns=DISPLACEMENT_COLUMNS)


def strain_map(
    sites: pd.DataFrame,
    a_A: float,
    extent_A: tuple[float, float],
    window_A: float | None = None,
    step_A: float | None = None,
) -> StrainMap:
    """ε_xx, ε_yy, ε_xy and rotation (degrees, counter-clockwise in x-right/y-down image axes is negative)
    of the intact columns relative to the fitted lattice, on a grid of spacing ``step_A`` (default a).

    At each grid point the displacements u of the intact columns are fitted by u = u0 + G·(r − r0)
    with Gaussian weights of σ = ``window_A`` (default a; only columns within 2σ); ε = (G + Gᵀ)/2 and
    the rotation is (G_yx − G_xy)/2. Points with fewer than 8 columns in reach are NaN. Each
    sublattice's median displacement is removed first (the fit's sublattice offset is one number).
    """
    window = float(window_A or a_A)
    step = float(step_A or a_A)
    keep = _intact(sites)
    xy = sites.loc[keep, ["x_ideal_A", "y_ideal_A"]].to_numpy()
    u = sites.loc[keep, ["x_A", "y_A"]].to_numpy() - xy
    for sub in ("M", "X"):
        mine = sites.sublattice.to_numpy()[keep] == sub
        if mine.any():
            u[mine] -= np.median(u[mine], axis=0)
    width, height = extent_A
    gx = np.arange(0.5 * step, width, step)
    gy = np.arange(0.5 * step, height, step)
    comps = {c: np.full((len(gy), len(gx)), np.nan) for c in STRAIN_COMPONENTS}
    if len(xy) >= 8:
        tree = cKDTree(xy)
        grid = np.stack(np.meshgrid(gx, gy), axis=-1).reshape(-1, 2)
        for flat, (point, hits) in enumerate(zip(grid, tree.query_ball_point(grid, 2 * window))):
            if len(hits) < 8:
                continue
            d = xy[hits] - point
            w = np.exp(-0.5 * np.sum(d**2, axis=1) / window**2)
            design = np.column_stack([np.ones(len(d)), d])  # 1, dx, dy
            normal = design.T @ (design * w[:, None])
            if np.linalg.cond(normal) > 1e8:
                continue
            beta = np.linalg.solve(
                normal, design.T @ (u[hits] * w[:, None])
            )  # (3, 2): rows 1, dx, dy; cols ux, uy
            g = beta[1:].T  # g[i, j] = ∂u_i/∂x_j
            i, j = divmod(flat, len(gx))
            comps["e_xx"][i, j], comps["e_yy"][i, j] = g[0, 0], g[1, 1]
            comps["e_xy"][i, j] = 0.5 * (g[0, 1] + g[1, 0])
            comps["rotation_deg"][i, j] = np.degrees(0.5 * (g[1, 0] - g[0, 1]))
    return StrainMap(
        components=comps,
        step_A=step,
        origin_A=(float(gx[0]) if len(gx) else 0.0, float(gy[0]) if len(gy) else 0.0),
        window_A=window,
    )


#: Lattice-site classes the imaging-bias twin plants (how many of each, in a field of BIAS_TWIN_FOV_A).
BIAS_TWIN_DEFECTS = 8
BIAS_TWIN_FOV_A = 90.0


@lru_cache(maxsize=16)
def apparent_displacements(
    parent_key: str, pixel_size_A: float, microscope, classes: tuple[str, ...]
) -> pd.DataFrame:
    """The displacements an image shows where the atoms did not move, per class and shell.

    A noise-free fast-mode twin of the parent with ``classes`` planted on unrelaxed sites, imaged at
    the image's pixel size and fitted optics (``microscope``, source size included), measured by the
    same column finder and :func:`neighbour_displacements`: an empty or brighter column changes its
    neighbours' tails and so where their maxima lie (11 pm outwards around a MoS2 V_M at 0.1 Å/px).
    """
    from ..twin.api import TwinRequest, simulate_twin
    from ..twin.parents import get_parent
    from .sites import SITE_CLASSES, measure_sites

    parent = get_parent(parent_key)
    planted = [c for c in classes if any(c in names for names in SITE_CLASSES.values()) and c != "TM_D"]
    if parent.phase != "2H":
        planted = [c for c in planted if c != "V_XX"]
    if not planted:
        return pd.DataFrame(columns=DISPLACEMENT_COLUMNS)
    twin = simulate_twin(
        TwinRequest(
            material=parent_key,
            defects=",".join(f"{c}={BIAS_TWIN_DEFECTS}" for c in planted),
            fov_A=BIAS_TWIN_FOV_A,
            pixel_size_A=float(pixel_size_A),
            microscope=microscope,
            seed=7,
        )
    )
    px = float(twin.pixel_size_A[1])
    truth = twin.sites
    metal_xy = truth.loc[truth.sublattice == "M", ["x_A", "y_A"]].to_numpy() / px
    meas = measure_sites(twin.image, parent.a_A / px, None, border_px=2.0 / px, true_metal_xy=metal_xy)
    sites = meas.sites
    d, idx = cKDTree(truth[["x_A", "y_A"]].to_numpy() / px).query(sites[["x_ideal_px", "y_ideal_px"]].to_numpy())
    table = pd.DataFrame(
        {
            "x_A": sites.x_px * px,
            "y_A": sites.y_px * px,
            "x_ideal_A": sites.x_ideal_px * px,
            "y_ideal_A": sites.y_ideal_px * px,
            "sublattice": sites.sublattice,
            "peak_found": sites.peak_found,
            # a quarter of the M–X bond: the site of the fitted lattice, whatever the pixel size
            "defect_class": np.where(d < 0.25 * meas.a_px / np.sqrt(3), truth.defect_class.to_numpy()[idx], ""),
        }
    )
    return neighbour_displacements(table, meas.a_px * px)


def _subtract_apparent(measured: pd.DataFrame, apparent: pd.DataFrame) -> pd.DataFrame:
    """``radial_pm`` less the bias twin's (kept as ``apparent_radial_pm``); NaN where the twin has no such class."""
    keys = ["defect_class", "shell"]
    bias = apparent[keys + ["radial_pm", "tangential_pm"]].rename(
        columns={"radial_pm": "apparent_radial_pm", "tangential_pm": "apparent_tangential_pm"}
    )
    out = measured.merge(bias, on=keys, how="left")
    intact = out.defect_class.str.startswith("intact")
    for part in ("radial", "tangential"):
        out[f"apparent_{part}_pm"] = out[f"apparent_{part}_pm"].where(~intact, 0.0)
        out[f"measured_{part}_pm"] = out[f"{part}_pm"]
        out[f"{part}_pm"] = out[f"{part}_pm"] - out[f"apparent_{part}_pm"]
    return out[
        DISPLACEMENT_COLUMNS
        + ["measured_radial_pm", "apparent_radial_pm", "measured_tangential_pm", "apparent_tangential_pm"]
    ]


def defect_structure(
    image: np.ndarray, result, progress=lambda f, m: None, cancelled=lambda: False
) -> DefectStructure:
    """Class averages, neighbour displacements and the strain map of an analysed image.

    ``result`` is the :class:`~.api.AnalysisResult` of :func:`~.api.analyze_image` on the same image
    (its sites, lattice constant, pixel size and fitted optics). The displacements are the measured
    ones less what a noise-free twin at the fitted optics shows with unmoved atoms
    (:func:`apparent_displacements`); both are in the table. What the *Defect statistics* dock's
    "Class averages, displacements, strain" button, ``analyze --structure`` and the API call.
    """
    from ..core.jobs import stepper
    from ..twin.microscope import Microscope

    sites = result.sites
    if "x_ideal_A" not in sites:
        raise ValueError(
            "these sites carry no fitted-lattice positions: analyse the image again with this version"
        )
    pixel, a_A = float(result.lattice["pixel_size_A"]), float(result.lattice["a_A"])
    img = real_image(image)
    notes = []

    step = stepper(progress, cancelled, "structure analysis")

    step(0.05, "class averages")
    averages = class_averages(img, sites, pixel, a_A)
    step(0.4, "neighbour displacements")
    measured = neighbour_displacements(sites, a_A)
    step(0.5, "what a twin at these optics shows with unmoved atoms")
    optics = result.lattice.get("fitted_optics", {}).get("forward_model_microscope", {})
    known = {k: v for k, v in optics.items() if k in Microscope.__dataclass_fields__}
    classes = tuple(sorted(c for c in set(measured.defect_class) if not c.startswith("intact")))
    apparent = apparent_displacements(result.lattice["parent"], round(pixel, 4), Microscope(**known), classes)
    displacements = _subtract_apparent(measured, apparent)
    step(0.85, "strain map")
    strain = strain_map(sites, a_A, (img.shape[1] * pixel, img.shape[0] * pixel))
    if not any(not a.defect_class.startswith("intact") for a in averages):
        notes.append("no defect site to average: the class averages hold intact sites only")
    progress(1.0, "done")
    return DefectStructure(averages=averages, displacements=displacements, strain=strain, notes=notes)
