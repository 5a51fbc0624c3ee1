"""Issue 30: a viewer a microscopist can work in, measured in a real napari window of 1280 × 800.

Every dock of the plugin open at once on a real MoS2 image: the window keeps its size, the image canvas at
least 40 % of its width, every dock scrolls instead of growing, status text wraps, the pickers follow the
layers; the batch table shows warnings; progress, toasts, regions, units and messages as a user meets them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gui

WINDOW = (1280, 800)
DOCKS = ("Simulate digital twin", "Find defects", "Defect statistics", "Fine-tune on corrections", "Dose response",
         "Batch folder", "Series")


def _settle(qtbot, ms: int = 300) -> None:
    qtbot.wait(ms)


def _notifications():
    """Collect napari's notifications (what the toasts show) from now on."""
    from napari.utils.notifications import notification_manager

    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    return seen, lambda: notification_manager.notification_ready.disconnect(seen.append)


@pytest.fixture
def window(make_napari_viewer, shared_data, qtbot):
    """A shown 1280 × 800 napari window with a real MoS2 image and every dock of the plugin open."""
    viewer = make_napari_viewer(show=True)
    (image,) = viewer.open(shared_data / "real/scilink_mos2/MoS2_stem_Exp-000-2.npy", plugin="napari-mx2-defects")
    docks = {name: viewer.window.add_plugin_dock_widget("napari-mx2-defects", name) for name in DOCKS}
    main = viewer.window._qt_window
    main.resize(*WINDOW)
    _settle(qtbot)
    return viewer, image, docks


def _canvas_share(viewer) -> float:
    return viewer.window._qt_viewer.canvas.native.width() / viewer.window._qt_window.width()


def test_every_dock_fits_1280_by_800_and_the_canvas_keeps_40_percent(window, qtbot):
    viewer, image, docks = window
    main = viewer.window._qt_window
    assert image.metadata["calibrated"] and str(image.units[-1]) == "angstrom"
    # before this issue: the window needed 1103 × 6033 px and the canvas shrank to 143 px
    assert (main.width(), main.height()) == WINDOW
    hint = main.minimumSizeHint()
    assert hint.width() <= WINDOW[0] and hint.height() <= WINDOW[1], (hint.width(), hint.height())
    assert _canvas_share(viewer) >= 0.40, _canvas_share(viewer)
    tabbed = main.tabifiedDockWidgets(docks["Batch folder"][0])
    assert len(tabbed) == len(DOCKS) - 1  # one tab each, every dock the full height of the dock area
    for name, (dock, widget) in docks.items():
        dock.show()
        dock.raise_()
        _settle(qtbot, 100)
        assert dock.width() <= 420 and dock.height() <= WINDOW[1], (name, dock.width(), dock.height())
        from qtpy.QtWidgets import QScrollArea

        scroll = widget.native.findChild(QScrollArea, "mx2_dock_scroll")
        assert scroll is not None and scroll.isVisible(), name
        content = scroll.widget()
        # what does not fit scrolls; nothing is cut off sideways by more than a few pixels
        assert content.minimumSizeHint().width() <= scroll.viewport().width() + 8, (name, content.minimumSizeHint())
        if content.height() > scroll.viewport().height():
            assert scroll.verticalScrollBar().maximum() > 0, name


def test_long_status_wraps_and_the_window_stays(window, qtbot):
    viewer, _, docks = window
    statistics = docks["Defect statistics"][1]
    docks["Defect statistics"][0].raise_()
    statistics.status.value = "\n".join(["a = 4.339 Å (self-calibrated); 1204 M / 2408 X sites; 41.2 nm²",
                                         *(f"⚠ note {k}: " + "the lattice constant is 36 % above the parent's " * 4
                                           for k in range(6))])
    _settle(qtbot)
    main = viewer.window._qt_window
    assert (main.width(), main.height()) == WINDOW and main.minimumSizeHint().width() <= WINDOW[0]
    assert docks["Defect statistics"][0].width() <= 420
    assert statistics.status.native.wordWrap()
    assert _canvas_share(viewer) >= 0.40


