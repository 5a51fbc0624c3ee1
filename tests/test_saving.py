"""Issue 30: saving the plugin's layers from napari, and reopening what napari's own writer saved.

napari 0.9 lists its own writers first in *File → Save Selected Layer(s)* and has no per-plugin default, so
each layer of this plugin names in its metadata (``save_with``) the file type that keeps its calibration, and
the first save through napari's own writer says so once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gui


@pytest.fixture
def twin_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-mx2-defects", "mos2_twin")
    labels = next(layer for layer in layers if type(layer).__name__ == "Labels")
    points = next(layer for layer in layers if type(layer).__name__ == "Points")
    return viewer, labels, points


def test_labels_and_points_round_trip_through_the_plugins_writers(twin_layers, tmp_path):
    viewer, labels, points = twin_layers
    out = labels.save(str(tmp_path / "labels.tif"), plugin="napari-mx2-defects")
    back = viewer.open(out[0], plugin="napari-mx2-defects")[0]
    assert type(back).__name__ == "Labels"
    assert tuple(back.scale) == pytest.approx(tuple(labels.scale), rel=1e-4)
    assert [str(u) for u in back.units] == ["angstrom", "angstrom"]
    np.testing.assert_array_equal(np.asarray(back.data), np.asarray(labels.data))
    assert back.metadata["save_with"] == labels.metadata["save_with"]

    csv = points.save(str(tmp_path / "defects.csv"), plugin="napari-mx2-defects")
    again = viewer.open(csv[0], plugin="napari-mx2-defects")[0]
    assert type(again).__name__ == "Points" and len(again.data) == len(points.data) > 0
    np.testing.assert_allclose(np.asarray(again.data), np.asarray(points.data) * points.scale + points.translate)
    assert list(again.features.defect_class) == list(points.features.defect_class)
    assert list(again.features.element) == list(points.features.element)


def test_napari_points_csv_reopens_through_the_plugin_in_angstrom_with_features(twin_layers, tmp_path):
    viewer, _, points = twin_layers
    features = points.features.copy()
    features["confidence"] = np.linspace(0.5, 1.0, len(features))
    features["confidence"].iloc[0] = np.nan  # a point placed by hand
    features["flagged"] = [k % 2 == 0 for k in range(len(features))]
    points.features = features
    saved = points.save(str(tmp_path / "napari_points.csv"), plugin="napari")  # napari's own writer
    header = open(saved[0]).readline().strip().split(",")
    assert header[:3] == ["index", "axis-0", "axis-1"] and "x_A" not in header
    from napari_mx2_defects.layers import napari_get_points_reader

    assert napari_get_points_reader(saved[0]) is not None
    back = viewer.open(saved[0], plugin="napari-mx2-defects")[0]
    assert type(back).__name__ == "Points"
    assert [str(u) for u in back.units] == ["angstrom", "angstrom"]
    np.testing.assert_allclose(np.asarray(back.data), np.asarray(points.data))  # the layer's Å
    assert list(back.features.defect_class) == list(points.features.defect_class)
    assert list(back.features.element) == list(points.features.element)
    np.testing.assert_allclose(back.features.confidence.to_numpy(float), features.confidence.to_numpy(float))
    assert back.features.flagged.dtype == bool and list(back.features.flagged) == list(features.flagged)
    # napari's shapes CSV is not a points table
    shapes = viewer.add_shapes([np.array([[0, 0], [5, 0], [5, 5]])], shape_type="polygon")
    shapes_csv = shapes.save(str(tmp_path / "shapes.csv"), plugin="napari")
    assert napari_get_points_reader(shapes_csv[0]) is None


def test_plugin_layers_name_their_writer_and_a_first_napari_save_says_so_once(twin_layers, tmp_path, monkeypatch):
    from napari.plugins import _npe2
    from napari.utils.notifications import notification_manager
    from qtpy.QtWidgets import QFileDialog

    from napari_mx2_defects.io import writer

    viewer, labels, points = twin_layers
    # the names are what napari's Save dialog lists for these layers
    for layer, kind in ((labels, "labels"), (points, "points")):
        filters = _npe2.file_extensions_string_for_layers([layer])[0].split(";;")
        assert layer.metadata["save_with"] == writer.SAVE_WITH[kind] in filters
        assert filters[0] != writer.SAVE_WITH[kind]  # napari's own comes first: why the metadata says it
    monkeypatch.setattr(writer, "_REMINDED", [False])
    monkeypatch.setattr(writer, "_LAST_WRITE", [float("-inf")])
    (save,) = [a for a in viewer.window.file_menu.actions()
               if getattr(a, "_command_id", "") == "napari.window.file.save_layers_dialog.selected"]
    answer = {}  # what the user picks in napari's Save dialog: a file name and a file type
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args, **kwargs: answer["pick"])
    labels_filters = _npe2.file_extensions_string_for_layers([labels])[0].split(";;")
    seen: list = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer.layers.selection = {labels}
        answer["pick"] = (str(tmp_path / "ours.tif"), writer.SAVE_WITH["labels"])
        save.trigger()  # *File → Save Selected Layer(s)…*, the plugin's file type chosen: nothing to say
        assert (tmp_path / "ours.tif").exists()
        assert not [n for n in seen if "save_with" in n.message]
        monkeypatch.setattr(writer, "_LAST_WRITE", [float("-inf")])
        answer["pick"] = (str(tmp_path / "napari.tif"), labels_filters[0])  # the dialog's default: napari's
        save.trigger()
        assert (tmp_path / "napari.tif").exists()
        said = [n.message for n in seen if "save_with" in n.message]
        assert len(said) == 1 and writer.SAVE_WITH["labels"] in said[0] and "points" not in said[0]
        answer["pick"] = (str(tmp_path / "napari2.tif"), labels_filters[0])
        save.trigger()
        assert len([n for n in seen if "save_with" in n.message]) == 1  # once
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    # what it warns about: napari's TIFF reopens without the pixel size; the plugin's keeps it
    assert tuple(viewer.open(str(tmp_path / "napari.tif"), plugin="napari")[0].scale) != \
        pytest.approx(tuple(labels.scale), rel=1e-4)
    assert tuple(viewer.open(str(tmp_path / "ours.tif"), plugin="napari-mx2-defects")[0].scale) == \
        pytest.approx(tuple(labels.scale), rel=1e-4)


def test_a_corrupt_napari_points_csv_is_refused_with_its_line(tmp_path):
    from napari_mx2_defects.layers import read_points_csv

    bad = tmp_path / "bad.csv"
    bad.write_text("index,axis-0,axis-1,defect_class\n0,1.5,2.5,V_X\n1,oops,3.0,V_M\n")
    with pytest.raises(ValueError, match=r"bad.csv.*line 3"):
        read_points_csv(str(bad))
    table = pd.read_csv(bad)
    assert len(table) == 2
