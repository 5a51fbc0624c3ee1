"""Alloy and Janus composition (issue 14, item 2): twins of random alloys and Janus layers at known
composition, every column named by its species from calibrated intensities, the composition within
2 % absolute at 1e6 e/Å²; vacancies in alloyed columns still counted; the dock, ``analyze --alloy``
and the API agree."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

from napari_mx2_defects.analysis.alloy import forward_shares, parse_alloy_species
from napari_mx2_defects.analysis.api import analyze_image
from napari_mx2_defects.twin.alloys import apply_alloy, parse_alloy
from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
from napari_mx2_defects.twin.imperfections import Imperfections
from napari_mx2_defects.twin.parents import get_parent
from napari_mx2_defects.twin.structures import build_lattice

MOS2 = get_parent("MoS2")


def _twin(alloy: str, defects: str = "", dose: float | None = 1e6, seed: int = 1, fov_A: float = 80.0):
    return simulate_twin(TwinRequest(material="MoS2", alloy=alloy, defects=defects, fov_A=fov_A, pixel_size_A=0.1,
                                     seed=seed, imperfections=Imperfections(dose_e_per_A2=dose)))


def _truth_of(twin, result) -> np.ndarray:
    """The twin's species at each analysed site ('?' where no truth site is within 0.5 Å)."""
    truth = twin.sites[twin.sites.sublattice != "H"]
    d, i = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(result.sites[["x_A", "y_A"]].to_numpy())
    return np.where(d < 0.5, truth.species.to_numpy()[i], "?")


def _fractions(columns: np.ndarray, sublattice: np.ndarray) -> dict[str, float]:
    metal = [c for c in columns[sublattice == "M"] if c]
    atoms = [el for c in columns[sublattice == "X"] if c for el in c.split("+")]
    return {"W": metal.count("W") / len(metal), "Se": atoms.count("Se") / len(atoms)}


@pytest.mark.parametrize("text, message", [
    ("W=130%", "between 0 and 1"), ("Mo=20%", "parent's own"), ("Ar=10%", "neither"), ("W=top", "only a chalcogen"),
    ("Se=top,Te=top", "given twice"), ("W=60%,Nb=50%", "add up"), ("W", "cannot read")])
def test_impossible_alloys_are_refused_in_one_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_alloy(text, MOS2)


@pytest.mark.parametrize("text, message", [
    ("W:Se", "parent's own"), ("Mo,W", "colon"), ("Mo,S:S", "not a transition metal"), ("Mo:S", "second metal"),
    ("Mo,W:S,W", "not a chalcogen"), ("Mo,Mo:S", "twice")])
def test_alloy_species_are_checked(text, message):
    with pytest.raises(ValueError, match=message):
        parse_alloy_species(text, MOS2)
    assert parse_alloy_species("W,Mo:Se,S", MOS2) == (("Mo", "W"), ("S", "Se"))  # the parent's species first


def test_alloys_and_janus_layers_take_exact_counts_and_layers():
    lattice = build_lattice(MOS2, 40.0)
    done = apply_alloy(lattice, parse_alloy("W=25%,Se=40%", MOS2), np.random.default_rng(3))
    symbols = np.array(lattice.atoms.get_chemical_symbols())
    n_metal = int((lattice.sites.sublattice == "M").sum())
    assert done["W"] == (symbols == "W").sum() == round(0.25 * n_metal)
    assert (symbols == "Se").sum() == round(0.4 * np.isin(symbols, ["S", "Se"]).sum())
    janus = build_lattice(MOS2, 40.0)
    apply_alloy(janus, parse_alloy("Se=top", MOS2), np.random.default_rng(3))
    z, symbols = janus.atoms.positions[:, 2], np.array(janus.atoms.get_chemical_symbols())
    assert (symbols[z > janus.z_metal_A + 0.5] == "Se").all() and (symbols[z < janus.z_metal_A - 0.5] == "S").all()
    assert forward_shares(("Mo", "W"), ("S", "Se")) == (("W", 0.5), ("Se", 0.5))
    assert forward_shares(("Mo", "W"), ("S", "Se"), {"W": 0.0, "Se": 0.97}) == (("W", 0.1), ("Se", 0.9))


@pytest.mark.slow
@pytest.mark.parametrize("alloy", ["W=30%,Se=40%", "W=70%,Se=80%", "Se=top"])
def test_composition_of_random_alloys_and_janus_layers_within_two_percent(alloy):
    twin = _twin(alloy)
    result = analyze_image(twin.image, 0.1, material="MoS2", alloy_species="Mo,W:S,Se")
    truth = _truth_of(twin, result)
    sub = result.sites.sublattice.to_numpy()
    known = truth != "?"
    # every column named (the sublattices found even where the chalcogens outshine the metal)
    assert np.mean(truth[known] == result.sites.species.to_numpy()[known]) >= 0.98
    comp = result.composition.set_index("element").fraction
    expected = _fractions(truth[known], sub[known])
    assert comp["W"] == pytest.approx(expected["W"], abs=0.02)
    assert comp["Se"] == pytest.approx(expected["Se"], abs=0.02)
    assert comp["Mo"] + comp["W"] == pytest.approx(1.0) and comp["S"] + comp["Se"] == pytest.approx(1.0)
    assert result.concentrations["count"].sum() <= 2  # no vacancy made up from the alloy's light columns
    assert "alloy" in result.lattice and result.lattice["alloy"]["formula"][0].startswith("Mo")


