"""Issue 9, item 1: the optics each real vendor file records, read into ``CalibratedImage.optics``.

Expected values are read off each file's original metadata (Velox JSON, DM tags, TIA
``ObjectInfo``, Berkeley EMD ``microscope`` attributes). The key sets are exact: a value the file
does not hold (or holds as 0, "not measured") must not appear.
"""

from __future__ import annotations

import json

import pytest

from napari_mx2_defects.cli.info import describe_lines
from napari_mx2_defects.io.formats import describe, load_images
from napari_mx2_defects.io.optics import parse_quantity, read_optics
from napari_mx2_defects.io.reader import read_stem

OPTICS = {
    # Velox STEM HAADF: Optics/BeamConvergence -0.02876 rad, HAADF CollectionAngleRange 0.0274-0.1664 rad,
    # CameraLength 0.301 m, Scan/DwellTime 1e-5 s, ScreenCurrent 2.25e-14 A
    "openNCEM/STEM HAADF Diffraction Micro.emd": {
        "beam_energy_keV": 300.0, "convergence_semiangle_mrad": 28.761744, "detector": "HAADF",
        "detector_inner_mrad": 27.402552, "detector_outer_mrad": 166.355089, "camera_length_mm": 301.0,
        "dwell_time_s": 1e-5, "probe_current_A": 2.2526437e-14, "mode": "STEM"},
    # Velox camera images: no scan, no detector angles (camera length is a stale STEM setting there)
    "openNCEM/Camera Ceta Imaging Micro.emd": {
        "beam_energy_keV": 300.0, "convergence_semiangle_mrad": 28.761744, "detector": "BM-Ceta",
        "exposure_time_s": 0.4, "probe_current_A": 3.4452197e-14, "mode": "TEM"},
    "rosettasciio/emd/fei_example_tem_stack.emd": {  # ScreenCurrent 0: not measured
        "beam_energy_keV": 300.0, "convergence_semiangle_mrad": 11.411209, "detector": "BM-Ceta",
        "exposure_time_s": 0.8, "mode": "TEM"},
    # DM STEM (DigiScan): STEM Camera Length 135 mm, Sample Time 3.5 µs; Probe Current (nA) 0.0 = not recorded
    "rosettasciio/digitalmicrograph/2D/test_STEM_image.dm3": {
        "beam_energy_keV": 200.0, "camera_length_mm": 135.0, "dwell_time_s": 3.5e-6, "mode": "STEM"},
    "rosettasciio/digitalmicrograph/Fei HAADF-UK_location.dm3": {
        "beam_energy_keV": 200.0, "camera_length_mm": 135.0, "dwell_time_s": 1.4e-6, "mode": "STEM"},
    # DM TEM camera image: its STEM Camera Length tag (255) is not this image's
    "rosettasciio/tiff/test_dm_image_um_unit.dm3": {
        "beam_energy_keV": 200.0, "exposure_time_s": 0.5, "mode": "TEM"},
    "openNCEM/dmTest_float32_nonSquare_diffPixelSize.dm4": {},  # synthetic: no microscope tags
    # TIA: High tension_kV, Camera length_m, AcquireInfo/DwellTimePath
    "rosettasciio/tia/old/03_Scanning Preview.emi": {
        "beam_energy_keV": 200.0, "camera_length_mm": 135.0, "dwell_time_s": 1.2e-5, "mode": "STEM"},
    "rosettasciio/tia/new/128x128-TEM_search.emi": {
        "beam_energy_keV": 200.0, "exposure_time_s": 0.1, "mode": "TEM"},
    "openNCEM/16_STOimage.emi": {
        "beam_energy_keV": 80.0, "camera_length_mm": 116.0, "dwell_time_s": 2.9e-5, "mode": "STEM"},
    "rosettasciio/tia/new/128x128-TEM_search_1.ser": {},  # the .ser alone holds no tags
    # Berkeley EMD microscope attributes (SI): convergence angle 0.02498 rad, camera length 0.085 m
    "openNCEM/Acquisition_18.emd": {
        "beam_energy_keV": 200.0, "convergence_semiangle_mrad": 24.979373, "camera_length_mm": 85.0,
        "dwell_time_s": 1e-6},
    # Thermo Fisher FEI2 extended header (rosettasciio ignores it): HT 300 kV, STEM, HAADF, camera length
    # 0.0911 m, convergence 0.014327 rad, dwell 10 ms (16 × 16 scan, frame time 2.72 s)
    "rosettasciio/mrc/HAADFscan.mrc": {
        "beam_energy_keV": 300.0, "convergence_semiangle_mrad": 14.327324, "camera_length_mm": 91.1,
        "dwell_time_s": 0.01, "detector": "HAADF", "mode": "STEM"},
    "openNCEM/temp.mrc": {},  # synthetic, no extended header
    "rosettasciio/tiff/test_loading_image_saved_with_DM.tif": {},
    "rosettasciio/tiff/test_loading_image_saved_with_imageJ.tif": {},
}


