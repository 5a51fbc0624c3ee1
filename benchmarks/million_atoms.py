"""A million atoms end to end on the CPU (issue 12): one 1720 Å MoS2 twin at 0.2 Å/px, segmented and analysed.

The twin (V_X 2 %, V_XX 0.5 %, V_M 0.5 %, 1e6 e/Å², 0.02 Å scan jitter) is simulated in one
process and saved as .npy with its truth; a fresh process then loads it and runs what ``segment``
and ``analyze`` run (:func:`~napari_mx2_defects.learn.inference.segment_image` with the default
runtime, then :func:`~napari_mx2_defects.analysis.api.analyze_image` with the model's defects), and
reports each step's seconds, the process's peak resident memory (ru_maxrss, image included) and the
``V_X`` counts of the truth, the segmentation and the analysis. Run:

    python benchmarks/million_atoms.py [--fov-A 1720] [--runtime auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time
import numpy as np
import pandas as pd
from napari_mx2_defects.analysis.api import analyze_image
from napari_mx2_defects.learn.inference import load_model, segment_image

path, truth_path, runtime = sys.argv[1], sys.argv[2], sys.argv[3]
image = np.load(path)
load_model("default", "cpu")
segment_image(image[:256, :256], 0.2, runtime=runtime)  # the runtime's graph is ready before the clock starts
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
t0 = time.perf_counter()
seg = segment_image(image, 0.2, runtime=runtime, material="MoS2")
t1 = time.perf_counter()
rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
result = analyze_image(image, 0.2, material="MoS2", defects=seg.defects)
t2 = time.perf_counter()
truth = pd.read_csv(truth_path)
counts = result.concentrations.set_index("defect_class")["count"]
print(json.dumps({"segment_s": t1 - t0, "analyse_s": t2 - t1, "total_s": t2 - t0, "runtime": seg.runtime,
                  "rss_before_GB": rss0, "peak_after_segment_GB": rss1,
                  "peak_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "n_sites": int(result.lattice["n_M_sites"] + result.lattice["n_X_sites"]),
                  "truth": truth.defect_class.value_counts().to_dict(),
                  "segmented": seg.defects.defect_class.value_counts().to_dict(),
                  "analysed": {k: int(v) for k, v in counts.items()}}))
"""


def main() -> None:
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fov-A", type=float, default=1720.0)
    parser.add_argument("--runtime", default="auto")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    t0 = time.perf_counter()
    twin = simulate_twin(
        TwinRequest(
            material="MoS2",
            defects="V_X=2%,V_XX=0.5%,V_M=0.5%",
            fov_A=args.fov_A,
            pixel_size_A=0.2,
            seed=2024,
            imperfections=Imperfections(dose_e_per_A2=1e6, scan_jitter_A=0.02),
        )
    )
    n_atoms = len(twin.atoms)
    print(
        f"twin {twin.image.shape[1]}×{twin.image.shape[0]} px, {n_atoms:,} atoms, "
        f"{time.perf_counter() - t0:.1f} s"
    )
    with tempfile.TemporaryDirectory() as folder:
        import numpy as np

        path, truth = os.path.join(folder, "image.npy"), os.path.join(folder, "truth.csv")
        np.save(path, twin.image.astype(np.float32))
        twin.truth_table().to_csv(truth, index=False)
        del twin
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, path, truth, args.runtime], capture_output=True, text=True
        )
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(1)
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(r, indent=1))
    vx = r["truth"].get("V_X", 0)
    for step in ("segmented", "analysed"):
        got = r[step].get("V_X", 0)
        print(f"V_X {step}: {got} of {vx} in the truth ({100 * (got - vx) / max(vx, 1):+.1f} %)")
    print(
        f"segment {r['segment_s']:.1f} s + analyse {r['analyse_s']:.1f} s = {r['total_s']:.1f} s; "
        f"peak RSS {r['peak_GB']:.2f} GB"
    )


if __name__ == "__main__":
    main()
