"""Parents, supercells, the defect builder and messy conditions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_mx2_defects.twin.defects import CLASS_IDS, DefectRequest, parse_defects, place_defects
from napari_mx2_defects.twin.parents import get_parent, list_parents, parent_table
from napari_mx2_defects.twin.structures import GrainBoundary, add_holes, build_lattice


def test_parent_library_has_cited_rows_and_the_named_materials():
    table = parent_table()
    assert len(table) >= 50
    assert table.source.str.len().min() > 10 and table.source_detail.str.len().min() > 10
    for formula in ["MoS2", "MoSe2", "MoTe2", "WS2", "WSe2", "WTe2", "NbS2", "NbSe2", "TaS2", "TaSe2", "TiS2",
                    "TiSe2", "TiTe2", "VS2", "VSe2", "VTe2", "CrS2", "CrSe2", "ZrS2", "HfS2", "PtS2", "PtSe2",
                    "PdSe2", "SnS2", "ReS2"]:
        assert formula in set(table.formula), formula
    mos2 = get_parent("MoS2")
    assert (mos2.phase, mos2.a_A, mos2.thickness_A) == ("2H", 3.1841, 3.1271)
    assert get_parent("1T-TiS2").phase == "1T"
    with pytest.raises(ValueError, match="not in the parent library"):
        get_parent("XyZ2")
    assert "2H-WSe2" in list_parents()


def test_defect_ids_are_stable():
    assert CLASS_IDS == {"V_X": 1, "V_XX": 2, "V_M": 3, "M_X": 4, "X_M": 5, "M_2X": 6, "M_i": 7, "X_i": 8,
                         "TM_D": 9, "TM_A": 10, "S_X": 11}


def test_supercell_site_counts_match_the_parent():
    parent = get_parent("MoS2")
    lattice = build_lattice(parent, 40.0)
    n_cells = len(lattice.atoms) // 3
    counts = lattice.sites.sublattice.value_counts()
    assert counts["M"] == counts["X"] == counts["H"] == n_cells
    assert set(lattice.sites[lattice.sites.sublattice == "X"].n_atoms) == {2}
    cell_area = parent.a_A**2 * np.sqrt(3) / 2
    assert lattice.area_A2 == pytest.approx(n_cells * cell_area, rel=1e-9)


def test_every_defect_class_changes_the_structure_as_described():
    parent = get_parent("MoS2")
    lattice = build_lattice(parent, 40.0)
    n0 = len(lattice.atoms)
    text = "V_X=2,V_XX=2,V_M=2,M_X=1,X_M=1,M_2X=1,M_i=1,X_i=1,TM_D(Re)=1,TM_A(Pt)=1,S_X=1"
    placed = place_defects(lattice, parse_defects(text), seed=3)
    symbols = lattice.atoms.get_chemical_symbols()
    assert len(placed.table) == 14
    assert len(lattice.atoms) == n0 - 2 - 4 - 2 - 1 + 1 + 1 + 1  # V_X, V_XX, V_M, M_2X, M_i, X_i, TM_A
    assert symbols.count("Re") == 1 and symbols.count("Pt") == 1 and symbols.count("Se") == 1


def test_impossible_requests_are_refused_with_a_reason():
    parent = get_parent("MoS2")
    with pytest.raises(ValueError, match="impossible defect list"):
        place_defects(build_lattice(parent, 10.0), parse_defects("V_M=500"))
    with pytest.raises(ValueError, match="single-atom columns"):
        place_defects(build_lattice(get_parent("1T-TiS2"), 20.0), parse_defects("V_XX=1"))
    with pytest.raises(ValueError, match="unknown defect class"):
        parse_defects("V_Q=1")
    with pytest.raises(ValueError, match="unknown element"):
        DefectRequest("TM_D", count=1, element="Qq")
    with pytest.raises(ValueError, match="not a transition metal"):
        place_defects(build_lattice(parent, 20.0), parse_defects("TM_D(S)=1"))
    with pytest.raises(ValueError, match="fraction above 1"):
        DefectRequest("V_X", fraction=1.5)


def test_concentrations_and_percentages():
    parent = get_parent("MoS2")
    lattice = build_lattice(parent, 60.0)
    n_x = int((lattice.sites.sublattice == "X").sum())
    placed = place_defects(lattice, parse_defects("V_X=5%,V_M=1e13/cm2"), seed=0)
    counts = placed.table.defect_class.value_counts()
    assert counts["V_X"] == round(0.05 * n_x)
    assert counts["V_M"] == round(1e13 * lattice.area_A2 * 1e-16)


def test_clusters_are_neighbours():
    parent = get_parent("MoS2")
    lattice = build_lattice(parent, 60.0)
    placed = place_defects(lattice, parse_defects("V_X:pairs=10"), seed=1)
    xy = placed.table[["x_A", "y_A"]].to_numpy()
    for k in range(0, 10, 2):
        assert np.linalg.norm(xy[k] - xy[k + 1]) == pytest.approx(parent.a_A, rel=0.05)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 30))
def test_same_seed_same_structure(seed, n):
    parent = get_parent("WSe2")
    a = place_defects(build_lattice(parent, 30.0), parse_defects(f"V_X={n}"), seed=seed).table
    b = place_defects(build_lattice(parent, 30.0), parse_defects(f"V_X={n}"), seed=seed).table
    assert a.equals(b) and len(a) == n


def test_messy_rotation_grain_boundary_and_holes():
    parent = get_parent("MoS2")
    lattice = build_lattice(parent, 60.0, rotation_deg=12.0, grain_boundary=GrainBoundary(20.0, -1.5))
    assert not lattice.periodic
    assert lattice.messy["grain_boundary"]["separation_A"] == -1.5
    assert set(lattice.sites.grain) >= {0, 1}
    before = len(lattice.atoms)
    add_holes(lattice, 2, np.random.default_rng(0))
    lattice.finalise()
    removed = sum(h["n_atoms"] for h in lattice.holes)
    assert all(5 <= h["n_atoms"] <= 30 for h in lattice.holes)
    assert len(lattice.atoms) == before - removed
    with pytest.raises(ValueError):
        GrainBoundary(10.0, 4.0)
