"""The defect vocabulary every layer shares: class ids, names, meanings and display colours.

Class ids are stable: the ground-truth masks, the models, every CSV and every layer use them.
Id 0 is intact lattice.  The twin engine places these classes (:mod:`..twin.defects`), the models
predict them, the analysis counts them and the front ends colour them with :data:`CLASS_COLORS`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["CLASS_COLORS", "CLASS_IDS", "CLASS_NAMES", "DEFECT_CLASSES", "EVERY_CLASS", "SUBLATTICE_OF", "class_grouping",
           "on_home_sublattice"]

#: id -> (name, meaning, sublattice the defect sits on)
DEFECT_CLASSES: dict[int, tuple[str, str, str]] = {
    1: ("V_X", "one chalcogen missing from an X2 column", "X"),
    2: ("V_XX", "both chalcogens of a column missing", "X"),
    3: ("V_M", "metal vacancy", "M"),
    4: ("M_X", "metal atom on a chalcogen column (antisite)", "X"),
    5: ("X_M", "chalcogen on a metal site (antisite)", "M"),
    6: ("M_2X", "metal antisite plus an extra chalcogen vacancy", "X"),
    7: ("M_i", "metal interstitial", "H"),
    8: ("X_i", "chalcogen interstitial", "H"),
    9: ("TM_D", "transition-metal dopant substituting the metal", "M"),
    10: ("TM_A", "transition-metal adatom", "M"),
    11: ("S_X", "chalcogen substituted by another chalcogen", "X"),
}
CLASS_IDS: dict[str, int] = {name: cid for cid, (name, _, _) in DEFECT_CLASSES.items()}
CLASS_NAMES: dict[int, str] = {0: "lattice", **{cid: name for cid, (name, _, _) in DEFECT_CLASSES.items()}}
#: RGBA colours per class for Labels layers, Points layers, legends and plots (tab20-like, lattice transparent).
CLASS_COLORS: dict[int, tuple[float, float, float, float]] = {
    0: (0.0, 0.0, 0.0, 0.0),
    1: (0.12, 0.47, 0.71, 1.0),
    2: (1.0, 0.5, 0.05, 1.0),
    3: (0.17, 0.63, 0.17, 1.0),
    4: (0.84, 0.15, 0.16, 1.0),
    5: (0.58, 0.4, 0.74, 1.0),
    6: (0.55, 0.34, 0.29, 1.0),
    7: (0.89, 0.47, 0.76, 1.0),
    8: (0.5, 0.5, 0.5, 1.0),
    9: (0.74, 0.74, 0.13, 1.0),
    10: (0.09, 0.75, 0.81, 1.0),
    11: (1.0, 0.73, 0.47, 1.0),
}
#: Class name → the sublattice it sits on (``M`` metal, ``X`` chalcogen column, ``H`` hollow site).
SUBLATTICE_OF: dict[str, str] = {name: sub for name, _, sub in DEFECT_CLASSES.values()}


def on_home_sublattice(names, sublattice) -> np.ndarray:
    """Per site, whether class ``names[i]`` may sit on a site of ``sublattice[i]`` (``M``/``X``): a
    lattice-site class only on its own sublattice (``M_X`` not on a metal site); intact ('') and
    off-lattice classes anywhere."""
    home = np.array([SUBLATTICE_OF.get(str(name), "H") for name in names], dtype=object)
    return ~np.isin(home, ["M", "X"]) | (home == np.asarray(sublattice, dtype=object))

#: The class grouping that keeps every defect class apart (see :func:`class_grouping`).
EVERY_CLASS = len(DEFECT_CLASSES)
_SITE_GROUP = {"X": "X-site defect", "M": "M-site defect", "H": "off-lattice defect"}


def class_grouping(n_groups: int) -> dict[str, str]:
    """Class name → group name for ``n_groups`` groups: 1 binary (any defect against the lattice), 3 by where
    the defect sits (chalcogen site, metal site, off the lattice), :data:`EVERY_CLASS` every class."""
    names = [name for name, _, _ in DEFECT_CLASSES.values()]
    if n_groups == 1:
        return {name: "defect" for name in names}
    if n_groups == 3:
        return {name: _SITE_GROUP[SUBLATTICE_OF[name]] for name in names}
    if n_groups == EVERY_CLASS:
        return {name: name for name in names}
    raise ValueError(f"class groupings are 1 (binary), 3 (by site) or {EVERY_CLASS} (every class), got {n_groups}")
