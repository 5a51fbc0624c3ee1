"""One call from a request to a digital twin: structure → image → imperfections → ground truth."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.jobs import check_cancelled
from ..core.parameters import DEFAULTS, REQUEST_PARAMETERS, Pair, check_values
from .defects import CLASS_IDS, DefectRequest, parse_defects, place_defects
from .imperfections import Imperfections, apply_imperfections, distorted_positions
from .microscope import Microscope
from .parents import Parent, get_parent
from .simulate import (
    METHODS,
    CancelFn,
    FrozenPhononSettings,
    ProgressFn,
    apply_source_size,
    calibrate_column_weights,
    column_examples,
    never,
    no_progress,
    projected_columns,
    render_columns,
    signature,
    simulate_abtem,
)
from .structures import GrainBoundary, Lattice, add_holes, build_lattice, lattice_from_atoms

__all__ = ["DEFECT_RADIUS_A", "PHASE_TRUTH_FILE", "TWIN_FILES", "Twin", "TwinRequest", "check_twin_values", "label_mask", "simulate_twin"]

#: The files :meth:`Twin.save` writes (the only names its ``overwrite`` replaces).
TWIN_FILES = ("image.tif", "labels.tif", "truth.csv", "atoms.csv", "sites.csv", "settings.json")
#: Written beside them by a stacked twin: the truth phase map (1 + index in :data:`.stacking.PHASES`).
PHASE_TRUTH_FILE = "phases.tif"
#: Radius of the ground-truth discs around each defect site (Å), as specified for the label masks.
DEFECT_RADIUS_A = 0.95


@dataclass
class TwinRequest:
    """Everything that defines a twin (also what ``settings.json`` records).

    Attributes
    ----------
    material : str
        Parent formula or key (``"MoS2"``, ``"1T-TiS2"``).
    defects : str or list of DefectRequest
        e.g. ``"V_X=6,V_XX=2"`` (see :func:`~.defects.parse_defects`).
    alloy : str
        Species replacing the parent's before the defects go in, e.g. ``"W=30%,Se=40%"`` or
        ``"Se=top"`` for a Janus layer (see :func:`~.alloys.parse_alloy`); the truth sites then carry
        each column's ``species``.
    fov_A : float
        Field of view (square) in Å.
    pixel_size_A : float
        Output pixel size in Å.
    method : str
        ``fast``, ``prism`` or ``multislice``.
    seed : int
    structure_path : str, optional
        A structure file ase reads; replaces material-built lattices.
    rotation_deg, grain_boundary, n_holes : messy conditions.
    stacking : str
        Phases of equal vertical stripes, left to right, e.g. ``"1L,2L-2H,2L-3R,3L-2H,1T"``
        (:func:`~.stacking.parse_stacking`): multilayer stacks and 1T regions with their boundaries;
        ``""`` is the parent's monolayer everywhere.
    microscope : Microscope
    imperfections : Imperfections
    calibration_dopants : tuple of str
        Metal-site dopants calibrated with the parent's standard columns whether or not this twin holds
        them (a training set's dopants): every twin of a parent and optics that names the same list then
        shares one calibration, whichever of those dopants it holds.
    """

    material: str = "MoS2"
    defects: str | list = ""
    alloy: str = ""
    fov_A: float = 40.0
    pixel_size_A: float = 0.1
    method: str = "fast"
    seed: int = 0
    structure_path: str | None = None
    rotation_deg: float = 0.0
    grain_boundary: GrainBoundary | None = None
    n_holes: int = 0
    stacking: str = ""
    microscope: Microscope = field(default_factory=Microscope)
    imperfections: Imperfections = field(default_factory=Imperfections)
    calibration_method: str = "prism"
    frozen_phonons: int = 0
    phonon_sigma_A: float = 0.1
    calibration_dopants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from ase.data import atomic_numbers

        self.calibration_dopants = tuple(self.calibration_dopants)
        unknown = [el for el in self.calibration_dopants if el not in atomic_numbers]
        if unknown:
            raise ValueError(f"calibration dopants must be chemical elements, not {unknown}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if not (self.pixel_size_A > 0 and np.isfinite(self.pixel_size_A)):
            raise ValueError(f"pixel size must be positive, got {self.pixel_size_A}")
        if self.pixel_size_A > 0.5:
            raise ValueError(f"pixel size {self.pixel_size_A} Å cannot resolve MX2 columns; use ≤ 0.5 Å")
        from ..core.validation import BOUNDS

        for name in ("fov_A", "rotation_deg", "seed", "n_holes"):
            BOUNDS[name].check(getattr(self, name))
        self.phonons  # validates the frozen-phonon settings
        if self.calibration_method not in ("prism", "multislice"):
            raise ValueError(f"calibration method must be 'prism' or 'multislice', not {self.calibration_method!r}")
        if self.method != "fast" and (self.rotation_deg or self.grain_boundary is not None):
            raise ValueError(
                "rotations and grain boundaries make a non-periodic field of view; abTEM needs a periodic "
                "cell, so use method 'fast' for them (or give a periodic --structure)."
            )
        if self.alloy:
            if self.structure_path:
                raise ValueError("an alloy is built on a parent's lattice; a structure file brings its own species")
            self.alloy_spec()  # validates the alloy against the parent
        if self.stacking:
            if self.structure_path:
                raise ValueError("stacking regions are built from a parent; a structure file brings its own layers")
            self.stacking_phases()  # validates the stacking against the parent
        carbon = self.imperfections.amorphous_carbon_coverage
        if not 0 <= carbon < 1:
            raise ValueError(f"amorphous carbon coverage is a fraction of the field in [0, 1), got {carbon}")
        if carbon and (self.method != "fast" or self.structure_path):
            raise ValueError("amorphous carbon patches are imaged by the fast mode of a parent-built twin: use "
                             "method 'fast' and a material, not a structure file")

    @property
    def phonons(self) -> FrozenPhononSettings:
        """Frozen phonons of the abTEM runs (the image for multislice/PRISM, the calibration for fast)."""
        return FrozenPhononSettings(int(self.frozen_phonons), float(self.phonon_sigma_A), int(self.seed))

    def alloy_spec(self):
        """The parsed :attr:`alloy` (:class:`~.alloys.AlloySpec`) for this request's parent."""
        from .alloys import parse_alloy

        return parse_alloy(self.alloy, get_parent(self.material))

    def stacking_phases(self) -> list[str]:
        """The phase of each stripe (:attr:`stacking` parsed for this request's parent); [] if none."""
        from .stacking import parse_stacking

        return parse_stacking(self.stacking, get_parent(self.material)) if self.stacking else []

    def defect_requests(self) -> list[DefectRequest]:
        if isinstance(self.defects, str):
            return parse_defects(self.defects)
        return list(self.defects)

    def as_dict(self) -> dict:
        data = asdict(self)
        data["defects"] = self.defects if isinstance(self.defects, str) else [asdict(d) for d in self.defects]
        return data

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TwinRequest:
        """The request that flat parameter values describe: the one assembly of a twin request.

        ``values`` maps the names of :data:`~..core.parameters.REQUEST_PARAMETERS` (a pair's
        entry is its tuple, e.g. ``detector_mrad=(50, 200)``) to values, as the CLI's options, the
        *Simulate* dock's fields and the dataset sampler give them; missing names take their
        defaults, and ``structure_path`` may name a structure file.
        """
        v = {**DEFAULTS, "detector_mrad": None, "drift_A_per_line": None, "grain_boundary": None, **values}
        inner, outer = v["detector_mrad"] or (v["detector_inner_mrad"], v["detector_outer_mrad"])
        drift = v["drift_A_per_line"] or (v["drift_x_A_per_line"], v["drift_y_A_per_line"])
        microscope = Microscope(
            energy_keV=v["energy_keV"], semiangle_mrad=v["semiangle_mrad"], defocus_A=v["defocus_A"], Cs_A=v["Cs_A"],
            detector_inner_mrad=inner, detector_outer_mrad=outer, source_size_A=v["source_size_A"],
        )
        imperfections = Imperfections(
            dose_e_per_A2=v["dose_e_per_A2"], read_noise=v["read_noise"], scan_jitter_A=v["scan_jitter_A"],
            drift_A_per_line=(float(drift[0]), float(drift[1])), nonlinear_drift_A=v["nonlinear_drift_A"],
            contamination=v["contamination"], probe_current_variation=v["probe_current_variation"],
        )
        gb = v["grain_boundary"]
        structure = v.get("structure_path")
        return cls(
            material=v["material"], defects=v["defects"], alloy=v.get("alloy") or "", fov_A=v["fov_A"], pixel_size_A=v["pixel_size_A"],
            method=v["method"], seed=v["seed"], structure_path=str(structure) if structure else None,
            rotation_deg=v["rotation_deg"],
            grain_boundary=GrainBoundary(rotation_deg=gb[0], separation_A=gb[1]) if gb is not None else None,
            n_holes=v["n_holes"], stacking=v.get("stacking") or "", microscope=microscope, imperfections=imperfections,
            frozen_phonons=v["frozen_phonons"], phonon_sigma_A=v["phonon_sigma_A"],
            calibration_dopants=tuple(v.get("calibration_dopants") or ()),
        )


@dataclass
class Twin:
    """A simulated image with its ground truth."""

    image: np.ndarray  # (ny, nx) float32; counts if a dose was given, else fraction of beam
    clean_image: np.ndarray  # noise-free, undistorted
    labels: np.ndarray  # (ny, nx) uint8 class ids
    pixel_size_A: tuple[float, float]  # (y, x)
    atoms: pd.DataFrame  # x_A, y_A, z_A, element (image frame)
    defects: pd.DataFrame  # x_A, y_A, defect_class, class_id, element (image frame)
    sites: pd.DataFrame  # x_A, y_A, sublattice, defect_class (image frame)
    settings: dict
    lattice: Lattice
    contamination_mask: np.ndarray | None = None  # (ny, nx) bool: amorphous carbon patches, when simulated
    phase_labels: np.ndarray | None = None  # (ny, nx) uint8: 1 + index in stacking.PHASES, when stacked

    @property
    def extent_xy_A(self) -> tuple[float, float]:
        """Field of view (x, y) in Å, ordered like positions (``x_A``, ``y_A``) as its name says;
        ``pixel_size_A`` is (y, x), ordered like the image's axes and a napari layer's ``scale``."""
        return (self.image.shape[1] * self.pixel_size_A[1], self.image.shape[0] * self.pixel_size_A[0])

    def truth_table(self) -> pd.DataFrame:
        """``x_A, y_A, defect_class`` of every defect (the truth.csv columns)."""
        return self.defects[["x_A", "y_A", "defect_class"]].copy()

    @property
    def files(self) -> tuple[str, ...]:
        """What :meth:`save` writes: :data:`TWIN_FILES`, and phases.tif for a stacked twin."""
        return TWIN_FILES + ((PHASE_TRUTH_FILE,) if self.phase_labels is not None else ())

    def save(self, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
        """Write image.tif, labels.tif, truth.csv, atoms.csv, sites.csv and settings.json (and a stacked
        twin's truth phase map, phases.tif), atomically.

        Every file is written into a staging folder and the set appears in ``out_dir`` together when
        complete (:class:`~..io.atomic.StagedOutput`): an interruption leaves the previous result or
        nothing.  Existing files of these names are refused unless ``overwrite``; other files in
        ``out_dir`` are never touched.
        """
        from ..io.atomic import StagedOutput
        from ..io.writer import LABELS_TITLE, write_calibrated_tiff

        with StagedOutput(out_dir, self.files, overwrite=overwrite, replaces=(PHASE_TRUTH_FILE,)) as stage:
            write_calibrated_tiff(stage / "image.tif", self.image.astype(np.float32), self.pixel_size_A,
                                  title="digital twin HAADF")
            write_calibrated_tiff(stage / "labels.tif", self.labels, self.pixel_size_A, title=LABELS_TITLE)
            self.truth_table().to_csv(stage / "truth.csv", index=False)
            self.atoms.to_csv(stage / "atoms.csv", index=False)
            self.sites.to_csv(stage / "sites.csv", index=False)
            (stage / "settings.json").write_text(json.dumps(self.settings, indent=2, default=str))
            if self.phase_labels is not None:
                from .stacking import PHASES

                write_calibrated_tiff(stage / PHASE_TRUTH_FILE, self.phase_labels, self.pixel_size_A,
                                      title="truth phase map (" + ", ".join(f"{i + 1} {p}" for i, p in
                                                                          enumerate(PHASES)) + ")")
        return [Path(out_dir) / n for n in self.files]


def check_twin_values(values: Mapping[str, Any], option_of=lambda p: p.flag, structure: bool = False) -> dict:
    """Check a twin's parameter values before any work; one-line ValueErrors naming ``option_of(p)``.

    Every number against its bound (:func:`~..core.parameters.check_values`), the detector angles in
    order, then what needs several values together: the image's size in memory, the defect list
    and the number of holes the field can hold (not for a ``structure`` file, whose cell sets them).
    Returns the checked values.  The CLI names options (``--fov``), the dock its fields' labels.
    """
    from ..core.validation import check_holes, check_twin_size

    checked = check_values(REQUEST_PARAMETERS, values, option_of)
    if not structure:
        names = {p.name: option_of(p) for p in REQUEST_PARAMETERS if not isinstance(p, Pair)}
        check_twin_size(checked["fov_A"], checked["pixel_size_A"], option_fov=names["fov_A"],
                        option_pixel=names["pixel_size_A"])
        parent = get_parent(checked["material"])
        parse_defects(checked["defects"])
        if checked.get("alloy"):
            from .alloys import parse_alloy

            try:
                parse_alloy(checked["alloy"], parent)
            except ValueError as exc:
                raise ValueError(f"{names['alloy']}: {str(exc).removeprefix('alloy: ')}") from None
        check_holes(checked["n_holes"], checked["fov_A"], parent.a_A, option=names["n_holes"])
    return checked


def label_mask(shape: tuple[int, int], pixel_size_A: tuple[float, float], x_A, y_A, class_ids,
               radius_A: float = DEFECT_RADIUS_A, periodic: bool = False) -> np.ndarray:
    """Discs of ``radius_A`` around each defect position, valued by class id (0 elsewhere)."""
    ny, nx = shape
    py, px = pixel_size_A
    mask = np.zeros(shape, dtype=np.uint8)
    ry, rx = int(np.ceil(radius_A / py)) + 1, int(np.ceil(radius_A / px)) + 1
    for x, y, cid in zip(x_A, y_A, class_ids):
        i0, j0 = int(round(y / py)), int(round(x / px))
        ii = np.arange(i0 - ry, i0 + ry + 1)
        jj = np.arange(j0 - rx, j0 + rx + 1)
        inside = np.hypot((ii * py - y)[:, None], (jj * px - x)[None, :]) <= radius_A
        if periodic:
            ii, jj = ii % ny, jj % nx
        else:
            ok_i, ok_j = (ii >= 0) & (ii < ny), (jj >= 0) & (jj < nx)
            inside = inside[np.ix_(ok_i, ok_j)]
            ii, jj = ii[ok_i], jj[ok_j]
        block = mask[np.ix_(ii, jj)]
        block[inside] = cid
        mask[np.ix_(ii, jj)] = block
    return mask


def structure_parent(atoms, name: str = "the structure") -> Parent:
    """The parent a user's structure is a defective piece of: its commonest metal and commonest chalcogen
    (a MoS2 cell with one Se column and one W is MoS2, not MoSe2 or WS2), with the lattice constant measured
    in the cell (the median distance between neighbouring metal columns, projected on the plane) rather than
    the table's; the table's thickness and phase where the parent is one of the 84.

    The fast mode's calibration and the column classes are the parent's: taking the heaviest chalcogen present
    calibrated such a MoS2 cell as MoSe2 and read its S atoms as metals (8.7 % off abTEM on its W column)."""
    from collections import Counter
    from dataclasses import replace as _replace

    from scipy.spatial import cKDTree

    from .parents import CHALCOGENS

    counts = Counter(atoms.get_chemical_symbols())
    chalcogens = [(n, el) for el, n in counts.items() if el in CHALCOGENS]
    metals = [(n, el) for el, n in counts.items() if el not in CHALCOGENS]
    if not chalcogens or not metals:
        raise ValueError(f"{name}: no metal and chalcogen found ({sorted(counts)})")
    chalcogen = max(chalcogens, key=lambda t: (t[0], t[1]))[1]
    metal = max(metals, key=lambda t: (t[0], t[1]))[1]
    symbols = np.array(atoms.get_chemical_symbols())
    xy = atoms.positions[symbols == metal, :2]
    box = np.array([atoms.cell[0, 0], atoms.cell[1, 1]], float)
    a = None
    if len(xy) >= 2 and np.all(box > 0):
        d, _ = cKDTree(np.mod(xy, box), boxsize=box).query(np.mod(xy, box), k=2)
        nearest = d[:, 1]
        if np.isfinite(nearest).all() and np.median(nearest) > 2.0:  # metal columns lie ≥ 2.5 Å apart in MX2
            a = float(np.median(nearest))
    try:
        parent = get_parent(f"{metal}{chalcogen}2")
        return _replace(parent, a_A=a) if a is not None and abs(a / parent.a_A - 1) > 1e-4 else parent
    except ValueError:
        if a is None:
            raise ValueError(f"{name}: cannot measure the lattice constant from its {metal} columns") from None
        return Parent(f"{metal}{chalcogen}2", "2H", metal, chalcogen, a, 0.0, name)


def _lattice_for(request: TwinRequest, rng: np.random.Generator) -> tuple[Lattice, Parent]:
    if request.structure_path:
        from ase.io import read

        try:
            atoms = read(request.structure_path)
        except Exception as exc:
            raise ValueError(f"{request.structure_path}: ase cannot read this structure ({exc})") from exc
        if atoms.cell.rank < 2 or abs(atoms.cell[0, 1]) > 1e-6 or abs(atoms.cell[1, 0]) > 1e-6:
            raise ValueError(
                f"{request.structure_path}: the image covers the periodic cell, which must be orthogonal in x-y "
                "(a along x, b along y); convert the cell first (e.g. ase.build.make_supercell)."
            )
        parent = structure_parent(atoms, str(request.structure_path))
        atoms.positions[:, 2] += 2.0 - atoms.positions[:, 2].min()
        atoms.cell[2, 2] = max(atoms.cell[2, 2], atoms.positions[:, 2].max() + 2.0)
        atoms.pbc = True
        return lattice_from_atoms(atoms, parent, periodic=True), parent
    parent = get_parent(request.material)
    lattice = build_lattice(parent, request.fov_A, rotation_deg=request.rotation_deg,
                            grain_boundary=request.grain_boundary)
    if request.n_holes:
        add_holes(lattice, request.n_holes, rng)
    return lattice, parent


def _extent_notes(request: TwinRequest, lattice: Lattice, extent) -> list[str]:
    """What to say when the image is not the field of view asked for: an unrotated lattice is a periodic cell (abTEM
    needs one, and the fast mode images the same cell), so the field is rounded up to whole orthogonal cells
    (a × a√3)."""
    if request.structure_path or not lattice.periodic:
        return []
    fx, fy = (float(v) for v in extent)
    if max(abs(fx / request.fov_A - 1), abs(fy / request.fov_A - 1)) <= 0.02:
        return []
    return [f"the image is a periodic cell of whole orthogonal cells ({lattice.parent.a_A:g} × "
            f"{lattice.parent.a_A * 3 ** 0.5:.2f} Å): the {request.fov_A:g} Å field of view became {fx:.1f} × {fy:.1f} Å "
            f"(x × y); a rotated lattice images exactly the field asked for"]


def _standard_examples(parent: Parent, z_metal_A: float) -> dict[str, list[tuple[str, float]]]:
    """Column types every calibration of a parent includes, so one calibration serves most twins.

    Intact M and X2, X1 (V_X, X_i, and X_M which projects alike), M+X (M_X), X+X' (S_X with the
    default heavier substituent), the default dopant (TM_D) and M+M (a TM_A adatom of the host).
    """
    from .defects import _HEAVIER_CHALCOGEN, default_dopant

    m, x = parent.metal, parent.chalcogen
    top, bottom = z_metal_A + parent.thickness_A / 2, z_metal_A - parent.thickness_A / 2
    columns = [[(m, z_metal_A)], [(x, top), (x, bottom)], [(x, top)], [(m, top), (x, bottom)],
               [(_HEAVIER_CHALCOGEN[x], top), (x, bottom)], [(default_dopant(parent), z_metal_A)],
               [(m, z_metal_A), (m, z_metal_A + 1.5 * parent.thickness_A)]]
    return {signature([s for s, _ in col]): col for col in columns}


def simulate_twin(request: TwinRequest, progress: ProgressFn = no_progress,
                  cancelled: CancelFn = never) -> Twin:
    """Build and image one twin.

    Parameters
    ----------
    request : TwinRequest
    progress : callable(fraction, message), optional
    cancelled : callable() -> bool, optional
        Polled between steps; a True return raises :class:`~.simulate.Cancelled`.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(request.seed)
    progress(0.0, "building the structure")
    lattice, parent = _lattice_for(request, rng)
    alloyed = {}
    if request.alloy:  # its own random stream: twins without an alloy stay as they were
        from .alloys import apply_alloy

        alloyed = apply_alloy(lattice, request.alloy_spec(), np.random.default_rng([request.seed, 7331]))
    phases = request.stacking_phases()
    if phases:
        from .stacking import mark_stripes

        base = lattice.atoms.copy()  # the upper layers are intact copies of the first
        mark_stripes(lattice, phases)
    placed = place_defects(lattice, [] if request.structure_path else request.defect_requests(), seed=request.seed)
    lattice.finalise()
    stacked = None
    if phases:
        from .stacking import apply_stacking

        stacked = apply_stacking(lattice, phases, base)
    check_cancelled(cancelled, "simulation")
    extent = lattice.extent_xy_A
    nx = max(8, int(round(extent[0] / request.pixel_size_A)))
    ny = max(8, int(round(extent[1] / request.pixel_size_A)))
    pixel = (extent[1] / ny, extent[0] / nx)
    clean, calibration = _render(request, lattice, parent, (ny, nx), pixel, progress, cancelled,
                                 None if stacked is None else stacked.upper_layers)
    carbon = None
    if request.imperfections.amorphous_carbon_coverage > 0:
        carbon, image_of_carbon = _amorphous_carbon(request, lattice, parent, calibration, (ny, nx), pixel, rng)
        clean = clean + image_of_carbon
    progress(0.9, "imperfections")
    state = apply_imperfections(clean, pixel, lattice.periodic, request.imperfections, rng)
    phase_labels = None
    if stacked is not None:
        from .stacking import stripe_labels

        phase_labels = stripe_labels((ny, nx), pixel, stacked)
    if state.distorted and (carbon is not None or phase_labels is not None):  # truth masks move with the scan
        from scipy.ndimage import map_coordinates

        rows, cols = np.mgrid[0:ny, 0:nx].astype(float)
        at = [rows + state.offset_y_A / pixel[0], cols + state.offset_x_A / pixel[1]]
        mode = "grid-wrap" if lattice.periodic else "nearest"
        if carbon is not None:
            carbon = map_coordinates(carbon.astype(np.uint8), at, order=0, mode=mode).astype(bool)
        if phase_labels is not None:
            phase_labels = map_coordinates(phase_labels, at, order=0, mode=mode).astype(np.uint8)
    sites, defects, atoms_table, labels = _ground_truth(lattice, placed, state, (ny, nx), pixel,
                                                        None if stacked is None else stacked.upper_layers)
    settings = {
        "request": request.as_dict(),
        "parent": asdict(parent),
        "parent_citation": "see napari_mx2_defects.twin.parents (c2dm, Rasmussen & Thygesen 2015)",
        "extent_xy_A": list(extent),
        "pixel_size_A": list(pixel),
        "periodic": lattice.periodic,
        "messy": {**lattice.messy, "holes": lattice.holes},
        "notes": list(placed.notes) + _extent_notes(request, lattice, extent),
        "alloy_atoms": alloyed,
        "image_units": "counts (detected electrons)" if state.counts else "fraction of incident beam",
        "calibration": None if calibration is None else calibration.to_json(),
        "class_ids": {name: cid for name, cid in CLASS_IDS.items()},
        "seconds": time.perf_counter() - t0,
    }
    progress(1.0, "done")
    return Twin(
        image=state.image.astype(np.float32),
        clean_image=clean.astype(np.float32),
        labels=labels,
        pixel_size_A=pixel,
        atoms=atoms_table,
        defects=defects,
        sites=sites,
        settings=settings,
        lattice=lattice,
        contamination_mask=carbon,
        phase_labels=phase_labels,
    )


def _amorphous_carbon(request: TwinRequest, lattice: Lattice, parent: Parent, calibration, shape, pixel, rng):
    """The patch mask and the fast-mode image of the carbon atoms in it.

    A carbon atom's kernel is the calibrated single-chalcogen column's, scaled by (Z_C / Z_X)^γ with γ
    the Z exponent the same calibration gives between the host metal and one chalcogen (abTEM at
    these optics; no extra reference run).
    """
    from ase.data import atomic_numbers

    from .imperfections import amorphous_carbon, patch_mask

    if calibration is None:
        raise ValueError("amorphous carbon patches need the fast mode (method 'fast')")
    single_x, metal = signature([parent.chalcogen]), signature([parent.metal])
    kernels = calibration.kernels_A2
    if single_x not in kernels or metal not in kernels:
        raise ValueError("amorphous carbon patches need a twin built from a parent (not a structure file)")
    z_x, z_m = atomic_numbers[parent.chalcogen], atomic_numbers[parent.metal]
    gamma = np.log(sum(kernels[metal]) / sum(kernels[single_x])) / np.log(z_m / z_x)
    weight = np.asarray(kernels[single_x], float) * (atomic_numbers["C"] / z_x) ** gamma
    imp = request.imperfections
    mask = patch_mask(shape, pixel, imp.amorphous_carbon_coverage, imp.contamination_length_A, lattice.periodic, rng)
    x, y = amorphous_carbon(mask, pixel, imp.amorphous_carbon_atoms_per_A2, rng)
    image = render_columns(x, y, np.tile(weight, (len(x), 1)), shape, lattice.extent_xy_A, request.microscope,
                           lattice.periodic)
    return mask, image


def _render(request: TwinRequest, lattice: Lattice, parent: Parent, shape: tuple[int, int],
            pixel: tuple[float, float], progress: ProgressFn, cancelled: CancelFn, upper=None):
    """The noise-free image: the calibrated fast mode, or abTEM multislice/PRISM; and the calibration.

    ``upper`` (ase Atoms) are the layers stacked over the first (:mod:`.stacking`): abTEM images the
    whole stack; the fast mode adds their columns, each with its own column type's kernel.
    """
    atoms = lattice.atoms
    ny, nx = shape
    extent = lattice.extent_xy_A
    columns = projected_columns(atoms, periodic=lattice.periodic)
    upper_columns = None
    if upper is not None and len(upper):
        # each layer's own columns: atoms of different layers never share a column (the fast mode adds layers)
        tags = upper.get_tags()
        upper_layers = [upper[tags == t] for t in np.unique(tags)]
        upper_parts = [(layer, projected_columns(layer, periodic=lattice.periodic)) for layer in upper_layers]
        upper_columns = pd.concat([cols for _, cols in upper_parts], ignore_index=True)
    m = request.microscope
    if request.method != "fast":
        if not lattice.periodic:
            raise ValueError("abTEM methods need a periodic cell")
        if upper_columns is not None:
            stack = atoms.copy()
            stack.cell[2, 2] = max(float(atoms.cell[2, 2]), float(upper.cell[2, 2]))
            atoms = stack + upper
        clean = simulate_abtem(atoms, m, request.method, (ny, nx), phonons=request.phonons,
                               progress=lambda f, msg: progress(0.05 + 0.8 * f, msg), cancelled=cancelled)
        return apply_source_size(clean, pixel, m, lattice.periodic), None
    standard = _standard_examples(parent, lattice.z_metal_A) if not request.structure_path else {}
    for element in request.calibration_dopants if standard else ():
        standard.setdefault(signature([element]), [(element, lattice.z_metal_A)])
    examples = dict(standard)
    if request.alloy:  # every column the alloy's species make, so its forward model shares the calibration
        from .alloys import alloy_examples

        examples.update(alloy_examples(*request.alloy_spec().species(parent), lattice.z_metal_A, parent.thickness_A))
    for sig, example in column_examples(atoms, columns).items():
        examples.setdefault(sig, example)
    if upper_columns is not None:
        for layer, cols in upper_parts:
            for sig, example in column_examples(layer, cols).items():
                examples.setdefault(sig, example)
        columns = pd.concat([columns, upper_columns], ignore_index=True)
    calibration = _calibration(request, parent, standard, examples, progress, cancelled)
    check_cancelled(cancelled, "simulation")
    progress(0.7, "rendering (fast incoherent mode)")
    clean = render_columns(columns.x_A, columns.y_A, calibration.column_weights(columns.signature), (ny, nx),
                           extent, m, lattice.periodic)  # the source size is applied while rendering
    return clean, calibration


def _calibration(request: TwinRequest, parent: Parent, standard: dict, examples: dict, progress: ProgressFn,
                 cancelled: CancelFn):
    """The parent's standard kernels at these optics, and the kernels of any other column this twin holds
    from a calibration cell with those columns planted: every twin of a parent and optics shares the
    standard kernels, and no twin depends on what was calibrated before it."""
    def calibrate(wanted, start, span):
        return calibrate_column_weights(parent, request.microscope, wanted, method=request.calibration_method,
                                        phonons=request.phonons, cancelled=cancelled,
                                        progress=lambda f, msg: progress(start + span * f, msg))

    if not standard:
        return calibrate(examples, 0.05, 0.6)
    calibration = calibrate(standard, 0.05, 0.3)
    if set(examples) - set(standard):
        calibration = calibration.extended(calibrate(examples, 0.35, 0.3))
    return calibration


def _ground_truth(lattice: Lattice, placed, state, shape: tuple[int, int], pixel: tuple[float, float],
                  upper=None):
    """Sites, defects, atoms and label mask in the (possibly distorted) image frame; each site's column
    signature (``""`` for an emptied or hollow site) in ``sites.species``."""
    atoms = lattice.atoms
    sites = lattice.sites.copy()
    sites["defect_class"] = ""
    symbols = np.asarray(atoms.get_chemical_symbols(), dtype=object)
    names: dict[tuple, str] = {}  # one signature per distinct occupancy (a million-atom twin has a handful)
    sites["species"] = [names.setdefault(key, signature(list(key))) for key in
                        (tuple(symbols[g]) for g in lattice.site_atoms)]
    if len(placed.table):
        sites.loc[placed.table.site.to_numpy(), "defect_class"] = placed.table.defect_class.to_numpy()
    sx, sy = distorted_positions(state, sites.x_A.to_numpy(), sites.y_A.to_numpy())
    sites["x_A"], sites["y_A"] = sx, sy
    defects = placed.table.copy()
    if len(defects):
        dx, dy = distorted_positions(state, defects.x_A.to_numpy(), defects.y_A.to_numpy())
        defects["x_A"], defects["y_A"] = dx, dy
    positions, elements = atoms.positions, atoms.get_chemical_symbols()
    layer = np.zeros(len(atoms), int)
    if upper is not None and len(upper):  # the stacked layers' atoms too, with their layer (0 = the first)
        positions = np.vstack([positions, upper.positions])
        elements = elements + upper.get_chemical_symbols()
        layer = np.concatenate([layer, upper.get_tags()])
    ax, ay = distorted_positions(state, positions[:, 0], positions[:, 1])
    atoms_table = pd.DataFrame({"x_A": ax, "y_A": ay, "z_A": positions[:, 2], "element": elements})
    if upper is not None:
        atoms_table["layer"] = layer
    labels = label_mask(shape, pixel, defects.x_A, defects.y_A, defects.class_id, periodic=lattice.periodic) \
        if len(defects) else np.zeros(shape, np.uint8)
    return sites, defects.drop(columns=["site"]), atoms_table, labels
