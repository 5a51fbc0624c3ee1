"""The *Fine-tune on corrections* dock on a real MoS2 image of ../shared/data/real: rank the sites the
model is least sure of, visit the most uncertain one, fine-tune on corrections in a reviewed rectangle
and re-count; a screenshot of the view on the most uncertain site and one of the whole window after.

Run under a display (or xvfb-run):
    python docs/review_finetune.py [SHARED_DATA_DIR] [OUT_DIR] [CORRECTIONS.csv]

With CORRECTIONS.csv (``x_A,y_A,defect_class`` in Å from the image origin: your own review of the
rectangle) those are the corrections. Without one, the script cannot look at the image as you would:
it stands in for a review by keeping the model's defects the eight orientations agree on (uncertainty
≤ 0.25) inside the rectangle, which shows the mechanics (and how the model's answer moves when it is
trained on its confident part), not an accuracy.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import napari
import numpy as np
import pandas as pd

from napari_mx2_defects.layers import add_layers, image_frame, points_table, segmentation_layers
from napari_mx2_defects.learn.inference import segment_image

shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent
given = Path(sys.argv[3]) if len(sys.argv) > 3 else None
out.mkdir(parents=True, exist_ok=True)
path = shared / "real" / "scilink_mos2" / "MoS2_stem_Exp-000-2.npy"

viewer = napari.Viewer(show=True)
viewer.window.resize(1700, 1100)
layer = viewer.open(path, plugin="napari-mx2-defects")[0]
pixel = float(layer.scale[-1])  # this file's calibration is right (a = 3.16 Å: docs/site_classes.md)
dock_widget, dock = viewer.window.add_plugin_dock_widget("napari-mx2-defects", "Fine-tune on corrections")
from qtpy.QtCore import Qt
from _viewer import wait

viewer.window._qt_window.resizeDocks([dock_widget], [760], Qt.Orientation.Horizontal)  # room for every field


image = np.asarray(layer.data, float)
seg = segment_image(image, pixel, material="MoS2")  # what Find defects gives
_, model_points = add_layers(viewer, segmentation_layers(seg, layer, pixel, name="shipped model"))
dock.image_layer.value = layer.name
dock.rank()
wait(dock, settle_steps=20)
ranked = points_table(viewer.layers[f"{layer.name} uncertain sites"], layer, pixel)  # Å from the image origin
box_A = (5.0, 5.0, 50.0, 50.0)  # x0, y0, x1, y1: the reviewed rectangle
if given is not None:
    corrections = pd.read_csv(given)[["x_A", "y_A", "defect_class"]]
else:
    sure = ranked[ranked.uncertainty <= 0.25]
    keep = [
        ((sure.x_A - x) ** 2 + (sure.y_A - y) ** 2).min() <= 1.0 if len(sure) else False
        for x, y in zip(seg.defects.x_A, seg.defects.y_A)
    ]
    corrections = seg.defects[keep][["x_A", "y_A", "defect_class"]]
inside = corrections.x_A.between(box_A[0], box_A[2]) & corrections.y_A.between(box_A[1], box_A[3])
corrected = viewer.add_points(
    corrections[["y_A", "x_A"]].to_numpy(float),
    name="corrected defects",
    features=corrections[["defect_class"]].reset_index(drop=True),
    size=1.2,
    face_color="transparent",
    border_color="white",
    units=["angstrom", "angstrom"],
    **image_frame(layer, pixel),
)
x0, y0, x1, y1 = box_A
world = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) + np.asarray(layer.translate[-2:])
viewer.add_shapes(
    [world],
    shape_type="rectangle",
    name="reviewed",
    edge_color="cyan",
    face_color="transparent",
    edge_width=0.4,
    units=["angstrom", "angstrom"],
)
dock.corrections_layer.value = corrected.name
dock.region_layer.value = "reviewed"
dock.next_site()
wait(dock, 0, settle_steps=20)
viewer.screenshot(str(out / "finetune_review.png"), canvas_only=True, flash=False)  # the view it centred
print(f"first uncertain site: {dock.review_status.value}")

dock.material.value = "2H-MoS2"
dock.minutes.value, dock.epochs.value, dock.twins.value = 3.0, 4, 2
folder = Path(tempfile.mkdtemp()) / "tuned"
dock.out.value = folder
dock.run()
wait(dock, settle_steps=20)
viewer.reset_view()
for name in ("shipped model defects", f"{layer.name} uncertain sites"):
    viewer.layers[name].visible = False
viewer.screenshot(str(out / "finetune_recount.png"), canvas_only=False, flash=False)
report = dock.result["report"]
before = seg.defects.defect_class.value_counts().to_dict()
after = dock.result["segmentation"].defects.defect_class.value_counts().to_dict()
print(
    f"{path.name}: {len(ranked)} candidates, {int((ranked.uncertainty > 0.25).sum())} with uncertainty > 0.25; "
    f"{int(inside.sum())} corrections in {box_A} Å; held-out mean F1 {report['mean_f1']['before']:.2f} → "
    f"{report['mean_f1']['after']:.2f}; {len(dock.losses)} steps, loss {dock.losses[0][1]:.3f} → "
    f"{dock.losses[-1][1]:.3f}; counts shipped {before} → fine-tuned {after}; status: {dock.status.value}"
)
viewer.close()
