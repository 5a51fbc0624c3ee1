"""Editing defect Points layers by hand, and the colour legend of the defect classes.

Issue 13: a hand-added point silently took the class and confidence of the last point napari had
selected (napari copies ``feature_defaults`` into every new point and refreshes them from each
selection), there was no undo, and nothing said which colour is which class.

* Every defect Points layer that is edited here (Points with a ``defect_class`` feature that are not a
  statistics *sites* layer) gets a :class:`DefectEditor`: a new point takes the class chosen in the
  dock ("class for new points"), ``confidence`` NaN and ``source`` = ``"hand"``; every other feature is
  left empty (NaN / ""), never copied.  The layer's ``feature_defaults`` are kept at exactly these
  values (napari resets them on each selection; the editor puts them back), and the new rows are
  rewritten when napari adds a point, so nothing of another point can leak in.
* One key per class, bound on the layer: the class id (``1``–``9``, ``0`` for 10, ``-`` for 11).  The key
  chooses the class for new points and re-classes the selected points (a re-classed point becomes
  ``source`` = ``"hand"`` with ``confidence`` NaN: the model's confidence was for another class).  On these
  layers the digits no longer switch napari's modes: ``P`` adds, ``S`` selects, ``Z`` pans, ``Delete``
  deletes.
* Undo and redo: napari 0.9.2 has no undo for Points (only Labels has one), so the editor keeps a
  bounded history (:data:`HISTORY_LIMIT`) of (positions, features, sizes) snapshots, one per edit: an
  add, a delete, a move (napari reports a drag once, at the release) or a re-class.  ``Ctrl+Z`` /
  ``Ctrl+Shift+Z`` on the layer and the dock's Undo / Redo buttons walk it.
* :class:`ClassLegend`: swatch, key and name of every defect class, in the colours of the Labels
  colormap (:func:`..layers.label_colormap`); the editor colours the Points borders with the same
  colours, so one legend reads both.
"""

from __future__ import annotations

import weakref
from collections import deque
from contextlib import contextmanager
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, Label, PushButton
from psygnal import Signal

from ..twin.defects import CLASS_IDS, CLASS_NAMES, DEFECT_CLASSES

if TYPE_CHECKING:
    import napari

__all__ = ["HAND", "HISTORY_LIMIT", "KEYS", "ClassLegend", "DefectEditingPanel", "DefectEditor",
           "class_colors", "colour_by_class", "editor_for", "is_defect_points"]

#: Key that chooses each defect class on an edited Points layer: the class id (10 → ``0``, 11 → ``-``).
KEYS: dict[str, str] = {name: {10: "0", 11: "-"}.get(cid, str(cid)) for name, cid in CLASS_IDS.items()}
#: ``source`` of points placed or re-classed by hand.
HAND = "hand"
#: Edits kept for undo per layer.
HISTORY_LIMIT = 200

#: What the dock says about the keys.
HINT = ("On the layer, a class key sets the class for new points and re-classes the selected ones; a new "
        "point gets confidence NaN and source 'hand'. Modes: P add, S select, Z pan; Delete removes.")

_EDITORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def class_colors() -> dict[str, tuple[float, float, float, float]]:
    """Defect class name → RGBA, the colours of the Labels colormap (lattice left out)."""
    from ..layers import label_colormap

    cmap = label_colormap()
    return {name: tuple(float(v) for v in cmap[cid]) for name, cid in CLASS_IDS.items()}


def is_defect_points(layer) -> bool:
    """A Points layer of defects: a ``defect_class`` feature, and not the sites of an analysis."""
    return (type(layer).__name__ == "Points" and "defect_class" in layer.features
            and "sublattice" not in layer.features)


def editor_for(layer) -> DefectEditor:
    """The layer's editor (made on first use)."""
    editor = _EDITORS.get(layer)
    if editor is None:
        editor = _EDITORS[layer] = DefectEditor(layer)
    return editor


class _Snapshot(NamedTuple):
    data: np.ndarray
    features: pd.DataFrame
    size: np.ndarray


