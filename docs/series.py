"""The figure of docs/series.md: the issue's simulated series through ``analyze_series`` → docs/series.png.

16 frames of a 102.4 Å MoS2 fast-mode twin at 0.2 Å/px, 1e5 e/Å² per frame, S lost at 12 barn, drifting
(0.32, 0.24) Å per frame (as tests/test_series.py and benchmarks/series_speed.py). Frames 0, 8 and 15 aligned
on frame 0 with the defects found in each (a 40 Å corner), and the counts against cumulative dose with the
expected counts of the measured cross-sections. Run:
    python docs/series.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from napari_mx2_defects.series import analyze_series, frame_stack, simulate_series  # noqa: E402
from napari_mx2_defects.series.align import align_frames  # noqa: E402
from napari_mx2_defects.series.plots import PLOTTED, draw_series  # noqa: E402
from napari_mx2_defects.series.twin import SeriesTwinRequest  # noqa: E402
from napari_mx2_defects.twin.api import TwinRequest  # noqa: E402
from napari_mx2_defects.twin.imperfections import Imperfections  # noqa: E402

out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
request = SeriesTwinRequest(TwinRequest(material="MoS2", fov_A=102.4, pixel_size_A=0.2, seed=3,
                                        imperfections=Imperfections(dose_e_per_A2=1e5)),
                            n_frames=16, damage_barn={"X_loss": 12.0}, drift_A_per_frame=(0.32, 0.24))
twin = simulate_series(request)
stack = frame_stack(twin.frames, twin.pixel_size_A, True, 80.0, {}, {"dose_per_frame_e_per_A2": 1e5})
result = analyze_series(stack, "MoS2", progress=lambda f, m: print(f"[{100 * f:5.1f} %] {m}", flush=True))
aligned = align_frames(stack.frames, result.drift_xy_A, stack.pixel_size_A)
points = result.points()

fig = plt.figure(figsize=(13, 7.2))
grid = fig.add_gridspec(2, 3, height_ratios=(1, 0.9))
corner = 40.0
for i, k in enumerate((0, 8, 15)):
    ax = fig.add_subplot(grid[0, i])
    px = stack.pixel_size_A
    n = int(corner / px)
    ax.imshow(aligned[k][:n, :n], cmap="gray", extent=(0, n * px, n * px, 0))
    here = points[(points.frame == k) & (points.x_A < corner) & (points.y_A < corner)]
    for name, colour in PLOTTED.items():
        sel = here[here.defect_class == name]
        if name == "missing_X" or (not len(sel) and name == "V_M"):
            continue
        ax.scatter(sel.x_A, sel.y_A, s=40, facecolors="none", edgecolors=colour, linewidths=1.2, label=name)
    dose = result.frames.cumulative_dose_e_per_A2.iloc[k]
    drift = result.drift_xy_A[k]
    ax.set_title(f"frame {k}: {dose:.2g} e/Å² before it; drift ({drift[0]:+.2f}, {drift[1]:+.2f}) Å", fontsize=9)
    ax.set_xlabel("x (Å)")
    if i == 0:
        ax.set_ylabel("y (Å, frame 0)")
        ax.legend(fontsize=7, loc="lower right")
sub = fig.add_subfigure(grid[1, :])
draw_series(sub, result)
fig.savefig(out / "series.png", dpi=90, bbox_inches="tight")
print(result.summary())
print(twin.truth_cross_section.to_string(index=False))
print(result.frames.to_string(index=False))
