"""What the docs' screenshot scripts share: waiting for a dock's job and letting the viewer draw."""

from __future__ import annotations

import time

from qtpy.QtWidgets import QApplication


def settle(steps: int = 30) -> None:
    """Let the docks lay out and the canvas draw before a screenshot."""
    for _ in range(steps):
        QApplication.processEvents()
        time.sleep(0.02)


def statistics_dock(path, size=(2000, 1150), dock_width: int = 600):
    """A shown viewer with ``path`` opened by the plugin and the *Defect statistics* dock, ``dock_width`` px
    wide: (viewer, image layer, dock)."""
    import napari
    from qtpy.QtCore import Qt

    viewer = napari.Viewer(show=True)
    viewer.window.resize(*size)
    layer = viewer.open(path, plugin="napari-mx2-defects")[0]
    dock_widget, dock = viewer.window.add_plugin_dock_widget("napari-mx2-defects", "Defect statistics")
    viewer.window._qt_window.resizeDocks([dock_widget], [dock_width], Qt.Orientation.Horizontal)
    return viewer, layer, dock


def run_map_view(viewer, layer, dock) -> None:
    """Run the dock on ``layer``, wait for it, hide the sites layer and show the whole field, then print the
    dock's status: what the map screenshots share."""
    dock.run()
    wait(dock)
    viewer.layers[f"{layer.name} sites"].visible = False
    viewer.reset_view()
    settle()
    print(dock.status.value)


def wait(dock, seconds: float = 1800, settle_steps: int = 30) -> None:
    """Process events until ``dock``'s job is done (or ``seconds`` pass), then :func:`settle`."""
    t0 = time.time()
    while dock.runner.worker is not None and time.time() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.05)
    settle(settle_steps)
