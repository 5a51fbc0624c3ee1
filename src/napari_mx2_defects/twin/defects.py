"""The defect builder: defect requests parsed and placed on an ase lattice.

The class vocabulary (ids, names, colours) lives in :mod:`..core.classes`; it is re-exported here
for the twin engine's callers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from ase import Atom
from ase.data import atomic_numbers

from ..core.classes import CLASS_COLORS, CLASS_IDS, CLASS_NAMES, DEFECT_CLASSES
from .structures import Lattice

__all__ = [
    "CLASS_COLORS",
    "CLASS_IDS",
    "CLASS_NAMES",
    "DEFECT_CLASSES",
    "DefectRequest",
    "parse_defects",
    "place_defects",
]

ARRANGEMENTS = {"random": 1, "pairs": 2, "triplets": 3, "lines": 0}
_HEAVIER_CHALCOGEN = {"S": "Se", "Se": "Te", "Te": "Se"}
_ALL_METALS = {s for s, z in atomic_numbers.items() if z in (*range(21, 31), *range(39, 49), *range(72, 81))}


@dataclass
class DefectRequest:
    """How many of one defect class to place, and how.

    Attributes
    ----------
    defect_class : str
        One of the ids of :data:`DEFECT_CLASSES` (``"V_X"``, …).
    count : int or None
        Number of defects; or give ``fraction`` / ``per_cm2``.
    fraction : float or None
        Fraction of the sites of the relevant sublattice.
    per_cm2 : float or None
        Areal concentration.
    arrangement : str
        ``random``, ``pairs``, ``triplets`` or ``lines``.
    element : str or None
        Dopant / adatom / substituent element (TM_D, TM_A, S_X).
    """

    defect_class: str
    count: int | None = None
    fraction: float | None = None
    per_cm2: float | None = None
    arrangement: str = "random"
    element: str | None = None

    def __post_init__(self) -> None:
        if self.defect_class not in CLASS_IDS:
            raise ValueError(
                f"unknown defect class {self.defect_class!r}; known: {', '.join(CLASS_IDS)}"
            )
        if self.arrangement not in ARRANGEMENTS:
            raise ValueError(f"unknown arrangement {self.arrangement!r}; use {', '.join(ARRANGEMENTS)}")
        given = [v is not None for v in (self.count, self.fraction, self.per_cm2)]
        if sum(given) != 1:
            raise ValueError(f"{self.defect_class}: give exactly one of a count, a fraction or a per-cm² value")
        for value, what in ((self.count, "count"), (self.fraction, "fraction"), (self.per_cm2, "per_cm2")):
            if value is not None and (not np.isfinite(value) or value < 0):
                raise ValueError(f"{self.defect_class}: {what} must be a non-negative number, got {value}")
        if self.fraction is not None and self.fraction > 1:
            raise ValueError(f"{self.defect_class}: a fraction above 1 ({self.fraction}) is impossible")
        if self.element is not None and self.element not in atomic_numbers:
            raise ValueError(f"{self.defect_class}: unknown element {self.element!r}")

    @property
    def class_id(self) -> int:
        return CLASS_IDS[self.defect_class]

    @property
    def sublattice(self) -> str:
        return DEFECT_CLASSES[self.class_id][2]

    def resolve_count(self, n_sites: int, area_A2: float) -> int:
        """Number of defects for a lattice with ``n_sites`` candidate sites."""
        if self.count is not None:
            return int(self.count)
        if self.fraction is not None:
            return int(round(self.fraction * n_sites))
        return int(round(self.per_cm2 * area_A2 * 1e-16))


_ITEM = re.compile(
    r"^(?P<cls>[A-Za-z_0-9]+?)(?:\((?P<el>[A-Z][a-z]?)\))?(?::(?P<arr>\w+))?="
    r"(?P<val>[0-9.eE+-]+)(?P<unit>%|/cm2)?$"
)


def parse_defects(text: str) -> list[DefectRequest]:
    """Parse ``"V_X=6,V_XX=2,TM_D(Re)=1%,V_X:pairs=4,V_M=1e13/cm2"``.

    ``NAME(El)`` chooses the element, ``NAME:arrangement`` the arrangement;
    a value is a count, a percentage of the relevant sites (``%``), or a
    concentration per cm² (``/cm2``).
    """
    requests = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = _ITEM.match(item)
        if not match:
            raise ValueError(
                f"cannot read defect {item!r}; write e.g. V_X=6, V_XX=2%, TM_D(Re)=3, V_X:pairs=4 or V_M=1e13/cm2"
            )
        value = float(match["val"])
        kwargs: dict = {"arrangement": match["arr"] or "random", "element": match["el"]}
        if match["unit"] == "%":
            kwargs["fraction"] = value / 100.0
        elif match["unit"] == "/cm2":
            kwargs["per_cm2"] = value
        else:
            if value != int(value):
                raise ValueError(f"{item}: a count must be a whole number")
            kwargs["count"] = int(value)
        requests.append(DefectRequest(match["cls"], **kwargs))
    return requests


@dataclass
class PlacedDefects:
    """Result of :func:`place_defects`: the defect table and what was done."""

    table: pd.DataFrame  # x_A, y_A, defect_class, class_id, site, element
    notes: list[str] = field(default_factory=list)


def _choose_sites(
    rng: np.random.Generator,
    candidates: np.ndarray,
    xy: np.ndarray,
    n: int,
    cluster: int,
    lattice_a: float,
) -> list[int]:
    """Pick ``n`` candidate sites, in clusters of ``cluster`` nearest neighbours (0 = lines)."""
    free = list(candidates)
    chosen: list[int] = []
    while len(chosen) < n:
        if not free:
            break
        seed = free.pop(int(rng.integers(len(free))))
        group = [seed]
        want = min(cluster if cluster > 0 else int(rng.integers(3, 7)), n - len(chosen))
        if want > 1 and free:
            others = np.array(free)
            d = xy[others] - xy[seed]
            dist = np.hypot(d[:, 0], d[:, 1])
            if cluster == 0:  # a line: sites along one lattice direction from the seed
                angle = rng.integers(6) * np.pi / 3
                direction = np.array([np.cos(angle), np.sin(angle)])
                along = d @ direction
                across = np.abs(d @ np.array([-direction[1], direction[0]]))
                ok = (across < 0.3 * lattice_a) & (along > 0.1)
                order = np.argsort(np.where(ok, along, np.inf))[: want - 1]
                order = [o for o in order if ok[o] and along[o] < (want) * lattice_a * 1.05]
            else:
                order = [o for o in np.argsort(dist)[: want - 1] if dist[o] < 2.1 * lattice_a]
            for o in sorted(order, reverse=True):
                group.append(int(others[o]))
                free.remove(int(others[o]))
        chosen.extend(group)
    return chosen[:n]


def place_defects(
    lattice: Lattice,
    requests: list[DefectRequest],
    seed: int | None = 0,
) -> PlacedDefects:
    """Put defects into ``lattice`` (modified in place) and return the truth table.

    Raises
    ------
    ValueError
        For impossible requests: more defects than free sites of the
        sublattice, a class the phase cannot host, an element that makes no
        sense for the class.
    """
    rng = np.random.default_rng(seed)
    sites = lattice.sites
    parent = lattice.parent
    xy = sites[["x_A", "y_A"]].to_numpy()
    area = lattice.area_A2
    used = np.zeros(len(sites), dtype=bool)
    rows = []
    notes = []
    # check the totals first so that nothing is half-built
    planned = []
    demand: dict[str, int] = {}
    interior = lattice.interior_mask()
    sublattice = sites.sublattice.to_numpy()
    two = (sites.n_atoms == 2).to_numpy()
    for req in requests:
        sub = req.sublattice
        candidates = np.flatnonzero((sublattice == sub) & interior)
        if req.defect_class in ("V_X", "V_XX", "M_X", "M_2X", "S_X"):
            if req.defect_class in ("V_XX", "M_2X") and not two[candidates].any():
                raise ValueError(
                    f"{req.defect_class} needs X2 columns; {parent.phase}-{parent.formula} projects its "
                    "chalcogens as single-atom columns. Use V_X instead."
                )
        if sub == "H" and not len(candidates):
            raise ValueError(
                f"{req.defect_class} needs empty hollow sites; {parent.phase}-{parent.formula} has none in projection."
            )
        n = req.resolve_count(len(candidates), area)
        demand[sub] = demand.get(sub, 0) + n
        planned.append((req, candidates, n))
    for sub, n in demand.items():
        available = int(((sublattice == sub) & interior).sum())
        if n > available:
            what = {"M": "metal sites", "X": "chalcogen columns", "H": "hollow sites"}[sub]
            raise ValueError(
                f"impossible defect list: {n} defects requested on {what}, but the field of view has only "
                f"{available}. Ask for fewer defects or a larger field of view."
            )
    for req, candidates, n in planned:
        element = _element_for(req, parent)
        free = candidates[~used[candidates]]
        picked = _choose_sites(rng, free, xy, n, ARRANGEMENTS[req.arrangement], parent.a_A)
        if len(picked) < n:
            raise ValueError(f"{req.defect_class}: only {len(picked)} free sites left for {n} defects")
        for site in picked:
            used[site] = True
            _apply(lattice, int(site), xy[site], req.defect_class, element, rng)
            rows.append(
                {
                    "x_A": float(xy[site, 0]),
                    "y_A": float(xy[site, 1]),
                    "defect_class": req.defect_class,
                    "class_id": req.class_id,
                    "site": int(site),
                    "element": element or "",
                }
            )
        if req.count is None:
            notes.append(f"{req.defect_class}: {n} defects for the requested concentration")
    lattice.finalise()
    table = pd.DataFrame(rows, columns=["x_A", "y_A", "defect_class", "class_id", "site", "element"])
    return PlacedDefects(table=table, notes=notes)


def default_dopant(parent) -> str:
    """TM_D element when none is given: Re, or Nb in a Re host."""
    return "Re" if parent.metal != "Re" else "Nb"


def _element_for(req: DefectRequest, parent) -> str | None:
    name = req.defect_class
    if name == "TM_D":
        el = req.element or default_dopant(parent)
        if el not in _ALL_METALS:
            raise ValueError(f"TM_D: {el} is not a transition metal")
        if el == parent.metal:
            raise ValueError(f"TM_D: the dopant must differ from the host metal {parent.metal}")
        return el
    if name == "TM_A":
        el = req.element or parent.metal
        if el not in _ALL_METALS:
            raise ValueError(f"TM_A: {el} is not a transition metal")
        return el
    if name == "S_X":
        el = req.element or _HEAVIER_CHALCOGEN[parent.chalcogen]
        if el not in ("O", "S", "Se", "Te") or el == parent.chalcogen:
            raise ValueError(f"S_X: substituent must be another chalcogen than {parent.chalcogen}, got {el}")
        return el
    if req.element is not None:
        raise ValueError(f"{name} takes no element")
    return None


def _apply(lattice: Lattice, site: int, site_xy: np.ndarray, name: str, element: str | None,
           rng: np.random.Generator) -> None:
    """Edit the atoms of one site (at ``site_xy``, Å) for defect ``name``.

    Species are changed in the atoms' number array directly (ase's per-atom proxies cost ~20 µs each,
    which a training set pays for every defect of every twin)."""
    parent = lattice.parent
    atoms_idx = [int(i) for i in lattice.site_atoms[site]]
    atoms = lattice.atoms
    numbers = atoms.numbers  # a view: assignments edit the atoms
    x, y = float(site_xy[0]), float(site_xy[1])
    z_m = lattice.z_metal_A
    if name in ("V_X", "S_X", "M_X"):
        target = atoms_idx[int(rng.integers(len(atoms_idx)))]
        if name == "V_X":
            lattice.remove(target)
        elif name == "S_X":
            numbers[target] = atomic_numbers[element]
        else:
            numbers[target] = atomic_numbers[parent.metal]
    elif name == "V_XX":
        for i in atoms_idx:
            lattice.remove(i)
    elif name == "M_2X":
        keep = atoms_idx[0]
        for i in atoms_idx[1:]:
            lattice.remove(i)
        numbers[keep] = atomic_numbers[parent.metal]
        atoms.positions[keep] = (x, y, z_m)
    elif name == "V_M":
        for i in atoms_idx:
            lattice.remove(i)
    elif name == "X_M":
        numbers[atoms_idx[0]] = atomic_numbers[parent.chalcogen]
    elif name == "TM_D":
        numbers[atoms_idx[0]] = atomic_numbers[element]
    elif name == "TM_A":
        # adatom above the metal site, one metal–chalcogen plane spacing above the top chalcogen
        # plane (a geometric placement; HAADF projects along z, so the height barely matters)
        lattice.add(Atom(element, (x, y, z_m + 1.5 * parent.thickness_A)))
    elif name in ("M_i", "X_i"):
        symbol = parent.metal if name == "M_i" else parent.chalcogen
        lattice.add(Atom(symbol, (x, y, z_m)))
    else:  # pragma: no cover - guarded by DefectRequest
        raise ValueError(name)
