"""Running long computations in a napari thread worker with progress and cancel.

The computation gets ``progress(fraction, message)`` and ``cancelled()``
callables; progress crosses to the GUI thread through a Qt signal, and the
Cancel button sets an event the computation polls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from magicgui.widgets import ComboBox
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

__all__ = ["NO_LAYER", "JobRunner", "JobWidget", "layer_picker"]


class _Bridge(QObject):
    progressed = Signal(float, str)


class JobRunner:
    """Start one job at a time; wire progress, cancel, results and errors to callbacks."""

    def __init__(self, on_progress: Callable[[float, str], None], on_done: Callable[[Any], None],
                 on_error: Callable[[BaseException], None], on_finished: Callable[[], None]):
        self._bridge = _Bridge()
        self._bridge.progressed.connect(on_progress)
        self._on_done = on_done
        self._on_error = on_error
        self._on_finished = on_finished
        self._cancel = threading.Event()
        self.worker = None

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.is_running

    def start(self, job: Callable[..., Any]) -> Any:
        """Run ``job(progress=..., cancelled=...)`` in a thread worker and return the worker."""
        if self.running:
            raise RuntimeError("a job is already running; cancel it first")
        self._cancel.clear()

        def run():
            return job(progress=lambda f, m: self._bridge.progressed.emit(float(f), str(m)),
                       cancelled=self._cancel.is_set)

        # errors are ours to report (as a message in the widget), not re-raised in the event loop
        worker = create_worker(run, _start_thread=False, _connect={
            "returned": self._on_done, "errored": self._on_error, "finished": self._finished})
        self.worker = worker
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next check."""
        self._cancel.set()

    def _finished(self) -> None:
        self.worker = None
        self._on_finished()


NO_LAYER = "(none)"


def layer_picker(viewer, layer_type, label: str, optional: bool = False) -> ComboBox:
    """A ComboBox of the names of ``viewer``'s layers of ``layer_type`` (with "(none)" first if
    ``optional``).

    Its choices are a callable re-evaluated by ``reset_choices``, the mechanism magicgui's napari layer
    annotations use (``magicgui``'s ``get_layers``), so napari refreshes a docked picker on every layer
    change. magicgui's own callable finds the viewer by walking up the Qt parents and is empty until
    the dock is added; this one reads the viewer the dock was built for, so an undocked widget (a
    scripted viewer, a test) is filled too. The value is the layer's name, as shown.
    """
    def names(_widget=None) -> list[str]:
        found = [layer.name for layer in viewer.layers if isinstance(layer, layer_type)]
        return [NO_LAYER, *found] if optional else found

    return ComboBox(label=label, choices=names)


