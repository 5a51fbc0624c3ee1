"""Dose-response (issue 14, item 5): Fuhr et al.'s eqn. 1 fitted to F1 against dose per class grouping; the
dock, ``evaluate --classes`` and the API give one answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_mx2_defects.core.classes import EVERY_CLASS, class_grouping
from napari_mx2_defects.core.validation import parse_class_groupings
from napari_mx2_defects.learn.dose_response import dose_curve, dose_for, dose_response, fit_dose_curve
from napari_mx2_defects.learn.evaluate import match_instances


@pytest.mark.parametrize("d0, amplitude, alpha", [(0.97, -0.9, 2e4), (0.8, -0.7, 3e3), (1.0, -1.0, 2e5)])
def test_fit_recovers_eqn_1_and_the_enough_dose(d0, amplitude, alpha):
    rng = np.random.default_rng(1)
    doses = np.geomspace(alpha / 30, alpha * 30, 9)
    values = dose_curve(doses, d0, amplitude, alpha) + rng.normal(0, 0.005, len(doses))
    fit = fit_dose_curve(doses, values)
    assert fit[0] == pytest.approx(d0, abs=0.02) and fit[1] == pytest.approx(amplitude, abs=0.05)
    assert fit[2] == pytest.approx(alpha, rel=0.15)
    enough = dose_for(0.9, *fit)
    if d0 <= 0.9:
        assert np.isnan(enough)  # the plateau stays below 0.9: no dose is enough
    else:
        assert dose_curve(enough, *fit) == pytest.approx(0.9, abs=1e-6)
        assert enough == pytest.approx(-alpha * np.log((0.9 - d0) / amplitude), rel=0.2)
    assert np.isnan(fit_dose_curve(doses[:2], values[:2])[0])  # two points fit no curve


def test_groupings_merge_classes_before_matching():
    truth = pd.DataFrame({"x_A": [5.0, 20.0], "y_A": [5.0, 20.0], "defect_class": ["V_X", "V_M"]})
    pred = pd.DataFrame({"x_A": [5.1, 20.1], "y_A": [5.0, 20.0], "defect_class": ["V_XX", "V_M"]})
    f1 = {}
    for n in (1, 3, EVERY_CLASS):
        g = class_grouping(n)
        counts = match_instances(pred.assign(defect_class=pred.defect_class.map(g)),
                                 truth.assign(defect_class=truth.defect_class.map(g)))
        f1[n] = sum(c["tp"] for c in counts.values())
    assert f1 == {1: 2, 3: 2, EVERY_CLASS: 1}  # V_X read as V_XX: right site, wrong class
    assert set(class_grouping(3).values()) == {"X-site defect", "M-site defect", "off-lattice defect"}
    assert parse_class_groupings("1, 3,all") == [1, 3, EVERY_CLASS]
    with pytest.raises(ValueError, match="1 \\(binary\\), 3 \\(by site\\) or all"):
        parse_class_groupings("2")


@pytest.fixture(scope="module")
def small_sweep():
    return dose_response("default", materials=("MoS2",), doses=(3e2, 3e3, 1e6), n_per=1, classes=(1, EVERY_CLASS),
                         fov_A=40.0, seed=30_000)


def test_dose_response_rises_with_dose(small_sweep):
    points = small_sweep.points.set_index(["classes", "defect_class", "dose_e_per_A2"])
    binary = points.loc[(1, "defect")]
    assert binary.f1.loc[1e6] > 0.9 and binary.f1.loc[1e6] > binary.f1.loc[3e2] + 0.2
    assert binary.iou.loc[1e6] > binary.iou.loc[3e2]
    assert (binary.n_images == 1).all()
    # the binary grouping counts every instance the finer one does, so it scores at least as well
    fine = small_sweep.points[small_sweep.points.classes == EVERY_CLASS].groupby("dose_e_per_A2")[["tp"]].sum()
    assert (binary.tp.to_numpy() >= fine.tp.to_numpy()).all()
    fits = small_sweep.fits.set_index(["classes", "defect_class", "metric"])
    assert fits.loc[(1, "defect", "f1")].amplitude < 0  # F1 rises with dose


@pytest.mark.gui
def test_dose_response_from_dock_command_and_api_agree(make_napari_viewer, qtbot, tmp_path):
    from napari_mx2_defects.cli import main
    from napari_mx2_defects.widgets.dose_response import DoseResponseWidget

    assert main(["evaluate", "--materials", "MoS2", "--doses", "3e2,3e3,1e6", "--n", "1", "--classes", "1,all",
                 "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "dose_response.csv")
    api = dose_response("default", materials=("MoS2",), doses=(3e2, 3e3, 1e6), n_per=1, classes=(1, EVERY_CLASS))
    pd.testing.assert_frame_equal(cli, api.points, check_dtype=False, atol=1e-9)
    assert (tmp_path / "cli" / "dose_response.png").stat().st_size > 10_000
    assert main(["evaluate", "--doses", "1e3,1e4", "--classes", "1", "--out", str(tmp_path / "x")]) == 2

    viewer = make_napari_viewer()
    widget = DoseResponseWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.materials.value, widget.doses.value, widget.n_per.value = "MoS2", "3e2,3e3,1e6", 1
    widget.classes.value = "2"
    assert widget.run() is None and "class groupings" in widget.status.value
    widget.classes.value = "1,all"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=300_000)
    pd.testing.assert_frame_equal(widget.response.points, cli, check_dtype=False, atol=1e-9)
    assert widget.table.value["data"] and widget.export_button.enabled
    written = widget.response.save(tmp_path / "dock")
    assert pd.read_csv(written[0]).equals(pd.read_csv(tmp_path / "cli" / "dose_response.csv"))
