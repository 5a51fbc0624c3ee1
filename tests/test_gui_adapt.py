"""The docks' side of learning from the user's image (issue 28), in real viewers, the science patched where the
test is about wiring (the science is tested in tests/test_adapt.py and tests/test_finetune.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.gui


def test_find_defects_adapts_to_the_image_when_ticked(make_napari_viewer, qtbot, monkeypatch):
    """The tick box runs the adaptation in the worker with the parent, the dopant and the file's optics, adds the
    adapted model's layers and says the model–physics agreement before and after; without a parent it says what
    to choose and starts nothing."""
    import napari_mx2_defects.learn.adapt as adapt
    from napari_mx2_defects.learn.inference import segment_image
    from napari_mx2_defects.sample_data import make_mos2_twin
    from napari_mx2_defects.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    for data, kwargs, kind in make_mos2_twin():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    image = viewer.layers[0]
    calls = []

    def adapt_to_image(data, pixel, material, **kwargs):
        calls.append((material, kwargs))
        seg = segment_image(data, pixel, material=material)
        agreement = {"V_X": {"model": 4, "physics": 5, "both": 4, "agreement": 0.8}}
        return adapt.AdaptResult("adapted.safetensors", seg, {"V_X": {"model": 0, "physics": 5, "both": 0,
                                                                     "agreement": 0.0}}, agreement, adapted=True)

    monkeypatch.setattr(adapt, "adapt_to_image", adapt_to_image)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_layer.value = image.name
    widget.adapt.value = True
    widget.material.value = "(none)"
    monkeypatch.setitem(image.metadata, "material", None)
    n = len(viewer.layers)
    assert widget.run() is None and "choose the parent" in widget.status.value and len(viewer.layers) == n
    widget.material.value = "2H-MoS2"
    widget.dopant.value = "W"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=120_000)
    qtbot.waitUntil(lambda: len(viewer.layers) == n + 2, timeout=10_000)
    assert calls and calls[0][0] == "2H-MoS2" and calls[0][1]["dopant"] == "W"
    assert calls[0][1]["optics"] == image.metadata.get("optics")
    assert "model–physics agreement 0.00 → 0.80" in widget.status.value
    assert widget.adaptation is not None and type(viewer.layers[-1]).__name__ == "Points"


def test_finetune_dock_says_a_worse_model_was_not_saved(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """When fine-tuning comes out worse on the held-out part, the dock says so, keeps the folder as it was and
    adds no layer (the command exits 3: tests/test_finetune.py)."""
    import napari_mx2_defects.learn.finetune as ft
    from napari_mx2_defects.layers import add_layers, twin_layers
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections
    from napari_mx2_defects.widgets.finetune import FinetuneWidget

    seen = {}

    def worse(corrections, material, out, **kwargs):
        seen.update(kwargs)
        why = "not saved: on the held-out part the fine-tuned model is worse than default_model.safetensors"
        return None, {"held_out": {}, "history": [], "mean_f1": {"before": 0.8, "after": 0.6}, "saved": False,
                      "why": why}

    monkeypatch.setattr(ft, "finetune", worse)
    twin = simulate_twin(TwinRequest(material="MoS2", fov_A=40, pixel_size_A=0.2, seed=3, defects="V_X=3%",
                                     imperfections=Imperfections(dose_e_per_A2=1e6)))
    viewer = make_napari_viewer()
    image, _, truth = add_layers(viewer, twin_layers(twin, name="t"))
    dock = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(dock)
    dock.image_layer.value = image.name
    dock.corrections_layer.value = truth.name
    dock.material.value = "2H-MoS2"
    dock.out.value = tmp_path / "tuned"
    n = len(viewer.layers)
    assert dock.run() is not None
    qtbot.waitUntil(lambda: dock.runner.worker is None, timeout=60_000)
    assert "not saved" in dock.status.value and len(viewer.layers) == n
    assert seen["optics"] == dict(image.metadata.get("optics") or {})  # the file's optics, as analyze takes them
    assert seen["microscope"].detector_inner_mrad == pytest.approx(
        (image.metadata.get("optics") or {}).get("detector_inner_mrad", seen["microscope"].detector_inner_mrad))
    assert not (tmp_path / "tuned" / "model.safetensors").exists()
