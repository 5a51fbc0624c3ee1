"""Held-out optics: per-instance F1 per class × dose × pixel size (issue 9).

Twins are imaged at microscopes the shipped model was not trained at (its real-optics bank is
``learn.dataset.REAL_OPTICS_BANK``): the optics presets of :data:`napari_mx2_defects.twin.microscope.OPTICS_PRESETS`
other than the default 80kV-HAADF, and an 80 kV ADF detector (30–150 mrad), each with a 0.3 Å source size
and 0.02 Å scan jitter, 100 Å square:

* MoS2 with V_X 2 %, V_XX 1 %, V_M 1 % and W on 2 % of the Mo sites (a dopant heavier than the host);
* WSe2 with the same vacancies and Ti on 2 % of the W sites (a dopant lighter than the host).

Each twin is segmented and analysed as a user would (:func:`napari_mx2_defects.learn.evaluate.score_pipeline_on_twin`:
the material, the dopant and the microscope's beam energy, convergence and detector angles given), and
scored per instance, matching within 1 Å with the same class, 3 Å borders left out: ``model`` is the
model's own answer, ``reported`` the one answer per site the counts use.

    python benchmarks/held_out_optics.py [--presets 60kV-ADF,80kV-ADF,300kV-ADF] [--pixels 0.2,0.4]
        [--doses 1e4,1e5,1e6] [--seeds 1] [--model default] [--out held_out_optics.csv]

Prints one table per answer (class × dose × pixel size, summed over presets and seeds) and writes every
twin's counts to ``--out``.  The first run calibrates each preset, parent and dopant against abTEM (cached).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd

from napari_mx2_defects.learn.evaluate import instance_scores, score_pipeline_on_twin
from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
from napari_mx2_defects.twin.imperfections import Imperfections
from napari_mx2_defects.twin.microscope import OPTICS_PRESETS, Microscope

#: Held-out microscopes: none is in the training bank.
HELD_OUT = {**{k: v for k, v in OPTICS_PRESETS.items() if k != "80kV-HAADF"},
            "80kV-ADF": Microscope(energy_keV=80, semiangle_mrad=25, detector_inner_mrad=30, detector_outer_mrad=150)}

#: (material, planted defects, the dopant the user names)
CASES = (("MoS2", "V_X=2%,V_XX=1%,V_M=1%,TM_D(W)=2%", "W"),
         ("WSe2", "V_X=2%,V_XX=1%,V_M=1%,TM_D(Ti)=2%", "Ti"))
SOURCE_SIZE_A = 0.3
FOV_A = 100.0


def held_out_twin(material: str, defects: str, preset: str, pixel_size_A: float, dose: float, seed: int):
    microscope = dataclasses.replace(HELD_OUT[preset], source_size_A=SOURCE_SIZE_A)
    request = TwinRequest(material=material, defects=defects, fov_A=FOV_A, pixel_size_A=pixel_size_A, seed=seed,
                          microscope=microscope,
                          imperfections=Imperfections(dose_e_per_A2=dose, scan_jitter_A=0.02))
    return simulate_twin(request), microscope


def run(presets, pixels, doses, seeds, model: str = "default", runtime: str = "auto") -> pd.DataFrame:
    rows = []
    for preset in presets:
        for material, defects, dopant in CASES:
            for pixel in pixels:
                for dose in doses:
                    for seed in seeds:
                        t0 = time.perf_counter()
                        twin, microscope = held_out_twin(material, defects, preset, pixel, dose, seed)
                        scored = score_pipeline_on_twin(twin, material, microscope, dopant, model=model,
                                                        runtime=runtime)
                        for answer in ("model", "reported"):
                            for name, c in scored[answer].items():
                                rows.append({"preset": preset, "material": material, "dopant": dopant,
                                             "pixel_size_A": pixel, "dose_e_per_A2": dose, "seed": seed,
                                             "answer": answer, "defect_class": name, **c,
                                             "sites": scored["sites"]})
                        print(f"{preset} {material} {pixel} Å {dose:g} e/Å² seed {seed}: "
                              f"{time.perf_counter() - t0:.1f} s", flush=True)
    return pd.DataFrame(rows)


def f1_table(counts: pd.DataFrame, answer: str) -> pd.DataFrame:
    """F1 per class (rows) × dose and pixel size (columns), counts summed over presets, parents and seeds;
    TM_D is split by dopant (light Ti, heavy W)."""
    part = counts[counts.answer == answer].copy()
    part["class"] = part.defect_class.where(part.defect_class != "TM_D", "TM_D(" + part.dopant + ")")
    out = {}
    for (dose, pixel), group in part.groupby(["dose_e_per_A2", "pixel_size_A"]):
        summed = {name: g[["tp", "fp", "fn"]].sum().to_dict() for name, g in group.groupby("class")}
        scores = instance_scores(summed).set_index("defect_class")
        out[f"{dose:g} e/Å², {pixel:g} Å"] = scores.f1
    return pd.DataFrame(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="60kV-ADF,80kV-ADF,300kV-ADF")
    parser.add_argument("--pixels", default="0.2,0.4")
    parser.add_argument("--doses", default="1e4,1e5,1e6")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--model", default="default")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--out", default="held_out_optics.csv")
    args = parser.parse_args()
    counts = run(args.presets.split(","), [float(p) for p in args.pixels.split(",")],
                 [float(d) for d in args.doses.split(",")], [int(s) for s in args.seeds.split(",")],
                 model=args.model, runtime=args.runtime)
    counts.to_csv(args.out, index=False)
    pd.set_option("display.width", 200)
    for answer in ("model", "reported"):
        print(f"\nper-instance F1, {answer}:\n{f1_table(counts, answer).round(3).to_string()}")
    print(f"\nsites analysed: {counts.drop_duplicates(['preset', 'material', 'pixel_size_A', 'dose_e_per_A2', 'seed']).sites.sum()}")


if __name__ == "__main__":
    main()
