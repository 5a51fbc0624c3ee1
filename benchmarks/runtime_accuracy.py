"""Held-out F1 of every inference runtime on the same digital twins (issue 12: int8 within 0.01 of PyTorch).

Twins of several parents, doses and pixel sizes (seeds the training never used) are simulated
once and kept in memory; each runtime (``learn.runtime``) segments every one of them, and the
per-class instance F1 (1 Å matching, 1.5 Å border left out) is summed over all twins per runtime.
Also reports the fraction of pixels whose class differs from the PyTorch path. Run:

    python benchmarks/runtime_accuracy.py [--runtimes torch onnx-int8 openvino openvino-int8 openvino:384/32] [--n 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

MATERIALS = ("MoS2", "WSe2", "MoSe2", "WS2", "MoTe2", "NbSe2")
DOSES = (1e4, 1e5, 1e6)
PIXELS_A = (0.15, 0.2, 0.3)


def main() -> None:
    from napari_mx2_defects.learn.evaluate import _add, instance_scores, match_instances
    from napari_mx2_defects.learn.inference import segment_image
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=["torch", "onnx-int8", "openvino", "openvino-int8"],
        help="runtimes to compare, each optionally with its tiling: onnx-int8:512/32 (tile/overlap)",
    )
    parser.add_argument("--n", type=int, default=1, help="twins per parent, dose and pixel size")
    parser.add_argument("--fov-A", type=float, default=60.0)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    twins = []
    for i, (material, dose, pixel) in enumerate(
        (m, d, p) for m in MATERIALS for d in DOSES for p in PIXELS_A
    ):
        for k in range(args.n):
            seed = 70_000 + 10 * i + k
            twin = simulate_twin(
                TwinRequest(
                    material=material,
                    defects="V_X=2%,V_XX=1%,V_M=1%",
                    fov_A=args.fov_A,
                    pixel_size_A=pixel,
                    seed=seed,
                    imperfections=Imperfections(dose_e_per_A2=dose, scan_jitter_A=0.02, contamination=0.1),
                )
            )
            twins.append((material, dose, twin))
    print(f"{len(twins)} twins ({', '.join(MATERIALS)}; doses {DOSES}; pixel sizes {PIXELS_A} Å)")
    totals, labels, seconds = {}, {}, {}
    for runtime in args.runtimes:
        name, _, tiling = runtime.partition(":")
        tile, overlap = (int(v) for v in (tiling or "256/64").split("/"))
        segment_image(twins[0][2].image, twins[0][2].pixel_size_A[1], runtime=name)  # export/quantise first
        counts: dict = {}
        labels[runtime] = []
        t0 = time.perf_counter()
        for material, dose, twin in twins:
            seg = segment_image(
                twin.image, twin.pixel_size_A[1], runtime=name, material=material, tile=tile, overlap=overlap
            )
            ex, ey = twin.extent_xy_A

            def inside(table, b=1.5):
                return table[(table.x_A > b) & (table.y_A > b) & (table.x_A < ex - b) & (table.y_A < ey - b)]

            _add(counts, match_instances(inside(seg.defects), inside(twin.truth_table())))
            labels[runtime].append(seg.labels)
        seconds[runtime] = time.perf_counter() - t0
        totals[runtime] = instance_scores(counts).set_index("defect_class")
    base = args.runtimes[0]
    for runtime in args.runtimes:
        table = totals[runtime]
        differ = np.mean([np.mean(a != b) for a, b in zip(labels[runtime], labels[base])])
        print(
            f"\n{runtime}: {seconds[runtime]:.1f} s for all twins; pixels classed unlike {base}: {differ:.2e}"
        )
        print(table[["tp", "fp", "fn", "f1"]].to_string(float_format=lambda v: f"{v:.4f}"))
        if runtime != base:
            common = table.index.intersection(totals[base].index)
            delta = (table.loc[common, "f1"] - totals[base].loc[common, "f1"]).abs()
            print(f"largest |ΔF1| against {base}: {delta.max():.4f} ({delta.idxmax()})")


if __name__ == "__main__":
    main()
