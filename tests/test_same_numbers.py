"""Behaviour unchanged across refactors: the same numbers on a twin and on a real image (issue 32).

``tests/data/same_numbers.json`` holds what the package answered when it was recorded: a twin's truth,
the analysis of that twin and of a real MoS2 image (shared data), and the shipped model's segmentation
of the twin.  A change that moves any of them fails here; a change meant to move them re-records the
file (``python tests/test_same_numbers.py``) and says why in its commit.

Counts are compared exactly; measured numbers to 0.1 % (a pixel sum reordered by a new library
version may move the last digits, never a count or the third digit).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

RECORD = Path(__file__).parent / "data" / "same_numbers.json"
SHARED = Path(os.environ.get("MX2_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
REAL = "real/scilink_mos2/MoS2_stem_Exp-000-2.npy"


def _twin():
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections

    return simulate_twin(TwinRequest(material="MoS2", fov_A=40.0, defects="V_X=6,V_XX=2,V_M=2", seed=32,
                                     imperfections=Imperfections(dose_e_per_A2=1e6)))


def _analysis_numbers(result) -> dict:
    conc = result.concentrations
    return {
        "a_A": float(result.lattice["a_A"]),
        "pixel_size_A": float(result.lattice["pixel_size_A"]),
        "n_M_sites": int(result.lattice["n_M_sites"]),
        "n_X_sites": int(result.lattice["n_X_sites"]),
        "counts": {str(c): int(n) for c, n in zip(conc["defect_class"], conc["count"])},
        "mean_intensity": {s: float(v) for s, v in result.sites.groupby("sublattice")["intensity"].mean().items()},
    }


def twin_numbers() -> dict:
    from napari_mx2_defects.analysis.api import analyze_image
    from napari_mx2_defects.learn.inference import segment_image

    twin = _twin()
    pixel = float(np.mean(twin.pixel_size_A))
    seg = segment_image(twin.image, pixel, material="MoS2", runtime="torch")
    return {
        "twin": {"shape": list(twin.image.shape), "pixel_size_A": pixel,
                 "truth": {str(c): int(n) for c, n in twin.defects.defect_class.value_counts().items()},
                 "image_mean": float(np.mean(twin.image)), "image_std": float(np.std(twin.image))},
        "analysis": _analysis_numbers(analyze_image(twin.image, pixel, "MoS2")),
        "segmentation": {str(c): int(n) for c, n in seg.defects.defect_class.value_counts().items()},
    }


def real_numbers(shared: Path) -> dict:
    from napari_mx2_defects.analysis.api import analyze_image
    from napari_mx2_defects.io.formats import load_images

    (image,) = load_images(shared / REAL)
    return _analysis_numbers(analyze_image(image.data, image.pixel_size_A, "MoS2",
                                           beam_energy_keV=image.beam_energy_keV))


def _compare(now, then, where: str = "") -> list[str]:
    """Every difference, as 'path: now vs then' lines (counts exact, floats to 0.1 %)."""
    if isinstance(then, dict):
        keys = sorted(set(now) | set(then))
        return [d for k in keys for d in (_compare(now.get(k), then.get(k), f"{where}/{k}")
                                          if k in now and k in then else [f"{where}/{k}: {now.get(k)} vs {then.get(k)}"])]
    if isinstance(then, float) or isinstance(now, float):
        return [] if np.isclose(now, then, rtol=1e-3, atol=1e-9) else [f"{where}: {now} vs {then}"]
    return [] if now == then else [f"{where}: {now} vs {then}"]


def test_the_twin_and_its_analysis_and_segmentation_give_the_recorded_numbers():
    recorded = json.loads(RECORD.read_text())
    assert _compare(twin_numbers(), recorded["twin"]) == []


@pytest.mark.slow
def test_the_real_mos2_image_gives_the_recorded_numbers(shared_data):
    recorded = json.loads(RECORD.read_text())
    assert _compare(real_numbers(shared_data), recorded["real"]) == []


def test_the_comparison_sees_a_moved_count_and_a_moved_digit():
    then = {"counts": {"V_X": 6}, "a_A": 3.184}
    assert _compare({"counts": {"V_X": 6}, "a_A": 3.1841}, then) == []
    assert _compare({"counts": {"V_X": 5}, "a_A": 3.184}, then) == ["/counts/V_X: 5 vs 6"]
    assert _compare({"counts": {"V_X": 6}, "a_A": 3.19}, then) == ["/a_A: 3.19 vs 3.184"]
    assert _compare({"counts": {}, "a_A": 3.184}, then) == ["/counts/V_X: None vs 6"]


if __name__ == "__main__":  # re-record (say why in the commit)
    RECORD.parent.mkdir(exist_ok=True)
    record = {"twin": twin_numbers(), "real": real_numbers(SHARED)}
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(json.dumps(record, indent=1, sort_keys=True))
    sys.exit(0)
