"""Segment and analyse the real MoS2 images of ../shared/data/real in a napari viewer; save screenshots.

Run under a display (or xvfb-run): python docs/real_images.py [SHARED_DATA_DIR] [OUT_DIR]
Writes one screenshot per image and prints what the analysis and the model found.
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari

from napari_mx2_defects.analysis.api import analyze_image
from napari_mx2_defects.inputs import image_plane, pixel_size_A
from napari_mx2_defects.layers import add_layers, segmentation_layers
from napari_mx2_defects.learn.inference import segment_image

shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent
viewer = napari.Viewer(show=True)
for path in sorted((shared / "real" / "scilink_mos2").glob("*.npy")):
    viewer.layers.clear()
    layer = viewer.open(path, plugin="napari-mx2-defects")[0]
    pixel = pixel_size_A(layer.scale, layer.metadata["calibrated"], name=layer.name)
    image, _ = image_plane(layer.data, layer.name)
    result = analyze_image(image, pixel, "MoS2", beam_energy_keV=layer.metadata["beam_energy_keV"])
    self_cal = analyze_image(image, None, "MoS2", beam_energy_keV=layer.metadata["beam_energy_keV"])
    # a stated pixel size that puts a > 3.3 Å is wrong: use the self-calibrated one (the layer keeps the
    # file's calibration; the overlays are placed on it by the one adapter, layers.image_frame)
    pixel_used = self_cal.lattice["pixel_size_A"] if result.lattice["a_A"] > 3.3 else pixel
    seg = segment_image(image, pixel_used, material="MoS2", beam_energy_keV=layer.metadata["beam_energy_keV"],
                        optics=layer.metadata.get("optics"))
    add_layers(viewer, segmentation_layers(seg, layer, pixel_used, name="model"))
    viewer.reset_view()
    shot = out / f"real_{path.stem}.png"
    viewer.screenshot(str(shot), canvas_only=True, flash=False)
    # the site physics with the model's defects: fitted optics, mixture, flags, agreement
    checked = analyze_image(image, pixel_used, "MoS2", defects=seg.defects, beam_energy_keV=layer.metadata["beam_energy_keV"],
                            optics=layer.metadata.get("optics"))
    from napari_mx2_defects.analysis.plots import histogram_figure

    histogram_figure(checked).savefig(out / f"real_{path.stem}_histogram.png", dpi=110)
    fo, lat = checked.lattice["fitted_optics"], checked.lattice
    print(f"  {checked.optics_summary()}")
    print(f"  fitted: source size {fo['source_size_A']} Å, relative noise {fo['relative_noise']}, Z exponent "
          f"{fo['z_exponent']:.2f} (model {fo['z_exponent_forward_model']:.2f}), M/X2 {fo['m_over_x2_image']:.2f}; "
          f"classes {({k: v['classes'] for k, v in lat['mixture'].items()})}; flagged {lat['n_flagged_sites']}; "
          f"model/physics/both {({k: (v['model'], v['physics'], v['both']) for k, v in lat['model_vs_physics'].items()})}; "
          f"unverifiable {({k: v['unverifiable'] for k, v in lat['mixture'].items()})}; reported "
          f"{checked.sites.reported_class.astype(str).replace('', 'intact').value_counts().to_dict()}")
    counts = seg.defects.defect_class.value_counts().to_dict()
    print(f"{path.name}: stated pixel {pixel:.5f} Å → a = {result.lattice['a_A']:.3f} Å "
          f"(a1 {result.lattice['a1_A']:.3f}, a2 {result.lattice['a2_A']:.3f}, angle {result.lattice['angle_deg']:.1f}°), "
          f"{result.lattice['n_M_sites']} M / {result.lattice['n_X_sites']} X sites; self-calibrated pixel "
          f"{self_cal.lattice['pixel_size_A']:.5f} Å; segmented at {pixel_used:.5f} Å: {counts}; {shot.name}")
viewer.close()
