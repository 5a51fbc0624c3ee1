"""Issue 9, item 1: ImageJ/Fiji TIFF calibration (``unit=`` in the description, X/YResolution in px/unit).

Before, every unit but ``micron`` opened uncalibrated (rosettasciio reads only ``micron``), so a
twin saved by Fiji after *Set Scale* failed before segmentation started.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mx2_defects.io.formats import load_images
from napari_mx2_defects.io.imagej import decode_imagej_unit, imagej_calibration
from napari_mx2_defects.io.reader import read_stem

# unit as written in the ImageJ description (Fiji escapes non-ASCII), Å per unit
UNITS = [
    ("nm", 10.0),
    ("micron", 1e4),
    ("\\u00B5m", 1e4),  # what Fiji writes for µm
    ("um", 1e4),
    ("\\u00C5", 1.0),  # what Fiji writes for Å
    ("A", 1.0),
    ("angstrom", 1.0),
    ("pm", 0.01),
]
PX, PY = 0.02, 0.03  # pixel width and height in the file's unit: x and y differ on purpose


def _write(path, unit, *, resolutionunit=None, shape=(24, 40), px=PX, py=PY):
    data = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    kwargs = {} if resolutionunit is None else {"resolutionunit": resolutionunit}
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / px, 1 / py), metadata={"unit": unit}, **kwargs)
    return data


@pytest.mark.parametrize("resolutionunit", [None, "NONE", "CENTIMETER", "INCH"])
@pytest.mark.parametrize("unit, factor", UNITS, ids=[u for u, _ in UNITS])
def test_fiji_tiff_opens_calibrated_per_axis(tmp_path, unit, factor, resolutionunit):
    path = tmp_path / "twin.tif"
    data = _write(path, unit, resolutionunit=resolutionunit)
    image = load_images(path)[0]
    assert image.calibrated, image.warnings
    assert image.scale_A == pytest.approx((PY * factor, PX * factor), rel=1e-6)
    assert not image.is_square_pixel
    np.testing.assert_array_equal(image.data, data)
    _, kwargs, _ = read_stem(str(path))[0]
    assert kwargs["scale"] == pytest.approx([PY * factor, PX * factor], rel=1e-6)
    assert kwargs["metadata"]["calibrated"] is True


def test_fiji_stack_keeps_frames_and_calibration(tmp_path):
    path = tmp_path / "stack.tif"
    _write(path, "nm", shape=(3, 24, 40), px=0.04, py=0.04)
    image = load_images(path)[0]
    assert image.data.shape == (3, 24, 40)
    assert image.axis_names == ("frame", "y", "x")
    assert image.scale_A == pytest.approx((1.0, 0.4, 0.4))


def test_utf8_unit_and_separate_yunit(tmp_path):
    path = tmp_path / "utf8.tif"
    description = "ImageJ=1.54f\nunit=\u00b5m\nyunit=nm\n".encode()
    tifffile.imwrite(path, np.zeros((10, 12), np.uint16), description=description,
                     resolution=(1 / 0.5, 1 / 2.0), metadata=None)
    image = load_images(path)[0]
    assert image.calibrated
    assert image.scale_A == pytest.approx((20.0, 5000.0))  # y: 2 nm, x: 0.5 µm


@pytest.mark.parametrize("unit", ["pixel", "inch", "", "furlong"])
def test_non_length_units_stay_uncalibrated_with_a_warning(tmp_path, unit):
    path = tmp_path / "raw.tif"
    _write(path, unit)
    image = load_images(path)[0]
    assert not image.calibrated
    assert image.scale_A == (1.0, 1.0)
    assert image.warnings


def test_zero_or_missing_resolution_is_not_a_calibration():
    assert imagej_calibration({"unit": "nm"}, (0, 1)) is None
    assert imagej_calibration({"unit": "nm"}, (5, 0)) is None
    assert imagej_calibration({"unit": "nm"}, None) is None
    assert imagej_calibration({"unit": "nm"}, float("nan")) is None
    assert imagej_calibration(None, (5, 1)) is None
    assert imagej_calibration({"unit": "nm"}, (1, 10**30)) is None  # 1e30 nm pixels: not a microscope
    cal = imagej_calibration({"unit": "nm"}, (50, 1))
    assert cal["scale_A"] == pytest.approx((0.2, 0.2))  # missing YResolution: square pixels


def test_decode_imagej_unit():
    assert decode_imagej_unit("\\u00B5m") == "\u00b5m"
    assert decode_imagej_unit("\\u00c5") == "\u00c5"
    assert decode_imagej_unit(b"nm") == "nm"
    assert decode_imagej_unit(3) is None


def test_shared_imagej_and_dm_tiffs_still_agree(shared_data):
    ij = load_images(shared_data / "formats/rosettasciio/tiff/test_loading_image_saved_with_imageJ.tif")[0]
    dm = load_images(shared_data / "formats/rosettasciio/tiff/test_loading_image_saved_with_DM.tif")[0]
    assert ij.scale_A == pytest.approx(dm.scale_A, rel=1e-5)
    assert ij.scale_A[-1] == pytest.approx(1686.75, rel=1e-4)
