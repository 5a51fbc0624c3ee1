"""Parent monolayers on orthogonal supercells, their projected sites, and messy conditions.

A :class:`Lattice` holds the atoms (ase) and the table of projected sites:
metal columns (``M``), chalcogen columns (``X``; two atoms in 2H, one in 1T)
and empty hollow sites (``H``, where interstitials go).  Positions are in Å,
x along image columns, y along image rows, z along the beam.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from ase import Atom, Atoms
from ase.build import make_supercell, mx2
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .parents import CHALCOGENS, Parent

__all__ = ["GrainBoundary", "Lattice", "add_holes", "build_lattice", "lattice_from_atoms"]

#: Atoms closer than this in projection share a column (Å).
COLUMN_TOLERANCE_A = 0.3
#: Vacuum above and below the layer for the potential (Å); abTEM needs some room.
VACUUM_A = 2.0


@dataclass
class GrainBoundary:
    """Two grains meeting along a vertical line.

    Attributes
    ----------
    rotation_deg : float
        Rotation of the right grain relative to the left one.
    separation_A : float
        Gap between the grains (positive) or overlap (negative), −3 to 3 Å in
        the digital-twin paper.
    position : float
        Boundary position as a fraction of the field-of-view width.
    """

    rotation_deg: float = 13.0
    separation_A: float = 0.0
    position: float = 0.5

    def __post_init__(self) -> None:
        if not -3.0 <= self.separation_A <= 3.0:
            raise ValueError(f"grain-boundary separation {self.separation_A} Å is outside −3…3 Å")
        if not 0.1 <= self.position <= 0.9:
            raise ValueError("grain-boundary position must be between 0.1 and 0.9 of the width")


@dataclass
class Lattice:
    """Atoms plus projected sites of one twin."""

    atoms: Atoms
    parent: Parent
    sites: pd.DataFrame
    site_atoms: list[np.ndarray]  # atom indices of each site (empty for hollow sites)
    extent_xy_A: tuple[float, float]  # (x, y)
    periodic: bool
    z_metal_A: float
    messy: dict = field(default_factory=dict)
    holes: list[dict] = field(default_factory=list)
    _removed: set = field(default_factory=set)

    @property
    def area_A2(self) -> float:
        return float(self.extent_xy_A[0] * self.extent_xy_A[1])

    def interior_mask(self) -> np.ndarray:
        """Sites where a defect may go: away from cropped edges, holes and the octahedral (1T) stripes
        of a 2H parent (:mod:`.stacking`), whose sites the parent's defect classes do not describe."""
        ok = ~self.sites["in_hole"].to_numpy()
        if "phase" in self.sites and self.parent.phase.upper() == "2H":
            ok &= ~self.sites["phase"].astype(str).str.endswith("1T").to_numpy()
        if not self.periodic:
            margin = self.parent.a_A
            x, y = self.sites.x_A.to_numpy(), self.sites.y_A.to_numpy()
            width, height = self.extent_xy_A
            ok &= (x > margin) & (y > margin) & (x < width - margin) & (y < height - margin)
        return ok

    def remove(self, index: int) -> None:
        """Mark atom ``index`` for removal (indices stay valid until :meth:`finalise`)."""
        self._removed.add(int(index))

    def add(self, atom: Atom) -> None:
        """Append an atom (existing indices stay valid)."""
        self.atoms.append(atom)

    def finalise(self) -> None:
        """Delete the atoms marked by :meth:`remove` and refresh the site table."""
        if not self._removed:
            return
        keep = np.ones(len(self.atoms), dtype=bool)
        keep[list(self._removed)] = False
        new_index = np.cumsum(keep) - 1
        self.atoms = self.atoms[keep]
        self.site_atoms = _reindex_groups(self.site_atoms, keep, new_index)
        self._removed = set()


