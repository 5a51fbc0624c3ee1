"""What the docs' screenshot scripts share: waiting for a dock's job and letting the viewer draw."""

from __future__ import annotations

import time

from qtpy.QtWidgets import QApplication


def settle(steps: int = 30) -> None:
    """Let the docks lay out and the canvas draw before a screenshot."""
    for _ in range(steps):
        QApplication.processEvents()
        time.sleep(0.02)


def wait(dock, seconds: float = 1800, settle_steps: int = 30) -> None:
    """Process events until ``dock``'s job is done (or ``seconds`` pass), then :func:`settle`."""
    t0 = time.time()
    while dock.runner.worker is not None and time.time() - t0 < seconds:
        QApplication.processEvents()
        time.sleep(0.05)
    settle(settle_steps)
