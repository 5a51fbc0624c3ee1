"""Physics of the digital twins (fast mode is calibrated against abTEM; abTEM runs here on 2 cores)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mx2_defects.analysis.lattice import fft_lattice_spacing_px
from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
from napari_mx2_defects.twin.imperfections import ImageState, Imperfections, PoissonDose
from napari_mx2_defects.twin.microscope import Microscope
from napari_mx2_defects.twin.simulate import (
    column_intensities,
    integration_radius_A,
    projected_columns,
    render_columns,
    render_incoherent,
    simulate_abtem,
)


def _column_intensity(twin, x, y):
    radius = integration_radius_A(twin.settings["parent"]["a_A"])
    return column_intensities(twin.clean_image, twin.extent_xy_A, np.atleast_1d(x), np.atleast_1d(y), radius,
                              periodic=twin.settings["periodic"])


@pytest.fixture(scope="module")
def mos2_twin():
    return simulate_twin(TwinRequest(material="MoS2", defects="V_X=4,V_XX=2,V_M=2", fov_A=30.0, seed=1))


def test_vacancies_lower_their_column(mos2_twin):
    twin = mos2_twin
    sites = twin.sites
    intact_x = sites[(sites.sublattice == "X") & (sites.defect_class == "")].iloc[:10]
    intact_m = sites[(sites.sublattice == "M") & (sites.defect_class == "")].iloc[:10]
    i_x2 = np.median(_column_intensity(twin, intact_x.x_A, intact_x.y_A))
    i_m = np.median(_column_intensity(twin, intact_m.x_A, intact_m.y_A))
    values = {name: [] for name in ("V_X", "V_XX", "V_M")}
    for _, d in twin.defects.iterrows():
        values[d.defect_class].append(_column_intensity(twin, d.x_A, d.y_A)[0])
    # integrated intensities include the tails of neighbouring columns, so an empty site is not zero;
    # the ordering and clear gaps are the physics
    assert max(values["V_X"]) < 0.85 * i_x2
    assert max(values["V_XX"]) < min(values["V_X"]) - 0.1 * i_x2
    assert max(values["V_M"]) < 0.6 * i_m
    assert i_m > i_x2  # Mo (Z=42) outshines an S2 column (2 × Z=16) in HAADF


@pytest.mark.slow
def test_w_outshines_mo():
    mo = simulate_twin(TwinRequest(material="MoS2", fov_A=20.0))
    w = simulate_twin(TwinRequest(material="WS2", fov_A=20.0))
    for twin in (mo, w):
        m = twin.sites[twin.sites.sublattice == "M"]
        twin.metal_intensity = np.median(_column_intensity(twin, m.x_A, m.y_A))
    assert w.metal_intensity > 1.3 * mo.metal_intensity


def test_image_lattice_spacing_is_the_parents(mos2_twin):
    a_px, _ = fft_lattice_spacing_px(mos2_twin.clean_image)
    assert a_px * mos2_twin.pixel_size_A[1] == pytest.approx(3.1841, rel=0.005)


def test_truth_positions_sit_on_intensity_maxima(mos2_twin):
    twin = mos2_twin
    img = twin.clean_image
    py, px = twin.pixel_size_A
    intact = twin.sites[(twin.sites.sublattice != "H") & (twin.sites.defect_class == "")].iloc[::7]
    for _, s in intact.iterrows():
        i, j = int(round(s.y_A / py)) % img.shape[0], int(round(s.x_A / px)) % img.shape[1]
        window = np.take(np.take(img, np.arange(i - 3, i + 4), axis=0, mode="wrap"), np.arange(j - 3, j + 4),
                         axis=1, mode="wrap")
        di, dj = np.unravel_index(np.argmax(window), window.shape)
        assert abs(di - 3) <= 1 and abs(dj - 3) <= 1


def _offsets_to_maxima_px(img, sites, py, px) -> list[float]:
    """Distance (pixels) from each site to the brightest pixel of the 9×9 window around it."""
    offsets = []
    for _, s in sites.iterrows():
        i, j = int(round(s.y_A / py)), int(round(s.x_A / px))
        window = img[i - 4 : i + 5, j - 4 : j + 5]
        di, dj = np.unravel_index(np.argmax(window), window.shape)
        offsets.append(np.hypot(di - 4, dj - 4))
    return offsets


def test_truth_follows_drift():
    twin = simulate_twin(TwinRequest(material="MoS2", defects="V_M=2", fov_A=30.0, seed=2,
                                     imperfections=Imperfections(drift_A_per_line=(0.004, 0.002))))
    img, (py, px) = twin.image, twin.pixel_size_A
    metals = twin.sites[(twin.sites.sublattice == "M") & (twin.sites.defect_class == "")]
    inside = metals[(metals.x_A > 3) & (metals.y_A > 3) & (metals.x_A < twin.extent_xy_A[0] - 3)
                    & (metals.y_A < twin.extent_xy_A[1] - 3)].iloc[::5]
    assert np.median(_offsets_to_maxima_px(img, inside, py, px)) <= 1.0


def test_truth_follows_scan_flyback():
    """A flyback displaces the start of every line along the fast axis (decaying over 15 Å): the truth
    sites move with it and stay on the image's columns."""
    twin = simulate_twin(TwinRequest(material="MoS2", fov_A=40.0, seed=2,
                                     imperfections=Imperfections(flyback_A=0.8)))
    plain = simulate_twin(TwinRequest(material="MoS2", fov_A=40.0, seed=2))
    img, (py, px) = twin.image, twin.pixel_size_A
    metals = twin.sites.sublattice == "M"
    shift = (twin.sites.x_A - plain.sites.x_A)[metals]
    x = plain.sites.x_A[metals]
    # a pixel at x samples the specimen at x + 0.8·exp(−x/15): a column appears 0.8·exp(−x/15) Å earlier
    assert np.allclose(shift[x > 2], -0.8 * np.exp(-x[x > 2] / 15.0), atol=0.05)
    near = twin.sites[metals & (twin.sites.x_A > 2) & (twin.sites.x_A < 12) & (twin.sites.y_A > 3)
                      & (twin.sites.y_A < twin.extent_xy_A[1] - 3)]
    offsets = _offsets_to_maxima_px(img, near, py, px)
    assert len(offsets) >= 10 and np.median(offsets) <= 1.0


