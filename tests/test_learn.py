"""Models, checkpoints, datasets, training and tiled inference."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from napari_mx2_defects.learn.checkpoint import CheckpointError, ModelCard, load_checkpoint, save_checkpoint
from napari_mx2_defects.learn.models import ARCHITECTURES, build_model, pick_device
from napari_mx2_defects.twin.defects import CLASS_NAMES


def _card(arch="light"):
    return ModelCard(architecture=arch, spec=ARCHITECTURES[arch].as_dict(),
                     classes={str(k): v for k, v in CLASS_NAMES.items()}, pixel_size_A=0.2,
                     normalisation="test", training_data={}, command="pytest", metrics={})


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_builds_and_runs(arch):
    model = build_model(arch, len(CLASS_NAMES)).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 64, 64))
    assert out.shape == (1, len(CLASS_NAMES), 64, 64)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = build_model("light", len(CLASS_NAMES))
    path = save_checkpoint(model, _card(), tmp_path / "m.safetensors")
    loaded, card = load_checkpoint(path)
    assert card.architecture == "light" and card.pixel_size_A == 0.2
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    pt = tmp_path / "m.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(CheckpointError, match="only .safetensors"):
        load_checkpoint(pt)
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(pickle.dumps({"a": 1}))
    (tmp_path / "evil.json").write_text((tmp_path / "m.json").read_text())
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(disguised)
    (tmp_path / "m.json").unlink()
    with pytest.raises(CheckpointError, match="card"):
        load_checkpoint(path)


def test_device_choice():
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    assert pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")


def test_tiled_inference_has_no_seams(tmp_path):
    from napari_mx2_defects.learn.inference import segment_image

    torch.manual_seed(0)
    model = build_model("light", len(CLASS_NAMES))
    path = save_checkpoint(model, _card(), tmp_path / "rand.safetensors")
    rng = np.random.default_rng(0)
    image = rng.normal(size=(300, 340)).astype(np.float32)
    whole = segment_image(image, 0.2, model=path, tile=512, overlap=0, return_probabilities=True)
    tiled = segment_image(image, 0.2, model=path, tile=128, overlap=48, return_probabilities=True)
    assert whole.labels.shape == tiled.labels.shape == image.shape
    # blended tiles agree with one whole-image pass away from the image border
    inner = (slice(24, -24), slice(24, -24))
    diff = np.abs(whole.probabilities[:, inner[0], inner[1]] - tiled.probabilities[:, inner[0], inner[1]])
    assert float(diff.mean()) < 0.02


def test_segment_refuses_bad_input(tmp_path):
    from napari_mx2_defects.learn.inference import segment_image

    path = save_checkpoint(build_model("light", len(CLASS_NAMES)), _card(), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="pixel size"):
        segment_image(np.zeros((64, 64)), None, model=path)
    with pytest.raises(ValueError, match="NaN"):
        segment_image(np.full((64, 64), np.nan), 0.2, model=path)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    from napari_mx2_defects.learn.dataset import DatasetSpec, generate_dataset

    out = tmp_path_factory.mktemp("ds") / "tiny.zarr"
    spec = DatasetSpec(parents=["MoS2"], presets=["80kV-25mrad"], size_px=128)
    return generate_dataset(out, 6, spec, seed=3, workers=2)


def test_dataset_is_chunked_zarr_with_metadata(tiny_dataset):
    import zarr

    from napari_mx2_defects.learn.dataset import load_dataset

    root = zarr.open_group(str(tiny_dataset), mode="r")
    assert root["images"].shape == (6, 128, 128) and root["images"].chunks == (1, 128, 128)
    images, labels, metas = load_dataset(tiny_dataset)
    assert labels.max() > 0 and len(metas) == 6
    assert all(m["material"] == "MoS2" and 1e4 <= m["dose_e_per_A2"] <= 1e8 for m in metas)
    assert len({m["seed"] for m in metas}) == 6


def test_training_writes_safetensors_and_card(tiny_dataset, tmp_path):
    from napari_mx2_defects.learn.train import TrainConfig, train

    config = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=2, crop_px=64, patience=5)
    path, history = train(tiny_dataset, tmp_path / "model", config, command="pytest", log=lambda m: None)
    assert path.suffix == ".safetensors" and path.exists()
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["architecture"] == "light" and card["command"] == "pytest"
    assert card["training_data"]["materials"] == ["MoS2"]
    assert len(history["history"]) == 2
    assert "V_X" in history["history"][-1]["val"] or "lattice" in history["history"][-1]["val"]
    load_checkpoint(path)


def test_instance_matching():
    from napari_mx2_defects.learn.evaluate import instance_scores, match_instances

    truth = pd.DataFrame({"x_A": [0.0, 5.0, 10.0], "y_A": [0.0, 0.0, 0.0], "defect_class": ["V_X", "V_X", "V_M"]})
    pred = pd.DataFrame({"x_A": [0.3, 5.0, 20.0], "y_A": [0.0, 1.5, 0.0], "defect_class": ["V_X", "V_X", "V_M"]})
    scores = instance_scores(match_instances(pred, truth)).set_index("defect_class")
    assert scores.loc["V_X", "tp"] == 1 and scores.loc["V_X", "fp"] == 1 and scores.loc["V_X", "fn"] == 1
    assert scores.loc["V_M", "f1"] == 0.0
