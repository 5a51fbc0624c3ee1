"""The widgets use the CLI's validation layer (issue 15): same bounds, same one-line messages."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gui


def test_simulate_widget_refuses_what_the_cli_refuses(make_napari_viewer):
    """``--holes`` beyond what the field holds wrote an all-zero image; the widget allowed 50 holes."""
    from napari_mx2_defects.widgets.simulate import SimulateWidget

    widget = SimulateWidget(make_napari_viewer())
    widget.fov_A.value = 40.0
    widget.n_holes.value = 50
    assert widget.run() is None
    assert "beam-damage holes" in widget.status.value and "at most" in widget.status.value
    widget.n_holes.value = 0
    widget.fov_A.value = 1000.0
    widget.pixel_size_A.value = 0.01
    assert widget.run() is None
    assert "pixels" in widget.status.value and "pixel size" in widget.status.value
    widget.fov_A.value, widget.pixel_size_A.value = 40.0, 0.1
    widget.detector_inner_mrad.value, widget.detector_outer_mrad.value = 250.0, 200.0
    assert widget.run() is None
    assert "detector inner" in widget.status.value
