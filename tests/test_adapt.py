"""Adaptation with no clicks (issue 28): the network fine-tuned on the user's own image where the calibrated site
physics is sure, everything else left out of the loss; the result kept per image, never in the shipped model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch


def test_unknown_pixels_take_no_part_in_the_loss_or_the_scores():
    """Pixels at IGNORE_LABEL change neither the cross-entropy nor the Dice term, whatever the network says there,
    and are not scored; class weights are counted over known pixels only."""
    import torch.nn.functional as F

    from napari_mx2_defects.learn.train import IGNORE_LABEL, _class_weights, dice_loss, per_class_pixel_metrics

    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 3, (2, 16, 16)))
    target[:, :4] = IGNORE_LABEL
    logits = torch.from_numpy(rng.normal(size=(2, 12, 16, 16)).astype(np.float32))
    other = logits.clone()
    other[:, :, :4] = torch.from_numpy(rng.normal(size=(2, 12, 4, 16)).astype(np.float32)) * 10
    present = torch.zeros(12, dtype=torch.bool)
    present[:3] = True
    for a, b in ((F.cross_entropy(logits, target, ignore_index=IGNORE_LABEL),
                  F.cross_entropy(other, target, ignore_index=IGNORE_LABEL)),
                 (dice_loss(logits, target, present), dice_loss(other, target, present))):
        assert float(a) == pytest.approx(float(b), rel=1e-6)
    weights = _class_weights([target.numpy()])
    assert len(weights) == 12 and weights[0] > 0
    # the metrics' caller drops unknown pixels; a class met only at unknown pixels is not scored
    known = target.numpy().ravel() != IGNORE_LABEL
    assert "V_X" in per_class_pixel_metrics(target.numpy().ravel()[known], target.numpy().ravel()[known])


def test_teaching_takes_only_what_the_physics_is_sure_of():
    """Sure defects are taught, sure intact sites are intact, unsure sites, holes and the model's off-lattice
    detections (which the physics cannot judge) are unknown — and their discs are IGNORE_LABEL in the targets."""
    from napari_mx2_defects.learn.adapt import _teaching
    from napari_mx2_defects.learn.finetune import Correction, correction_targets
    from napari_mx2_defects.learn.train import IGNORE_LABEL

    sites = pd.DataFrame({"x_A": [10.0, 20.0, 30.0, 40.0, 50.0], "y_A": [10.0, 10.0, 10.0, 10.0, 10.0],
                          "defect_class": ["V_X", "TM_D", "", "", "V_M"],
                          "p_class": [0.999, 0.95, 0.995, 0.5, 0.999],
                          "in_hole": [False, False, False, False, True]})
    model = pd.DataFrame({"x_A": [30.0, 35.0], "y_A": [30.0, 35.0], "defect_class": ["V_X", "M_i"]})
    taught, unknown, counts = _teaching(sites, model)
    assert taught.defect_class.tolist() == ["V_X"]
    assert counts == {"defects": {"V_X": 1}, "intact": 1, "unknown_sites": 3, "unknown_off_lattice": 1}
    assert sorted(map(tuple, unknown.to_numpy())) == [(20.0, 10.0), (35.0, 35.0), (40.0, 10.0), (50.0, 10.0)]
    image = np.zeros((300, 300))
    _, labels, _ = correction_targets(Correction(image, 0.2, taught, (0.5, 0.5, 59.5, 59.5), unknown=unknown))
    at = lambda x, y: labels[int(round((y - 0.5) / 0.2)), int(round((x - 0.5) / 0.2))]  # noqa: E731
    assert at(10, 10) == 1 and at(20, 10) == IGNORE_LABEL and at(30, 10) == 0 and at(35, 35) == IGNORE_LABEL


@pytest.mark.slow
def test_adapting_keeps_the_model_for_this_image_and_reuses_it(monkeypatch):
    """A short adaptation on a twin: the model is saved in the cache folder under this image's key (never over
    the shipped model), the agreement before and after is reported, and a second call reuses it without
    training; a different image gets a different folder."""
    import shutil

    import napari_mx2_defects.learn.adapt as adapt_module
    from napari_mx2_defects.learn.adapt import adapt_to_image, adapted_model_folder
    from napari_mx2_defects.learn.checkpoint import default_model_path
    from napari_mx2_defects.learn.finetune import FinetuneConfig
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.calibration import cache_dir
    from napari_mx2_defects.twin.imperfections import Imperfections

    shipped = default_model_path().read_bytes()
    twin = simulate_twin(TwinRequest(material="MoS2", fov_A=60, pixel_size_A=0.2, seed=11, defects="V_X=4%,V_M=1%",
                                     imperfections=Imperfections(dose_e_per_A2=1e6)))
    folder = adapted_model_folder(twin.image, 0.2, "MoS2", None, None, "default")
    assert folder.parent == cache_dir() / "adapted"
    shutil.rmtree(folder, ignore_errors=True)  # a run before this one on the same cache
    trained = []
    real = adapt_module.finetune
    monkeypatch.setattr(adapt_module, "finetune", lambda *a, **k: trained.append(1) or real(*a, **k))
    config = FinetuneConfig(epochs=2, twins=1, steps_per_epoch=5)
    try:
        first = adapt_to_image(twin.image, 0.2, "MoS2", config=config, runtime="torch")
        assert len(trained) == 1 and first.taught["intact"] > 100 and first.agreement_before
        if first.adapted:
            assert first.model == folder / "model.safetensors" and first.model.is_file()
            second = adapt_to_image(twin.image, 0.2, "MoS2", config=config, runtime="torch")
            assert second.reused and second.model == first.model and len(trained) == 1
            assert "→" in second.summary()
        else:  # a model worse on the held-out quarter is not kept: the starting model segments the image
            assert first.model == "default" and "not saved" in first.message
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert default_model_path().read_bytes() == shipped
    assert adapted_model_folder(twin.image[::-1].copy(), 0.2, "MoS2", None, None, "default") != folder


def test_segment_adapt_needs_a_parent_and_dopant_needs_adapt(tmp_path, capsys):
    from napari_mx2_defects.cli.main import main
    from napari_mx2_defects.io.writer import write_calibrated_tiff

    image = tmp_path / "i.tif"
    write_calibrated_tiff(image, np.zeros((32, 32), np.float32), 0.2)
    assert main(["segment", str(image), "--out", str(tmp_path / "o"), "--adapt"]) == 2
    assert "--adapt needs --material" in capsys.readouterr().err
    assert main(["segment", str(image), "--out", str(tmp_path / "o"), "--dopant", "Ti"]) == 2
    assert "add --adapt" in capsys.readouterr().err
