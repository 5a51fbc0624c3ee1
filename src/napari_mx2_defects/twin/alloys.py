"""Random alloys and Janus layers on a parent lattice (Mo₁₋ₓWₓS₂₍₁₋ᵧ₎Se₂ᵧ, MoSSe, MoWS₂Se …).

An alloy is written as the species that replace the parent's, each with what it takes::

    W=30%,Se=40%      30 % of the metal sites W, 40 % of the chalcogen atoms Se (random, exact counts)
    Se=top            every chalcogen atom of the top layer Se: a Janus layer (MoSSe on MoS2)
    W=50%,Se=top      both

Metals take a fraction of the metal sites; chalcogens take a fraction of the chalcogen *atoms*
(each atom independently of the other in its column, as in a random alloy, so a 40 % Se alloy has
S2, SSe and Se2 columns in the binomial proportions 36 : 48 : 16) or a whole layer (``top``,
``bottom``).  Fractional chalcogen substitutions are drawn among the atoms no Janus layer took.
The truth is the species of every site (``Twin.sites.species``: the column's signature, e.g.
``"Se+S"``), from which the composition the analysis must find follows exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import combinations_with_replacement

import numpy as np
from ase.data import atomic_numbers

from .columns import signature

__all__ = ["AlloySpec", "alloy_examples", "apply_alloy", "parse_alloy"]

CHALCOGENS = ("O", "S", "Se", "Te")
_ITEM = re.compile(r"^(?P<el>[A-Z][a-z]?)=(?:(?P<val>[0-9.eE+-]+)(?P<pct>%)?|(?P<layer>top|bottom))$")


@dataclass(frozen=True)
class AlloySpec:
    """What replaces the parent's species: ``metals`` and ``chalcogens`` (fractions), ``janus`` (layers)."""

    metals: dict[str, float] = field(default_factory=dict)
    chalcogens: dict[str, float] = field(default_factory=dict)
    janus: dict[str, str] = field(default_factory=dict)  # layer ("top"/"bottom") → chalcogen

    def species(self, parent) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(metals, chalcogens) the alloy holds, the parent's first."""
        metals = (parent.metal, *sorted(set(self.metals) - {parent.metal}))
        chalcogens = (parent.chalcogen, *sorted((set(self.chalcogens) | set(self.janus.values())) - {parent.chalcogen}))
        return metals, chalcogens


def _transition_metal(symbol: str) -> bool:
    z = atomic_numbers.get(symbol, 0)
    return 21 <= z <= 30 or 39 <= z <= 48 or 72 <= z <= 80


def parse_alloy(text: str, parent) -> AlloySpec:
    """Parse ``"W=30%,Se=40%"`` / ``"Se=top"`` for ``parent``; one-line ValueErrors for impossible alloys."""
    metals: dict[str, float] = {}
    chalcogens: dict[str, float] = {}
    janus: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        match = _ITEM.match(item)
        if not match:
            raise ValueError(f"cannot read alloy item {item!r}; write e.g. W=30%, Se=0.4 or Se=top (a Janus layer)")
        el = match["el"]
        if el not in atomic_numbers:
            raise ValueError(f"alloy: unknown element {el!r}")
        if el in (parent.metal, parent.chalcogen):
            raise ValueError(f"alloy: {el} is the parent's own species; name the species that replace it")
        is_metal, is_chalcogen = _transition_metal(el), el in CHALCOGENS
        if not (is_metal or is_chalcogen):
            raise ValueError(f"alloy: {el} is neither a transition metal nor a chalcogen")
        if el in metals or el in chalcogens or el in janus.values():
            raise ValueError(f"alloy: {el} is named twice")
        if match["layer"]:
            if not is_chalcogen:
                raise ValueError(f"alloy: only a chalcogen fills a layer ({el}={match['layer']})")
            if match["layer"] in janus:
                raise ValueError(f"alloy: the {match['layer']} layer is given twice")
            janus[match["layer"]] = el
            continue
        value = float(match["val"]) / (100.0 if match["pct"] else 1.0)
        if not (np.isfinite(value) and 0 <= value <= 1):
            raise ValueError(f"alloy: {item} is not a fraction between 0 and 1 (or 0–100 %)")
        (metals if is_metal else chalcogens)[el] = value
    if sum(metals.values()) > 1 + 1e-9:
        raise ValueError(f"alloy: the metal fractions add up to {sum(metals.values()):.2f}, above 1")
    if sum(chalcogens.values()) > 1 + 1e-9:
        raise ValueError(f"alloy: the chalcogen fractions add up to {sum(chalcogens.values()):.2f}, above 1")
    if len(janus) == 2 and chalcogens:
        raise ValueError("alloy: both chalcogen layers are given; no atom is left for a random substitution")
    return AlloySpec(metals, chalcogens, janus)


def apply_alloy(lattice, spec: AlloySpec, rng: np.random.Generator) -> dict[str, int]:
    """Substitute the species of ``spec`` into ``lattice`` (in place, before any defect); returns the atoms
    of each substituting element.  Sites in beam-damage holes are left as they are."""
    numbers = lattice.atoms.numbers  # a view: assignments edit the atoms
    sites = lattice.sites
    alive = ~sites.in_hole.to_numpy()
    sub = sites.sublattice.to_numpy()
    metal_atoms = np.array([int(g[0]) for g, s, ok in zip(lattice.site_atoms, sub, alive) if s == "M" and ok and len(g)],
                           dtype=int)
    chalcogen_atoms = np.array([int(i) for g, s, ok in zip(lattice.site_atoms, sub, alive) if s == "X" and ok
                                for i in g], dtype=int)
    done: dict[str, int] = {}
    free = rng.permutation(metal_atoms)
    start = 0
    for el, fraction in sorted(spec.metals.items()):
        n = int(round(fraction * len(metal_atoms)))
        numbers[free[start:start + n]] = atomic_numbers[el]
        done[el] = n
        start += n
    z = lattice.atoms.positions[chalcogen_atoms, 2] if len(chalcogen_atoms) else np.zeros(0)
    layer_of = np.where(z > lattice.z_metal_A, "top", "bottom")
    in_janus = np.zeros(len(chalcogen_atoms), bool)
    for layer, el in sorted(spec.janus.items()):
        chosen = layer_of == layer
        numbers[chalcogen_atoms[chosen]] = atomic_numbers[el]
        in_janus |= chosen
        done[el] = done.get(el, 0) + int(chosen.sum())
    free = rng.permutation(chalcogen_atoms[~in_janus])
    start = 0
    for el, fraction in sorted(spec.chalcogens.items()):
        n = int(round(fraction * len(free)))
        numbers[free[start:start + n]] = atomic_numbers[el]
        done[el] = done.get(el, 0) + n
        start += n
    return done


def alloy_examples(metals, chalcogens, z_metal_A: float, thickness_A: float) -> dict[str, list[tuple[str, float]]]:
    """Every column an alloy of these species projects, as the calibration takes them (signature → atoms):
    each metal alone, each pair of chalcogens, each single chalcogen (a vacancy in an alloyed column).

    A twin and the analysis' forward model of the same species ask for the same set, so one abTEM
    calibration serves both."""
    top, bottom = z_metal_A + thickness_A / 2, z_metal_A - thickness_A / 2
    columns = [[(m, z_metal_A)] for m in metals]
    columns += [[(a, top), (b, bottom)] for a, b in combinations_with_replacement(chalcogens, 2)]
    columns += [[(c, top)] for c in chalcogens]
    return {signature([s for s, _ in col]): col for col in columns}
