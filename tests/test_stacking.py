"""Multilayer stacks (2H, 3R), 1T regions and their boundaries in the twin engine (issue 14, item 1)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
from napari_mx2_defects.twin.columns import integration_radius_A
from napari_mx2_defects.twin.parents import get_parent
from napari_mx2_defects.twin.stacking import INTERLAYER_GAP_A, PHASES, layer_spacing_A, parse_stacking

STRIPES = "1L,2L-2H,2L-3R,3L-2H,3L-3R,1T"


@pytest.fixture(scope="module")
def stacked():
    return simulate_twin(TwinRequest(material="MoS2", fov_A=96.0, pixel_size_A=0.2, stacking=STRIPES,
                                     defects="V_X=12", seed=3))


def _stripe(twin, k, n=6, margin_A=4.0):
    """Rows of ``twin.sites`` / the atoms table well inside stripe k of n."""
    width = twin.extent_xy_A[0] / n
    return lambda x: (x > k * width + margin_A) & (x < (k + 1) * width - margin_A)


def _over(xy_top, xy_bottom, tolerance_A=0.05):
    """Whether every projected position of ``xy_top`` sits on one of ``xy_bottom``."""
    return bool((cKDTree(xy_bottom).query(xy_top)[0] < tolerance_A).all())


def test_stacks_put_each_layer_where_2h_3r_and_1t_put_it(stacked):
    atoms, sites = stacked.atoms, stacked.sites
    parent = get_parent("MoS2")
    xy = atoms[["x_A", "y_A"]].to_numpy()
    site_xy = {s: sites[sites.sublattice == s][["x_A", "y_A"]].to_numpy() for s in ("M", "X", "H")}
    metal = (atoms.element == "Mo").to_numpy()
    for k, phase in enumerate(parse_stacking(STRIPES, parent)):
        inside = _stripe(stacked, k)(atoms.x_A.to_numpy())
        layers = sorted(set(atoms.layer[inside]))
        assert len(layers) == int(phase[0]), phase
        for level in layers[1:]:
            top = inside & (atoms.layer == level).to_numpy()
            m_top, x_top = xy[top & metal], xy[top & ~metal]
            if phase.endswith("2H") and level == 1:  # turned 180°: metal over chalcogens, chalcogens over metal
                assert _over(m_top, site_xy["X"]) and _over(x_top, site_xy["M"])
            elif phase.endswith("2H"):  # ABA: the third layer repeats the first
                assert _over(m_top, site_xy["M"]) and _over(x_top, site_xy["X"])
            else:  # 3R: each layer shifted by the metal–chalcogen vector
                assert _over(m_top, site_xy["X" if level == 1 else "H"])
                assert _over(x_top, site_xy["H" if level == 1 else "M"])
            dz = atoms.z_A[top & metal].mean() - atoms.z_A[inside & metal & (atoms.layer == 0).to_numpy()].mean()
            assert dz == pytest.approx(level * layer_spacing_A(parent), abs=1e-6)
        if phase == "1L-1T":  # the lower chalcogen moved from B to the hollow: one chalcogen on each
            first = (atoms.layer == 0).to_numpy()
            lower = inside & first & ~metal & (atoms.z_A < atoms.z_A[metal & first].mean()).to_numpy()
            assert _over(xy[lower], site_xy["H"])
    assert layer_spacing_A(parent) == pytest.approx(parent.thickness_A + INTERLAYER_GAP_A)


def test_the_phase_truth_follows_the_stripes_and_no_defect_lands_in_a_1t_region(stacked):
    parent = get_parent("MoS2")
    phases = parse_stacking(STRIPES, parent)
    x = (np.arange(stacked.image.shape[1]) + 0.5) * stacked.pixel_size_A[1]
    for k, phase in enumerate(phases):
        cols = _stripe(stacked, k, margin_A=1.0)(x)
        assert (stacked.phase_labels[:, cols] == PHASES.index(phase) + 1).all()
    assert len(stacked.defects) == 12
    stripe_of = np.minimum((stacked.defects.x_A / (stacked.extent_xy_A[0] / 6)).astype(int), 5)
    assert (stripe_of != 5).all()  # the 1T stripe is the last one
    assert set(stacked.sites.phase) == set(phases)


def test_stacked_columns_add_in_the_image(stacked):
    """The fast mode adds each layer's columns: a 2H bilayer's two sites are equally bright, a 3R
    trilayer's three, and every stack outshines the monolayer's metal column."""
    image = stacked.clean_image.astype(float)
    sites = stacked.sites
    radius = integration_radius_A(get_parent("MoS2").a_A)
    ps = stacked.pixel_size_A
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]

    def level(k, sublattice):
        pick = sites[(sites.sublattice == sublattice) & _stripe(stacked, k)(sites.x_A.to_numpy())
                     & (sites.defect_class == "")]
        sums = [image[np.hypot(xx * ps[1] - x, yy * ps[0] - y) < radius].sum() for x, y in
                zip(pick.x_A[:8], pick.y_A[:8])]
        return float(np.median(sums))

    one = {s: level(0, s) for s in "MXH"}
    two_2h = {s: level(1, s) for s in "MXH"}
    three_3r = {s: level(4, s) for s in "MXH"}
    assert one["M"] > 1.2 * one["X"] > one["H"]
    assert two_2h["M"] == pytest.approx(two_2h["X"], rel=0.02)
    assert three_3r["M"] == pytest.approx(three_3r["X"], rel=0.02) == pytest.approx(three_3r["H"], rel=0.02)
    assert min(two_2h["M"], three_3r["M"]) > 1.3 * one["M"]


def test_a_stacking_the_parent_cannot_form_is_refused_with_what_it_can():
    with pytest.raises(ValueError, match="2L-3R"):
        TwinRequest(material="MoS2", stacking="1L,4L")
    with pytest.raises(ValueError, match="1T"):
        TwinRequest(material="1T-TiS2", stacking="2L-3R")
    assert parse_stacking("1L, 2L ,1T", get_parent("MoS2")) == ["1L-2H", "2L-2H", "1L-1T"]
    assert parse_stacking("2L", get_parent("1T-TiS2")) == ["2L-1T"]
