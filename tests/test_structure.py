"""Around the defects (issue 14, item 4): class averages, picometre displacements and strain, on twins with
known atom positions; the dock, ``analyze --structure`` and the API give one answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_mx2_defects.analysis.api import analyze_image
from napari_mx2_defects.analysis.structure import class_averages, defect_structure, strain_map
from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
from napari_mx2_defects.twin.imperfections import Imperfections
from napari_mx2_defects.twin.parents import get_parent
from napari_mx2_defects.twin.structures import build_lattice

MOS2 = get_parent("MoS2")


def _metal_vacancy_twin(tmp_path, push_A: float, dose: float = 1e6):
    """A 100 Å MoS2 twin with metal vacancies 4a apart whose three neighbouring S2 columns are pushed
    radially outwards by ``push_A`` (the same seed, so the same noise, for every push)."""
    import ase.io

    lattice = build_lattice(MOS2, 100.0)
    atoms = lattice.atoms.copy()
    xy = lattice.sites[["x_A", "y_A"]].to_numpy()
    chosen: list[int] = []
    for k in np.flatnonzero(lattice.sites.sublattice.to_numpy() == "M"):
        if all(np.linalg.norm(xy[k] - xy[c]) > 4 * MOS2.a_A for c in chosen):
            chosen.append(k)
    positions = atoms.positions
    box = np.array([atoms.cell[0, 0], atoms.cell[1, 1]])
    remove = []
    for c in chosen:
        remove += list(lattice.site_atoms[c])
        d = positions[:, :2] - xy[c]
        d -= box * np.round(d / box)  # the twin is periodic: nearest image
        r = np.linalg.norm(d, axis=1)
        shell = np.flatnonzero((r > 1.5) & (r < 2.2))  # the six S of the three neighbouring columns
        assert len(shell) == 6
        positions[shell, :2] += push_A * d[shell] / r[shell, None]
    atoms.positions = positions
    del atoms[remove]
    path = tmp_path / f"vacancies_{push_A}.xyz"
    ase.io.write(path, atoms, format="extxyz")
    return simulate_twin(
        TwinRequest(
            structure_path=str(path),
            pixel_size_A=0.1,
            seed=5,
            imperfections=Imperfections(dose_e_per_A2=dose),
        )
    )


@pytest.mark.slow
def test_displacements_recover_a_known_push_in_pm(tmp_path):
    """A 5 pm outward push of the S2 columns around V_M is measured within 0.8 pm (≈ 3 standard
    errors); unpushed, the answer is 0 — the 11 pm the image alone shows (an empty column's missing
    tail) is taken away by the bias twin at the fitted optics."""
    answers = {}
    for push in (0.0, 0.05):
        twin = _metal_vacancy_twin(tmp_path, push)
        result = analyze_image(twin.image, float(twin.pixel_size_A[0]), material="MoS2")
        assert (result.sites.defect_class == "V_M").sum() >= 40
        table = defect_structure(twin.image, result).displacements.set_index(["defect_class", "shell"])
        answers[push] = table
    for push, table in answers.items():
        row = table.loc[("V_M", "1st")]
        assert row.neighbour_sublattice == "X" and row.n_defects >= 40
        assert abs(row.radial_pm - 100 * push) < max(0.8, 3.5 * row.radial_sem_pm), (push, row.radial_pm)
        assert row.apparent_radial_pm > 5  # what the correction took away is real and large
        assert abs(row.tangential_pm) < 4 * row.tangential_sem_pm + 0.3
        assert abs(table.loc[("V_M", "2nd")].radial_pm) < 0.6  # the metal shell was not moved
        for null in ("intact M", "intact X"):  # around intact sites: nothing
            assert abs(table.loc[(null, "1st")].radial_pm) < 4 * table.loc[(null, "1st")].radial_sem_pm + 0.2


@pytest.mark.slow
def test_class_average_recovers_the_defect_image(tmp_path):
    """At 1e5 e/Å² one V_M is buried in noise; the aligned average of ~50 matches the noise-free
    twin's average (correlation > 0.95) and shows the empty centre against the intact metal site."""
    noisy = _metal_vacancy_twin(tmp_path, 0.0, dose=1e5)
    clean = _metal_vacancy_twin(tmp_path, 0.0, dose=None)
    result = analyze_image(noisy.image, 0.1, material="MoS2")
    averages = {
        a.defect_class: a for a in class_averages(noisy.image, result.sites, 0.1, result.lattice["a_A"])
    }
    # the same sites cut from the noise-free image
    reference = {
        a.defect_class: a for a in class_averages(clean.image, result.sites, 0.1, result.lattice["a_A"])
    }
    v_m, intact = averages["V_M"], averages["intact M"]
    assert v_m.n >= 40 and v_m.image.shape == intact.image.shape and v_m.image.shape[0] % 2 == 1
    corr = np.corrcoef(v_m.image.ravel(), reference["V_M"].image.ravel())[0, 1]
    single = result.sites[(result.sites.defect_class == "V_M")].iloc[:1]
    one = class_averages(
        noisy.image,
        pd.concat([single, result.sites[result.sites.defect_class == ""]]),
        0.1,
        result.lattice["a_A"],
    )[0]
    corr_one = np.corrcoef(one.image.ravel(), reference["V_M"].image.ravel())[0, 1]
    assert corr > 0.95 and corr > corr_one + 0.1, (corr, corr_one)
    centre = v_m.image.shape[0] // 2
    assert v_m.image[centre, centre] < 0.5 * intact.image[centre, centre]
    assert v_m.alignment_rms_pm < 10  # the lattice fit already centres them to a few pm


