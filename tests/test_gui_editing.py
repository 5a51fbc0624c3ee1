"""Hand edits of defect Points layers, the class legend and the sample twin in a real napari viewer (issue 13:
"a hand-added point silently takes V_X, confidence 0.849; no undo", "no colour legend for the classes",
"opening the sample twin freezes the viewer 26 s the first time")."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gui


def _canvas(viewer):
    return viewer.window._qt_viewer.canvas.native


def _key(viewer, qtbot, key: str, *modifiers: str) -> None:
    """A real key press on the canvas, as napari receives it from the keyboard."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    named = {"-": Qt.Key.Key_Minus, "Delete": Qt.Key.Key_Delete}
    code = named[key] if key in named else getattr(Qt.Key, f"Key_{key.upper()}")
    mods = Qt.KeyboardModifier.NoModifier
    for name in modifiers:
        mods |= getattr(Qt.KeyboardModifier, f"{name}Modifier")
    QTest.keyClick(_canvas(viewer), code, mods)
    qtbot.wait(10)


def _pixel(viewer, dx: int, dy: int):
    from qtpy.QtCore import QPoint

    native = _canvas(viewer)
    return QPoint(native.width() // 2 + dx, native.height() // 2 + dy)


def _click(viewer, qtbot, dx: int, dy: int) -> None:
    """A left click on the canvas, ``dx, dy`` pixels from its centre."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    QTest.mouseClick(_canvas(viewer), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     _pixel(viewer, dx, dy))
    qtbot.wait(10)


def _drag(viewer, qtbot, start: tuple[int, int], shift_px: int) -> None:
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    native, none = _canvas(viewer), Qt.KeyboardModifier.NoModifier
    QTest.mousePress(native, Qt.MouseButton.LeftButton, none, _pixel(viewer, *start))
    for k in range(1, 6):
        QTest.mouseMove(native, _pixel(viewer, start[0] + k * shift_px // 5, start[1]))
        qtbot.wait(5)
    QTest.mouseRelease(native, Qt.MouseButton.LeftButton, none, _pixel(viewer, start[0] + shift_px, start[1]))
    qtbot.wait(10)


def _find_defects_output(viewer, widget):
    """The Points layer *Find defects* adds, through its own ``_on_done`` (a model's table, no model run)."""
    from napari_mx2_defects.twin.defects import CLASS_NAMES

    image = viewer.add_image(np.zeros((200, 200), np.float32), name="scan", scale=(0.1, 0.1),
                             metadata={"calibrated": True})
    table = pd.DataFrame({"x_A": [3.0, 17.0, 16.0], "y_A": [3.0, 4.0, 17.0],
                          "defect_class": ["V_X", "V_M", "V_XX"], "confidence": [0.93, 0.849, 0.71],
                          "area_A2": [1.9, 2.4, 2.0]})
    seg = SimpleNamespace(labels=np.zeros((200, 200), np.uint8), defects=table, probabilities=None,
                          device="cpu", runtime="torch",
                          card=SimpleNamespace(architecture="unet", classes=dict(CLASS_NAMES)))
    widget._context = (image, 0.1)
    widget._on_done((seg, None, None))  # the job returns the segmentation, its objects and the adaptation (none)
    points = viewer.layers[-1]
    assert type(points).__name__ == "Points" and viewer.layers.selection.active is points
    viewer.reset_view()
    return points


@pytest.fixture
def segment_dock(make_napari_viewer):
    from napari_mx2_defects.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def test_hand_added_point_takes_the_chosen_class_and_no_copied_confidence(segment_dock, qtbot):
    from napari_mx2_defects.widgets.defect_editing import class_colors

    viewer, widget = segment_dock
    points = _find_defects_output(viewer, widget)
    assert widget.editing.target.value == points.name
    widget.editing.new_class.value = "M_X"  # the dock's "class for new points"
    points.selected_data = {1}  # napari copies a selected point (V_M, 0.849) into its feature defaults
    points.selected_data = set()
    points.mode = "add"
    _click(viewer, qtbot, 40, -30)
    assert len(points.data) == 4
    new = points.features.iloc[-1]
    assert new.defect_class == "M_X" and new.source == "hand"
    assert np.isnan(new.confidence) and np.isnan(new.area_A2)
    assert points.features.iloc[1].confidence == pytest.approx(0.849)  # the model's points keep theirs
    assert list(points.features.source[:3]) == ["model"] * 3
    np.testing.assert_allclose(points.border_color[-1], class_colors()["M_X"], atol=1e-6)
    defaults = points.feature_defaults.iloc[0]
    assert defaults.defect_class == "M_X" and defaults.source == "hand" and np.isnan(defaults.confidence)
    # a class key chooses the class for the next points, shown in the dock
    points.selected_data = set()
    _key(viewer, qtbot, "7")
    assert widget.editing.new_class.value == "M_i"
    _click(viewer, qtbot, -60, 40)
    assert points.features.defect_class.tolist() == ["V_X", "V_M", "V_XX", "M_X", "M_i"]
    assert np.isnan(points.features.confidence.iloc[-1])


def test_undo_and_redo_of_add_delete_move_and_reclass(segment_dock, qtbot):
    viewer, widget = segment_dock
    points = _find_defects_output(viewer, widget)
    original = np.array(points.data, copy=True)
    panel = widget.editing
    assert not panel.undo_button.enabled and not panel.redo_button.enabled
    points.mode = "add"
    _click(viewer, qtbot, 30, 30)
    assert len(points.data) == 4 and panel.undo_button.enabled
    added = np.array(points.data[-1], copy=True)
    _key(viewer, qtbot, "z", "Control")  # undo the add
    assert len(points.data) == 3 and panel.redo_button.enabled
    np.testing.assert_array_equal(points.data, original)
    _key(viewer, qtbot, "z", "Control", "Shift")  # redo it
    assert len(points.data) == 4 and points.features.defect_class.iloc[-1] == "V_X"
    np.testing.assert_array_equal(points.data[-1], added)
    assert points.features.source.iloc[-1] == "hand"
    # move the new point by dragging it (one edit however many mouse moves)
    points.mode = "select"
    _drag(viewer, qtbot, (30, 30), 60)
    moved = np.array(points.data[-1], copy=True)
    assert moved[1] > added[1] + 0.5 and moved[0] == pytest.approx(added[0])
    panel.undo_button.native.click()
    np.testing.assert_allclose(points.data[-1], added)
    panel.redo_button.native.click()
    np.testing.assert_allclose(points.data[-1], moved)
    # delete the model's V_M point, re-class the V_XX one, then undo both in turn
    points.selected_data = {1}
    _key(viewer, qtbot, "Delete")
    assert len(points.data) == 3 and "V_M" not in set(points.features.defect_class)
    points.selected_data = {1}
    _key(viewer, qtbot, "9")
    assert points.features.defect_class.tolist() == ["V_X", "TM_D", "V_X"]
    _key(viewer, qtbot, "z", "Control")
    assert points.features.defect_class.tolist() == ["V_X", "V_XX", "V_X"]
    _key(viewer, qtbot, "z", "Control")
    assert points.features.defect_class.tolist() == ["V_X", "V_M", "V_XX", "V_X"]
    assert points.features.confidence.iloc[1] == pytest.approx(0.849)
    for _ in range(2):  # the delete and the re-class again
        panel.redo_button.native.click()
    assert panel.editor.can_undo and not panel.editor.can_redo and not panel.redo_button.enabled
    assert points.features.defect_class.tolist() == ["V_X", "TM_D", "V_X"]
    np.testing.assert_allclose(points.data[-1], moved)


def test_class_key_reclasses_the_selected_points(make_napari_viewer, qtbot):
    """In the statistics dock too: the layer its picker uses is edited with the same keys."""
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    viewer = make_napari_viewer()
    widget = StatisticsWidget(viewer)
    points = viewer.add_points(np.array([[2.0, 2.0], [4.0, 4.0], [6.0, 6.0]]), name="model defects",
                               features=pd.DataFrame({"defect_class": ["V_X", "V_X", "V_M"],
                                                      "confidence": [0.9, 0.8, 0.7]}))
    assert widget.editing.target.value == "model defects"  # the active layer is a defect layer
    viewer.add_image(np.zeros((80, 80)), name="scan", scale=(0.1, 0.1))
    other = viewer.add_points(np.array([[1.0, 1.0]]), name="other defects",
                              features={"defect_class": ["V_X"]})
    assert widget.editing.target.value == "other defects"
    viewer.layers.selection.active = viewer.layers["scan"]
    widget.defects_layer.value = "model defects"
    assert widget.editing.target.value == "model defects" and other.features.source.tolist() == ["original"]
    viewer.layers.selection.active = points
    points.selected_data = {0, 2}
    _key(viewer, qtbot, "3")
    table = points.features
    assert table.defect_class.tolist() == ["V_M", "V_X", "V_M"]
    assert table.source.tolist() == ["hand", "model", "hand"]
    assert np.isnan(table.confidence[0]) and np.isnan(table.confidence[2]) and table.confidence[1] == 0.8
    assert widget.editing.new_class.value == "V_M"
    _key(viewer, qtbot, "-")  # class 11, S_X
    assert points.features.defect_class.tolist() == ["S_X", "V_X", "S_X"]
    _key(viewer, qtbot, "z", "Control")
    _key(viewer, qtbot, "z", "Control")
    assert points.features.defect_class.tolist() == ["V_X", "V_X", "V_M"]
    assert points.features.confidence.tolist() == [0.9, 0.8, 0.7]


@pytest.mark.parametrize("dock", ["segment", "statistics"])
def test_legend_lists_every_class_in_the_labels_colours(make_napari_viewer, qtbot, dock):
    from napari_mx2_defects.layers import label_colormap
    from napari_mx2_defects.twin.defects import CLASS_IDS
    from napari_mx2_defects.widgets.defect_editing import KEYS
    from napari_mx2_defects.widgets.segment import SegmentWidget
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    viewer = make_napari_viewer()
    widget = (SegmentWidget if dock == "segment" else StatisticsWidget)(viewer)
    viewer.window.add_dock_widget(widget)
    legend = widget.editing.legend
    assert legend.native.isVisibleTo(widget.native)
    assert [name for name, _, _ in legend.rows] == list(CLASS_IDS)  # every class, in id order
    assert len(set(KEYS.values())) == len(CLASS_IDS)  # one key each
    colormap = label_colormap()
    qtbot.waitUntil(lambda: legend.swatches["V_X"].width() > 0, timeout=5000)
    for name, key, _ in legend.rows:
        swatch = legend.swatches[name]
        image = swatch.grab().toImage()
        shown = image.pixelColor(image.width() // 2, image.height() // 2)
        expected = np.round(255 * np.asarray(colormap[CLASS_IDS[name]][:3]))
        assert abs(np.array([shown.red(), shown.green(), shown.blue()]) - expected).max() <= 1, name
        texts = {w.text() for w in legend.native.findChildren(type(swatch))}
        assert name in texts and f"<b>{key}</b>" in texts


@pytest.mark.slow
def test_sample_from_the_menu_returns_at_once_and_the_layers_follow(make_napari_viewer, qtbot, tmp_path,
                                                                     monkeypatch):
    """File ▸ Open Sample in a running viewer, with no calibration cached: the click returns within 2 s,
    the GUI keeps running while abTEM calibrates, and the real twin's layers appear when it is done."""
    from qtpy.QtCore import QEventLoop, QTimer

    cache = tmp_path / "cold-cache"
    monkeypatch.setenv("MX2_DEFECTS_CACHE", str(cache))
    viewer = make_napari_viewer()
    action = next((a for a in _menu_actions(viewer.window.file_menu) if "MoS2 digital twin" in a.text()),
                  None)
    assert action is not None, "no Open Sample entry for the twin"
    loop, clock, seen = QEventLoop(), QTimer(), {"ticks": 0}
    clock.timeout.connect(lambda: seen.__setitem__("ticks", seen["ticks"] + 1))

    def click():  # inside the running event loop, as a user's click is
        t0 = time.perf_counter()
        action.trigger()
        seen["call_s"] = time.perf_counter() - t0
        seen["after_call"] = [layer.name for layer in viewer.layers]

    def check():
        if len(viewer.layers) == 3 or time.perf_counter() - t_start > 1200:
            loop.quit()

    watcher = QTimer()
    watcher.timeout.connect(check)
    QTimer.singleShot(0, click)
    clock.start(100)
    watcher.start(200)
    t_start = time.perf_counter()
    loop.exec()
    clock.stop()
    watcher.stop()
    waited = time.perf_counter() - t_start
    assert seen["call_s"] < 2.0, seen
    assert seen["after_call"] and "simulating" in seen["after_call"][0]
    assert sorted(type(layer).__name__ for layer in viewer.layers) == ["Image", "Labels", "Points"], \
        [layer.name for layer in viewer.layers]
    assert seen["ticks"] >= 0.5 * waited / 0.1, (seen, waited)  # the event loop ran all along
    print(f"sample: the click returned in {seen['call_s']:.2f} s, the layers came {waited:.0f} s later")
    image, labels, points = (next(layer for layer in viewer.layers if type(layer).__name__ == kind)
                             for kind in ("Image", "Labels", "Points"))
    assert image.data.shape == labels.data.shape and float(np.std(image.data)) > 0
    assert tuple(image.scale) == pytest.approx((0.1, 0.1), rel=0.05) and image.metadata["calibrated"]
    assert len(points.data) == 13 and sorted(set(points.features.defect_class)) == ["V_M", "V_X", "V_XX"]
    assert list(cache.glob("calibration-*.json")), "the twin was calibrated against abTEM in this run"


def _menu_actions(menu):
    for action in menu.actions():
        if action.menu() is not None:
            yield from _menu_actions(action.menu())
        else:
            yield action