def split_by_counts(values: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """``values`` cut into consecutive groups of ``counts`` (``np.split`` without its per-piece overhead:
    slicing is about five times faster for the tens of thousands of columns of a large twin)."""
    ends = np.cumsum(counts).tolist()
    starts = [0, *ends[:-1]]
    return [values[a:b] for a, b in zip(starts, ends)]


def _reindex_groups(groups: list[np.ndarray], keep: np.ndarray, new_index: np.ndarray) -> list[np.ndarray]:
    """Atom-index groups after deleting the atoms not in ``keep`` (vectorised over all groups)."""
    lengths = np.fromiter((len(g) for g in groups), dtype=int, count=len(groups))
    if not lengths.sum():
        return [np.zeros(0, int) for _ in groups]
    flat = np.concatenate([np.asarray(g, int) for g in groups])
    owner = np.repeat(np.arange(len(groups)), lengths)
    alive = keep[flat]
    new_lengths = np.bincount(owner[alive], minlength=len(groups))
    return split_by_counts(new_index[flat[alive]], new_lengths)


def _orthogonal_parent(parent: Parent) -> Atoms:
    kind = "2H" if parent.phase.upper() == "2H" else "1T"
    cell = mx2(
        formula=parent.formula,
        kind=kind,
        a=parent.a_A,
        thickness=parent.thickness_A,
        size=(1, 1, 1),
        vacuum=VACUUM_A,
    )
    # (a, 0) and a1 + 2 a2 = (0, a√3): a rectangular cell with two formula units
    return make_supercell(cell, [[1, 0, 0], [1, 2, 0], [0, 0, 1]])


def _rotated_grain(parent: Parent, extent: tuple[float, float], angle_deg: float, centre: np.ndarray) -> Atoms:
    unit = _orthogonal_parent(parent)
    radius = np.hypot(*extent) / 2 + 2 * parent.a_A
    lx, ly = unit.cell.lengths()[:2]
    nx, ny = int(np.ceil(2 * radius / lx)) + 1, int(np.ceil(2 * radius / ly)) + 1
    big = unit.repeat((nx, ny, 1))
    pos = big.positions.copy()
    pos[:, :2] -= np.array([nx * lx, ny * ly]) / 2
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    pos[:, :2] = pos[:, :2] @ rot.T + centre
    big.positions = pos
    return big


def build_lattice(
    parent: Parent,
    fov_A: float | tuple[float, float] | None = None,
    cells: tuple[int, int] | None = None,
    rotation_deg: float = 0.0,
    grain_boundary: GrainBoundary | None = None,
) -> Lattice:
    """Build a pristine parent monolayer covering a field of view.

    Parameters
    ----------
    parent : Parent
        The parent lattice.
    fov_A : float or (float, float), optional
        Field of view (x, y) in Å.  Without rotation or grain boundary the
        cell is a periodic orthogonal supercell (a × a√3 repeated) at least
        this large; otherwise exactly this large and non-periodic.
    cells : (int, int), optional
        Number of orthogonal cells (x, y) instead of ``fov_A``.
    rotation_deg : float
        In-plane lattice rotation.
    grain_boundary : GrainBoundary, optional
        Two grains; the right one is rotated by ``grain_boundary.rotation_deg``
        relative to the left one (which has ``rotation_deg``).
    """
    lx, ly = parent.a_A, parent.a_A * np.sqrt(3)  # the orthogonal cell (a, a√3)
    if cells is None:
        if fov_A is None:
            raise ValueError("give a field of view (fov_A) or a number of cells")
        fx, fy = (fov_A, fov_A) if np.isscalar(fov_A) else fov_A
        if fx <= 0 or fy <= 0:
            raise ValueError(f"field of view must be positive, got {fov_A}")
        if not (np.isfinite(fx) and np.isfinite(fy)) or fx * fy > 2.5e7:
            raise ValueError(f"field of view {fx:g}×{fy:g} Å is too large for a twin (max 5000×5000 Å)")
        cells = (max(1, int(np.ceil(fx / lx - 1e-6))), max(1, int(np.ceil(fy / ly - 1e-6))))
    messy: dict = {"rotation_deg": float(rotation_deg)}
    if rotation_deg == 0.0 and grain_boundary is None:
        return _copy_lattice(_periodic_lattice(parent, (int(cells[0]), int(cells[1]))))
    else:
        unit = _orthogonal_parent(parent)
        extent = (float(fx), float(fy)) if fov_A is not None else (cells[0] * lx, cells[1] * ly)
        centre = np.array(extent) / 2
        grain_a = _rotated_grain(parent, extent, rotation_deg, centre)
        grain_a.set_tags(np.zeros(len(grain_a), dtype=int))
        if grain_boundary is None:
            atoms = grain_a
        else:
            x_gb = grain_boundary.position * extent[0]
            half = grain_boundary.separation_A / 2
            grain_b = _rotated_grain(parent, extent, rotation_deg + grain_boundary.rotation_deg, centre)
            grain_b.set_tags(np.ones(len(grain_b), dtype=int))
            atoms = grain_a[grain_a.positions[:, 0] < x_gb - half] + grain_b[grain_b.positions[:, 0] >= x_gb + half]
            messy["grain_boundary"] = {
                "x_A": x_gb,
                "rotation_deg": grain_boundary.rotation_deg,
                "separation_A": grain_boundary.separation_A,
            }
        inside = (
            (atoms.positions[:, 0] >= 0)
            & (atoms.positions[:, 0] < extent[0])
            & (atoms.positions[:, 1] >= 0)
            & (atoms.positions[:, 1] < extent[1])
        )
        atoms = atoms[inside]
        atoms.set_cell([extent[0], extent[1], unit.cell[2, 2]])
        atoms.pbc = False
        periodic = False
    return lattice_from_atoms(atoms, parent, extent=extent, periodic=periodic, messy=messy)


#: Pristine periodic lattices up to this many atoms are kept per process (a dataset builds the same
#: supercell for every twin; the grouping into columns and hollow sites is then done once).
PRISTINE_CACHE_MAX_ATOMS = 200_000
_PRISTINE_CACHE: dict = {}


def _periodic_lattice(parent: Parent, cells: tuple[int, int]) -> Lattice:
    """The pristine periodic supercell of ``cells`` orthogonal cells (cached when small; never modified)."""
    key = (parent, cells)
    if key in _PRISTINE_CACHE:
        return _PRISTINE_CACHE[key]
    atoms = _orthogonal_parent(parent).repeat((cells[0], cells[1], 1))
    atoms.wrap()
    atoms.info["orthogonal_cells"] = cells
    extent = (float(atoms.cell[0, 0]), float(atoms.cell[1, 1]))
    lattice = lattice_from_atoms(atoms, parent, extent=extent, periodic=True, messy={"rotation_deg": 0.0})
    if len(atoms) <= PRISTINE_CACHE_MAX_ATOMS:
        if len(_PRISTINE_CACHE) >= 8:
            _PRISTINE_CACHE.pop(next(iter(_PRISTINE_CACHE)))
        _PRISTINE_CACHE[key] = lattice
    return lattice


def _copy_lattice(lattice: Lattice) -> Lattice:
    """An independent copy for editing (the per-site atom-index arrays are shared: they are only ever
    replaced, never changed in place)."""
    return Lattice(atoms=lattice.atoms.copy(), parent=lattice.parent, sites=lattice.sites.copy(),
                   site_atoms=list(lattice.site_atoms), extent_xy_A=lattice.extent_xy_A,
                   periodic=lattice.periodic,
                   z_metal_A=lattice.z_metal_A, messy=dict(lattice.messy), holes=[], _removed=set())


def _wrap(xy: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """Positions folded into [0, box) (unchanged when not periodic)."""
    if box is None:
        return xy
    wrapped = np.mod(xy, box)
    return np.where(wrapped >= box, 0.0, wrapped)


def lattice_from_atoms(
    atoms: Atoms,
    parent: Parent,
    extent: tuple[float, float] | None = None,
    periodic: bool = True,
    messy: dict | None = None,
) -> Lattice:
    """Group atoms into projected columns and find the empty hollow sites.

    Vectorised (k-d tree pairs and connected components; no loop over atoms), so a million-atom
    lattice takes seconds.  Sites are ordered metals first, each by its lowest atom index; a site's
    position is that of its first atom (a metal where the column holds one).
    """
    atoms = atoms.copy()
    if extent is None:
        extent = (float(atoms.cell[0, 0]), float(atoms.cell[1, 1]))
    n = len(atoms)
    # a column holding any metal is a metal site; a Se in an MoS2 cell is a chalcogen (substitution), not a metal
    metal_mask = np.array([s not in CHALCOGENS for s in atoms.get_chemical_symbols()], dtype=bool)
    z_metal = float(np.median(atoms.positions[metal_mask, 2])) if metal_mask.any() else float(
        np.mean(atoms.positions[:, 2]) if n else 0.0
    )
    xy = atoms.positions[:, :2]
    tags = atoms.get_tags()
    box = np.array(extent) if periodic else None
    tree = cKDTree(_wrap(xy, box), boxsize=box)
    pairs = tree.query_pairs(COLUMN_TOLERANCE_A, output_type="ndarray")
    n_cols, label = connected_components(coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                                                    shape=(n, n)), directed=False)
    # seed of a column: its lowest-index metal, else its lowest-index atom
    rank = np.where(metal_mask, np.arange(n), n + np.arange(n))
    seed_rank = np.full(n_cols, 2 * n)
    np.minimum.at(seed_rank, label, rank)
    seed = np.where(seed_rank >= n, seed_rank - n, seed_rank)
    has_metal = seed_rank < n
    col_order = np.lexsort((seed, ~has_metal))  # metals first, then by index
    new_id = np.empty(n_cols, int)
    new_id[col_order] = np.arange(n_cols)
    counts = np.bincount(label, minlength=n_cols)
    atom_order = np.argsort(new_id[label], kind="stable")
    groups = split_by_counts(atom_order, counts[col_order]) if n else []
    seeds = seed[col_order]
    sites = pd.DataFrame({"x_A": xy[seeds, 0].astype(float), "y_A": xy[seeds, 1].astype(float),
                          "sublattice": np.where(has_metal[col_order], "M", "X"),
                          "n_atoms": counts[col_order], "grain": tags[seeds].astype(int)})
    hollows = _hollow_sites(sites, xy, parent, box, extent, periodic)
    if len(hollows):
        h_sites = pd.DataFrame({"x_A": hollows[:, 0], "y_A": hollows[:, 1], "sublattice": "H", "n_atoms": 0,
                                "grain": -1})
        sites = pd.concat([sites, h_sites], ignore_index=True)
        groups += [np.zeros(0, int) for _ in range(len(hollows))]
    sites["in_hole"] = False
    return Lattice(
        atoms=atoms,
        parent=parent,
        sites=sites,
        site_atoms=groups,
        extent_xy_A=(float(extent[0]), float(extent[1])),
        periodic=periodic,
        z_metal_A=z_metal,
        messy=dict(messy or {}),
    )


def _hollow_sites(sites: pd.DataFrame, xy: np.ndarray, parent: Parent, box, extent, periodic: bool) -> np.ndarray:
    """Hollow sites: opposite each metal's nearest chalcogen columns, where nothing is projected."""
    m_xy = sites.loc[sites.sublattice == "M", ["x_A", "y_A"]].to_numpy()
    x_xy = sites.loc[sites.sublattice == "X", ["x_A", "y_A"]].to_numpy()
    if not len(m_xy) or not len(x_xy):
        return np.zeros((0, 2))
    bond = parent.a_A / np.sqrt(3)
    m_tree = cKDTree(_wrap(m_xy, box), boxsize=box)
    x_tree = cKDTree(_wrap(x_xy, box), boxsize=box)
    near = m_tree.sparse_distance_matrix(x_tree, 1.2 * bond, output_type="ndarray")
    near = np.sort(near, order=["i", "j"])
    d = x_xy[near["j"]] - m_xy[near["i"]]
    if periodic:
        d -= box * np.round(d / box)
    hollows = m_xy[near["i"]] - d
    if periodic:
        hollows = _wrap(hollows, box)
    if not len(hollows):
        return np.zeros((0, 2))
    dist, _ = cKDTree(_wrap(xy, box), boxsize=box).query(hollows)
    hollows = hollows[dist > 0.8 * bond]
    if not periodic:
        hollows = hollows[(hollows[:, 0] >= 0) & (hollows[:, 1] >= 0) & (hollows[:, 0] < extent[0])
                          & (hollows[:, 1] < extent[1])]
    if not len(hollows):
        return np.zeros((0, 2))
    # each hollow is found from up to three metals: keep the first of each group
    pairs = cKDTree(hollows, boxsize=box if periodic else None).query_pairs(0.3, output_type="ndarray")
    n_h = len(hollows)
    _, label = connected_components(coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])),
                                               shape=(n_h, n_h)), directed=False)
    _, first = np.unique(label, return_index=True)
    return hollows[np.sort(first)]


