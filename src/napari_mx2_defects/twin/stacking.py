"""Phases and stacking of a twin: mono-, bi- and trilayer 2H and 3R stacks and 1T regions, built with ase.

A *phase* names what the beam passes through at one place of the flake: the number of layers and how
they stack (``"1L-2H"``, ``"2L-2H"``, ``"2L-3R"``, ``"3L-2H"``, ``"3L-3R"``; ``"1L-1T"`` and its AA
stacks ``"2L-1T"``/``"3L-1T"``).  In projection along c a 2H monolayer puts the metal on site A, the
chalcogen pair on B and nothing on the hollow C of one honeycomb (B = A + d, C = A + 2d with d the
metal-to-chalcogen vector).  The stacks follow from that:

* 2H (AA′, P6₃/mmc): the next layer is the first turned by 180° about c (an in-plane inversion
  through a bond centre), so its metal sits over the chalcogens and its chalcogens over the metal;
  the third layer repeats the first.
* 3R (AB, R3m): each layer is the one below translated by d: metal over chalcogens, chalcogens over
  the hollow; in a trilayer every site holds one metal and one chalcogen pair.
* 1T: the lower chalcogen of each pair moves from B to C (octahedral); its bulk stacks AA (each layer
  directly above the one below).

The first layer holds the twin's defects; added layers are intact copies of the parent (what the
beam sees through a partly covered flake).  Regions are vertical stripes of equal width across the
field, left to right: their edges are stacking (and phase) boundaries.

Layers are :data:`INTERLAYER_GAP_A` apart (between facing chalcogen planes).  The fast mode images a
stack as the sum of its layers' columns, each with the calibrated kernel of its own column type (the
incoherent, no-cross-layer-channelling approximation); abTEM images the whole stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

__all__ = ["INTERLAYER_GAP_A", "PHASES", "StackedRegions", "apply_stacking", "layer_spacing_A", "mark_stripes",
           "monolayer_phase", "parse_stacking", "phases_for", "stripe_labels"]

#: Every phase a twin can build and the analysis can name (label ids are 1 + the index).
PHASES: tuple[str, ...] = ("1L-2H", "1L-1T", "2L-2H", "2L-3R", "3L-2H", "3L-3R", "2L-1T", "3L-1T")
#: Vertical gap between the facing chalcogen planes of two layers (Å): DFT (LDA) of the AB′ (2H-like)
#: MoS2 bilayer, inner S planes at ±1.39 Å (Mo at ±3.01 Å): EPJ Applied Physics (2023), article
#: ap230060, Table 1, row "bilayer AB′ (BA′)".  Used for every parent (the gap is a van der Waals
#: contact that changes by ~0.1–0.3 Å between sulphides, selenides and tellurides); it sets depth only,
#: which the fast mode does not see and abTEM sees weakly.
INTERLAYER_GAP_A = 2.78

#: (number of layers, stacking of the layers above the first) per phase: "inv" = turned 180°, "d" = +d,
#: "2d" = +2d, "0" = directly above; the first layer is the parent's (or its 1T form).
_STACKS: dict[str, tuple[str, ...]] = {
    "1L-2H": (), "1L-1T": (), "2L-2H": ("inv",), "2L-3R": ("d",), "3L-2H": ("inv", "0"),
    "3L-3R": ("d", "2d"), "2L-1T": ("0",), "3L-1T": ("0", "0"),
}


def monolayer_phase(parent) -> str:
    """The parent's own monolayer phase (``"1L-2H"`` or ``"1L-1T"``)."""
    return "1L-2H" if parent.phase.upper() == "2H" else "1L-1T"


def phases_for(parent) -> tuple[str, ...]:
    """The phases a parent can form: a 2H parent's mono-/bi-/trilayer 2H and 3R stacks and a 1T
    monolayer region; a 1T parent's AA-stacked 1T mono-, bi- and trilayers."""
    if parent.phase.upper() == "2H":
        return ("1L-2H", "1L-1T", "2L-2H", "2L-3R", "3L-2H", "3L-3R")
    return ("1L-1T", "2L-1T", "3L-1T")


def parse_stacking(text: str, parent) -> list[str]:
    """``"1L,2L-2H,2L-3R"`` → the phases of the stripes, left to right (``"1L"`` = the parent's
    monolayer, ``"1T"`` = a 1T monolayer region, ``"2L"``/``"3L"`` = the parent's own stacking)."""
    allowed = phases_for(parent)
    out = []
    for item in (t.strip() for t in str(text).split(",")):
        if not item:
            continue
        name = item.upper()
        name = {"1L": monolayer_phase(parent), "1T": "1L-1T",
                "2L": f"2L-{'2H' if parent.phase.upper() == '2H' else '1T'}",
                "3L": f"3L-{'2H' if parent.phase.upper() == '2H' else '1T'}"}.get(name, name)
        if name not in allowed:
            raise ValueError(f"stacking {item!r} is not a phase {parent.phase}-{parent.formula} forms here; "
                             f"use a comma-separated list of {', '.join(allowed)} (or 1L, 2L, 3L, 1T)")
        out.append(name)
    if len(out) > 12:
        raise ValueError("at most 12 stacking regions (stripes) per twin")
    return out


@dataclass
class StackedRegions:
    """The stripes of a stacked twin: their phases, their x ranges (Å) and the atoms above layer one."""

    phases: list[str]
    x_edges_A: np.ndarray  # (n + 1,) stripe edges along x
    upper_layers: Atoms  # every atom of layers 2 and 3 (tag = layer index, 1 or 2)

    def phase_at(self, x_A: np.ndarray) -> np.ndarray:
        """Phase name of each x (Å) position (the stripe it falls in)."""
        k = np.clip(np.searchsorted(self.x_edges_A, np.asarray(x_A, float), side="right") - 1, 0,
                    len(self.phases) - 1)
        return np.asarray(self.phases, dtype=object)[k]


