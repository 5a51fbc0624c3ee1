"""Library of monolayer MX2 parents (lattice constant a and X–X thickness, in Å).

The table ``data/mx2_parents.csv`` is the vetted table from the project's
shared data (84 rows): PBE-relaxed cells of the c2dm database, F. A. Rasmussen
and K. S. Thygesen, J. Phys. Chem. C 119, 13169 (2015), cross-checked against
N. Mounet et al., Nat. Nanotechnol. 13, 246 (2018) and a C2DB snapshot; each
row keeps its own ``source`` and ``source_detail`` columns.  No row is added
without a source.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import pandas as pd

__all__ = ["CHALCOGENS", "Parent", "get_parent", "list_parents", "parent_table"]

CHALCOGENS = ("S", "Se", "Te")
CITATION = (
    "F. A. Rasmussen and K. S. Thygesen, J. Phys. Chem. C 119, 13169 (2015) (c2dm, PBE); "
    "cross-checked against N. Mounet et al., Nat. Nanotechnol. 13, 246 (2018)"
)


@dataclass(frozen=True)
class Parent:
    """One monolayer parent lattice.

    Attributes
    ----------
    formula : str
        e.g. ``"MoS2"``.
    phase : str
        ``"2H"`` (trigonal prismatic) or ``"1T"`` (octahedral).
    metal, chalcogen : str
        Element symbols.
    a_A : float
        In-plane lattice constant in Å.
    thickness_A : float
        Vertical distance between the two chalcogen planes in Å.
    source : str
        Where the numbers come from (see the module docstring).
    """

    formula: str
    phase: str
    metal: str
    chalcogen: str
    a_A: float
    thickness_A: float
    source: str

    @property
    def key(self) -> str:
        return f"{self.phase}-{self.formula}"

    @property
    def cell_area_A2(self) -> float:
        """Area of the primitive (one formula unit) cell in Å²."""
        return float(self.a_A**2 * 3**0.5 / 2)

    @property
    def metal_site_density_per_cm2(self) -> float:
        """Metal sites per cm² (one per primitive cell); also the X-column density."""
        return 1.0 / (self.cell_area_A2 * 1e-16)


def _split_formula(formula: str) -> tuple[str, str]:
    match = re.fullmatch(r"([A-Z][a-z]?)([A-Z][a-z]?)2", formula)
    if not match or match.group(2) not in CHALCOGENS:
        raise ValueError(f"{formula!r} is not an MX2 formula with X in {CHALCOGENS}")
    return match.group(1), match.group(2)


@lru_cache(maxsize=1)
def parent_table() -> pd.DataFrame:
    """The shipped parent table, one row per (formula, phase)."""
    with resources.files("napari_mx2_defects.data").joinpath("mx2_parents.csv").open() as fh:
        table = pd.read_csv(fh)
    return table


def list_parents() -> list[str]:
    """Keys ``"2H-MoS2"``, ``"1T-TiS2"``, … of every parent, sorted."""
    table = parent_table()
    return sorted(f"{p}-{f}" for f, p in zip(table.formula, table.phase))


def get_parent(name: str, phase: str | None = None) -> Parent:
    """Look up a parent by formula (``"MoS2"``), key (``"1T-TiS2"``) and/or phase (memoised; a
    :class:`Parent` is immutable).

    Without a phase, 2H is preferred where it exists.

    Raises
    ------
    ValueError
        When the material is not in the library; the message lists close names.
    """
    return _get_parent(str(name), None if phase is None else str(phase))


@lru_cache(maxsize=512)
def _get_parent(name: str, phase: str | None) -> Parent:
    """Look up a parent by formula (``"MoS2"``), key (``"1T-TiS2"``) and/or phase.

    Without a phase, 2H is preferred where it exists.

    Raises
    ------
    ValueError
        When the material is not in the library; the message lists close names.
    """
    if "-" in name:
        phase, name = name.split("-", 1)
    table = parent_table()
    rows = table[table.formula.str.lower() == name.lower()]
    if phase is not None:
        rows = rows[rows.phase.str.upper() == phase.upper()]
    if rows.empty:
        close = [k for k in list_parents() if name.lower()[:2] in k.lower()]
        raise ValueError(
            f"{phase + '-' if phase else ''}{name} is not in the parent library "
            f"(close: {', '.join(close[:8]) or 'none'}). Load a relaxed structure file instead."
        )
    rows = rows.sort_values("phase", key=lambda s: s.map({"2H": 0, "1T": 1}))
    row = rows.iloc[0]
    metal, chalcogen = _split_formula(row.formula)
    return Parent(
        formula=row.formula,
        phase=row.phase,
        metal=metal,
        chalcogen=chalcogen,
        a_A=float(row.a_A),
        thickness_A=float(row.thickness_A),
        source=str(row.source),
    )