def test_pickers_follow_the_layers_with_every_dock_open(window, qtbot):
    from napari_mx2_defects.layers import region_layer

    viewer, image, docks = window
    segment, statistics, finetune = (docks[n][1] for n in ("Find defects", "Defect statistics",
                                                            "Fine-tune on corrections"))
    for dock in (segment, statistics, finetune):
        assert dock.image_layer.value == image.name
    points = viewer.add_points(np.array([[10.0, 12.0]]), features={"defect_class": ["V_X"]}, name="my defects",
                               units=("angstrom", "angstrom"))
    data, kwargs, kind = region_layer(image, 0.1, [(2.0, 3.0, 20.0, 25.0)])
    region = viewer.add_shapes(data, **kwargs)
    _settle(qtbot, 100)
    assert "my defects" in statistics.defects_layer.choices and "my defects" in finetune.corrections_layer.choices
    assert region.name in statistics.regions_layer.choices and region.name in finetune.region_layer.choices
    points.name = "renamed defects"
    _settle(qtbot, 100)
    assert "renamed defects" in statistics.defects_layer.choices
    assert "my defects" not in finetune.corrections_layer.choices
    viewer.layers.remove(points)
    _settle(qtbot, 100)
    assert "renamed defects" not in statistics.defects_layer.choices
    # the reviewed region: outlined, not filled, and read back as the box it was made from (Å)
    assert np.allclose(region.face_color[:, 3], 0) and np.allclose(region.edge_color[0], [1, 1, 0, 1])
    from napari_mx2_defects.layers import reviewed_regions_A

    assert reviewed_regions_A(region, image, 0.1) == [pytest.approx((2.0, 3.0, 20.0, 25.0))]


def test_hand_added_layers_take_the_units_and_regions_are_outlined(window, qtbot):
    viewer, image, docks = window
    finetune = docks["Fine-tune on corrections"][1]
    shapes = viewer.add_shapes(name="reviewed by hand")  # as from the console: pixels, napari's white fill
    assert [str(u) for u in shapes.units] == ["angstrom", "angstrom"]
    assert viewer.layers.extent.units is not None  # napari would warn "Inconsistent units across layers"
    shapes.add_rectangles(np.array([[5.0, 5.0], [30.0, 40.0]]))
    assert shapes.face_color[0][3] == 0  # outlined: the image shows through
    finetune.region_layer.value = shapes.name
    from napari.utils.colormaps.standardize_color import transform_color

    assert transform_color(shapes.current_face_color)[0][3] == 0
    # a layer with data is the user's own: left as it is
    mine = viewer.add_points(np.array([[1.0, 1.0]]), name="pixels")
    assert str(mine.units[-1]) == "pixel"


def test_progress_resets_toasts_once_and_fields_are_named(window, qtbot):
    from napari_mx2_defects.core.jobs import Cancelled

    viewer, _, docks = window
    dose = docks["Dose response"][1]
    dose.progress.value = 100  # the last run's
    seen_progress = []

    def job(progress, cancelled):
        raise Cancelled()

    dose._start(job)
    seen_progress.append(dose.progress.value)
    qtbot.waitUntil(lambda: dose.runner.worker is None, timeout=10_000)
    assert seen_progress == [0]

    statistics = docks["Defect statistics"][1]
    seen, stop = _notifications()
    try:
        notes = ["the lattice constant 4.339 Å is 36 % above the parent's 3.19 Å", "no V_X found"]
        assert statistics._toast_once(notes) == notes
        assert statistics._toast_once([*notes, "a third one"]) == ["a third one"]
    finally:
        stop()
    assert [n.message for n in seen] == [*notes, "a third one"]

    finetune = docks["Fine-tune on corrections"][1]
    finetune.minutes.value = 0.0
    viewer.add_points(np.array([[10.0, 12.0]]), features={"defect_class": ["V_X"]}, name="corrections",
                      units=("angstrom", "angstrom"))
    finetune.corrections_layer.value = "corrections"
    import tempfile

    finetune.out.value = tempfile.mkdtemp()
    assert finetune.run() is None
    assert "time limit" in finetune.status.value and "--" not in finetune.status.value, finetune.status.value


