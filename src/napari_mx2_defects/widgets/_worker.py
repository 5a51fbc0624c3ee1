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

__all__ = ["DOCK_WIDTH", "NO_LAYER", "JobRunner", "JobWidget", "fit_dock", "layer_picker", "outline_regions"]


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


#: Width (px) a dock asks for: six docks tabbed beside napari's layer list leave the canvas well over 40 % of
#: a 1280 px window.  Wider content scrolls sideways instead of widening the window.
DOCK_WIDTH = 390
#: Height (px) a dock asks for at most; taller content scrolls.
DOCK_HEIGHT = 560
#: Characters per line of a check box's text (Qt cannot wrap a check box: long ones get line breaks).
_CHECKBOX_CHARS = 38
#: Width (px) of the column of field names.
LABEL_WIDTH = 140
#: Labels longer than this (characters) wrap.
_LABEL_CHARS = 18
#: Smallest width (px) of a number or text field.
_FIELD_WIDTH = 80
#: Rows a dock's result table shows without scrolling (the Batch dock's summary shows more).
TABLE_ROWS = 4


class _DockScroll:
    """Factory of the scroll area that holds a dock's controls (a QScrollArea whose size hint is capped)."""

    _cls = None

    @classmethod
    def make(cls):
        if cls._cls is None:
            from qtpy.QtCore import QSize
            from qtpy.QtWidgets import QScrollArea

            class DockScroll(QScrollArea):
                def sizeHint(self):  # noqa: N802 - Qt's name
                    hint = super().sizeHint()
                    content = self.widget()
                    height = content.sizeHint().height() if content is not None else hint.height()
                    return QSize(min(max(hint.width(), 200), DOCK_WIDTH), min(height + 4, DOCK_HEIGHT))

                def minimumSizeHint(self):  # noqa: N802
                    return QSize(160, 120)

            cls._cls = DockScroll
        return cls._cls()


def fit_dock(container) -> None:
    """Make a magicgui dock fit a small window, whatever it holds (issue 30), in place.

    napari docks ``container.native`` (the widget holding the layout) and so drops magicgui's own scroll
    area (``scrollable=True`` wraps the *root* widget, which napari does not use). Here the controls move
    into a scroll area inside ``native``: the dock asks for :data:`DOCK_WIDTH` × at most
    :data:`DOCK_HEIGHT` px and scrolls beyond. Every text label wraps (status messages no longer widen the
    dock), long check-box texts are broken into lines, drop-downs size to a few characters instead of their
    longest item, tables ask for a few rows. When napari docks it beside another dock of this plugin, the two
    are tabbed together (each gets the full height of the dock area).
    """
    from magicgui.widgets import CheckBox, Label, Table
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QAbstractSpinBox, QComboBox, QFrame, QLabel, QLineEdit, QScrollArea, QWidget

    inner = container.native
    if inner.property("mx2_dock"):
        return
    backend = getattr(container, "_widget", None)
    root = container.root_native_widget
    if root is not inner and isinstance(root, QScrollArea) and backend is not None:
        # magicgui's scroll area, which napari does not dock: left holding ``inner`` it keeps resizing it to
        # its own (hidden) viewport. ``inner`` becomes the root and scrolls itself.
        root.takeWidget()
        backend._qwidget = inner
        root.deleteLater()
    layout = inner.layout()
    content = QWidget()
    content.setObjectName("mx2_dock_content")
    moved = type(layout)()
    moved.setContentsMargins(layout.contentsMargins())
    moved.setSpacing(layout.spacing())
    while layout.count():
        stretch = layout.stretch(0) if hasattr(layout, "stretch") else 0
        item = layout.takeAt(0)
        if item.widget() is not None:
            moved.addWidget(item.widget(), stretch)
        elif item.layout() is not None:
            moved.addLayout(item.layout(), stretch)
        else:
            moved.addItem(item)
    moved.addStretch(1)  # controls stay at the top of a tall dock
    content.setLayout(moved)
    if backend is not None and getattr(backend, "_layout", None) is layout:
        backend._layout = moved  # magicgui's later inserts go into the scrolled content
    scroll = _DockScroll.make()
    scroll.setObjectName("mx2_dock_scroll")
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
    scroll.setWidget(content)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(scroll)
    inner.setProperty("mx2_dock", True)
    inner.setMinimumSize(0, 0)

    for widget in _walk(container):
        labeled = widget._labeled_widget() if hasattr(widget, "_labeled_widget") else None
        if labeled is not None:  # the field's name: one column of LABEL_WIDTH px, long names on two lines
            name = labeled._label_widget.native
            name.setWordWrap(True)
            name.setFixedWidth(LABEL_WIDTH)
        if isinstance(widget, Label):
            widget.native.setWordWrap(True)
            widget.native.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        elif isinstance(widget, CheckBox):
            widget.native.setText(_broken(widget.native.text()))
        elif isinstance(widget, Table):
            _show_rows(widget, TABLE_ROWS)
    for label in content.findChildren(QLabel):  # field labels, rich-text headings and legends too
        if len(label.text()) > _LABEL_CHARS and not label.wordWrap():
            label.setWordWrap(True)
    for combo in content.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(8)
    for field in content.findChildren(QAbstractSpinBox) + content.findChildren(QLineEdit):
        field.setMinimumWidth(_FIELD_WIDTH)  # not the width of the widest number the range allows
    _tab_when_docked(inner)


