"""Main-thread stalls while the docks work, in a real napari viewer (issue 29 item 3: none over 0.25 s).

A 50 ms ``QTimer`` ticks on napari's event loop while a user's steps run; a stall is the time between two
ticks beyond the 50 ms (the event loop could not run: nothing repaints, no click is answered).  The steps:
opening the real 512² Ti:WSe2 dm4 through the plugin's reader, a fast-mode twin from the *Simulate* dock,
*Find defects* and *Defect statistics* on that image, and Cancel of a multislice twin (seconds from the
click to the dock being ready again).  Calibrations come from ``$MX2_DEFECTS_CACHE`` as in a user's second
session; run with an empty cache to see a first session.

    xvfb-run -a python benchmarks/gui_stalls.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

SCAN = Path(os.environ.get("MX2_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / \
    "real" / "tiwse2_ti_doped" / "1028_ADF2_2.dm4"


class StallClock:
    """Ticks every ``interval_s`` on the Qt event loop and keeps the gaps between ticks."""

    def __init__(self, interval_s: float = 0.05):
        from qtpy.QtCore import QTimer

        self.interval_s = interval_s
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(int(interval_s * 1000))
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def run(self, start, done, timeout_s: float = 900.0) -> dict:
        """Start ``start()`` from inside the event loop and spin it until ``done()``; the stall figures."""
        from qtpy.QtCore import QEventLoop, QTimer

        self.ticks = []
        loop = QEventLoop()
        t0 = time.perf_counter()
        watcher = QTimer()
        watcher.timeout.connect(lambda: loop.quit() if done() or time.perf_counter() - t0 > timeout_s else None)
        QTimer.singleShot(0, start)
        self.timer.start()
        watcher.start(20)
        loop.exec()
        watcher.stop()
        self.timer.stop()
        gaps = np.diff([t0, *self.ticks, time.perf_counter()])
        stalls = np.clip(gaps - self.interval_s, 0, None)
        return {"seconds": time.perf_counter() - t0, "longest_stall_s": float(stalls.max()),
                "stalls_over_0.25_s": int((stalls > 0.25).sum())}


def main() -> int:
    import napari

    from napari_mx2_defects.widgets.segment import SegmentWidget
    from napari_mx2_defects.widgets.simulate import SimulateWidget
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    viewer = napari.Viewer(show=True)
    clock = StallClock()
    rows = []
    opened = {}
    rows.append(("open the 512² dm4 (plugin reader)",
                 clock.run(lambda: opened.setdefault("layers", viewer.open(SCAN, plugin="napari-mx2-defects")),
                           lambda: "layers" in opened)))
    simulate = SimulateWidget(viewer)
    viewer.window.add_dock_widget(simulate)
    simulate.fov_A.value = 60.0
    rows.append(("Simulate: 60 Å fast-mode MoS2 twin", clock.run(simulate.run, lambda: simulate.runner.worker is None)))
    for layer in list(viewer.layers)[1:]:
        viewer.layers.remove(layer)
    segment = SegmentWidget(viewer)
    viewer.window.add_dock_widget(segment)
    segment.image_layer.value = viewer.layers[0].name
    segment.material.value = "2H-WSe2"
    rows.append(("Find defects on the dm4", clock.run(segment.run, lambda: segment.runner.worker is None)))
    statistics = StatisticsWidget(viewer)
    viewer.window.add_dock_widget(statistics)
    statistics.image_layer.value = viewer.layers[0].name
    statistics.material.value = "2H-WSe2"
    rows.append(("Defect statistics on the dm4", clock.run(statistics.run, lambda: statistics.runner.worker is None)))
    simulate.method.value = "multislice"
    simulate.fov_A.value = 40.0
    cancel = {}

    def start_and_cancel():
        simulate.run()
        from qtpy.QtCore import QTimer

        def click():
            cancel["t"] = time.perf_counter()
            simulate.cancel_button.native.click()
        QTimer.singleShot(3000, click)

    row = clock.run(start_and_cancel, lambda: "t" in cancel and simulate.runner.worker is None)
    row["cancel_to_ready_s"] = time.perf_counter() - cancel.get("t", np.nan)
    rows.append(("Simulate: cancel a 40 Å multislice twin after 3 s", row))
    for name, row in rows:
        extra = f", cancel → ready {row['cancel_to_ready_s']:.1f} s" if "cancel_to_ready_s" in row else ""
        print(f"{name:52s} {row['seconds']:7.1f} s; longest stall {row['longest_stall_s']:.2f} s, "
              f"{row['stalls_over_0.25_s']} over 0.25 s{extra}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
