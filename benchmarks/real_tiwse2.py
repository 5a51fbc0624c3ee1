"""Ti in WSe2 on a real ADF-STEM scan (issue 28): how well the network, the site physics and the counted
answer name Ti on W sites, scored column by column against the data authors' labels.

The scan is ``../shared/data/real/tiwse2_ti_doped/1028_ADF2_2.dm4`` (JEOL, 80 kV, 0.3988 Å/px by its tags;
labels ``1028_2_columns.csv``: ``W``, ``Ti_W``, ``Se2``, ``V_Se``; read that folder's README). It is run as a
user would: ``segment --material WSe2`` with the file's optics, then ``analyze --dopant Ti`` with the model's
defects. Every labelled metal column inside the reliably labelled box (8–504 px) is matched to the nearest
analysed metal site within 1 Å, and each answer is scored:

* ``model``: the network's own class there (``model_class``), Ti counted when it says TM_D;
* ``physics``: the site physics alone (``defect_class``);
* ``reported``: the one answer per site the counts use (``reported_class``).

Besides Ti_W precision/recall/F1 it counts, per answer, the sites named any class other than TM_D (the
``other`` column: every such call on this scan is false but for the 5 uncertain V_Se labels), and the
intact metal columns the network calls S_X or M_X per 1,000. Rows are given for the whole box and for its
bottom quarter (the part ``finetune`` holds out when the top three quarters are the corrections).

    python benchmarks/real_tiwse2.py [--model default] [--no-model] [--out real_tiwse2.csv]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

#: The reliably labelled box of the scan (px from the image edge; its README).
BOX_PX = (8.0, 504.0)
#: A labelled column and an analysed site match within this distance (Å).
MATCH_A = 1.0
#: The held-out part: the bottom quarter of the labelled box.
HOLDOUT_FRACTION = 0.25


def scan_folder() -> Path:
    root = Path(os.environ.get("MX2_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return root / "real" / "tiwse2_ti_doped"


#: The scan's two detectors, recorded at the same time: ADF2 (HAADF-like, the one the labels were made on)
#: and ADF1 (a lower-angle annulus). The labelled columns are the same in both.
DETECTORS = ("ADF2", "ADF1")


def scan_file(detector: str = "ADF2") -> str:
    return f"1028_{detector}_2.dm4"


def load_scan(folder: Path | None = None, detector: str = "ADF2"):
    """(calibrated image, labelled columns) of the shared scan as ``detector`` saw it."""
    from napari_mx2_defects.io.formats import load_images

    folder = folder or scan_folder()
    image = load_images(folder / scan_file(detector))[0]
    truth = pd.read_csv(folder / "1028_2_columns.csv")
    return image, truth


def in_box(table: pd.DataFrame, pixel_size_A: float) -> np.ndarray:
    lo, hi = BOX_PX
    x, y = table.x_A / pixel_size_A, table.y_A / pixel_size_A
    return ((x >= lo) & (x <= hi) & (y >= lo) & (y <= hi)).to_numpy()


def holdout_y_A(pixel_size_A: float) -> float:
    """Where the held-out bottom quarter of the box starts (Å)."""
    lo, hi = BOX_PX
    return (lo + (1 - HOLDOUT_FRACTION) * (hi - lo)) * pixel_size_A


def score_sites(sites: pd.DataFrame, truth: pd.DataFrame, pixel_size_A: float, part: str = "box") -> dict:
    """Ti_W scores of each answer column present in ``sites`` over the labelled metal columns of ``part``
    (``box`` or ``held_out``), and the other-class calls on every labelled column there."""
    t = truth[in_box(truth, pixel_size_A)]
    if part == "held_out":
        t = t[t.y_A >= holdout_y_A(pixel_size_A)]
    tree = cKDTree(sites[["x_A", "y_A"]].to_numpy(float))
    d, i = tree.query(t[["x_A", "y_A"]].to_numpy(float))
    ok = d <= MATCH_A
    matched = sites.iloc[i[ok]].reset_index(drop=True)
    labels = t.defect_class.to_numpy()[ok]
    metal = np.isin(labels, ["W", "Ti_W"])
    ti = labels == "Ti_W"
    out = {"part": part, "n_metal": int(metal.sum()), "n_ti": int(ti.sum()), "unmatched": int((~ok).sum())}
    for answer, column in (("model", "model_class"), ("physics", "defect_class"), ("reported", "reported_class")):
        if column not in matched:
            continue
        said = matched[column].astype(str).to_numpy()
        tm_d = said == "TM_D"
        tp, fp, fn = int((tm_d & ti).sum()), int((tm_d & metal & ~ti).sum()), int((~tm_d & ti).sum())
        p = tp / (tp + fp) if tp + fp else float("nan")
        r = tp / (tp + fn) if tp + fn else float("nan")
        out[f"{answer}_precision"], out[f"{answer}_recall"] = p, r
        out[f"{answer}_f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        out[f"{answer}_other"] = int(((said != "") & ~tm_d).sum())
        if answer == "model":
            intact = metal & ~ti
            out["model_SX_MX_per_1000_intact_metal"] = \
                1000 * float(np.isin(said[intact], ["S_X", "M_X"]).sum()) / max(int(intact.sum()), 1)
    return out


def run(model: str | None = "default", runtime: str = "auto", dopant: str = "Ti",
        detector: str = "ADF2") -> tuple[pd.DataFrame, dict]:
    from napari_mx2_defects.analysis.api import analyze_image
    from napari_mx2_defects.inputs import image_plane
    from napari_mx2_defects.learn.inference import segment_image

    image, truth = load_scan(detector=detector)
    data, _ = image_plane(image.data, scan_file(detector))
    pixel = float(np.mean(image.scale_A[-2:]))
    timings = {}
    defects = None
    if model:
        t0 = time.perf_counter()
        seg = segment_image(np.asarray(data, np.float32), pixel, model=model, material="WSe2",
                            beam_energy_keV=image.beam_energy_keV, optics=image.optics, runtime=runtime)
        timings["segment_s"] = time.perf_counter() - t0
        defects = seg.defects
    t0 = time.perf_counter()
    result = analyze_image(np.asarray(data, float), pixel, "WSe2", defects=defects,
                           beam_energy_keV=image.beam_energy_keV, dopant=dopant, optics=image.optics)
    timings["analyze_s"] = time.perf_counter() - t0
    rows = [score_sites(result.sites, truth, pixel, part) for part in ("box", "held_out")]
    return pd.DataFrame(rows), {"timings": timings, "notes": result.notes, "lattice": result.lattice}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--no-model", action="store_true", help="the site physics alone")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--detector", choices=DETECTORS, default="ADF2",
                        help="which of the scan's two simultaneous detector images to analyse (the labels fit both)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    table, info = run(None if args.no_model else args.model, args.runtime, detector=args.detector)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(table.T.to_string())
    print(info["timings"])
    for note in info["notes"]:
        print("note:", note)
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