@pytest.mark.parametrize("name, expected", list(OPTICS.items()), ids=[n.split("/")[-1] for n in OPTICS])
def test_recorded_optics_of_every_vendor_file(shared_data, name, expected):
    image = load_images(shared_data / "formats" / name)[0]
    assert set(image.optics) == set(expected), image.optics
    for key, value in expected.items():
        if isinstance(value, str):
            assert image.optics[key] == value
        else:
            assert image.optics[key] == pytest.approx(value, rel=1e-6)
    assert set(image.optics_source) == set(expected)
    if "beam_energy_keV" in expected:
        assert image.beam_energy_keV == pytest.approx(expected["beam_energy_keV"])


def test_optics_in_layer_metadata_and_info(shared_data, capsys):
    path = shared_data / "formats/openNCEM/STEM HAADF Diffraction Micro.emd"
    _, kwargs, _ = read_stem(str(path))[0]
    meta = kwargs["metadata"]
    assert meta["optics"]["detector_inner_mrad"] == pytest.approx(27.402552, rel=1e-6)
    assert meta["optics_source"]["convergence_semiangle_mrad"] == "Velox Optics/BeamConvergence"
    image = load_images(path)[0]
    summary = describe(image)
    assert summary["optics"]["camera_length_mm"] == pytest.approx(301.0)
    json.dumps(summary)  # `info --json` must serialise it
    lines = describe_lines(image)
    assert any(line.startswith("convergence") and "28.76 mrad" in line for line in lines)
    assert any("HAADF 27.4–166.4 mrad" in line for line in lines)
    from napari_mx2_defects.cli import main

    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "convergence    28.76 mrad semi-angle" in out and "dwell time     10 µs" in out


def test_npy_sidecar_optics(shared_data):
    image = load_images(shared_data / "real/scilink_mos2/MoS2_stem_Exp-000-2.npy")[0]
    assert image.optics == {"beam_energy_keV": 60.0, "probe_current_A": pytest.approx(30e-12)}


def test_read_optics_ignores_placeholders_and_garbage():
    velox = {
        "Optics": {"AccelerationVoltage": "abc", "BeamConvergence": "0", "ScreenCurrent": "0",
                   "CameraLength": "1e999"},
        "Scan": {"DwellTime": [1, 2]},
        "BinaryResult": {"Detector": "HAADF", "DetectorIndex": "x"},
        "Detectors": {"Detector-0": {"DetectorName": "HAADF", "DetectorType": "ScanningDetector",
                                     "CollectionAngleRange": {"begin": "0", "end": "0"}}},
    }
    optics, _ = read_optics(velox)
    assert optics == {"detector": "HAADF", "mode": "STEM"}
    garbage = {"Optics": ["not", "a", "dict"], "ImageList": "x", "ObjectInfo": 3, "microscope": None}
    optics, _ = read_optics(garbage)
    assert optics == {}
    reversed_angles = {"BinaryResult": {"Detector": "DF"}, "Detectors": {"d": {
        "DetectorName": "DF", "CollectionAngleRange": {"begin": "0.2", "end": "0.1"}}}}
    assert "detector_inner_mrad" not in read_optics(reversed_angles)[0]


@pytest.mark.parametrize("value, target, expected", [
    ("30 pA", "A", 30e-12), ("60 kV", "keV", 60.0), ("60kV", "keV", 60.0), ("300000 V", "keV", 300.0),
    ("1.2 \u00b5s", "s", 1.2e-6), ("1.2 us", "s", 1.2e-6), ("25 mrad", "mrad", 25.0), ("0.3 m", "mm", 300.0),
    (0.025, "mrad", None), ("abc", "A", None), ("1e999 kV", "keV", None), ("5 parsec", "mm", None),
    (True, "s", None),
])
def test_parse_quantity(value, target, expected):
    result = parse_quantity(value, target)
    assert result == (pytest.approx(expected) if expected is not None else None)
