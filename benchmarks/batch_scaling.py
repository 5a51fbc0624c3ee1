"""``batch`` over 8 files on a dask LocalCluster of 1 and of 2 workers (issue 12): wall time and scaling.

Eight MoS2 twins (1024² px at 0.2 Å/px, V_X 2 %, V_M 0.5 %, 1e6 e/Å², different seeds) are written
as calibrated TIFFs; :func:`~napari_mx2_defects.batch.run_batch` processes the folder into a fresh
output folder once per worker count (cluster start-up included), and the summary's V_X counts are
checked to be the same for both. Run:

    python benchmarks/batch_scaling.py [--files 8] [--size 1024] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    from napari_mx2_defects.batch import run_batch
    from napari_mx2_defects.io.writer import write_calibrated_tiff
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        inputs.mkdir()
        for k in range(args.files):
            twin = simulate_twin(TwinRequest(material="MoS2", defects="V_X=2%,V_M=0.5%", fov_A=args.size * 0.2,
                                             pixel_size_A=0.2, seed=800 + k,
                                             imperfections=Imperfections(dose_e_per_A2=1e6)))
            write_calibrated_tiff(inputs / f"scan_{k:02d}.tif", twin.image, 0.2)
        print(f"{args.files} files of {twin.image.shape[1]}×{twin.image.shape[0]} px")
        seconds, counts = {}, {}
        for workers in args.workers:
            t0 = time.perf_counter()
            result = run_batch([inputs], Path(tmp) / f"out_{workers}", material="MoS2", workers=workers)
            seconds[workers] = time.perf_counter() - t0
            counts[workers] = result.summary.V_X_count.tolist()
            per_file = result.summary.seconds.mean()
            print(f"{workers} worker(s): {seconds[workers]:.1f} s for {len(result.done)} files "
                  f"({per_file:.1f} s per file inside the workers); failed: {len(result.failed)}", flush=True)
        first = args.workers[0]
        for workers in args.workers[1:]:
            print(f"speed-up {first} → {workers} workers: {seconds[first] / seconds[workers]:.2f}×; "
                  f"same V_X counts: {counts[workers] == counts[first]}")


if __name__ == "__main__":
    main()