def test_batch_table_shows_warnings_in_eight_rows(window, qtbot):
    from napari_mx2_defects.batch import SUMMARY_COLUMNS
    from napari_mx2_defects.widgets.batch import BATCH_COLUMNS, ROW_COLOURS

    viewer, _, docks = window
    dock, batch = docks["Batch folder"]
    dock.raise_()
    rows = []
    for k in range(10):
        row = {c: "" for c in SUMMARY_COLUMNS}
        row.update(file=f"Exp-{k:03d}.npy", status="done", pixel_size_A=0.1043, a_A=3.171, n_X_sites=2408,
                   V_X_count=3, V_X_per_cm2=2.31e12)
        if k == 2:
            row.update(a_A=4.339, notes="the lattice constant 4.339 Å is 36 % above the parent's 3.19 Å", V_X_count=0)
        if k == 5:
            row.update(status="failed", error="Exp-005.npy: truncated file", a_A=np.nan)
        rows.append(row)
    batch.show_summary(pd.DataFrame(rows))
    _settle(qtbot)
    view = batch.table.native
    headers = [view.horizontalHeaderItem(c).text() for c in range(view.columnCount())]
    assert headers == list(BATCH_COLUMNS) and headers[2] == "warnings"
    assert view.item(2, 2).text().startswith("the lattice constant 4.339 Å")
    assert view.item(2, 0).background().color().name() == ROW_COLOURS["warning"]
    assert view.item(5, 0).background().color().name() == ROW_COLOURS["failed"]
    assert view.item(0, 0).background().color().name() != ROW_COLOURS["warning"]
    assert view.item(0, 3).text() == "0.1043" and view.item(0, 7).text() == "2.31e+12"
    # at least eight rows in view without scrolling (about one before)
    row_height = view.verticalHeader().defaultSectionSize()
    assert view.viewport().height() >= 8 * row_height, (view.viewport().height(), row_height)
    assert batch.levels.count("warning") == 1


def test_dose_table_reads_as_a_dose(window):
    from napari_mx2_defects.learn.dose_response import DoseResponse
    from napari_mx2_defects.widgets.dose_response import enough_dose_table

    fits = pd.DataFrame({"classes": [3, 3], "defect_class": ["V_X", "V_M"], "metric": ["f1", "f1"],
                         "d0": [0.97, 0.8], "amplitude": [-0.9, -0.7], "alpha_e_per_A2": [4000.0, 9000.0],
                         "dose_for_f1_0_9_e_per_A2": [11600.0, np.nan]})
    table = enough_dose_table(DoseResponse(points=pd.DataFrame(), fits=fits, model="default"))
    assert table["dose for F1 0.9 (e/Å²)"] == ["1.16 × 10⁴", "never (plateau below)"]
    _, docks = window[0], window[2]
    dock = docks["Dose response"][1]
    dock.table.value = table
    assert dock.table.native.item(0, 3).text() == "1.16 × 10⁴"


def test_a_refused_file_says_why_in_the_toast(make_napari_viewer, shared_data, tmp_path, qtbot):
    viewer = make_napari_viewer()
    bad = tmp_path / "cut.dm4"
    bad.write_bytes((shared_data / "formats/openNCEM/dmTest_float32_nonSquare_diffPixelSize.dm4").read_bytes()[:900])
    seen, stop = _notifications()
    try:
        viewer.window._qt_viewer._qt_open([str(bad)], stack=False)  # what File → Open and drag-and-drop call
    finally:
        stop()
    messages = [n.message for n in seen]
    assert len(viewer.layers) == 0
    assert any("cut.dm4" in m and "cannot open" in m for m in messages), messages
    assert not any("Try associating a different plugin" in m for m in messages), messages
    # a script still gets the reader's own error
    with pytest.raises(Exception, match="cut.dm4"):
        viewer.open(bad, plugin="napari-mx2-defects")
