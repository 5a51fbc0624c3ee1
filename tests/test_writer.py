"""Writers: Labels → calibrated TIFF our reader opens at the same scale; Points → CSV in Å."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_mx2_defects.io.formats import load_images
from napari_mx2_defects.io.writer import write_calibrated_tiff, write_labels, write_points


def test_labels_round_trip_with_calibration(tmp_path):
    labels = np.zeros((40, 60), np.uint8)
    labels[10:15, 20:30] = 3
    out = write_labels(str(tmp_path / "labels.tif"), labels, {"scale": (0.12, 0.12), "name": "lab",
                                                               "metadata": {"calibrated": True}})
    image = load_images(out[0])[0]
    assert image.calibrated
    assert image.scale_A == pytest.approx((0.12, 0.12))
    np.testing.assert_array_equal(image.data, labels)


def test_points_csv_positions_in_angstrom(tmp_path):
    data = np.array([[10.0, 20.0], [5.0, 7.0]])  # (y, x) data coordinates
    feats = pd.DataFrame({"defect_class": ["V_X", "V_M"], "confidence": [0.9, 0.7]})
    out = write_points(str(tmp_path / "p.csv"), data, {"features": feats, "scale": (0.1, 0.1),
                                                        "translate": (0.0, 1.0)})
    table = pd.read_csv(out[0])
    assert list(table.columns[:2]) == ["x_A", "y_A"]
    assert table.x_A.tolist() == pytest.approx([3.0, 1.7])
    assert table.y_A.tolist() == pytest.approx([1.0, 0.5])
    assert table.defect_class.tolist() == ["V_X", "V_M"]


def test_calibrated_tiff_refuses_to_overwrite(tmp_path):
    path = tmp_path / "a.tif"
    write_calibrated_tiff(path, np.zeros((8, 8), np.float32), 0.1)
    with pytest.raises(FileExistsError):
        write_calibrated_tiff(path, np.ones((8, 8), np.float32), 0.1, overwrite=False)
    assert load_images(path)[0].data.max() == 0
