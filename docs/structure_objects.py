"""Around the defects, on a real MoS2 image of ../shared/data/real, through the docks as a user clicks them:

* *Find defects* with "add contours and boxes (Shapes)": one contour per defect and per cluster of
  adjacent defects → docs/real_defect_objects.png, and the objects table printed;
* *Defect statistics* → Analyse, then "Class averages, displacements, strain": the class-average
  gallery, the displacement table and the ε_xy strain layer → docs/real_structure.png.

Run under a display (or xvfb-run):
    python docs/structure_objects.py [SHARED_DATA_DIR] [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
import pandas as pd
from _viewer import wait
from qtpy.QtCore import Qt

shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent
out.mkdir(parents=True, exist_ok=True)
path = (
    shared / "real" / "scilink_mos2" / "MoS2_stem_Exp-000-2.npy"
)  # its calibration is right (site_classes.md)


viewer = napari.Viewer(show=True)
viewer.window.resize(2000, 1150)
layer = viewer.open(path, plugin="napari-mx2-defects")[0]
find_widget, find = viewer.window.add_plugin_dock_widget("napari-mx2-defects", "Find defects")
find.objects.value = True
find.run()
wait(find)
objects = find.defect_objects
print(find.status.value)
with pd.option_context("display.width", 160, "display.max_columns", 20):
    print(objects.table[objects.table.kind == "cluster"].to_string(index=False))
viewer.layers[f"{layer.name} defect boxes"].visible = True
viewer.camera.center = (0, 45, 45)
viewer.camera.zoom = 7
viewer.screenshot(str(out / "real_defect_objects.png"), canvas_only=False)

viewer.window.remove_dock_widget(find_widget)
stats_widget, stats = viewer.window.add_plugin_dock_widget("napari-mx2-defects", "Defect statistics")
viewer.window._qt_window.resizeDocks([stats_widget], [600], Qt.Orientation.Horizontal)
for name in (f"{layer.name} defect contours", f"{layer.name} defect boxes", f"{layer.name} defects"):
    viewer.layers[name].visible = False
stats.image_layer.value = layer.name
stats.defects_layer.value = f"{layer.name} defect points"
stats.material.value = "2H-MoS2"
stats.run()
wait(stats)
stats.run_structure()
wait(stats)
structure = stats.structure
print(stats.status.value)
with pd.option_context("display.width", 200, "display.max_columns", 20):
    print(structure.displacements.to_string(index=False, float_format="%.2f"))
for name in (f"{layer.name} strain εxx (%)",):
    viewer.layers[name].visible = False
viewer.layers[f"{layer.name} strain εxy (%)"].visible = True
viewer.reset_view()
wait(stats)
viewer.screenshot(str(out / "real_structure.png"), canvas_only=False)
stats.gallery.savefig(out / "real_class_averages.png", dpi=110)  # the dock's gallery, as drawn there
print(
    f"wrote {out / 'real_defect_objects.png'}, {out / 'real_structure.png'}, {out / 'real_class_averages.png'}"
)
