"""Real napari viewers: the reader as a user opens files, and both dock widgets with their workers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gui


def _wait_for_job(qtbot, widget, timeout: int) -> None:
    """Wait until the widget's job has finished and its callbacks ran on the GUI thread.

    Race-free, unlike waiting on ``worker.finished`` after the worker has started: a job that
    fails at once (an absent device) can finish before such a wait connects. The runner's own
    ``finished`` callback is connected before the worker starts and clears ``runner.worker``.
    """
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=timeout)


def test_open_through_the_plugin_sets_scale_in_angstrom(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    path = shared_data / "formats/openNCEM/dmTest_float32_nonSquare_diffPixelSize.dm3"
    layers = viewer.open(path, plugin="napari-mx2-defects")
    assert len(layers) == 1
    assert tuple(layers[0].scale) == pytest.approx((2.0, 10.0))
    assert layers[0].metadata["calibrated"] is True
    stack = viewer.open(shared_data / "formats/rosettasciio/tia/old/03_Scanning Preview.emi",
                        plugin="napari-mx2-defects")[0]
    assert stack.ndim == 3 and tuple(stack.scale[-2:]) == pytest.approx((3.84352, 3.84352), rel=1e-4)


def test_truncated_file_errors_and_viewer_survives(make_napari_viewer, shared_data, tmp_path):
    viewer = make_napari_viewer()
    good = viewer.open(shared_data / "formats/rosettasciio/mrc/HAADFscan.mrc", plugin="napari-mx2-defects")[0]
    bad = tmp_path / "cut.dm4"
    bad.write_bytes((shared_data / "formats/openNCEM/dmTest_float32_nonSquare_diffPixelSize.dm4").read_bytes()[:900])
    with pytest.raises(Exception, match="cut.dm4"):
        viewer.open(bad, plugin="napari-mx2-defects")
    assert good in viewer.layers and len(viewer.layers) == 1
    viewer.add_image(np.zeros((4, 4)))  # still alive
    assert len(viewer.layers) == 2


def test_uncalibrated_file_opens_with_unit_scale(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    path = tmp_path / "raw.npy"
    np.save(path, np.ones((30, 40)))
    with pytest.warns(UserWarning, match="no calibration"):
        layer = viewer.open(path, plugin="napari-mx2-defects")[0]
    assert tuple(layer.scale) == (1.0, 1.0) and layer.metadata["calibrated"] is False


def test_sample_data_and_writers(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-mx2-defects", "mos2_twin")
    kinds = sorted(type(layer).__name__ for layer in layers)
    assert kinds == ["Image", "Labels", "Points"]
    labels = next(layer for layer in layers if type(layer).__name__ == "Labels")
    points = next(layer for layer in layers if type(layer).__name__ == "Points")
    out = labels.save(str(tmp_path / "labels.tif"), plugin="napari-mx2-defects")
    reopened = viewer.open(out[0], plugin="napari-mx2-defects")[0]
    assert type(reopened).__name__ == "Labels"  # saved results come back as what they were
    assert tuple(reopened.scale) == pytest.approx(tuple(labels.scale), rel=1e-4)
    np.testing.assert_array_equal(np.asarray(reopened.data), np.asarray(labels.data))
    csv = points.save(str(tmp_path / "defects.csv"), plugin="napari-mx2-defects")
    table = pd.read_csv(csv[0])
    assert {"x_A", "y_A", "defect_class"} <= set(table.columns)
    assert len(table) == len(points.data) == 13
    back = viewer.open(csv[0], plugin="napari-mx2-defects")[0]
    assert type(back).__name__ == "Points" and len(back.data) == 13
    np.testing.assert_allclose(np.asarray(back.data), np.asarray(points.data) * points.scale + points.translate)
    assert list(back.features.defect_class) == list(points.features.defect_class)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(Exception, match="other.csv"):  # not ours: napari says no reader, nothing opens
        viewer.open(other, plugin="napari-mx2-defects")


def test_simulate_widget_runs_in_a_worker(make_napari_viewer, qtbot):
    from napari_mx2_defects.widgets.simulate import SimulateWidget

    viewer = make_napari_viewer()
    widget = SimulateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.fov_A.value = 25.0
    widget.defects.value = "V_X=3,V_M=1"
    assert widget.run() is not None  # a worker started
    _wait_for_job(qtbot, widget, timeout=300_000)
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=10_000)
    image = viewer.layers[0]
    assert image.metadata["calibrated"] and tuple(image.scale) == pytest.approx((0.1, 0.1), rel=0.02)
    points = viewer.layers[2]
    assert sorted(points.features.defect_class) == ["V_M", "V_X", "V_X", "V_X"]
    assert "done" in widget.status.value


def test_simulate_widget_cancel_adds_nothing(make_napari_viewer, qtbot):
    from napari_mx2_defects.widgets.simulate import SimulateWidget

    viewer = make_napari_viewer()
    widget = SimulateWidget(viewer)
    widget.method.value = "multislice"
    widget.fov_A.value = 30.0
    progressed = []
    assert widget.run() is not None  # a worker started
    widget.runner._bridge.progressed.connect(lambda f, m: progressed.append(f))
    assert widget.cancel_button.enabled
    widget.cancel_button.native.click()
    _wait_for_job(qtbot, widget, timeout=300_000)
    qtbot.wait(50)
    assert len(viewer.layers) == 0
    assert "cancelled" in widget.status.value
    assert widget.run_button.enabled


def test_simulate_widget_reports_bad_input(make_napari_viewer, qtbot):
    from napari_mx2_defects.widgets.simulate import SimulateWidget

    viewer = make_napari_viewer()
    widget = SimulateWidget(viewer)
    widget.defects.value = "nonsense"
    assert widget.run() is None
    assert "cannot read defect" in widget.status.value
    # an impossible count is only known once the lattice is built: it ends as a message, no layer
    widget.defects.value = "V_X=99999"
    widget.fov_A.value = 10.0
    assert widget.run() is not None  # a worker started
    _wait_for_job(qtbot, widget, timeout=60_000)
    qtbot.wait(50)
    assert "impossible defect list" in widget.status.value
    assert len(viewer.layers) == 0


def test_statistics_widget_analyses_and_exports(make_napari_viewer, qtbot, tmp_path):
    from napari_mx2_defects.sample_data import make_mos2_twin
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    viewer = make_napari_viewer()
    for data, kwargs, kind in make_mos2_twin():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = StatisticsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.image_layer.value == "MoS2 twin HAADF"
    n_layers = len(viewer.layers)
    assert widget.run() is not None and widget.cancel_button.enabled  # Cancel: nothing is added
    widget.cancel_button.native.click()
    _wait_for_job(qtbot, widget, timeout=300_000)
    qtbot.wait(50)
    assert widget.status.value.startswith("cancelled") and widget.result is None, widget.status.value
    assert len(viewer.layers) == n_layers and not widget.cancel_button.enabled
    assert widget.run() is not None  # a worker started
    _wait_for_job(qtbot, widget, timeout=300_000)
    qtbot.waitUntil(lambda: widget.result is not None, timeout=10_000)
    assert viewer.layers[-1].name.endswith("sites")
    assert len(widget.figure.axes) == 2
    shown = widget.result.concentrations
    assert list(widget.table.column_headers) == ["class", "count", "per cm²", "95 % interval"]  # numbers in the dock
    assert [int(v) for v in widget.table["count"]] == shown["count"].tolist()
    assert list(widget.table["class"]) == shown["defect_class"].tolist()
    csv = widget.export(tmp_path / "csv", kind="csv")
    assert sorted(p.name for p in csv) == ["concentrations.csv", "lattice.json", "sites.csv"]
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["concentrations.csv", "lattice.json", "sites.csv"]
    png = widget.export(tmp_path / "png", kind="png")
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["concentrations.png", "histogram.png",
                                                                   "statistics_panel.png"] and len(png) == 3
    table = pd.read_csv(tmp_path / "csv" / "concentrations.csv")
    assert table["count"].tolist() == shown["count"].tolist()
    assert table.per_cm2.to_numpy() == pytest.approx(shown.per_cm2.to_numpy())
    assert (tmp_path / "png" / "statistics_panel.png").stat().st_size > 5000
    with pytest.raises(FileExistsError):  # nothing is replaced without asking
        widget.export(tmp_path / "png", kind="png")
    assert len(widget.export(tmp_path / "png", kind="png", overwrite=True)) == 3


def test_demo_main_job_end_to_end(tmp_path):
    """What `scripts/demo.sh` runs: twin → reader → segmentation → analysis, screenshot and CSVs."""
    from napari_mx2_defects.demo import run_demo

    summary = run_demo(tmp_path / "demo", fov_A=50.0, defects="V_X=12,V_XX=4,V_M=3")
    out = tmp_path / "demo"
    for name in ("screenshot.png", "layers.json", "summary.json", "analysis/sites.csv", "analysis/concentrations.csv",
                 "analysis/histogram.png", "twin/image.tif", "twin/truth.csv"):
        assert (out / name).exists(), name
    from imageio.v3 import imread

    shot = imread(out / "screenshot.png")
    assert shot[..., :3].std() > 10  # a rendered image, not a black GL failure
    assert summary["lattice"]["a_A"] == pytest.approx(3.1841, rel=0.01)
    with pytest.raises(FileExistsError):
        run_demo(out)


def test_find_defects_widget(make_napari_viewer, qtbot):
    import torch

    from napari_mx2_defects.sample_data import make_mos2_twin
    from napari_mx2_defects.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    for data, kwargs, kind in make_mos2_twin():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    n_before = len(viewer.layers)
    if not torch.cuda.is_available():  # a chosen device that is absent: a message, no layer
        widget.device.value = "cuda"
        assert widget.run() is not None  # a worker started
        _wait_for_job(qtbot, widget, timeout=300_000)
        qtbot.wait(50)
        assert "no CUDA GPU" in widget.status.value and len(viewer.layers) == n_before
        widget.device.value = "auto"
    assert widget.run() is not None  # a worker started
    _wait_for_job(qtbot, widget, timeout=300_000)
    qtbot.waitUntil(lambda: len(viewer.layers) == n_before + 2, timeout=60_000)
    labels, points = viewer.layers[-2], viewer.layers[-1]
    assert type(labels).__name__ == "Labels" and tuple(labels.scale) == pytest.approx(tuple(viewer.layers[0].scale))
    names = dict(zip(labels.features["index"], labels.features["class"], strict=True))
    assert names[1] == "V_X" and names[3] == "V_M"
    assert labels.features["color"].str.match("#[0-9a-f]{8}$").all()
    assert {"defect_class", "confidence", "area_A2"} <= set(points.features.columns)
    assert (points.features.defect_class == "V_X").sum() >= 5


def test_find_defects_widget_and_cli_agree_on_a_frame_stack(make_napari_viewer, qtbot, tmp_path):
    """One input policy (issue 13): a stack is summed by the widget as by ``segment``; the first
    frame alone (a flat frame here) would find nothing."""
    import tifffile

    from napari_mx2_defects.cli import main
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections
    from napari_mx2_defects.widgets.segment import SegmentWidget

    twin = simulate_twin(TwinRequest(material="MoS2", fov_A=40, pixel_size_A=0.1, defects="V_X=4,V_M=1", seed=5,
                                     imperfections=Imperfections(dose_e_per_A2=1e6)))
    frames = np.stack([np.full_like(twin.image, twin.image.mean()), twin.image]).astype(np.float32)
    path = tmp_path / "series.tif"
    tifffile.imwrite(path, frames, imagej=True, resolution=(1 / 0.01, 1 / 0.01),
                     metadata={"unit": "nm", "axes": "ZYX"})
    assert main(["segment", str(path), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "defects.csv")
    assert len(cli) >= 4

    viewer = make_napari_viewer()
    layer = viewer.open(path, plugin="napari-mx2-defects")[0]
    assert layer.ndim == 3 and viewer.dims.current_step[0] == 0  # the flat frame is the one shown
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.run() is not None
    _wait_for_job(qtbot, widget, timeout=300_000)
    qtbot.waitUntil(lambda: type(viewer.layers[-1]).__name__ == "Points", timeout=60_000)
    points = viewer.layers[-1]
    gui = pd.DataFrame({"y_A": points.data[:, -2], "x_A": points.data[:, -1],
                        "defect_class": points.features.defect_class.to_numpy()})
    assert sorted(gui.defect_class) == sorted(cli.defect_class)
    np.testing.assert_allclose(gui.sort_values(["x_A", "y_A"])[["x_A", "y_A"]].to_numpy(),
                               cli.sort_values(["x_A", "y_A"])[["x_A", "y_A"]].to_numpy(), atol=1e-6)


def test_pickers_follow_the_layer_list(make_napari_viewer):
    """Docks opened before any layer fill their pickers as layers arrive, follow renames, and a layer
    deleted behind a picker gives a message instead of a KeyError (issue 13)."""
    from napari_mx2_defects.widgets.segment import SegmentWidget
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    viewer = make_napari_viewer()
    segment, statistics = SegmentWidget(viewer), StatisticsWidget(viewer)
    assert not segment.image_layer.choices
    assert viewer.scale_bar.visible
    image = viewer.add_image(np.zeros((64, 64)), name="scan", scale=(0.2, 0.2), metadata={"calibrated": True})
    points = viewer.add_points(np.zeros((1, 2)), name="picked", features={"defect_class": ["V_X"]})
    viewer.add_shapes([np.array([[0, 0], [0, 5], [5, 5], [5, 0]])], name="area")
    assert segment.image_layer.choices == ("scan",) and statistics.image_layer.choices == ("scan",)
    assert "picked" in statistics.defects_layer.choices and "area" in statistics.regions_layer.choices
    image.name = "scan 2"
    assert segment.image_layer.choices == ("scan 2",) and statistics.image_layer.value == "scan 2"
    statistics.defects_layer.value = "picked"
    viewer.layers.remove(points)
    assert "picked" not in statistics.defects_layer.choices
    segment.image_layer.value = "scan 2"
    viewer.layers.remove(image)
    assert segment.run() is None and "open an image first" in segment.status.value
    assert segment._layer("gone", "image") is None and "no longer in the viewer" in segment.status.value


def test_docked_pickers_survive_napari_reset_choices(make_napari_viewer):
    """Docked, napari calls reset_choices on layer changes; the pickers used to fall back to the lists
    they were built with (empty, or "(none)" with Points and Shapes present)."""
    from napari_mx2_defects.widgets.segment import SegmentWidget
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    viewer = make_napari_viewer()
    segment, statistics = SegmentWidget(viewer), StatisticsWidget(viewer)
    viewer.window.add_dock_widget(segment)
    viewer.window.add_dock_widget(statistics)
    viewer.add_image(np.zeros((64, 64)), name="scan", scale=(0.2, 0.2), metadata={"calibrated": True})
    viewer.add_points(np.zeros((1, 2)), name="picked", features={"defect_class": ["V_X"]})
    for widget in (segment, statistics):
        widget.reset_choices()  # what napari does to docked magicgui widgets
    assert segment.image_layer.choices == ("scan",) and statistics.image_layer.choices == ("scan",)
    assert "picked" in statistics.defects_layer.choices


def test_statistics_widget_says_when_the_calibration_is_wrong(make_napari_viewer, qtbot):
    """A 40 % wrong pixel size used to show only "a = 4.34 Å"; the dock now says what the CLI says."""
    from napari_mx2_defects.sample_data import make_mos2_twin
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    viewer = make_napari_viewer()
    data, kwargs, _ = make_mos2_twin()[0]
    kwargs = {**kwargs, "scale": tuple(1.4 * s for s in kwargs["scale"])}
    viewer.add_image(data, **kwargs)
    widget = StatisticsWidget(viewer)
    assert widget.run() is not None
    _wait_for_job(qtbot, widget, timeout=300_000)
    qtbot.waitUntil(lambda: widget.result is not None, timeout=10_000)
    assert "+40 % off" in widget.status.value and "pixel size" in widget.status.value
    assert any("+40 % off" in note for note in widget.result.notes)


@pytest.mark.parametrize("case", ["origin offset", "uncalibrated, pixel typed in"])
def test_overlays_land_on_the_image(make_napari_viewer, qtbot, case):
    """Defect points and labels sit on the image in world coordinates: a Velox-like origin offset
    (−76.8 Å) or an uncalibrated layer with the pixel size typed in (issue 13: they used to drift)."""
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections
    from napari_mx2_defects.widgets.segment import SegmentWidget

    twin = simulate_twin(TwinRequest(material="MoS2", fov_A=40, pixel_size_A=0.1, defects="V_X=4,V_M=1", seed=5,
                                     imperfections=Imperfections(dose_e_per_A2=1e6)))
    viewer = make_napari_viewer()
    if case == "origin offset":
        image = viewer.add_image(twin.image, name="scan", scale=(0.1, 0.1), translate=(-76.8, -76.8),
                                 metadata={"calibrated": True})
    else:
        image = viewer.add_image(twin.image, name="scan", metadata={"calibrated": False})
    widget = SegmentWidget(viewer)
    widget.image_pixel_size_A.value = 0.1
    assert widget.run() is not None
    _wait_for_job(qtbot, widget, timeout=300_000)
    qtbot.waitUntil(lambda: type(viewer.layers[-1]).__name__ == "Points", timeout=60_000)
    labels, points = viewer.layers[-2], viewer.layers[-1]
    world = np.asarray(points.data) * points.scale + points.translate
    truth = twin.defects[["y_A", "x_A"]].to_numpy()  # Å from the image origin
    expected = truth / 0.1 * np.asarray(image.scale) + np.asarray(image.translate)
    per_A = image.scale[0] / 0.1  # world units per Å
    nearest = np.min(np.linalg.norm(world[:, None, :] - expected[None, :, :], axis=2), axis=1)
    assert len(world) >= 4 and np.all(nearest < 1.0 * per_A), nearest
    np.testing.assert_allclose(labels.translate, image.translate)
    np.testing.assert_allclose(labels.scale, image.scale)
    # a labelled pixel in world coordinates is where a point is
    i, j = np.argwhere(np.asarray(labels.data) > 0)[0]
    assert np.min(np.linalg.norm(world - (np.array([i, j]) * labels.scale + labels.translate), axis=1)) < 1.5 * per_A


def _analysis_input(case: str, tmp_path):
    """The same twin as a frame stack (flat frame shown first), a non-square calibrated TIFF and an
    uncalibrated TIFF, with the CLI options and the dock's field values that ask for the same thing."""
    import tifffile

    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections

    twin = simulate_twin(TwinRequest(material="MoS2", fov_A=40, pixel_size_A=0.1, defects="V_X=4,V_M=1", seed=5,
                                     imperfections=Imperfections(dose_e_per_A2=1e6)))
    image = twin.image.astype(np.float32)
    path = tmp_path / f"{case.replace(' ', '_')}.tif"
    if case == "frame stack":  # the detector typed in too: 40–200 mrad in both
        frames = np.stack([np.full_like(image, image.mean()), image])
        tifffile.imwrite(path, frames, imagej=True, resolution=(1 / 0.01, 1 / 0.01),
                         metadata={"unit": "nm", "axes": "ZYX"})
        return path, ["--detector", "40", "200"], {"detector_inner_mrad": 40.0, "detector_outer_mrad": 200.0}
    if case == "non-square":
        tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.01, 1 / 0.011), metadata={"unit": "nm"})
        return path, [], {}
    tifffile.imwrite(path, image)
    return path, ["--self-calibrate"], {"self_calibrate": True}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["frame stack", "non-square", "uncalibrated"])
