"""The contamination map on a real MoS2 image of ../shared/data/real, through the *Defect statistics* dock
with "exclude contamination" ticked: the map as a Labels layer over the image → docs/real_contamination.png.

Run under a display (or xvfb-run):
    python docs/contamination.py [SHARED_DATA_DIR] [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
from _viewer import settle, wait
from qtpy.QtCore import Qt

shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent
out.mkdir(parents=True, exist_ok=True)
path = shared / "real" / "scilink_mos2" / "MoS2_stem_Exp-002-5.npy"

viewer = napari.Viewer(show=True)
viewer.window.resize(2000, 1150)
layer = viewer.open(path, plugin="napari-mx2-defects")[0]
dock_widget, dock = viewer.window.add_plugin_dock_widget("napari-mx2-defects", "Defect statistics")
viewer.window._qt_window.resizeDocks([dock_widget], [600], Qt.Orientation.Horizontal)
dock.material.value = "2H-MoS2"
dock.exclude_contamination.value = True
dock.image_pixel_size_A.value = 0.1290  # the file's is 36 % off (docs/site_classes.md: self-calibrated value)
dock.run()
wait(dock)
viewer.layers[f"{layer.name} sites"].visible = False
viewer.reset_view()
settle()
print(dock.status.value)
print(dock.result.concentrations.to_string(index=False))
viewer.screenshot(str(out / "real_contamination.png"), canvas_only=False)
print(f"wrote {out / 'real_contamination.png'}")
