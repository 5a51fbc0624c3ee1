"""Alloy composition on the real 1 % V-doped MoS2 image of ../shared/data/real, through the *Defect
statistics* dock with "alloy species" Mo,V:S: the per-site species map (Points coloured by species), the
composition table and the histogram with the fitted column types → docs/real_alloy.png.

Run under a display (or xvfb-run):
    python docs/alloy.py [SHARED_DATA_DIR] [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from _viewer import settle, statistics_dock, wait

shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent
out.mkdir(parents=True, exist_ok=True)
path = shared / "real" / "scilink_mos2" / "MoS2_stem_Exp-000-2.npy"  # "1% V-doped MoS2 monolayer", 60 kV

viewer, layer, dock = statistics_dock(path)
dock.material.value = "2H-MoS2"
dock.alloy_species.value = "Mo,V:S"
if not layer.metadata.get("beam_energy_keV"):
    dock.beam_energy_keV.value = 60.0  # the sidecar's voltage
dock.run()
wait(dock)
points = viewer.layers[f"{layer.name} sites"]
points.size = 1.2
viewer.camera.zoom *= 2.5  # a corner of the field, so each site's colour shows
settle()
print(dock.status.value)
print(dock.result.composition.to_string(index=False))
viewer.screenshot(str(out / "real_alloy.png"), canvas_only=False)
print(f"wrote {out / 'real_alloy.png'}")