def test_statistics_dock_and_analyze_agree(make_napari_viewer, qtbot, tmp_path, capsys, case):
    """One file through the *Defect statistics* dock and through ``analyze`` (issue 13): the same pixel
    size, sites and counts, or the same refusal."""
    import json

    from napari_mx2_defects.cli import main
    from napari_mx2_defects.widgets.statistics import StatisticsWidget

    path, options, fields = _analysis_input(case, tmp_path)
    out = tmp_path / "cli"
    rc = main(["analyze", str(path), "--material", "MoS2", "--out", str(out), "--quiet", *options])
    captured = capsys.readouterr()
    cli_error, cli_printed = captured.err, captured.out

    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-mx2-defects")
    widget = StatisticsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    for name, value in fields.items():
        getattr(widget, name).value = value
    worker = widget.run()
    if case == "non-square":
        assert rc != 0 and worker is None
        assert "non-square pixels (0.11 Å × 0.1 Å)" in cli_error
        assert "non-square pixels (0.11 Å × 0.1 Å)" in widget.status.value
        return
    assert rc == 0 and worker is not None
    _wait_for_job(qtbot, widget, timeout=300_000)
    qtbot.waitUntil(lambda: widget.result is not None, timeout=10_000)
    lattice = json.loads((out / "lattice.json").read_text())
    shown = widget.result.lattice
    assert shown["pixel_size_A"] == pytest.approx(lattice["pixel_size_A"], rel=1e-9)
    assert shown["self_calibrated"] == lattice["self_calibrated"] == (case == "uncalibrated")
    assert (shown["n_M_sites"], shown["n_X_sites"]) == (lattice["n_M_sites"], lattice["n_X_sites"])
    assert shown["fitted_optics"] == lattice["fitted_optics"]  # the same fit, and the dock says what it fitted
    assert widget.result.optics_summary() in widget.status.value.splitlines()
    assert widget.result.optics_summary() in cli_printed.splitlines()
    if case == "frame stack":
        assert shown["pixel_size_A"] == pytest.approx(0.1)
        used = widget.result.lattice["fitted_optics"]["forward_model_microscope"]
        assert (used["detector_inner_mrad"], used["detector_outer_mrad"]) == (40.0, 200.0)
    sites = pd.read_csv(out / "sites.csv")
    assert len(sites) == len(widget.result.sites)
    np.testing.assert_allclose(np.sort(sites.x_A), np.sort(widget.result.sites.x_A), atol=1e-6)
    cli_counts = pd.read_csv(out / "concentrations.csv")
    assert cli_counts["count"].tolist() == widget.result.concentrations["count"].tolist()
    assert cli_counts.defect_class.tolist() == widget.result.concentrations.defect_class.tolist()


