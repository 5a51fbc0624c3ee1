"""One input policy for every front end (issue 13): the plane (a stack is summed, colour refused)
and the pixel size (typed-in value, else a square calibration) are the same from the CLI's
CalibratedImage and from the napari layer the reader makes of the same file."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_mx2_defects.inputs import image_plane, pixel_size_A
from napari_mx2_defects.io.formats import load_images
from napari_mx2_defects.io.reader import read_stem


def test_image_plane_policy():
    image = np.arange(12.0).reshape(3, 4)
    plane, note = image_plane(image)
    assert plane is not None and note is None
    np.testing.assert_array_equal(plane, image)
    stack = np.stack([image, 2 * image, 3 * image])
    plane, note = image_plane(stack, "series.dm4")
    np.testing.assert_array_equal(plane, 6 * image)
    assert note == "series.dm4 is a stack of 3 frames; using their sum"
    with pytest.raises(ValueError, match="colour \\(RGB\\)"):
        image_plane(np.zeros((64, 64, 3)), "photo.png")
    with pytest.raises(ValueError, match="needs two"):
        image_plane(np.zeros(5))


def test_pixel_size_policy():
    assert pixel_size_A((0.2, 0.2), True) == 0.2
    assert pixel_size_A((1.0, 0.2, 0.2002), True) == pytest.approx(0.2001)  # frame axis ignored
    # a twin's grid rounding (0.13 % here) is square; a 5 % difference is not
    assert pixel_size_A((0.0998194, 0.0999493), True) == pytest.approx(0.09988435)
    with pytest.raises(ValueError, match="non-square"):
        pixel_size_A((0.21, 0.2), True)
    assert pixel_size_A((1.0, 1.0), False) is None
    assert pixel_size_A((1.0, 1.0), False, override=0.15) == 0.15
    assert pixel_size_A((0.3, 0.2), True, override=0.25) == 0.25  # a typed-in value wins
    with pytest.raises(ValueError, match="non-square pixels \\(0.3 Å × 0.2 Å\\)"):
        pixel_size_A((0.3, 0.2), True, name="scan.dm3")
    with pytest.raises(ValueError, match="--pixel-size"):
        pixel_size_A(None, False, override=float("nan"))


def _files(tmp_path, shared_data):
    stack = tmp_path / "stack.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(stack, rng.random((3, 40, 48)).astype(np.float32), imagej=True,
                     resolution=(1 / 0.02, 1 / 0.02), metadata={"unit": "nm", "axes": "ZYX"})
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, rng.random((40, 48)).astype(np.float32))
    nonsquare = shared_data / "formats/openNCEM/dmTest_float32_nonSquare_diffPixelSize.dm3"
    return {"frame stack": stack, "uncalibrated": plain, "non-square": nonsquare}


@pytest.mark.parametrize("case", ["frame stack", "uncalibrated", "non-square"])
def test_cli_and_layer_inputs_agree(tmp_path, shared_data, case):
    path = _files(tmp_path, shared_data)[case]
    image = load_images(path)[0]
    data, kwargs, _ = read_stem(str(path))[0]
    meta = kwargs["metadata"]

    def both(fn_cli, fn_layer):
        outcomes = []
        for fn in (fn_cli, fn_layer):
            try:
                outcomes.append(("ok", fn()))
            except ValueError as exc:
                outcomes.append(("error", str(exc).replace(str(path), path.name)))
        return outcomes

    (k1, p1), (k2, p2) = both(lambda: pixel_size_A(image.scale_A, image.calibrated, name=path.name),
                              lambda: pixel_size_A(kwargs["scale"], meta["calibrated"], name=path.name))
    assert (k1, p1) == (k2, p2)
    plane_cli, note_cli = image_plane(image.data, path.name)
    plane_layer, note_layer = image_plane(data, path.name)
    np.testing.assert_array_equal(plane_cli, plane_layer)
    assert note_cli == note_layer
    expected = {"frame stack": ("ok", 0.2), "uncalibrated": ("ok", None), "non-square": ("error", None)}[case]
    assert k1 == expected[0]
    if k1 == "ok":
        assert p1 == (pytest.approx(expected[1]) if expected[1] else None)
    else:
        assert "non-square pixels" in p1
    if case == "frame stack":
        assert note_cli.endswith("stack of 3 frames; using their sum")


def test_survey_images_that_cannot_resolve_columns_are_refused(shared_data):
    """A 3.84 Å/px TIA preview used to give "80 defects"; now it is refused with the reason."""
    preview = load_images(shared_data / "formats/rosettasciio/tia/old/03_Scanning Preview.emi")[0]
    with pytest.raises(ValueError, match="cannot resolve MX2 atomic columns"):
        pixel_size_A(preview.scale_A, preview.calibrated, name="03_Scanning Preview.emi")
    with pytest.raises(ValueError, match="cannot resolve"):
        pixel_size_A(None, False, override=0.9)
    assert pixel_size_A((0.45, 0.45), True) == 0.45  # the coarsest real atomic-resolution scans still pass