@pytest.mark.parametrize("dose", [1e4, 1e6, 1e8])
def test_dose_noise_is_poisson(dose):
    rng = np.random.default_rng(0)
    state = ImageState(np.full((200, 200), 0.01), (0.1, 0.1), True)
    expected = 0.01 * dose * 0.01
    noisy = PoissonDose(dose)(state, rng).image
    assert noisy.mean() == pytest.approx(expected, rel=0.02)
    assert noisy.var() == pytest.approx(expected, rel=0.05)


def test_dose_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        PoissonDose(0.0)


@pytest.mark.slow
def test_fast_mode_matches_abtem_per_column():
    """Fast mode vs abTEM (PRISM, which equals multislice here) on a cell it was not calibrated on:
    every occupied column — host, a heavier (W) and a lighter (Ti) dopant, single S, an antisite — and
    every empty site, at two disc radii, relative to the median Mo column as the analysis reads them."""
    from napari_mx2_defects.twin.api import _standard_examples
    from napari_mx2_defects.twin.defects import parse_defects, place_defects
    from napari_mx2_defects.twin.parents import get_parent
    from napari_mx2_defects.twin.simulate import calibrate_column_weights, column_examples
    from napari_mx2_defects.twin.structures import build_lattice

    parent = get_parent("MoS2")
    m = Microscope()
    # not the 6×4 calibration cell: a 5×3 cell with other defects (cells of ≥ 12 Å keep abTEM's
    # detector-edge discretisation in reciprocal space below ~0.5 % at 80 kV; a 3×2 cell reads 1.5 % low)
    lattice = build_lattice(parent, cells=(5, 3))
    pristine = lattice.sites[lattice.sites.sublattice != "H"].copy()
    place_defects(lattice, parse_defects("V_X=2,V_XX=1,V_M=1,M_X=1,TM_D(W)=1,TM_D(Ti)=1"), seed=4)
    atoms = lattice.atoms
    extent = (atoms.cell[0, 0], atoms.cell[1, 1])
    shape = (int(round(extent[1] / 0.05)), int(round(extent[0] / 0.05)))
    cols = projected_columns(atoms, periodic=True)
    assert {"W", "Ti", "S", "Mo+S"} <= set(cols.signature)
    examples = {**_standard_examples(parent, lattice.z_metal_A), **column_examples(atoms, cols)}
    calibration = calibrate_column_weights(parent, m, examples)
    assert calibration.max_rel_error < 0.03, calibration.errors
    reference = simulate_abtem(atoms, m, "prism", shape)
    fast = render_columns(cols.x_A, cols.y_A, calibration.column_weights(cols.signature), shape, extent, m, True)
    occupied = np.hypot(*(pristine[["x_A", "y_A"]].to_numpy()[:, None, :]
                          - cols[["x_A", "y_A"]].to_numpy()[None, :, :]).transpose(2, 0, 1)).min(axis=1) < 0.5
    empty = pristine[~occupied]
    assert sorted(empty.sublattice) == ["M", "X"]  # V_M and V_XX
    mo = (cols.signature == "Mo").to_numpy()
    for radius in (0.7, integration_radius_A(parent.a_A)):
        ref_i = column_intensities(reference, extent, cols.x_A, cols.y_A, radius)
        fast_i = column_intensities(fast, extent, cols.x_A, cols.y_A, radius)
        ref_mo, fast_mo = np.median(ref_i[mo]), np.median(fast_i[mo])
        error = np.abs((fast_i / fast_mo) / (ref_i / ref_mo) - 1)
        assert error.max() < 0.03, dict(zip(cols.signature, error.round(4)))
        assert (np.abs(fast_i - ref_i) / ref_i).max() < 0.03  # absolute scale too
        ref_e = column_intensities(reference, extent, empty.x_A, empty.y_A, radius)
        fast_e = column_intensities(fast, extent, empty.x_A, empty.y_A, radius)
        assert np.abs(fast_e / fast_mo - ref_e / ref_mo).max() < 0.03, (fast_e / fast_mo, ref_e / ref_mo)
    # a coarse output grid gives exact samples of the same band-limited image
    half = (shape[0] // 2, shape[1] // 2)
    weights = calibration.column_weights(cols.signature)
    coarse = render_columns(cols.x_A, cols.y_A, weights, half, extent, m, True)
    fine = render_columns(cols.x_A, cols.y_A, weights, (2 * half[0], 2 * half[1]), extent, m, True)
    np.testing.assert_allclose(coarse, fine[::2, ::2], atol=1e-6 * fine.max())


from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=20, deadline=None)
@given(x=st.floats(0, 19.9), y=st.floats(0, 17.9), w=st.floats(0.001, 0.1))
def test_incoherent_render_conserves_the_scattered_fraction(x, y, w):
    """Σ image × pixel area = Σ weights for a periodic cell, wherever the column sits (sub-pixel too)."""
    m = Microscope()
    image = render_incoherent(np.array([x]), np.array([y]), np.array([w]), (90, 100), (20.0, 18.0), m, True)
    assert image.sum() * 0.2 * 0.2 == pytest.approx(w, rel=0.01)