def test_large_label_maps_are_added_as_a_multiscale_pyramid(make_napari_viewer):
    """Issue 12: a class map larger than 4096 px is a pyramid of strided views (panning stays smooth),
    whose full-resolution level is the map itself; small maps stay one array."""
    from types import SimpleNamespace

    from napari_mx2_defects.layers import MULTISCALE_FROM_PX, add_layers, segmentation_layers

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((8, 8), np.float32), scale=(0.2, 0.2))
    big = np.zeros((MULTISCALE_FROM_PX + 904, 640), np.uint8)
    big[100:110, 200:210] = 1
    card = SimpleNamespace(architecture="light", classes={0: "lattice", 1: "V_X"})
    defects = pd.DataFrame({"x_A": [41.0], "y_A": [21.0], "defect_class": ["V_X"], "confidence": [0.9],
                            "area_A2": [4.0]})
    seg = SimpleNamespace(labels=big, defects=defects, probabilities=None, card=card)
    labels, points = add_layers(viewer, segmentation_layers(seg, image, 0.2))
    assert labels.multiscale and labels.data[0] is big
    assert [level.shape for level in labels.data] == [(5000, 640), (2500, 320), (1250, 160)]
    assert all(np.shares_memory(level, big) for level in labels.data)
    small = SimpleNamespace(labels=big[:512, :512].copy(), defects=defects, probabilities=None, card=card)
    labels_small, _ = add_layers(viewer, segmentation_layers(small, image, 0.2, name="small"))
    assert not labels_small.multiscale and labels_small.data.shape == (512, 512)


