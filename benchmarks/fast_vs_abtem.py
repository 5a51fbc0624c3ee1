"""Fast mode against abTEM multislice (and PRISM): per-column intensity error and speed-up.

The structure is a 6×4 orthogonal MoS2 cell (144 atoms before defects, 19.1 × 22.1 Å, the size
quoted in the project brief) with vacancies and antisites, which is not the 4×3 cell the fast
mode is calibrated on.  Per-column intensities are integrated over a disc of radius
(a/√3)/2 on images sampled at 0.05 Å.  Run:

    python benchmarks/fast_vs_abtem.py [--skip-multislice]

and copy the printed table into benchmarks/RESULTS.md with the machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from napari_mx2_defects.twin.defects import parse_defects, place_defects
from napari_mx2_defects.twin.microscope import Microscope
from napari_mx2_defects.twin.parents import get_parent
from napari_mx2_defects.twin.simulate import (
    calibrate_column_weights,
    column_examples,
    column_intensities,
    integration_radius_A,
    projected_columns,
    render_incoherent,
    render_incoherent_periodic,
    simulate_abtem,
)
from napari_mx2_defects.twin.structures import build_lattice


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--material", default="MoS2")
    parser.add_argument("--skip-multislice", action="store_true")
    parser.add_argument("--repeats", type=int, default=20, help="fast-mode repeats for timing")
    args = parser.parse_args()

    parent = get_parent(args.material)
    m = Microscope()
    lattice = build_lattice(parent, cells=(6, 4))
    place_defects(lattice, parse_defects("V_X=4,V_XX=2,V_M=2,M_X=1,S_X=1"), seed=5)
    atoms = lattice.atoms
    extent = (float(atoms.cell[0, 0]), float(atoms.cell[1, 1]))
    shape = (int(round(extent[1] / 0.05)), int(round(extent[0] / 0.05)))
    cols = projected_columns(atoms, periodic=True)
    examples = column_examples(atoms, cols)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{args.material} 6×4 cell, {len(atoms)} atoms, {extent[0]:.1f}×{extent[1]:.1f} Å")

    t0 = time.perf_counter()
    calibration = calibrate_column_weights(parent, m, examples, use_cache=False)
    t_cal = time.perf_counter() - t0
    print(f"calibration (PRISM, 4×3 cell): {t_cal:.1f} s; object σ {calibration.object_sigma_A} Å; "
          f"fit error {100 * calibration.max_rel_error:.2f} %")

    weights = cols.signature.map(calibration.weights_A2).to_numpy()
    t0 = time.perf_counter()
    for _ in range(args.repeats):  # what simulate_twin does: Nyquist grid + Fourier interpolation
        fast = render_incoherent_periodic(cols.x_A, cols.y_A, weights, shape, extent, m,
                                          object_sigma_A=calibration.object_sigma_A)
    t_fast = (time.perf_counter() - t0) / args.repeats
    t0 = time.perf_counter()
    direct = render_incoherent(cols.x_A, cols.y_A, weights, shape, extent, m, True,
                               object_sigma_A=calibration.object_sigma_A)
    t_direct = time.perf_counter() - t0
    # the same image at Nyquist scan sampling, the grid abTEM itself computes on
    nyq_shape = (int(np.ceil(extent[1] / m.nyquist_scan_sampling_A)), int(np.ceil(extent[0] / m.nyquist_scan_sampling_A)))
    t0 = time.perf_counter()
    for _ in range(args.repeats):
        render_incoherent(cols.x_A, cols.y_A, weights, nyq_shape, extent, m, True,
                          object_sigma_A=calibration.object_sigma_A)
    t_fast_nyq = (time.perf_counter() - t0) / args.repeats
    radius = integration_radius_A(parent.a_A)
    fast_i = column_intensities(fast, extent, cols.x_A, cols.y_A, radius)
    direct_i = column_intensities(direct, extent, cols.x_A, cols.y_A, radius)
    print(f"fast mode at 0.05 Å: Nyquist + Fourier interpolation {1e3 * t_fast:.1f} ms, every pixel rendered "
          f"{1e3 * t_direct:.0f} ms; the two differ by at most {100 * np.max(np.abs(fast_i / direct_i - 1)):.2f} % "
          "per column")

    methods = ["prism"] + ([] if args.skip_multislice else ["multislice"])
    for method in methods:
        t0 = time.perf_counter()
        reference = simulate_abtem(atoms, m, method, shape)
        t_ref = time.perf_counter() - t0
        ref_i = column_intensities(reference, extent, cols.x_A, cols.y_A, radius)
        err = (fast_i - ref_i) / ref_i
        print(f"\nfast vs {method}: abTEM {t_ref:.1f} s; fast {1e3 * t_fast:.1f} ms at 0.05 Å "
              f"({shape[1]}×{shape[0]} px), {1e3 * t_fast_nyq:.2f} ms on the Nyquist grid ({nyq_shape[1]}×{nyq_shape[0]} px)")
        print(f"speed-up: {t_ref / t_fast:,.0f}× (same 0.05 Å output), {t_ref / t_fast_nyq:,.0f}× (same Nyquist grid)")
        print(f"{'column':<8} {'n':>3} {'mean err %':>10} {'max |err| %':>11}")
        for sig in sorted(set(cols.signature)):
            sel = (cols.signature == sig).to_numpy()
            print(f"{sig:<8} {sel.sum():>3} {100 * err[sel].mean():>10.2f} {100 * np.abs(err[sel]).max():>11.2f}")
        print(f"{'all':<8} {len(err):>3} {100 * err.mean():>10.2f} {100 * np.abs(err).max():>11.2f}")


if __name__ == "__main__":
    main()