def _walk(container):
    """Every magicgui widget in ``container``, nested containers included."""
    from magicgui.widgets import Container

    for widget in container:
        yield widget
        if isinstance(widget, Container):
            yield from _walk(widget)


def _broken(text: str) -> str:
    """A check box's text in lines of about :data:`_CHECKBOX_CHARS` characters."""
    import textwrap

    return "\n".join(textwrap.wrap(text, _CHECKBOX_CHARS)) if len(text) > _CHECKBOX_CHARS else text


def _show_rows(table, rows: int) -> None:
    """Make a magicgui Table ask for ``rows`` rows of height (it scrolls beyond)."""
    view = table.native
    header = view.horizontalHeader().sizeHint().height()
    row = view.verticalHeader().defaultSectionSize()
    bar = view.horizontalScrollBar().sizeHint().height()  # wide tables scroll sideways
    view.setMinimumHeight(header + rows * row + row // 2 + bar + 2 * view.frameWidth())


def _tab_when_docked(inner) -> None:
    """Tab the dock that napari makes for ``inner`` together with this plugin's other docks in its area."""
    from qtpy.QtCore import QEvent, QObject
    from qtpy.QtWidgets import QDockWidget

    class Watch(QObject):
        def eventFilter(self, obj, event):  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.ParentChange:
                dock = obj.parentWidget()
                if isinstance(dock, QDockWidget) and not dock.property("mx2_tab_watch"):
                    dock.setProperty("mx2_tab_watch", True)
                    dock.dockLocationChanged.connect(lambda _area, dock=dock: _tabify(dock))
            return False

    watch = Watch(inner)
    inner.installEventFilter(watch)


def _tabify(dock) -> None:
    from qtpy.QtWidgets import QDockWidget, QMainWindow

    main = dock.parentWidget()
    if dock.property("mx2_tabbed") or not isinstance(main, QMainWindow) or dock.isFloating():
        return
    dock.setProperty("mx2_tabbed", True)  # once: tabifying moves it again
    area = main.dockWidgetArea(dock)
    ours = [d for d in main.findChildren(QDockWidget)
            if d is not dock and d.widget() is not None and d.widget().property("mx2_dock")
            and not d.isFloating() and main.dockWidgetArea(d) == area]
    if ours:
        main.tabifyDockWidget(ours[-1], dock)
        dock.show()
        dock.raise_()


def outline_regions(layer) -> None:
    """Draw the shapes of a Shapes layer used as regions as outlines (no fill: the image stays visible), now
    and for shapes drawn later; napari's default fill is opaque white and its grey edge hard to see on HAADF."""
    if type(layer).__name__ != "Shapes":
        return
    layer.current_face_color = "transparent"
    if len(layer.data):
        layer.face_color = "transparent"
    if str(layer.current_edge_color).lower().startswith("#777777"):
        layer.current_edge_color = "yellow"


class JobWidget:
    """Mixin for dock widgets with ``run_button``, optional ``cancel_button``, ``progress`` and ``status``.

    Subclasses call :meth:`_init_runner` after building their controls and implement ``_on_done``.
    """

    def _init_runner(self) -> None:
        self.runner = JobRunner(self._on_progress, self._on_done, self._on_error, self._on_finished)
        self._toasted: set[str] = set()
        viewer = getattr(self, "viewer", None)
        if viewer is not None:  # lengths are what these docks are about: show the scale bar (in Å)
            viewer.scale_bar.visible = True
            _watch_viewer(viewer)
        self.run_button.changed.connect(self.run)
        if getattr(self, "cancel_button", None) is not None:
            self.cancel_button.changed.connect(self.runner.cancel)
        fit_dock(self)

    def _start(self, job, message: str = "running…"):
        self.run_button.enabled = False
        if getattr(self, "cancel_button", None) is not None:
            self.cancel_button.enabled = True
        self.progress.value = 0  # not the last run's 100 %
        self.status.value = message
        return self.runner.start(job)

    def _toast_once(self, messages) -> list[str]:
        """Show each message as a warning toast unless this dock showed the same one before (the dock's
        status keeps them all); returns the ones shown."""
        from napari.utils.notifications import show_warning

        shown = []
        for message in messages:
            if message not in self._toasted:
                self._toasted.add(message)
                show_warning(message)
                shown.append(message)
        return shown

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

        for picker in self._shape_pickers():  # a Shapes layer chosen as regions is drawn as outlines
            picker.changed.connect(lambda name: name in self.viewer.layers and outline_regions(self.viewer.layers[name]))

        self.viewer.layers.events.inserted.connect(inserted)
        self.viewer.layers.events.removed.connect(lambda *_: refresh())

    def _shape_pickers(self):
        from magicgui.widgets import ComboBox

        return [w for w in _walk(self) if isinstance(w, ComboBox) and "(Shapes)" in str(w.label)]

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


_WATCHED: "weakref.WeakSet" = None  # viewers whose new layers are looked after


def _watch_viewer(viewer) -> None:
    """Once per viewer: an empty Shapes or Points layer added by hand takes the units of the layers already
    there (napari warns "Inconsistent units across layers" on every draw when an Å image meets a layer in
    pixels), and an empty Shapes layer draws outlines, not opaque white fills; saving a layer of this plugin
    through napari's own writer says once which writer keeps its calibration (:mod:`..io.writer`)."""
    import weakref

    global _WATCHED
    if _WATCHED is None:
        _WATCHED = weakref.WeakSet()
    if viewer in _WATCHED:
        return
    _WATCHED.add(viewer)
    from ..io.writer import remind_writers

    remind_writers(viewer)

    def inserted(event):
        layer = event.value
        if type(layer).__name__ not in ("Shapes", "Points") or len(layer.data):
            return
        match_units(viewer, layer)
        if type(layer).__name__ == "Shapes":
            outline_regions(layer)

    viewer.layers.events.inserted.connect(inserted)


def match_units(viewer, layer) -> bool:
    """Give ``layer`` (still in pixels, as napari makes a layer without units) the units the viewer's other
    layers agree on; True when it changed."""
    units = {tuple(str(u) for u in other.units[-2:]) for other in viewer.layers if other is not layer}
    mine = tuple(str(u) for u in layer.units[-2:])
    if len(units) != 1 or mine != ("pixel", "pixel"):
        return False
    (theirs,) = units
    if theirs == mine:
        return False
    layer.units = [*(str(u) for u in layer.units[:-2]), *theirs]
    return True