@pytest.mark.slow
def test_structure_file_becomes_a_twin(tmp_path):
    from ase.io import write

    from napari_mx2_defects.twin.parents import get_parent
    from napari_mx2_defects.twin.structures import build_lattice

    atoms = build_lattice(get_parent("WSe2"), cells=(4, 3)).atoms
    del atoms[[i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "Se"][:1]]
    path = tmp_path / "POSCAR"
    write(path, atoms, format="vasp")
    twin = simulate_twin(TwinRequest(structure_path=str(path), pixel_size_A=0.1))
    assert twin.extent_xy_A == pytest.approx((atoms.cell[0, 0], atoms.cell[1, 1]), rel=0.01)
    w = atoms.positions[[i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "W"][0]]
    i, j = int(round(w[1] / twin.pixel_size_A[0])), int(round(w[0] / twin.pixel_size_A[1]))
    ring = twin.clean_image[max(i - 6, 0) : i + 7, max(j - 6, 0) : j + 7]
    assert twin.clean_image[i, j] >= 0.9 * ring.max()  # pixel (0, 0) is the cell origin, x along columns


@pytest.mark.parametrize("name, kwargs, random", [
    ("scan jitter", {"scan_jitter_A": 0.2}, True),
    ("linear drift", {"drift_A_per_line": (0.01, 0.0)}, False),  # deterministic by nature
    ("non-linear drift", {"nonlinear_drift_A": 1.0}, True),
    ("contamination", {"contamination": 0.3}, True),
    ("probe current", {"probe_current_variation": 0.05}, True),
    ("read noise", {"read_noise": 0.001}, True),
])
def test_each_imperfection_is_a_seedable_transform(mos2_twin, name, kwargs, random):
    from napari_mx2_defects.twin.imperfections import apply_imperfections

    clean = mos2_twin.clean_image
    settings = Imperfections(**kwargs)
    a = apply_imperfections(clean, mos2_twin.pixel_size_A, True, settings, np.random.default_rng(5)).image
    b = apply_imperfections(clean, mos2_twin.pixel_size_A, True, settings, np.random.default_rng(5)).image
    c = apply_imperfections(clean, mos2_twin.pixel_size_A, True, settings, np.random.default_rng(6)).image
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, clean), name
    assert np.array_equal(a, c) != random, name