@pytest.mark.slow
def test_vacancies_in_an_alloy_are_counted_and_left_out_of_the_composition():
    twin = _twin("W=40%,Se=30%", defects="V_M=8,V_XX=6", seed=4)
    result = analyze_image(twin.image, 0.1, material="MoS2", alloy_species="Mo,W:S,Se")
    counts = result.concentrations.set_index("defect_class")["count"]
    truth = _truth_of(twin, result)
    sub = result.sites.sublattice.to_numpy()
    assert counts["V_M"] == ((truth == "") & (sub == "M")).sum() >= 6  # those inside the analysed border
    assert counts["V_XX"] == ((truth == "") & (sub == "X")).sum() >= 5
    assert counts["V_X"] == 0
    emptied = result.sites.defect_class.isin(["V_M", "V_XX"]).to_numpy()
    assert (result.sites.species.to_numpy()[emptied] == "").all()
    comp = result.composition.set_index("element")
    assert comp.loc["W", "of_atoms"] == int(((result.sites.sublattice == "M") & (result.sites.species != "")).sum())


@pytest.mark.slow
def test_a_chalcogen_on_a_metal_site_is_x_m_not_the_light_metal():
    """V-alloyed MoS2 with S on some Mo sites (X_M) at 1e5 e/Å²: both are dimmer than Mo, and each is named
    by its own level (measured: every X_M and every V right at 1e5 and 1e6); the X_M sites are counted as
    defects and left out of the metal composition."""
    twin = _twin("V=10%", defects="X_M=2%,V_X=2%", dose=1e5)
    result = analyze_image(twin.image, 0.1, material="MoS2", alloy_species="Mo,V:S")
    truth = _truth_of(twin, result)
    sub = result.sites.sublattice.to_numpy()
    found = result.sites.defect_class.to_numpy()
    x_m = (truth == "S") & (sub == "M")
    assert x_m.sum() >= 10 and (found[x_m] == "X_M").mean() >= 0.9
    assert ((found == "X_M") & ~x_m).sum() <= 1
    v = (truth == "V") & (sub == "M")
    assert (result.sites.species.to_numpy()[v] == "V").mean() >= 0.95
    comp = result.composition.set_index("element")
    assert comp.loc["V", "fraction"] == pytest.approx(v.sum() / ((sub == "M") & ~x_m & (truth != "?")).sum(),
                                                      abs=0.01)
    assert comp.loc["V", "of_atoms"] == int(((sub == "M") & (found != "X_M") & (found != "V_M")).sum())
    assert result.concentrations.set_index("defect_class").loc["X_M", "count"] == (found == "X_M").sum()


@pytest.mark.slow
def test_a_plain_parent_reads_as_its_own_species():
    twin = _twin("", defects="V_X=10", seed=5)
    result = analyze_image(twin.image, 0.1, material="MoS2", alloy_species="Mo,W:S,Se")
    comp = result.composition.set_index("element").fraction
    assert comp["W"] == 0 and comp["Se"] == 0
    inside = int((_truth_of(twin, result) == "S").sum())  # the vacancies away from the analysed border
    assert inside >= 5
    assert result.concentrations.set_index("defect_class").loc["V_X", "count"] == inside


@pytest.mark.slow
def test_alloy_from_dock_command_and_api_agree(make_napari_viewer, qtbot, tmp_path):
    from napari_mx2_defects.cli import main
    from napari_mx2_defects.io.writer import write_calibrated_tiff
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    import tifffile

    twin = _twin("W=30%,Se=40%", dose=1e5, seed=6, fov_A=60.0)
    path = write_calibrated_tiff(tmp_path / "alloy.tif", twin.image.astype(np.float32), 0.1)
    assert main(["analyze", str(path), "--alloy", "Mo,W:S,Se", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "composition.csv")
    api = analyze_image(tifffile.imread(path), 0.1, material="MoS2", alloy_species="Mo,W:S,Se")
    pd.testing.assert_frame_equal(cli, api.composition, check_dtype=False, atol=1e-9)
    sites = pd.read_csv(tmp_path / "cli" / "sites.csv", keep_default_na=False)
    assert (sites.species.to_numpy() == api.sites.species.to_numpy()).all()

    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-mx2-defects")
    widget = StatisticsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.material.value = "2H-MoS2"
    widget.alloy_species.value = "Mo,W:S,Se"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.runner.worker is None and widget.result is not None, timeout=300_000)
    pd.testing.assert_frame_equal(widget.result.composition, cli, check_dtype=False, atol=1e-9)
    points = viewer.layers["alloy sites"]
    assert set(points.features.species) == {"Mo", "W", "S+S", "Se+S", "Se+Se"}
    assert len(widget.composition_table.value["data"]) == 4
    assert "composition Mo" in widget.status.value
    written = widget.export(tmp_path / "dock", kind="csv")
    assert (tmp_path / "dock" / "composition.csv") in written
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "dock" / "composition.csv"), cli, check_dtype=False)
