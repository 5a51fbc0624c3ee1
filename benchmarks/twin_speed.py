"""Speed and memory of fast-mode digital twins (issue: a 256² training twin ≥ 20 per second per
core, a 4096² twin ≤ 5 s, a million-atom twin ≤ 120 s and ≤ 4 GB).

Each case runs in a fresh child process, so its peak resident memory (ru_maxrss) is its own; the
abTEM calibration is made (and cached) before any timing.  "Per core": the 256² case runs with one
thread for every library (OMP/BLAS/FINUFFT/scipy.fft), so its rate is what one core of a dataset
worker gives.  Run:

    python benchmarks/twin_speed.py [--cases small,4096,million] [--repeats 40]

and copy the table into benchmarks/RESULTS.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

CASES = {
    # name: (fov_A, pixel_size_A, defects, threads)
    "small": (51.2, 0.2, "V_X=2%,V_XX=0.5%,V_M=0.5%,TM_D(W)=1%", 1),
    "4096": (409.6, 0.1, "V_X=2%,V_XX=0.5%,V_M=0.5%,TM_D(W)=1%", 0),
    "million": (1720.0, 0.2, "V_X=2%,V_XX=0.5%,V_M=0.5%,TM_D(W)=1%", 0),
}


def _child(name: str, repeats: int) -> None:
    import resource

    import numpy as np

    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections

    fov, pixel, defects, _ = CASES[name]
    noise = Imperfections(dose_e_per_A2=1e5, scan_jitter_A=0.05)
    simulate_twin(TwinRequest(material="MoS2", fov_A=20.0, pixel_size_A=pixel, defects="V_X=1,TM_D(W)=1"))
    n = repeats if name == "small" else 1
    t0 = time.perf_counter()
    for seed in range(n):
        twin = simulate_twin(TwinRequest(material="MoS2", fov_A=fov, pixel_size_A=pixel, defects=defects,
                                         seed=seed, imperfections=noise))
    seconds = (time.perf_counter() - t0) / n
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"case": name, "shape": list(twin.image.shape), "atoms": len(twin.atoms),
                      "defects": len(twin.defects), "seconds": seconds, "per_second": 1 / seconds,
                      "peak_rss_GB": peak_gb, "finite": bool(np.isfinite(twin.image).all())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="small,4096,million")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.repeats)
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| case | image | atoms | seconds per twin | twins/s | peak RSS |")
    print("|---|---|---|---|---|---|")
    for name in args.cases.split(","):
        threads = CASES[name][3]
        env = dict(os.environ)
        if threads:
            env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                                  "MX2_DEFECTS_THREADS")})
        out = subprocess.run([sys.executable, __file__, "--child", name, "--repeats", str(args.repeats)],
                             env=env, capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} ({'1 thread' if threads else 'all cores'}) | {r['shape'][1]}×{r['shape'][0]} | "
              f"{r['atoms']:,} | {r['seconds']:.3f} | {r['per_second']:.1f} | {r['peak_rss_GB']:.2f} GB |", flush=True)


if __name__ == "__main__":
    main()