@pytest.mark.slow
def test_frozen_phonons_are_averaged_and_recorded():
    """abTEM frozen phonons (a few configurations on a tiny cell): the image changes, settings record it."""
    static = simulate_twin(TwinRequest(material="MoS2", fov_A=6.0, pixel_size_A=0.2, method="multislice"))
    thermal = simulate_twin(TwinRequest(material="MoS2", fov_A=6.0, pixel_size_A=0.2, method="multislice",
                                        frozen_phonons=3, phonon_sigma_A=0.1))
    assert thermal.settings["request"]["frozen_phonons"] == 3
    assert thermal.settings["request"]["phonon_sigma_A"] == 0.1
    assert thermal.image.shape == static.image.shape and np.isfinite(thermal.image).all()
    assert not np.allclose(thermal.image, static.image, rtol=1e-3)
    # thermal smearing moves intensity but keeps the scattered fraction within a few per cent
    assert thermal.image.mean() == pytest.approx(static.image.mean(), rel=0.1)
    with pytest.raises(ValueError, match="frozen phonons"):
        TwinRequest(frozen_phonons=-1)


def test_a_structure_is_the_parent_its_majority_makes():
    """A MoS2 cell holding one W, one Se in an S2 column and a missing S is MoS2 (it was calibrated as MoSe2: the
    heaviest chalcogen present), its lattice constant is the cell's, and the Se+S column is a chalcogen site."""
    from dataclasses import replace

    from napari_mx2_defects.twin.api import structure_parent
    from napari_mx2_defects.twin.parents import get_parent
    from napari_mx2_defects.twin.structures import build_lattice, lattice_from_atoms

    table = get_parent("MoS2")
    atoms = build_lattice(replace(table, a_A=3.22), cells=(6, 4)).atoms  # a strained cell: 3.22 Å, not 3.184
    symbols = atoms.get_chemical_symbols()
    s_atoms = [i for i, s in enumerate(symbols) if s == "S"]
    symbols[s_atoms[0]] = "Se"
    symbols[[i for i, s in enumerate(symbols) if s == "Mo"][3]] = "W"
    atoms.set_chemical_symbols(symbols)
    se = atoms.positions[s_atoms[0], :2].copy()
    del atoms[s_atoms[5]]
    parent = structure_parent(atoms)
    assert (parent.metal, parent.chalcogen, parent.phase) == ("Mo", "S", "2H")
    assert parent.a_A == pytest.approx(3.22, abs=0.005) and parent.thickness_A == table.thickness_A
    sites = lattice_from_atoms(atoms, parent).sites
    column = sites.iloc[int(np.argmin(np.hypot(sites.x_A - se[0], sites.y_A - se[1])))]
    assert column.sublattice == "X" and column.n_atoms == 2
    assert structure_parent(build_lattice(table, cells=(4, 3)).atoms) == table  # the table's own cell: unchanged
    with pytest.raises(ValueError, match="no metal and chalcogen"):
        structure_parent(atoms[[i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "S"]])
