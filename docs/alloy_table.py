"""Composition error of ``analyze --alloy`` on twins of known composition → the table in docs/alloy.md.

Random alloys and a Janus layer on MoS2 (80 Å, default optics), at three doses and two pixel sizes; the
error is the analysed composition minus the twin's over the analysed sites (absolute fraction).

    python docs/alloy_table.py
"""

from __future__ import annotations

import time

import numpy as np
from scipy.spatial import cKDTree

from napari_mx2_defects.analysis.api import analyze_image
from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
from napari_mx2_defects.twin.imperfections import Imperfections

ALLOYS = ["W=30%,Se=40%", "W=70%,Se=80%", "W=50%,Se=top"]
print("| twin alloy | pixel (Å) | dose (e/Å²) | W true | W found | Se true | Se found | columns right | s |")
print("|---|---|---|---|---|---|---|---|---|")
for alloy in ALLOYS:
    for px in (0.1, 0.2):
        for dose in (1e4, 1e5, 1e6):
            t0 = time.perf_counter()
            twin = simulate_twin(TwinRequest(material="MoS2", alloy=alloy, fov_A=80.0, pixel_size_A=px, seed=3,
                                             imperfections=Imperfections(dose_e_per_A2=dose)))
            result = analyze_image(twin.image, twin.pixel_size_A[1], material="MoS2", alloy_species="Mo,W:S,Se")
            truth = twin.sites[twin.sites.sublattice != "H"]
            d, i = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(result.sites[["x_A", "y_A"]].to_numpy())
            species = truth.species.to_numpy()[i]
            ok = d < 0.5
            sub = result.sites.sublattice.to_numpy()
            metal = [c for c in species[ok & (sub == "M")] if c]
            atoms = [el for c in species[ok & (sub == "X")] if c for el in c.split("+")]
            comp = result.composition.set_index("element").fraction
            right = np.mean(species[ok] == result.sites.species.to_numpy()[ok])
            print(f"| {alloy} | {px:g} | {dose:.0e} | {metal.count('W') / len(metal):.3f} | {comp['W']:.3f} | "
                  f"{atoms.count('Se') / len(atoms):.3f} | {comp['Se']:.3f} | {100 * right:.1f} % | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)
