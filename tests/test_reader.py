"""Reader contract against every real vendor file in ../shared/data/formats (pixel sizes from its README)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_mx2_defects.io.formats import ReaderError, load_images
from napari_mx2_defects.io.reader import napari_get_reader, read_stem

# file, shape, (pixel y, pixel x) in Å, beam energy in keV (None: not recorded)
FORMATS = [
    ("rosettasciio/digitalmicrograph/2D/test_STEM_image.dm3", (68, 68), (2.48538, 2.48538), 200.0),
    ("rosettasciio/digitalmicrograph/Fei HAADF-UK_location.dm3", (4, 16), (55.06, 55.06), 200.0),
    ("rosettasciio/tiff/test_dm_image_um_unit.dm3", (68, 68), (1686.75, 1686.75), 200.0),
    ("rosettasciio/tiff/test_loading_image_saved_with_DM.tif", (68, 68), (1686.75, 1686.75), None),
    ("rosettasciio/tiff/test_loading_image_saved_with_imageJ.tif", (68, 68), (1686.75, 1686.75), None),
    ("rosettasciio/emd/fei_example_tem_stack.emd", (2, 3, 3), (0.08172883, 0.08172883), 300.0),
    ("rosettasciio/tia/old/03_Scanning Preview.emi", (5, 128, 128), (3.84352, 3.84352), 200.0),
    ("rosettasciio/tia/new/128x128-TEM_search.emi", (128, 128), (52.61214, 52.61214), 200.0),
    ("rosettasciio/tia/new/128x128-TEM_search_1.ser", (128, 128), (52.61214, 52.61214), None),  # no .emi tags
    ("rosettasciio/mrc/HAADFscan.mrc", (16, 16), (56.79131, 56.79131), None),
    ("openNCEM/dmTest_float32_nonSquare_diffPixelSize.dm3", (64, 128), (2.0, 10.0), None),
    ("openNCEM/dmTest_float32_nonSquare_diffPixelSize.dm4", (64, 128), (2.0, 10.0), None),
    ("openNCEM/Acquisition_18.emd", (1024, 1024), (0.122465, 0.122465), None),
    ("openNCEM/16_STOimage.emi", (1024, 1024), (0.100127, 0.100127), 80.0),
    ("openNCEM/STEM HAADF Diffraction Micro.emd", (128, 128), (873.708, 873.708), 300.0),
    ("openNCEM/Camera Ceta Imaging Micro.emd", (512, 512), (31.38837, 31.38837), 300.0),
    ("openNCEM/temp.mrc", (3, 128, 128), (2.0, 2.0), None),
]


@pytest.mark.parametrize("name, shape, pixel, energy", FORMATS, ids=[f[0].split("/")[-1] for f in FORMATS])
def test_every_vendor_file_opens_calibrated_in_angstrom(shared_data, name, shape, pixel, energy):
    path = shared_data / "formats" / name
    images = load_images(path)
    assert len(images) == 1
    image = images[0]
    assert image.data.shape == shape
    assert image.calibrated
    assert image.scale_A[-2:] == pytest.approx(pixel, rel=1e-4)
    assert image.axis_names[-2:] == ("y", "x")
    if len(shape) == 3:
        assert image.axis_names[0] == "frame" and image.scale_A[0] == 1.0
    if energy is not None:
        assert image.beam_energy_keV == pytest.approx(energy)
    layers = read_stem(str(path))
    data, kwargs, kind = layers[0]
    assert kind == "image"
    assert kwargs["scale"][-2:] == pytest.approx(pixel, rel=1e-4)
    assert kwargs["metadata"]["calibrated"] is True
    assert kwargs["metadata"]["original_metadata"]


def test_non_square_pixels_keep_their_axes(shared_data):
    """y is 2 Å, x is 1 nm: a reader that swaps axes gets (10, 2)."""
    image = load_images(shared_data / "formats/openNCEM/dmTest_float32_nonSquare_diffPixelSize.dm4")[0]
    assert image.scale_A[-2:] == pytest.approx((2.0, 10.0))
    assert image.original_units[-1] == "nm"
    assert not image.is_square_pixel


def test_first_pixel_and_lattice_file_values(shared_data):
    image = load_images(shared_data / "formats/openNCEM/16_STOimage.emi")[0]
    assert int(image.data[0, 0]) == 18024
    image = load_images(shared_data / "formats/rosettasciio/tiff/test_loading_image_saved_with_DM.tif")[0]
    assert image.offset_A[-2:] != (0.0, 0.0)


def _truncated_copies(shared_data, tmp_path):
    for name, *_ in FORMATS:
        src = shared_data / "formats" / name
        if src.suffix == ".ser":
            continue
        for fraction in (0.5, 0.03):
            folder = tmp_path / f"{fraction}"
            folder.mkdir(exist_ok=True)
            for sibling in src.parent.glob(src.stem.replace("_1", "") + "*"):
                data = sibling.read_bytes()
                (folder / sibling.name).write_bytes(data[: int(len(data) * fraction)])
            yield folder / src.name


def test_truncated_copies_give_one_clear_line(shared_data, tmp_path):
    checked = 0
    for path in _truncated_copies(shared_data, tmp_path):
        with pytest.raises(ReaderError) as info:
            load_images(path)
        message = str(info.value)
        assert path.name in message
        assert "\n" not in message
        assert "Traceback" not in message
        checked += 1
    assert checked >= 30


def test_get_reader_declines_what_is_not_ours(tmp_path):
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader([str(tmp_path / "a.dm3"), str(tmp_path / "b.txt")]) is None
    assert napari_get_reader(str(tmp_path / "a.dm4")) is read_stem


def test_npy_with_field_of_view_sidecar(shared_data):
    path = shared_data / "real/scilink_mos2/MoS2_stem_Exp-000-2.npy"
    image = load_images(path)[0]
    assert image.calibrated
    assert image.pixel_size_A == pytest.approx(90.0 / 512)
    assert image.beam_energy_keV == pytest.approx(60.0)


def test_npy_without_sidecar_is_uncalibrated_with_a_warning(tmp_path):
    path = tmp_path / "frame.npy"
    np.save(path, np.random.default_rng(0).random((40, 50)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data, kwargs, _ = read_stem(str(path))[0]
    assert kwargs["metadata"]["calibrated"] is False
    assert kwargs["scale"] == [1.0, 1.0]
    assert any("no calibration" in str(w.message) for w in caught)


def test_npy_pixel_size_sidecar_and_object_arrays(tmp_path):
    path = tmp_path / "img.npy"
    np.save(path, np.ones((32, 32), np.float32))
    (tmp_path / "img.json").write_text(json.dumps({"pixel_size": 0.02, "pixel_size_units": "nm"}))
    assert load_images(path)[0].scale_A == pytest.approx((0.2, 0.2))
    bad = tmp_path / "obj.npy"
    np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ReaderError, match="object arrays are refused"):
        load_images(bad)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(ReaderError, match="no such file"):
        load_images(tmp_path / "absent.dm4")
    with pytest.raises(ReaderError, match="unsupported"):
        load_images(tmp_path / "x.png")


def test_file_with_several_signals_gives_several_named_layers(shared_data, monkeypatch):
    """A Velox file with HAADF and DF signals: one layer per signal, named by signal title."""
    from rsciio.emd import file_reader

    from napari_mx2_defects.io import formats

    path = shared_data / "formats/openNCEM/STEM HAADF Diffraction Micro.emd"
    (haadf,) = file_reader(str(path))
    df = {**haadf, "data": haadf["data"] // 2, "metadata": {**haadf["metadata"], "General": {"title": "DF4"}}}
    monkeypatch.setitem(formats._FORMAT_READERS, ".emd", lambda p: [haadf, df])
    layers = read_stem(str(path))
    assert [kw["name"] for _, kw, _ in layers] == ["STEM HAADF Diffraction Micro [HAADF]",
                                                   "STEM HAADF Diffraction Micro [DF4]"]
    assert all(kw["scale"] == pytest.approx([873.708, 873.708], rel=1e-4) for _, kw, _ in layers)
