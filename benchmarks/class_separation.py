"""How far each class's calibrated level lies from intact, in intact widths (issue 9, ``VERIFIABLE_SD``).

For the held-out microscopes of ``held_out_optics.py`` (its twins: MoS2 + W, WSe2 + Ti, 0.3 Å source) and
for intact MoS2 at the 200 kV HAADF and default 80 kV HAADF presets, at 0.2 and 0.4 Å/px and 1e4–1e6
e/Å², the site analysis (no model) is run and, per sublattice, every class within 12 widths of intact is
printed as ``class=distance`` (|level − intact| / the sublattice's robust width).  A model's class whose
distance is below :data:`napari_mx2_defects.analysis.classes.VERIFIABLE_SD` is not counted.

    python benchmarks/class_separation.py
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from held_out_optics import CASES, HELD_OUT, SOURCE_SIZE_A  # noqa: E402

from napari_mx2_defects.analysis.api import analyze_image  # noqa: E402
from napari_mx2_defects.twin.api import TwinRequest, simulate_twin  # noqa: E402
from napari_mx2_defects.twin.imperfections import Imperfections  # noqa: E402
from napari_mx2_defects.twin.microscope import OPTICS_PRESETS  # noqa: E402


def main() -> None:
    warnings.filterwarnings("ignore")
    jobs = [(p, dataclasses.replace(HELD_OUT[p], source_size_A=SOURCE_SIZE_A), case)
            for p in ("60kV-ADF", "80kV-ADF", "300kV-ADF") for case in CASES]
    jobs += [(p, OPTICS_PRESETS[p], ("MoS2", "", None)) for p in ("200kV-HAADF", "80kV-HAADF")]
    for name, microscope, (material, defects, dopant) in jobs:
        for pixel in (0.2, 0.4):
            for dose in (1e4, 1e5, 1e6):
                twin = simulate_twin(TwinRequest(material=material, defects=defects, fov_A=100.0, pixel_size_A=pixel,
                                                 seed=1, microscope=microscope,
                                                 imperfections=Imperfections(dose_e_per_A2=dose, scan_jitter_A=0.02)))
                result = analyze_image(twin.image, pixel, material, dopant=dopant, beam_energy_keV=microscope.energy_keV,
                                       optics=microscope.recorded_optics())
                out = []
                for sub, mix in result.lattice["mixture"].items():
                    width, intact = mix["intact_width"], mix["seeds"]["intact"]
                    near = {k: abs(v - intact) / width for k, v in mix["seeds"].items() if k != "intact"}
                    out.append(sub + ":" + ",".join(f"{k}={d:.1f}" for k, d in near.items() if d < 12))
                print(name, material, pixel, f"{dose:g}", " ".join(out), flush=True)


if __name__ == "__main__":
    main()
