"""CPU (or GPU) throughput and peak memory of tiled inference for 1k, 4k and 8k images.

Each size runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own.
The image is a MoS2 twin tiled to size at 0.2 Å/pixel (the model's pixel size), so the numbers
include no resampling.  Run:

    python benchmarks/inference_throughput.py [--sizes 1024 4096 8192] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from napari_mx2_defects.learn.inference import segment_image, load_model
from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
from napari_mx2_defects.twin.imperfections import Imperfections

size, device = int(sys.argv[1]), sys.argv[2]
twin = simulate_twin(TwinRequest(material="MoS2", defects="V_X=2%,V_M=1%", fov_A=102.4, pixel_size_A=0.2,
                                 imperfections=Imperfections(dose_e_per_A2=1e6), seed=1))
reps = int(np.ceil(size / twin.image.shape[0]))
image = np.tile(twin.image, (reps, reps))[:size, :size].astype(np.float32)
model, card = load_model("default", device)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
seg = segment_image(image, 0.2, device=device)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"size": size, "seconds": seconds, "mpix_per_s": size * size / 1e6 / seconds,
                  "peak_rss_GB": peak / 1024**2, "rss_before_GB": base / 1024**2, "device": seg.device,
                  "defects": int(len(seg.defects))}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"{'size':>6} {'seconds':>8} {'MPix/s':>7} {'peak RSS GB':>11} {'device':>7}")
    for size in args.sizes:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(size), args.device], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{size:>6} failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{r['size']:>6} {r['seconds']:>8.1f} {r['mpix_per_s']:>7.3f} {r['peak_rss_GB']:>11.2f} {r['device']:>7}")


if __name__ == "__main__":
    main()
