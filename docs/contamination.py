"""The contamination map on a real MoS2 image of ../shared/data/real, through the *Defect statistics* dock
with "exclude contamination" ticked: the map as a Labels layer over the image → docs/real_contamination.png.

Run under a display (or xvfb-run):
    python docs/contamination.py [SHARED_DATA_DIR] [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from _viewer import run_map_view, statistics_dock

shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent
out.mkdir(parents=True, exist_ok=True)
path = shared / "real" / "scilink_mos2" / "MoS2_stem_Exp-002-5.npy"

viewer, layer, dock = statistics_dock(path)
dock.material.value = "2H-MoS2"
dock.exclude_contamination.value = True
dock.image_pixel_size_A.value = 0.1290  # the file's is 36 % off (docs/site_classes.md: self-calibrated value)
run_map_view(viewer, layer, dock)
print(dock.result.concentrations.to_string(index=False))
viewer.screenshot(str(out / "real_contamination.png"), canvas_only=False)
print(f"wrote {out / 'real_contamination.png'}")