def add_holes(lattice: Lattice, n_holes: int, rng: np.random.Generator, atoms_range=(5, 30)) -> None:
    """Beam-damage holes: remove the 5–30 atoms nearest random points (in projection).

    Sites whose atoms are all removed are flagged ``in_hole`` (no defect goes
    there; the analysis masks them).  Each hole is recorded in ``lattice.holes``.
    """
    if n_holes <= 0:
        return
    lo, hi = atoms_range
    if not 1 <= lo <= hi:
        raise ValueError(f"hole size range {atoms_range} is not valid")
    xy = lattice.atoms.positions[:, :2]
    alive = np.ones(len(xy), bool)
    margin = 2 * lattice.parent.a_A
    for _ in range(n_holes):
        centre = rng.uniform([margin, margin], np.array(lattice.extent_xy_A) - margin)
        k = int(rng.integers(lo, hi + 1))
        d = np.hypot(*(xy - centre).T)
        d[~alive] = np.inf
        victims = np.argsort(d)[:k]
        victims = victims[np.isfinite(d[victims])]
        alive[victims] = False
        for v in victims:
            lattice.remove(int(v))
        lattice.holes.append({"x_A": float(centre[0]), "y_A": float(centre[1]),
                              "radius_A": float(d[victims].max()) if len(victims) else 0.0,
                              "n_atoms": len(victims)})
    in_hole = np.array([len(g) > 0 and not alive[g].any() for g in lattice.site_atoms], dtype=bool)
    # hollow sites inside a hole are gone too
    for hole in lattice.holes:
        r = np.hypot(lattice.sites.x_A - hole["x_A"], lattice.sites.y_A - hole["y_A"])
        in_hole |= (r < hole["radius_A"]).to_numpy()
    lattice.sites["in_hole"] = in_hole