class JobWidget:
    """Mixin for dock widgets with ``run_button``, optional ``cancel_button``, ``progress`` and ``status``.

    Subclasses call :meth:`_init_runner` after building their controls and implement ``_on_done``.
    """

    def _init_runner(self) -> None:
        self.runner = JobRunner(self._on_progress, self._on_done, self._on_error, self._on_finished)
        viewer = getattr(self, "viewer", None)
        if viewer is not None:  # lengths are what these docks are about: show the scale bar (in Å)
            viewer.scale_bar.visible = True
        self.run_button.changed.connect(self.run)
        if getattr(self, "cancel_button", None) is not None:
            self.cancel_button.changed.connect(self.runner.cancel)

    def _start(self, job, message: str = "running…"):
        self.run_button.enabled = False
        if getattr(self, "cancel_button", None) is not None:
            self.cancel_button.enabled = True
        self.status.value = message
        return self.runner.start(job)

    def _layer(self, name: str, what: str):
        """The viewer's layer called ``name``, or None with a message (it was renamed or deleted)."""
        if name in self.viewer.layers:
            return self.viewer.layers[name]
        self.status.value = f"⚠ the {what} layer {name!r} is no longer in the viewer; choose another"
        self.reset_choices()
        return None

    def _track_layers(self, refresh=None) -> None:
        """Re-read the pickers (``refresh``, by default every picker's choices) whenever the layer list or
        a layer's name changes: docked or not, and on renames, which napari does not report to docks."""
        refresh = refresh or self.reset_choices
        def watch(layer):
            layer.events.name.connect(lambda *_: refresh())

        for layer in self.viewer.layers:
            watch(layer)

        def inserted(event):
            watch(event.value)
            refresh()

        self.viewer.layers.events.inserted.connect(inserted)
        self.viewer.layers.events.removed.connect(lambda *_: refresh())

    def _selected_image(self):
        """(layer, 2-D data shown now, metadata) of the chosen image layer, or None with a message."""
        if not self.image_layer.value:
            self.status.value = "⚠ open an image first"
            return None
        from ..inputs import image_plane

        layer = self._layer(self.image_layer.value, "image")
        if layer is None:
            return None
        try:
            plane, note = image_plane(layer.data, layer.name)  # the CLI's policy: a stack is summed
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        if note:
            from napari.utils.notifications import show_info

            show_info(note)
        return layer, plane, layer.metadata or {}

    def _selected_image_and_pixel(self):
        """(layer, 2-D data, metadata, pixel size in Å) of the chosen image, or None with a message: the
        file's calibration unless the dock's pixel-size field (:data:`~..core.parameters.PIXEL_OVERRIDE`)
        is set, by the one rule the commands use (:func:`~..inputs.pixel_size_A`)."""
        from ..core.parameters import PIXEL_OVERRIDE
        from ..inputs import pixel_size_A
        from .fields import field_option, field_values

        selected = self._selected_image()
        if selected is None:
            return None
        layer, data, meta = selected
        typed = field_values(self, (PIXEL_OVERRIDE,))[PIXEL_OVERRIDE.name]
        try:
            pixel = pixel_size_A(layer.scale, bool(meta.get("calibrated")), typed, name=layer.name,
                                 option=field_option(self)(PIXEL_OVERRIDE))
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        if pixel is None:
            self.status.value = "⚠ this image has no calibration: enter its pixel size in Å"
            return None
        return layer, data, meta, pixel

    def _export_to_folder(self, what: str, write) -> list | None:
        """Ask for a folder and call ``write(folder, overwrite)``; when it refuses because the files exist,
        ask before replacing them. Messages go to the dock's status; returns the paths written or None."""
        from qtpy.QtWidgets import QFileDialog, QMessageBox

        folder = QFileDialog.getExistingDirectory(self.native, f"Folder for the {what}")
        if not folder:
            return None
        try:
            try:
                paths = write(folder, False)
            except FileExistsError:
                answer = QMessageBox.question(self.native, "Replace files?",
                                              f"{folder} already holds a {what}. Replace those files?")
                if answer != QMessageBox.Yes:
                    self.status.value = "nothing exported (the files exist)"
                    return None
                paths = write(folder, True)
        except (OSError, ValueError) as exc:
            self.status.value = f"⚠ {exc}"
            return None
        self.status.value = f"exported {', '.join(p.name for p in paths)} to {folder}"
        return paths

    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress.value = int(round(100 * fraction))
        self.status.value = message

    def _on_error(self, exc: BaseException) -> None:
        from ..core.jobs import Cancelled

        if not isinstance(exc, Cancelled):  # shown in the dock, and logged with its traceback for a report
            logging.getLogger("napari_mx2_defects").error("%s failed: %s", type(self).__name__, exc,
                                                          exc_info=(type(exc), exc, exc.__traceback__))
        self.status.value = "cancelled; no layer was added" if isinstance(exc, Cancelled) else f"⚠ {exc}"
        self.progress.value = 0

    def _on_finished(self) -> None:
        self.run_button.enabled = True
        if getattr(self, "cancel_button", None) is not None:
            self.cancel_button.enabled = False