def test_large_images_are_block_mean_pyramids_and_are_analysed_at_full_resolution(make_napari_viewer, tmp_path):
    """Issue 12: a twin image larger than 4096 px is added as a pyramid of 2×2 block means (not strided
    views, which alias a lattice into a moiré), its truth labels as strided views; what the docks read from
    a multiscale layer is its full-resolution level — napari's ``np.asarray`` of multiscale data is the
    *smallest* level, which an analysis would have taken for the image."""
    from types import SimpleNamespace

    from napari_mx2_defects.inputs import image_plane
    from napari_mx2_defects.layers import MULTISCALE_FROM_PX, add_layers, image_pyramid, twin_layers

    rng = np.random.default_rng(0)
    big = rng.random((MULTISCALE_FROM_PX + 904, 2048), dtype=np.float32)
    levels = image_pyramid(big)
    assert levels[0] is big and [lv.shape for lv in levels] == [(5000, 2048), (2500, 1024), (1250, 512)]
    np.testing.assert_allclose(levels[1][3, 5], big[6:8, 10:12].mean(), rtol=1e-6)
    np.testing.assert_allclose(levels[2][1, 1], big[4:8, 4:8].mean(), rtol=1e-6)
    assert image_pyramid(big[:512, :512]) is not None and not isinstance(image_pyramid(big[:512, :512]), list)

    labels = np.zeros(big.shape, np.uint8)
    labels[100:110, 200:210] = 1
    micro = {"energy_keV": 80.0, "semiangle_mrad": 25.0, "detector_inner_mrad": 50.0, "detector_outer_mrad": 200.0}
    twin = SimpleNamespace(image=big, labels=labels, pixel_size_A=(0.1, 0.1),
                           settings={"request": {"microscope": micro}, "parent": {"formula": "MoS2"}},
                           defects=pd.DataFrame({"x_A": [20.5], "y_A": [10.5], "defect_class": ["V_X"],
                                                 "element": ["S"]}))
    viewer = make_napari_viewer()
    image_layer, truth, _ = add_layers(viewer, twin_layers(twin, name="big"))
    assert image_layer.multiscale and truth.multiscale
    assert np.shares_memory(truth.data[1], labels)
    plane, note = image_plane(image_layer.data, image_layer.name)
    assert plane is big and note is None
    assert np.asarray(image_layer.data).shape == (1250, 512)  # napari's own reading: why image_plane takes level 0
    plane, _ = image_plane([big, levels[1]], "a list of levels")
    assert plane is big
    # saving the multiscale truth labels writes the full map, not napari's smallest level
    import tifffile

    from napari_mx2_defects.io.writer import write_labels

    written = write_labels(str(tmp_path / "truth.tif"), truth.data, {"scale": list(truth.scale), "name": truth.name,
                                                                     "metadata": truth.metadata})
    assert tifffile.imread(written[0]).shape == labels.shape