def _bond(lattice) -> tuple[np.ndarray, np.ndarray]:
    """A metal site near the field's centre and the metal-to-chalcogen vector d (x, y) next to it."""
    sites = lattice.sites
    m = sites[sites.sublattice == "M"][["x_A", "y_A"]].to_numpy()
    x = sites[sites.sublattice == "X"][["x_A", "y_A"]].to_numpy()
    centre = np.asarray(lattice.extent_xy_A) / 2
    m0 = m[np.argmin(np.linalg.norm(m - centre, axis=1))]
    x0 = x[np.argmin(np.linalg.norm(x - m0, axis=1))]
    return m0, x0 - m0


def _wrap(pos: np.ndarray, extent) -> np.ndarray:
    """x, y wrapped into [0, extent): a position a rounding error below 0 wraps to 0, not to the extent."""
    for k in (0, 1):
        pos[:, k] %= extent[k]
        pos[np.isclose(pos[:, k], extent[k], rtol=0, atol=1e-9), k] = 0.0
    return pos


def _wrap_or_crop(atoms: Atoms, extent, periodic: bool) -> Atoms:
    pos = atoms.positions
    if periodic:
        atoms.positions = _wrap(pos, extent)
        return atoms
    # an atom a rounding error inside an edge is one the first layer's crop left out: crop it too
    inside = (pos[:, 0] >= -1e-9) & (pos[:, 0] < extent[0] - 1e-9) & (pos[:, 1] >= -1e-9) & (pos[:, 1] < extent[1] - 1e-9)
    return atoms[inside]


def layer_spacing_A(parent) -> float:
    """Metal-to-metal distance between neighbouring layers (Å): the layer's thickness plus the gap."""
    return float(parent.thickness_A) + INTERLAYER_GAP_A


def apply_stacking(lattice, phases: list[str], base: Atoms) -> StackedRegions:
    """Stack the stripes' upper layers over ``lattice`` and turn its 1T stripes octahedral (in place).

    ``base`` is the intact first layer (before defects) the upper layers are copied from.  Call
    :func:`mark_stripes` before the defects go in (so none lands in a 1T stripe) and this after.
    """
    extent = lattice.extent_xy_A
    edges = np.linspace(0.0, extent[0], len(phases) + 1)
    regions = StackedRegions(list(phases), edges, Atoms(cell=base.cell, pbc=base.pbc))
    m0, d = _bond(lattice)
    spacing = layer_spacing_A(lattice.parent)
    layers = []
    for k, phase in enumerate(phases):
        x0, x1 = edges[k], edges[k + 1]
        if phase.endswith("1T") and lattice.parent.phase.upper() == "2H":
            _make_octahedral(lattice, d, x0, x1)
        for level, op in enumerate(_STACKS[phase], start=1):
            layer = base.copy()
            pos = layer.positions
            if op == "inv":  # 180° about c through the bond centre: metal ↔ chalcogen sites
                pos[:, :2] = (2 * m0 + d) - pos[:, :2]
            elif op in ("d", "2d"):
                pos[:, :2] += d * (1 if op == "d" else 2)
            pos[:, 2] += level * spacing
            layer.positions = pos
            layer = _wrap_or_crop(layer, extent, lattice.periodic)
            x = layer.positions[:, 0]
            layer = layer[(x >= x0) & (x < x1)]
            layer.set_tags(np.full(len(layer), level, dtype=int))
            layers.append(layer)
    for layer in layers:
        regions.upper_layers += layer
    if len(regions.upper_layers):
        top = float(regions.upper_layers.positions[:, 2].max())
        regions.upper_layers.cell[2, 2] = max(float(base.cell[2, 2]), top + 2.0)
    return regions


def mark_stripes(lattice, phases: list[str]) -> None:
    """Each site's stripe phase (``lattice.sites.phase``); a 2H parent's 1T stripes take no defects."""
    edges = np.linspace(0.0, lattice.extent_xy_A[0], len(phases) + 1)
    k = np.clip(np.searchsorted(edges, lattice.sites.x_A.to_numpy(), side="right") - 1, 0, len(phases) - 1)
    lattice.sites["phase"] = np.asarray(phases, dtype=object)[k]
    lattice.messy["stacking"] = list(phases)


def _make_octahedral(lattice, d: np.ndarray, x0: float, x1: float) -> None:
    """Move the lower chalcogen of every pair in [x0, x1) from B to C: the 1T form of the layer."""
    atoms = lattice.atoms
    pos = atoms.positions
    symbols = np.asarray(atoms.get_chemical_symbols())
    chalcogen = symbols == lattice.parent.chalcogen
    lower = chalcogen & (pos[:, 2] < lattice.z_metal_A) & (pos[:, 0] >= x0) & (pos[:, 0] < x1)
    pos[lower, :2] += d
    atoms.positions = _wrap(pos, lattice.extent_xy_A) if lattice.periodic else pos


def stripe_labels(shape: tuple[int, int], pixel_size_A: tuple[float, float], regions: StackedRegions) -> np.ndarray:
    """(ny, nx) uint8 phase ids (1 + index in :data:`PHASES`) of the stripes, in the undistorted frame."""
    ny, nx = shape
    x = (np.arange(nx) + 0.5) * pixel_size_A[1]
    ids = np.array([PHASES.index(p) + 1 for p in regions.phases], np.uint8)
    k = np.clip(np.searchsorted(regions.x_edges_A, x, side="right") - 1, 0, len(regions.phases) - 1)
    return np.broadcast_to(ids[k][None, :], (ny, nx)).copy()
