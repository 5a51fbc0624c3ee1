"""Phase and stacking map (issue 14, item 1): stacked twins' regions are named, only the parent's
monolayer is counted, and the dock, ``analyze --phases`` and the API agree."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_mx2_defects.analysis.api import analyze_image
from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
from napari_mx2_defects.twin.imperfections import Imperfections
from napari_mx2_defects.twin.stacking import PHASES

STRIPES = "1L,2L-2H,2L-3R,3L-2H,3L-3R,1T"


def _twin(stacking: str, dose: float, fov_A: float = 240.0, pixel_size_A: float = 0.2, seed: int = 5,
          defects: str = "V_X=60,V_M=12"):
    return simulate_twin(TwinRequest(material="MoS2", fov_A=fov_A, pixel_size_A=pixel_size_A, stacking=stacking,
                                     defects=defects, imperfections=Imperfections(dose_e_per_A2=dose), seed=seed))


def _away_from_boundaries(twin, n_stripes: int, margin_A: float) -> np.ndarray:
    """(ny, nx) pixels further than ``margin_A`` from every stripe edge (the periodic wrap included)."""
    ny, nx = twin.image.shape
    x = (np.arange(nx) + 0.5) * twin.pixel_size_A[1]
    width = twin.extent_xy_A[0] / n_stripes
    to_edge = np.minimum(x % width, width - x % width)
    return np.broadcast_to((to_edge > margin_A)[None, :], (ny, nx))


@pytest.fixture(scope="module")
def stacked():
    twin = _twin(STRIPES, 1e5)
    return twin, analyze_image(twin.image, twin.pixel_size_A[1], material="MoS2", map_phases=True)


def test_every_stacking_is_named_away_from_its_boundaries(stacked):
    """At 1e5 e/Å² and 0.2 Å/px every phase a 2H parent forms is named on ≥ 95 % of its pixels more than
    three lattice constants (9.5 Å) from a boundary; each phase's area fraction is within 0.05 of the truth.
    Measured: 0.995-1.0 per phase inside, 0.96 of all pixels with the boundaries."""
    twin, result = stacked
    truth, found = twin.phase_labels, result.phases
    inside = _away_from_boundaries(twin, 6, 3 * 3.16)
    for phase in STRIPES.replace("1L,", "1L-2H,").replace("1T", "1L-1T").split(","):
        sel = inside & (truth == PHASES.index(phase) + 1)
        assert sel.any()
        assert (found[sel] == truth[sel]).mean() >= 0.95, phase
    table = result.phase_table().set_index("phase")
    for phase in set(table.index) | {PHASES[i - 1] for i in np.unique(truth)}:
        expected = float(np.mean(truth == PHASES.index(phase) + 1)) if phase else 0.0
        got = float(table.fraction.get(phase, 0.0))
        assert got == pytest.approx(expected, abs=0.05), phase
    assert table.area_nm2.sum() * 100 == pytest.approx(result.lattice["phases"]["areas"]["1L-2H"]["area_nm2"] * 100
                                                       / table.fraction["1L-2H"], rel=1e-9)


def test_only_the_monolayer_is_counted(stacked):
    """Sites off the 1L-2H monolayer, or within two lattice constants of another phase, get no class and
    leave the counts and the area; the vacancies counted are those planted in the rest of the monolayer
    stripe (the twin plants them in every stripe but the 1T one)."""
    from napari_mx2_defects.analysis.api import BOUNDARY_MARGIN_A_UNITS

    twin, result = stacked
    sites = result.sites
    other = sites.in_other_phase.to_numpy(bool)
    width = twin.extent_xy_A[0] / 6
    margin = BOUNDARY_MARGIN_A_UNITS * 3.18
    assert other.mean() == pytest.approx(1 - (width - margin) / twin.extent_xy_A[0], abs=0.04)
    assert (sites.defect_class[other] == "").all()
    row = result.concentrations.set_index("defect_class")
    assert row.other_phase_area_nm2["V_X"] == pytest.approx(result.lattice["phases"]["other_phase_area_nm2"])
    assert row.area_nm2["V_X"] + row.other_phase_area_nm2["V_X"] == pytest.approx(
        result.lattice["phases"]["areas"]["1L-2H"]["area_nm2"] / result.phase_table().fraction.iloc[0], rel=0.01)
    truth = twin.defects
    counted = (truth.x_A > 2.0) & (truth.x_A < width - margin)  # stripe 0 less the border and the margin
    for name in ("V_X", "V_M"):
        expected = int((counted & (truth.defect_class == name)).sum())
        assert expected >= 2
        assert abs(int(row["count"][name]) - expected) <= max(2, 0.2 * expected), name
    assert any("not on the 1L-2H monolayer" in note for note in result.notes)


def test_a_plain_monolayer_maps_as_one_and_counts_as_before():
    """A twin without stacking is all 1L-2H, and mapping changes no count."""
    twin = _twin("", 1e5, fov_A=100.0, defects="V_X=20,V_M=5,V_XX=5", seed=8)
    plain = analyze_image(twin.image, 0.2, material="MoS2")
    mapped = analyze_image(twin.image, 0.2, material="MoS2", map_phases=True)
    assert (mapped.phases == PHASES.index("1L-2H") + 1).mean() >= 0.99
    assert not mapped.sites.in_other_phase.any()
    pd.testing.assert_series_equal(plain.concentrations["count"], mapped.concentrations["count"])


@pytest.mark.slow
def test_a_1t_parent_maps_its_aa_stacks():
    """A 1T parent forms AA-stacked mono-, bi- and trilayers; they are named, and a 2H stack is refused."""
    twin = simulate_twin(TwinRequest(material="1T-TiS2", fov_A=180.0, pixel_size_A=0.2, stacking="1L,2L,3L",
                                     defects="", imperfections=Imperfections(dose_e_per_A2=1e6), seed=3))
    result = analyze_image(twin.image, 0.2, material="1T-TiS2", map_phases=True)
    inside = _away_from_boundaries(twin, 3, 3 * 3.4)
    assert (result.phases[inside] == twin.phase_labels[inside]).mean() >= 0.95
    assert set(result.phase_table().phase) <= {"1L-1T", "2L-1T", "3L-1T", ""}


def test_phases_from_dock_command_and_api_agree(make_napari_viewer, qtbot, tmp_path):
    import tifffile

    from napari_mx2_defects.cli import main
    from napari_mx2_defects.io.writer import write_calibrated_tiff
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    twin = _twin("1L,2L-2H", 1e5, fov_A=100.0, defects="V_X=10", seed=4)
    path = write_calibrated_tiff(tmp_path / "twin.tif", twin.image.astype(np.float32), 0.2)
    assert main(["analyze", str(path), "--phases", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "concentrations.csv")
    cli_map = tifffile.imread(tmp_path / "cli" / "phases.tif")
    cli_table = pd.read_csv(tmp_path / "cli" / "phases.csv", keep_default_na=False)
    api = analyze_image(tifffile.imread(path), 0.2, material="MoS2", map_phases=True)
    pd.testing.assert_frame_equal(cli, api.concentrations, check_dtype=False, atol=1e-9)
    pd.testing.assert_frame_equal(cli_table, api.phase_table(), check_dtype=False, atol=1e-9)
    assert (cli_map == api.phases).all()
    assert set(cli_table.phase) >= {"1L-2H", "2L-2H"}

    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-mx2-defects")
    widget = StatisticsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.material.value = "2H-MoS2"
    widget.map_phases.value = True
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.runner.worker is None and widget.result is not None, timeout=300_000)
    pd.testing.assert_frame_equal(widget.result.concentrations, cli, check_dtype=False, atol=1e-9)
    layer = viewer.layers["twin phases"]
    assert (np.asarray(layer.data) == cli_map).all()
    assert tuple(layer.scale) == pytest.approx(tuple(viewer.layers["twin"].scale))
    assert list(layer.features.phase[:3]) == ["unassigned", "1L-2H", "1L-1T"]
    assert "phases 1L-2H" in widget.status.value
    assert "2L-2H" in widget.phase_legend.value and "1L-2H" in widget.phase_legend.value
    paths = widget.export(tmp_path / "dock", kind="csv")
    assert {p.name for p in paths} >= {"phases.tif", "phases.csv"}