class DefectEditor:
    """Hand edits of one defect Points layer: the class for new points, class keys, undo and redo."""

    #: Emitted when the class for new points or the history changes.
    changed = Signal()

    def __init__(self, layer, new_class: str = "V_X"):
        if new_class not in CLASS_IDS:
            raise ValueError(f"unknown defect class {new_class!r}; one of {', '.join(CLASS_IDS)}")
        self._layer = weakref.ref(layer)
        self.new_class = new_class
        self._undo: deque[_Snapshot] = deque(maxlen=HISTORY_LIMIT)
        self._redo: list[_Snapshot] = []
        self._busy = False
        features = layer.features.copy()
        features["defect_class"] = features["defect_class"].astype(str).astype(object)
        if "source" not in features:  # what was there before any hand edit
            features["source"] = "model" if "confidence" in features else "original"
        with self._quiet():
            layer.features = features
            colour_by_class(layer)
            layer.feature_defaults = self.hand_defaults()
        self._current = self._snapshot()
        for key, name in ((k, n) for n, k in KEYS.items()):
            layer.bind_key(key, lambda _layer, name=name: self.choose(name), overwrite=True)
        from app_model.types import KeyCode, KeyMod

        ctrl = KeyMod.CtrlCmd
        layer.bind_key(ctrl | KeyCode.KeyZ, lambda _layer: self.undo(), overwrite=True)
        layer.bind_key(ctrl | KeyMod.Shift | KeyCode.KeyZ, lambda _layer: self.redo(), overwrite=True)
        layer.bind_key(ctrl | KeyCode.KeyV, lambda _layer: self._paste(), overwrite=True)
        layer.events.data.connect(self._on_data)
        layer.events.features.connect(self._on_features)
        layer.events.current_properties.connect(self._keep_defaults)

    # -- state -------------------------------------------------------------------------------
    @property
    def layer(self):
        layer = self._layer()
        if layer is None:
            raise RuntimeError("the Points layer of this editor is gone")
        return layer

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def hand_defaults(self) -> dict:
        """Features of a point placed by hand: the chosen class, NaN confidence, ``source`` "hand",
        every other feature empty."""
        out = {}
        for column, values in self.layer.features.items():
            if column == "defect_class":
                out[column] = self.new_class
            elif column == "source":
                out[column] = HAND
            elif pd.api.types.is_bool_dtype(values):
                out[column] = False
            elif pd.api.types.is_numeric_dtype(values):
                out[column] = np.nan
            else:
                out[column] = ""
        return out

    # -- edits -------------------------------------------------------------------------------
    def set_class(self, name: str) -> None:
        """Choose the class of the points placed from now on."""
        if name not in CLASS_IDS:
            raise ValueError(f"unknown defect class {name!r}; one of {', '.join(CLASS_IDS)}")
        self.new_class = name
        with self._quiet():
            self.layer.feature_defaults = self.hand_defaults()
        self.changed.emit()

    def choose(self, name: str) -> None:
        """What a class key does: the class for new points, and the class of the selected points."""
        self.set_class(name)
        selected = sorted(self.layer.selected_data)
        if selected:
            self.reclass(selected, name)

    def reclass(self, indices, name: str) -> None:
        """Give the points ``indices`` the class ``name`` by hand (one undoable edit)."""
        if name not in CLASS_IDS:
            raise ValueError(f"unknown defect class {name!r}; one of {', '.join(CLASS_IDS)}")
        layer = self.layer
        features = layer.features.copy()
        rows = np.asarray(sorted(indices), int)
        features.iloc[rows, features.columns.get_loc("defect_class")] = name
        features.iloc[rows, features.columns.get_loc("source")] = HAND
        if "confidence" in features:
            features.iloc[rows, features.columns.get_loc("confidence")] = np.nan
        if features.equals(layer.features):
            return
        layer.features = features  # recorded by _on_features

    def undo(self) -> bool:
        """Go back one edit (False when there is none)."""
        if not self._undo:
            return False
        self._redo.append(self._current)
        self._restore(self._undo.pop())
        return True

    def redo(self) -> bool:
        """Redo the last undone edit (False when there is none)."""
        if not self._redo:
            return False
        self._undo.append(self._current)
        self._restore(self._redo.pop())
        return True

    # -- bookkeeping -------------------------------------------------------------------------
    def _snapshot(self) -> _Snapshot:
        layer = self.layer
        return _Snapshot(np.array(layer.data, copy=True), layer.features.copy(),
                         np.array(layer.size, copy=True))

    def _record(self) -> None:
        now = self._snapshot()
        same = (now.data.shape == self._current.data.shape and np.array_equal(now.data, self._current.data)
                and now.features.equals(self._current.features))
        if same:
            return
        self._undo.append(self._current)
        self._redo.clear()
        self._current = now
        self.changed.emit()

    def _restore(self, snap: _Snapshot) -> None:
        layer = self.layer
        with self._quiet():
            layer.selected_data = set()
            layer.data = snap.data.copy()
            layer.features = snap.features.copy()
            if len(snap.size) == len(snap.data):
                layer.size = snap.size.copy()
            layer.feature_defaults = self.hand_defaults()
        self._current = self._snapshot()
        self.changed.emit()

    @contextmanager
    def _quiet(self):
        """Changes made here are the editor's own: not recorded, not answered."""
        before, self._busy = self._busy, True
        try:
            yield
        finally:
            self._busy = before

    def _on_data(self, event) -> None:
        from napari.layers.base import ActionType

        if self._busy or event.action not in (ActionType.ADDED, ActionType.REMOVED, ActionType.CHANGED):
            return
        layer, before = self.layer, self._current.data
        n_old = len(before)
        appended = (event.action == ActionType.ADDED and len(layer.data) > n_old
                    and np.array_equal(np.asarray(layer.data)[:n_old], before))
        if appended:  # new points by hand: their features are ours, not napari's copies
            features = layer.features.copy()
            for column, value in self.hand_defaults().items():
                features.iloc[n_old:, features.columns.get_loc(column)] = value
            with self._quiet():
                layer.features = features
                layer.feature_defaults = self.hand_defaults()
        self._record()

    def _on_features(self, _event=None) -> None:
        if self._busy:
            return
        layer = self.layer
        # a drag emits features on every mouse move with unchanged features: not an edit
        if len(layer.data) == len(self._current.data) and not layer.features.equals(self._current.features):
            self._record()

    def _keep_defaults(self, _event=None) -> None:
        """napari sets ``feature_defaults`` to the features of each selection; put ours back."""
        if self._busy:
            return
        layer, wanted = self.layer, self.hand_defaults()
        current = layer.feature_defaults
        if not all(column in current and _same(current[column].iloc[0], value)
                   for column, value in wanted.items()):
            with self._quiet():
                layer.feature_defaults = wanted

    def _paste(self) -> None:
        # napari's paste emits no data event: record it as one edit
        self.layer._paste_data()
        self._record()


