"""The ``mx2-defects`` command line, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from napari_mx2_defects.cli import main

from .test_reader import FORMATS


def _run(*args):
    return subprocess.run([sys.executable, "-m", "napari_mx2_defects.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


def test_info_on_every_vendor_file(shared_data, capsys):
    for name, shape, pixel, energy in FORMATS:
        assert main(["info", "--json", str(shared_data / "formats" / name)]) == 0
        record = json.loads(capsys.readouterr().out.strip().splitlines()[0])
        assert record["shape"] == list(shape)
        assert record["pixel_size_A"] == pytest.approx(list(pixel), rel=1e-4)
        assert record["calibrated"] is True
        if energy:
            assert record["beam_energy_keV"] == pytest.approx(energy)


def test_info_human_output_and_bad_file(shared_data, tmp_path):
    proc = _run("info", shared_data / "formats/openNCEM/16_STOimage.emi")
    assert proc.returncode == 0
    assert "0.100127 Å" in proc.stdout and "80 keV" in proc.stdout
    broken = tmp_path / "broken.dm4"
    broken.write_bytes((shared_data / "formats/openNCEM/dmTest_float32_nonSquare_diffPixelSize.dm4").read_bytes()[:500])
    proc = _run("info", broken)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: broken.dm4")
    assert "Traceback" not in proc.stderr


def test_simulate_writes_image_labels_truth_settings(tmp_path):
    out = tmp_path / "twin"
    proc = _run("simulate", "--material", "MoS2", "--defects", "V_X=6,V_XX=2", "--fov", "30", "--pixel-size", "0.1",
                "--dose", "1e6", "--seed", "0", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    truth = pd.read_csv(out / "truth.csv")
    assert list(truth.columns) == ["x_A", "y_A", "defect_class"]
    assert truth.defect_class.value_counts().to_dict() == {"V_X": 6, "V_XX": 2}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["request"]["imperfections"]["dose_e_per_A2"] == 1e6
    from napari_mx2_defects.io.formats import load_images

    image = load_images(out / "image.tif")[0]
    assert image.data.dtype.name == "float32"
    assert image.scale_A == pytest.approx((0.1, 0.1), rel=0.01)
    # refuses to overwrite
    proc = _run("simulate", "--defects", "V_X=1", "--fov", "20", "--out", out, "--quiet")
    assert proc.returncode == 2 and "--overwrite" in proc.stderr


def test_simulate_refuses_impossible_lists(tmp_path):
    proc = _run("simulate", "--defects", "V_X=5000", "--fov", "20", "--out", tmp_path / "x", "--quiet")
    assert proc.returncode == 2 and "impossible defect list" in proc.stderr
    proc = _run("simulate", "--defects", "TM_D(Xx)=1", "--fov", "20", "--out", tmp_path / "y", "--quiet")
    assert proc.returncode == 2 and "unknown element" in proc.stderr


@pytest.mark.slow
def test_analyze_writes_the_documented_files(tmp_path):
    twin = tmp_path / "twin"
    assert _run("simulate", "--defects", "V_X=10,V_M=3", "--fov", "40", "--dose", "1e7", "--out", twin,
                "--quiet").returncode == 0
    out = tmp_path / "ana"
    proc = _run("analyze", twin / "image.tif", "--material", "MoS2", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    sites = pd.read_csv(out / "sites.csv", keep_default_na=False)
    assert list(sites.columns[:5]) == ["x_A", "y_A", "sublattice", "intensity", "defect_class"]
    assert set(sites.sublattice) == {"M", "X"}
    conc = pd.read_csv(out / "concentrations.csv")
    for col in ["defect_class", "count", "area_nm2", "per_cm2", "ci_low_per_cm2", "ci_high_per_cm2", "site_fraction"]:
        assert col in conc.columns
    lattice = json.loads((out / "lattice.json").read_text())
    assert {"a_A", "pixel_size_A", "self_calibrated"} <= set(lattice)
    assert (out / "histogram.png").stat().st_size > 1000