@pytest.mark.slow
def test_strain_map_follows_a_known_shear(tmp_path):
    """u_x = A sin(2π y / L) gives ε_xy = ½ A k cos(k y) and a rotation of −ε_xy: measured with slope 1 ± 0.1.

    At 1e6 e/Å², where the column positions' shot noise leaves the slope a spread of ~0.01 (0.96-0.985
    over seeds 5-9, the σ = a window's smoothing included); at 1e5 e/Å² the positions are near their
    Cramér-Rao bound (M 4.8 pm, S2 9.8 pm) and the slope spreads by ~0.05 (0.89-1.01 over the same
    seeds), too wide for a ±0.1 test of the map's calibration.
    """
    import ase.io

    lattice = build_lattice(MOS2, 100.0)
    atoms = lattice.atoms.copy()
    length, amplitude = float(atoms.cell[1, 1]), 0.3
    k = 2 * np.pi / length
    atoms.positions[:, 0] += amplitude * np.sin(k * atoms.positions[:, 1])
    ase.io.write(tmp_path / "shear.xyz", atoms, format="extxyz")
    twin = simulate_twin(
        TwinRequest(
            structure_path=str(tmp_path / "shear.xyz"),
            pixel_size_A=0.1,
            seed=5,
            imperfections=Imperfections(dose_e_per_A2=1e6),
        )
    )
    result = analyze_image(twin.image, 0.1, material="MoS2")
    pixel = result.lattice["pixel_size_A"]
    strain = strain_map(
        result.sites, result.lattice["a_A"], (twin.image.shape[1] * pixel, twin.image.shape[0] * pixel)
    )
    rows = strain.origin_A[1] + strain.step_A * np.arange(strain.components["e_xy"].shape[0])
    truth = 0.5 * amplitude * k * np.cos(k * rows)
    for name, expected in (("e_xy", truth), ("rotation_deg", -np.degrees(truth))):
        measured = np.nanmean(strain.components[name], axis=1)
        ok = np.isfinite(measured)
        slope, _ = np.polyfit(expected[ok], measured[ok], 1)
        assert 0.9 < slope < 1.1 and np.corrcoef(expected[ok], measured[ok])[0, 1] > 0.95, (name, slope)
    for name in (
        "e_xx",
        "e_yy",
    ):  # no normal strain was applied (rms 0.04-0.09 of the shear's peak over seeds 5-9)
        assert np.sqrt(np.nanmean(np.nanmean(strain.components[name], axis=1) ** 2)) < 0.3 * truth.max()


def test_structure_needs_fitted_positions():
    class Old:
        sites = pd.DataFrame({"x_A": [1.0], "y_A": [1.0], "defect_class": [""]})
        lattice = {"pixel_size_A": 0.1, "a_A": 3.16}

    with pytest.raises(ValueError, match="analyse the image again"):
        defect_structure(np.zeros((64, 64)), Old())


@pytest.mark.slow
@pytest.mark.gui
def test_structure_from_dock_command_and_api_agree(make_napari_viewer, qtbot, tmp_path):
    from napari_mx2_defects import api
    from napari_mx2_defects.cli import main
    from napari_mx2_defects.io.writer import write_calibrated_tiff
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    twin = simulate_twin(
        TwinRequest(
            material="MoS2",
            defects="V_M=6,V_X=10",
            fov_A=60,
            pixel_size_A=0.1,
            seed=4,
            imperfections=Imperfections(dose_e_per_A2=1e6),
        )
    )
    path = write_calibrated_tiff(tmp_path / "twin.tif", twin.image.astype(np.float32), 0.1)
    assert main(["analyze", str(path), "--structure", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "displacements.csv")
    image = api.load_images(path)[0]
    structure = api.defect_structure(image.data, api.analyze_image(image.data, 0.1, material="MoS2"))
    pd.testing.assert_frame_equal(cli, structure.displacements, check_dtype=False, atol=1e-9)
    assert {"V_M", "V_X", "intact M", "intact X"} <= set(cli.defect_class)
    import tifffile

    assert tifffile.imread(tmp_path / "cli" / "strain.tif").shape[0] == 4

    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-mx2-defects")
    widget = StatisticsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.material.value = "2H-MoS2"
    assert not widget.structure_button.enabled
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.runner.worker is None and widget.result is not None, timeout=300_000)
    qtbot.waitUntil(lambda: widget.structure_button.enabled, timeout=10_000)
    assert widget.run_structure() is not None
    qtbot.waitUntil(lambda: widget.runner.worker is None and widget.structure is not None, timeout=300_000)
    pd.testing.assert_frame_equal(widget.structure.displacements, cli, check_dtype=False, atol=1e-9)
    strain = viewer.layers["twin strain εxx (%)"]
    assert strain.data.shape == widget.structure.strain.components["e_xx"].shape
    # the grid covers the image: its far corner lands within one grid step of the image's
    far = np.array(strain.data.shape) * strain.scale + strain.translate
    assert np.all(np.abs(far - np.array(twin.image.shape) * 0.1) < widget.structure.strain.step_A + 1e-6)
    assert len(widget.displacement_table.value["data"]) == len(cli)
    assert widget.export_structure_button.enabled
    written = widget.structure.save(tmp_path / "dock")
    assert pd.read_csv(written[2]).equals(pd.read_csv(tmp_path / "cli" / "displacements.csv"))