def _same(a, b) -> bool:
    try:
        if pd.isna(a) and pd.isna(b):
            return True
    except (TypeError, ValueError):
        pass
    return a == b


def colour_by_class(layer) -> None:
    """Colour the Points borders by ``defect_class`` with the legend's colours."""
    layer.border_color_cycle = class_colors()
    layer.border_color = "defect_class"


class ClassLegend:
    """Swatch, key and name of every defect class (the meaning as a tooltip), in two columns.

    ``rows`` lists (class name, key, RGBA) in class-id order; ``swatches[name]`` is the coloured box.
    """

    def __init__(self, columns: int = 2):
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

        self.native = QWidget()
        self.native.setObjectName("mx2_class_legend")
        grid = QGridLayout(self.native)
        grid.setContentsMargins(4, 2, 4, 2)
        grid.setHorizontalSpacing(6)
        grid.setVerticalSpacing(2)
        colours = class_colors()
        self.rows: list[tuple[str, str, tuple[float, float, float, float]]] = []
        self.swatches: dict[str, QLabel] = {}
        names = [CLASS_NAMES[cid] for cid in sorted(CLASS_NAMES) if cid]
        per_column = -(-len(names) // columns)
        for k, name in enumerate(names):
            rgba = colours[name]
            row, col = k % per_column, 3 * (k // per_column)
            swatch = QLabel()
            swatch.setFixedSize(18, 12)
            r, g, b = (round(255 * v) for v in rgba[:3])
            swatch.setStyleSheet(f"background-color: rgb({r}, {g}, {b}); border: 1px solid #202020;")
            key = QLabel(f"<b>{KEYS[name]}</b>")
            key.setAlignment(Qt.AlignmentFlag.AlignCenter)
            key.setMinimumWidth(12)
            text = QLabel(name)
            text.setMinimumHeight(18)  # room for the underscore of V_X
            meaning = DEFECT_CLASSES[CLASS_IDS[name]][1]
            for widget in (swatch, key, text):
                widget.setToolTip(f"{name} (key {KEYS[name]}): {meaning}")
            grid.addWidget(swatch, row, col)
            grid.addWidget(key, row, col + 1)
            grid.addWidget(text, row, col + 2)
            self.rows.append((name, KEYS[name], rgba))
            self.swatches[name] = swatch
        grid.setColumnStretch(3 * columns - 1, 1)


class DefectEditingPanel(Container):
    """Dock panel: the class legend, the class for new points, Undo / Redo and the keys.

    It edits the active layer when that is a defect Points layer (:func:`is_defect_points`), else the
    last one it edited; :meth:`attach` makes a layer the target (the *Find defects* output), and a
    ``picker`` (the statistics dock's defects ComboBox) does too when its choice changes.
    """

    def __init__(self, viewer: napari.viewer.Viewer, picker: ComboBox | None = None):
        super().__init__(labels=False)
        self.viewer = viewer
        self.legend = ClassLegend()
        self.heading = Label(value="<b>Defect classes</b> &nbsp;(key, class; Labels and Points borders)")
        self.target = Label(value="", label="hand edits of")
        choices = [(f"{KEYS[name]}   {name}", name) for name in CLASS_IDS]
        self.new_class = ComboBox(label="class for new points", choices=choices, value="V_X")
        self.undo_button = PushButton(text="Undo (Ctrl+Z)", enabled=False)
        self.redo_button = PushButton(text="Redo (Ctrl+Shift+Z)", enabled=False)
        rows = [Container(widgets=widgets, layout="horizontal", labels=labels)
                for widgets, labels in (([self.target], True), ([self.new_class], True),
                                        ([self.undo_button, self.redo_button], False))]
        for row in rows:
            row.margins = (0, 0, 0, 0)
        self.hint = Label(value=HINT)
        self.hint.native.setWordWrap(True)
        from qtpy.QtWidgets import QSizePolicy

        self.hint.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.extend([self.heading, *rows, self.hint])
        self.native.layout().insertWidget(1, self.legend.native)
        self.editor: DefectEditor | None = None
        self._syncing = False
        self.new_class.changed.connect(self._class_chosen)
        self.undo_button.changed.connect(lambda *_: self.editor and self.editor.undo())
        self.redo_button.changed.connect(lambda *_: self.editor and self.editor.redo())
        viewer.layers.selection.events.active.connect(self._active_changed)
        viewer.layers.events.removed.connect(self._removed)
        if picker is not None:
            picker.changed.connect(self._picked)
        self._show()
        self._active_changed()

    def attach(self, layer) -> DefectEditor:
        """Edit ``layer`` from now on (its editor is made on first use)."""
        editor = editor_for(layer)
        if editor is not self.editor:
            self._detach()
            self.editor = editor
            editor.changed.connect(self._show)
            layer.events.name.connect(self._show)
        self._show()
        return editor

    def _detach(self) -> None:
        if self.editor is not None:
            self.editor.changed.disconnect(self._show)
            layer = self.editor._layer()
            if layer is not None:
                layer.events.name.disconnect(self._show)
        self.editor = None

    def _removed(self, event) -> None:
        if self.editor is not None and event.value is self.editor._layer():
            self._detach()
            self._show()

    def _active_changed(self, *_):
        layer = self.viewer.layers.selection.active
        if layer is not None and is_defect_points(layer):
            self.attach(layer)

    def _picked(self, name):
        if name in self.viewer.layers and is_defect_points(self.viewer.layers[name]):
            self.attach(self.viewer.layers[name])

    def _class_chosen(self, name):
        if not self._syncing and self.editor is not None and name:
            self.editor.set_class(name)

    def _show(self, *_):
        editor = self.editor
        alive = editor is not None and editor._layer() is not None
        self.target.value = editor.layer.name if alive else "(select a defect Points layer)"
        self.undo_button.enabled = alive and editor.can_undo
        self.redo_button.enabled = alive and editor.can_redo
        if alive and self.new_class.value != editor.new_class:
            self._syncing = True
            try:
                self.new_class.value = editor.new_class
            finally:
                self._syncing = False
