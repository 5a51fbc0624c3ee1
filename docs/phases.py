"""The phase and stacking map through the *Defect statistics* dock with "map phases and stacking" ticked:
a stacked MoS2 twin (1L, 2L-2H, 2L-3R, 3L-2H, 3L-3R, 1T stripes, 1e5 e/Å²) → docs/twin_phases.png, and a
real MoS2 image of ../shared/data/real → docs/real_phases.png.

Run under a display (or xvfb-run):
    python docs/phases.py [SHARED_DATA_DIR] [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from _viewer import run_map_view, statistics_dock

from napari_mx2_defects.io.writer import write_calibrated_tiff
from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
from napari_mx2_defects.twin.imperfections import Imperfections

shared = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent
out.mkdir(parents=True, exist_ok=True)

twin = simulate_twin(TwinRequest(material="MoS2", fov_A=240.0, pixel_size_A=0.2, stacking="1L,2L-2H,2L-3R,3L-2H,3L-3R,1T",
                                 defects="V_X=60,V_M=12", imperfections=Imperfections(dose_e_per_A2=1e5), seed=5))
twin_path = write_calibrated_tiff(Path(tempfile.mkdtemp()) / "stacked_twin.tif", twin.image.astype(np.float32), 0.2)

for path, name in ((twin_path, "twin_phases.png"),
                   (shared / "real" / "scilink_mos2" / "MoS2_stem_Exp-000-2.npy", "real_phases.png")):
    viewer, layer, dock = statistics_dock(path, size=(2800, 1150), dock_width=700)
    dock.material.value = "2H-MoS2"
    dock.map_phases.value = True
    run_map_view(viewer, layer, dock)
    print(dock.result.phase_table().to_string(index=False))
    print(dock.result.concentrations[["defect_class", "count", "area_nm2", "per_cm2", "other_phase_area_nm2"]]
          .to_string(index=False))
    viewer.screenshot(str(out / name), canvas_only=False)
    print(f"wrote {out / name}")
    viewer.close()
