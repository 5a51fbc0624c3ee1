"""The fast-mode renderer and its calibration: properties that hold whatever the physics.

abTEM itself is exercised in test_twin_physics.py; here the calibration's reference image is replaced
by a fast-mode image with known kernels, so the fit, the cache and the renderer's geometry can be
checked exactly and quickly.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_mx2_defects.twin import calibration as calibration_module
from napari_mx2_defects.twin.calibration import calibrate_column_weights, calibration_cell
from napari_mx2_defects.twin.columns import column_examples, projected_columns, signature
from napari_mx2_defects.twin.microscope import Microscope
from napari_mx2_defects.twin.parents import get_parent
from napari_mx2_defects.twin.render import BASIS_SIGMAS_A, render_columns
from napari_mx2_defects.twin.structures import build_lattice

M = Microscope()


def _kernel(total: float, spread: float) -> np.ndarray:
    """A non-negative kernel over the basis: ``total`` Å² shared by a sharp and a spread part."""
    w = np.zeros(len(BASIS_SIGMAS_A))
    w[0] = total * (1 - spread)
    w[BASIS_SIGMAS_A.index(0.45)] = total * spread * 0.7
    w[BASIS_SIGMAS_A.index(1.5)] = total * spread * 0.3
    return w


TRUE_KERNELS = {"Mo": _kernel(0.05, 0.2), "S+S": _kernel(0.03, 0.3), "S": _kernel(0.016, 0.25),
                "W": _kernel(0.09, 0.1), "Ti": _kernel(0.02, 0.35), "Mo+S": _kernel(0.06, 0.2),
                "Se+S": _kernel(0.045, 0.3), "Re": _kernel(0.1, 0.1), "Mo+Mo": _kernel(0.1, 0.2)}


@pytest.fixture
def synthetic_abtem(monkeypatch, tmp_path):
    """Calibrations against a 'reference' that is a fast-mode image with TRUE_KERNELS; counts the runs."""
    calls = []

    def fake(atoms, microscope, method, shape, progress=None, cancelled=None, phonons=None, **kwargs):
        calls.append((microscope, method))
        cols = projected_columns(atoms, periodic=True)
        weights = np.array([TRUE_KERNELS[s] for s in cols.signature])
        return render_columns(cols.x_A, cols.y_A, weights, shape, (atoms.cell[0, 0], atoms.cell[1, 1]), microscope,
                              True, source_size_A=0.0)

    monkeypatch.setattr(calibration_module, "simulate_abtem", fake)
    monkeypatch.setenv("MX2_DEFECTS_CACHE", str(tmp_path))
    monkeypatch.setattr(calibration_module, "_MEMO", {})
    return calls


def _examples(parent, signatures):
    z = build_lattice(parent, cells=(1, 1)).z_metal_A
    top = z + parent.thickness_A / 2
    bottom = z - parent.thickness_A / 2
    table = {"S": [("S", top)], "W": [("W", z)], "Ti": [("Ti", z)], "Mo+S": [("Mo", top), ("S", bottom)],
             "Se+S": [("Se", top), ("S", bottom)], "Re": [("Re", z)], "Mo+Mo": [("Mo", z), ("Mo", z + 4.7)]}
    return {s: table[s] for s in signatures}


def test_kernel_fit_recovers_a_known_model(synthetic_abtem):
    parent = get_parent("MoS2")
    cal = calibrate_column_weights(parent, M, _examples(parent, ["S", "W", "Ti", "Mo+S"]))
    assert cal.errors["column_max_rel"] < 1e-3 and cal.errors["empty_max_rel_to_metal"] < 1e-3, cal.errors
    for sig in ("Mo", "S+S", "S", "W", "Ti", "Mo+S"):
        assert cal.weights_A2[sig] == pytest.approx(TRUE_KERNELS[sig].sum(), rel=2e-3), sig


def test_calibration_cache_is_keyed_by_species_and_optics(synthetic_abtem):
    parent = get_parent("MoS2")
    messages = []
    calibrate_column_weights(parent, M, _examples(parent, ["S", "W", "Ti"]),
                             progress=lambda f, msg: messages.append(msg))
    assert len(synthetic_abtem) == 1
    assert any("once; about" in msg and " s)" in msg for msg in messages)  # the time is shown
    calibrate_column_weights(parent, M, _examples(parent, ["S", "W", "Ti"]))
    from dataclasses import replace

    calibrate_column_weights(parent, replace(M, source_size_A=0.6), _examples(parent, ["S", "W", "Ti"]))  # a blur
    assert len(synthetic_abtem) == 1
    calibration_module._MEMO.clear()  # a new process: the disk cache answers
    calibrate_column_weights(parent, M, _examples(parent, ["S", "W", "Ti"]))
    assert len(synthetic_abtem) == 1
    calibrate_column_weights(parent, M, _examples(parent, ["W"]))  # a subset is a set of its own
    calibrate_column_weights(parent, M, _examples(parent, ["Re"]))  # a new species
    calibrate_column_weights(parent, replace(M, detector_inner_mrad=30.0), _examples(parent, ["W"]))  # ADF
    calibrate_column_weights(parent, replace(M, energy_keV=200.0, detector_outer_mrad=150.0), _examples(parent, ["W"]))
    assert len(synthetic_abtem) == 5


def test_a_twin_does_not_depend_on_what_was_calibrated_before_it(monkeypatch, tmp_path):
    """A reference whose kernels depend a little on what the calibration cell holds (as abTEM's fits do:
    a single S column's kernel moved 8 % between cells at 60 kV): a plain twin made after an alloy twin
    equals one made first, and the alloy twin's host columns have the plain twin's kernels."""
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin

    def fake(atoms, microscope, method, shape, progress=None, cancelled=None, phonons=None, **kwargs):
        cols = projected_columns(atoms, periodic=True)
        weights = np.array([TRUE_KERNELS.get(s, _kernel(0.05, 0.2)) for s in cols.signature])
        weights *= 1 + 0.05 * len(set(cols.signature)) / 10  # the cell's contents move every kernel
        return render_columns(cols.x_A, cols.y_A, weights, shape, (atoms.cell[0, 0], atoms.cell[1, 1]), microscope,
                              True, source_size_A=0.0)

    monkeypatch.setattr(calibration_module, "simulate_abtem", fake)
    plain = TwinRequest.from_values({"material": "MoS2", "defects": "V_X=2", "fov_A": 25.0, "seed": 1})
    alloy = TwinRequest.from_values({"material": "MoS2", "defects": "", "alloy": "W=30%,Se=20%", "fov_A": 25.0,
                                     "seed": 1})
    images = {}
    for order in (("alloy", "plain"), ("plain", "alloy")):
        monkeypatch.setenv("MX2_DEFECTS_CACHE", str(tmp_path / "-".join(order)))
        monkeypatch.setattr(calibration_module, "_MEMO", {})
        for name in order:
            twin = simulate_twin(alloy if name == "alloy" else plain)
            images[order, name] = (twin.clean_image, twin.settings["calibration"]["kernels_A2"])
    for name in ("plain", "alloy"):
        np.testing.assert_array_equal(images[("alloy", "plain"), name][0], images[("plain", "alloy"), name][0])
    plain_cal, alloy_cal = images[("alloy", "plain"), "plain"][1], images[("alloy", "plain"), "alloy"][1]
    assert set(alloy_cal) > set(plain_cal)
    for sig, weights in plain_cal.items():
        assert alloy_cal[sig] == weights, sig


def test_calibration_cell_plants_each_column_on_its_sublattice():
    parent = get_parent("MoS2")
    examples = _examples(parent, ["S", "W", "Mo+S", "Se+S", "Mo+Mo"])
    atoms = calibration_cell(parent, examples)
    cols = projected_columns(atoms, periodic=True)
    counts = cols.signature.value_counts()
    for sig in examples:
        assert counts[sig] == 1, sig
    assert len(atoms.info["empty_sites_xy_A"]) == 2
    metals = cols[cols.signature == "Mo"][["x_A", "y_A"]].to_numpy()
    box = np.array([atoms.cell[0, 0], atoms.cell[1, 1]])
    for sig, on_metal_site in (("W", True), ("Mo+Mo", True), ("Mo+S", False), ("Se+S", False), ("S", False)):
        xy = cols[cols.signature == sig][["x_A", "y_A"]].to_numpy()[0]
        d = metals - xy
        d -= box * np.round(d / box)
        nearest = np.hypot(*d.T).min()
        # metal sites sit a lattice constant from the next metal, chalcogen sites a/√3
        assert (nearest > 3.0) == on_metal_site, (sig, nearest)


@settings(max_examples=15, deadline=None)
@given(x=st.floats(0, 17.9), y=st.floats(0, 15.9), w=st.floats(0.001, 0.1))
def test_render_conserves_the_scattered_fraction_and_places_exactly(x, y, w):
    """Σ image × pixel area = Σ weights wherever the column sits, and a shift of one pixel rolls the image."""
    weights = np.array([_kernel(w, 0.3)])
    a = render_columns([x], [y], weights, (80, 90), (18.0, 16.0), M, True)
    assert a.sum() * 0.2 * 0.2 == pytest.approx(w, rel=1e-6)
    b = render_columns([x + 0.2], [y + 0.2], weights, (80, 90), (18.0, 16.0), M, True)
    np.testing.assert_allclose(np.roll(a, (1, 1), axis=(0, 1)), b, atol=1e-9 * a.max())


def test_tiles_match_one_canvas():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(0, 60, 200), rng.uniform(0, 50, 200)
    weights = np.array([_kernel(0.05, 0.3)] * 200)
    whole = render_columns(x, y, weights, (250, 300), (60.0, 50.0), M, periodic=False, tile_px=4096)
    tiled = render_columns(x, y, weights, (250, 300), (60.0, 50.0), M, periodic=False, tile_px=70)
    np.testing.assert_allclose(tiled, whole, atol=2e-3 * whole.max())
    periodic = render_columns(x, y, weights, (250, 300), (60.0, 50.0), M, periodic=True)
    periodic_tiled = render_columns(x, y, weights, (250, 300), (60.0, 50.0), M, periodic=True, tile_px=100)
    np.testing.assert_allclose(periodic_tiled, periodic, atol=2e-3 * periodic.max())


def test_source_size_is_a_gaussian_blur_in_fourier_space():
    from scipy.ndimage import gaussian_filter

    weights = np.array([_kernel(0.05, 0.2)])
    sharp = render_columns([10.0], [9.0], weights, (200, 200), (20.0, 20.0), M, True, source_size_A=0.0)
    blurred = render_columns([10.0], [9.0], weights, (200, 200), (20.0, 20.0), M, True, source_size_A=0.5)
    np.testing.assert_allclose(blurred, gaussian_filter(sharp, 0.5 / 0.1, mode="wrap"), atol=2e-3 * blurred.max())


def test_projected_columns_group_every_atom_once():
    parent = get_parent("MoS2")
    from napari_mx2_defects.twin.defects import parse_defects, place_defects

    lattice = build_lattice(parent, cells=(5, 4))
    place_defects(lattice, parse_defects("V_X=3,V_XX=1,M_X=1,TM_A=1,S_X=2"), seed=2)
    atoms = lattice.atoms
    cols = projected_columns(atoms, periodic=True)
    members = np.concatenate(list(cols.atoms))
    assert sorted(members) == list(range(len(atoms)))
    symbols = atoms.get_chemical_symbols()
    for sig, group in zip(cols.signature, cols.atoms):
        assert sig == signature([symbols[i] for i in group])
    counts = cols.signature.value_counts()
    assert counts["S"] == 3 and counts["Mo+S"] == 1 and counts["Mo+Mo"] == 1 and counts["Se+S"] == 2
    examples = column_examples(atoms, cols)
    assert set(examples) == set(cols.signature)


@pytest.mark.parametrize("sigma_px", [0.25, 3.7, 400.0])
def test_row_shift_fast_path_equals_the_general_resampling(sigma_px):
    """Scan jitter on an undistorted periodic twin takes a 1-D path; it must equal the 2-D spline."""
    from napari_mx2_defects.twin.imperfections import ImageState, _resample, _shift_rows_periodic

    rng = np.random.default_rng(3)
    image = rng.random((37, 29))
    state = ImageState(image, (0.2, 0.25), True)
    shifts_A = np.round(rng.normal(0, sigma_px * 0.25, 37) * 256) / 256  # exact in the general path's float32
    general = _resample(state, np.zeros((1, 1)), shifts_A[:, None], image)
    fast = _shift_rows_periodic(state, shifts_A, image)
    np.testing.assert_allclose(fast.image, general.image, atol=1e-6)
    np.testing.assert_array_equal(fast.offset_x_A, general.offset_x_A)
    np.testing.assert_array_equal(fast.offset_y_A, general.offset_y_A)


def test_cached_pristine_lattice_is_never_edited_by_a_twin():
    from napari_mx2_defects.twin.defects import parse_defects, place_defects
    from napari_mx2_defects.twin.structures import add_holes

    parent = get_parent("MoS2")
    first = build_lattice(parent, fov_A=30.0)
    atoms_before = first.atoms.copy()
    sites_before = first.sites.copy()
    place_defects(first, parse_defects("V_X=3,V_M=1,TM_D(W)=2,S_X=1,TM_A=1"), seed=1)
    add_holes(first, 1, np.random.default_rng(0))
    second = build_lattice(parent, fov_A=30.0)
    assert second.atoms == atoms_before and second.atoms is not first.atoms
    assert second.sites.equals(sites_before) and not second.holes
    assert [len(g) for g in second.site_atoms] == list(sites_before.n_atoms)


def test_unique_rows_matches_numpy():
    from napari_mx2_defects.twin.render import _unique_rows

    rng = np.random.default_rng(0)
    rows = rng.integers(0, 3, (200, 4)).astype(float) * 0.1
    kernels, group = _unique_rows(rows)
    ref_kernels, ref_group = np.unique(rows, axis=0, return_inverse=True)
    np.testing.assert_array_equal(kernels[group], rows)
    assert len(kernels) == len(ref_kernels)
    np.testing.assert_array_equal(kernels[group], ref_kernels[np.ravel(ref_group)])


def test_parallel_dose_noise_is_poisson_and_independent_of_the_thread_count(monkeypatch):
    from napari_mx2_defects.twin import imperfections
    from napari_mx2_defects.twin.imperfections import ImageState, PoissonDose

    monkeypatch.setattr(imperfections, "PARALLEL_NOISE_PIXELS", 1)
    monkeypatch.setattr(imperfections, "RESAMPLE_ROWS", 16)
    clean = np.full((100, 80), 0.02)
    draws = []
    for threads in ("1", "2"):
        monkeypatch.setenv("MX2_DEFECTS_THREADS", threads)
        state = PoissonDose(1e5)(ImageState(clean.copy(), (0.1, 0.1), True), np.random.default_rng(7))
        draws.append(state.image)
    np.testing.assert_array_equal(draws[0], draws[1])
    lam = 0.02 * 1e5 * 0.01
    counts = draws[0]
    assert abs(counts.mean() - lam) < 4 * np.sqrt(lam / counts.size)
    assert abs(counts.var() / lam - 1) < 0.1
    assert len({tuple(counts[i : i + 16, 0]) for i in range(0, 96, 16)}) == 6  # blocks draw different numbers


def test_a_periodic_cell_larger_than_asked_is_said():
    """An unrotated lattice is a periodic cell of whole orthogonal cells: a 12 Å request of MoS2 becomes
    12.7 × 16.5 Å, and the twin says so (issue 30: a 12 Å PRISM request returned 16.5 × 12.7 Å without a word);
    a rotated lattice is exactly the field asked for and nothing is said."""
    from napari_mx2_defects.twin.api import TwinRequest, _extent_notes
    from napari_mx2_defects.twin.parents import get_parent
    from napari_mx2_defects.twin.structures import build_lattice

    lattice = build_lattice(get_parent("MoS2"), 12.0)
    (note,) = _extent_notes(TwinRequest(material="MoS2", fov_A=12.0, method="prism"), lattice, lattice.extent_xy_A)
    assert "12 Å field of view became 12.7 × 16.5 Å" in note
    rotated = build_lattice(get_parent("MoS2"), 12.0, rotation_deg=10.0)
    assert _extent_notes(TwinRequest(material="MoS2", fov_A=12.0, rotation_deg=10.0), rotated,
                         rotated.extent_xy_A) == []
