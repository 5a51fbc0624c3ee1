"""napari sample data: a MoS2 digital twin with vacancies, generated on the fly.

Why the menu does not freeze (issue 13: "opening the sample twin freezes the viewer 26 s the first
time"): the twin is real — the fast mode calibrated against abTEM (PRISM) — and the first call on a
machine runs that calibration (20 s to a few minutes, more on a busy machine), later calls take well
under a second.  napari calls a sample-data function on the GUI thread and adds the layer data it
returns (``ViewerModel.open_sample``); it must return at least one layer at once (an empty list is an
error) and cannot take layers later.  So:

* clicked in the running viewer (*File ▸ Open Sample*, the Qt event loop is running: napari would
  freeze), :func:`make_mos2_twin` returns at once with one empty Points layer, *"MoS2 twin
  (simulating…)"*, and simulates in a ``napari.qt.threading`` worker (the docks' :class:`JobRunner`),
  with its progress in napari's activity bar.  When the twin is done the placeholder is replaced by the
  image, truth labels and truth defects.  Deleting the placeholder cancels the simulation.
* called from code outside the event loop — a script before ``napari.run()``, a test,
  ``viewer.open_sample(...)`` in a notebook cell — nothing is drawn meanwhile and the caller wants the
  layers: it computes them and returns them, as before.
* ``viewer.open_sample("napari-mx2-defects", "mos2_twin", background=True / False)`` chooses explicitly.

Rejected: a precomputed image shipped with the package (not the real twin of this installation's
abTEM and calibration), and spinning a nested event loop inside the menu callback until the worker is
done (re-entrant: the same menu could be clicked again while it waits).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .layers import LayerData

__all__ = ["make_mos2_twin", "sample_request"]

NAME = "MoS2 twin"
#: Running background samples, kept alive until they finish.
_RUNNING: set = set()
_TOKENS = itertools.count(1)


def sample_request():
    """The sample's :class:`~.twin.api.TwinRequest`: 40 Å MoS2, V_X=8, V_XX=3, V_M=2, 1e6 e/Å², seed 0."""
    from .twin.api import TwinRequest
    from .twin.imperfections import Imperfections

    return TwinRequest(material="MoS2", defects="V_X=8,V_XX=3,V_M=2", fov_A=40.0, pixel_size_A=0.1,
                       imperfections=Imperfections(dose_e_per_A2=1e6), seed=0)


def make_mos2_twin(background: bool | None = None) -> list[LayerData]:
    """40 Å MoS2 twin with V_X, V_XX and V_M at 1e6 e/Å² (fast mode, seed 0): image, truth labels,
    truth defects.

    Parameters
    ----------
    background : bool or None
        True: return a placeholder layer at once and simulate in a thread worker, the layers are added
        to the current viewer when done.  False: simulate now and return the layers.  None (default):
        in the background when called from the running Qt event loop (the *Open Sample* menu), else now.
    """
    if background is None:
        background = _inside_event_loop()
    if background:
        import napari

        viewer = napari.current_viewer()
        if viewer is not None:
            return [_start_in_background(viewer)]
    from .layers import twin_layers
    from .twin.api import simulate_twin

    return twin_layers(simulate_twin(sample_request()), name=NAME)


def _inside_event_loop() -> bool:
    """True while a Qt event loop runs on this thread (a menu click in the viewer, a console in it)."""
    try:
        from qtpy.QtCore import QCoreApplication, QThread
    except Exception:  # no Qt binding: nothing to freeze
        return False
    return QCoreApplication.instance() is not None and QThread.currentThread().loopLevel() > 0


def _simulate(progress, cancelled):
    """The worker's job (the twin engine is imported there too, off the GUI thread)."""
    from .twin.api import simulate_twin

    return simulate_twin(sample_request(), progress=progress, cancelled=cancelled)


def _start_in_background(viewer) -> LayerData:
    """Start the twin in a worker; the placeholder layer data to return to napari now."""
    import numpy as np

    from .widgets._worker import JobRunner

    token = f"mos2-twin-{next(_TOKENS)}"
    job = _BackgroundSample(viewer, token)
    job.runner = JobRunner(job.on_progress, job.on_done, job.on_error, job.on_finished)
    _RUNNING.add(job)
    viewer.layers.events.removed.connect(job.on_removed)
    job.runner.start(_simulate)
    return (np.zeros((0, 2)), {"name": f"{NAME} (simulating…)", "metadata": {"mx2_pending_sample": token}},
            "points")


class _BackgroundSample:
    """One sample being simulated for ``viewer``; its placeholder layer carries ``token``."""

    def __init__(self, viewer, token: str):
        from napari.utils import progress

        self.viewer, self.token, self.runner = viewer, token, None
        self.cancelled_by_user = False
        self.bar = progress(total=100, desc=f"{NAME}: simulating")

    def placeholder(self):
        return next((layer for layer in self.viewer.layers
                     if layer.metadata.get("mx2_pending_sample") == self.token), None)

    def _drop_placeholder(self) -> None:
        self._disconnect()
        layer = self.placeholder()
        if layer is not None:
            self.viewer.layers.remove(layer)

    def _disconnect(self) -> None:
        try:
            self.viewer.layers.events.removed.disconnect(self.on_removed)
        except (TypeError, ValueError, RuntimeError):
            pass

    def on_removed(self, event) -> None:
        layer = event.value
        if getattr(layer, "metadata", {}).get("mx2_pending_sample") == self.token and self.runner.running:
            self.cancelled_by_user = True  # the user deleted the placeholder: stop
            self.runner.cancel()

    def on_progress(self, fraction: float, message: str) -> None:
        step = int(round(100 * fraction)) - self.bar.n
        if step > 0:
            self.bar.update(step)
        self.bar.set_description(f"{NAME}: {message}")
        layer = self.placeholder()
        if layer is not None:
            layer.name = f"{NAME} (simulating {100 * fraction:.0f} %…)"

    def on_done(self, twin) -> None:
        if self.cancelled_by_user:
            return
        from .layers import twin_layers

        self._drop_placeholder()
        for data, kwargs, kind in twin_layers(twin, name=NAME):
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)

    def on_error(self, exc: BaseException) -> None:
        from napari.utils.notifications import show_error

        from .twin.simulate import Cancelled

        self._drop_placeholder()
        if not isinstance(exc, Cancelled):
            show_error(f"the {NAME} sample failed: {exc}")

    def on_finished(self) -> None:
        self.bar.close()
        self._disconnect()
        _RUNNING.discard(self)
