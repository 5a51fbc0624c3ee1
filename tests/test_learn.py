"""Models, checkpoints, datasets, training and tiled inference."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


@pytest.mark.slow
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


@pytest.mark.slow
def test_dataset_is_chunked_zarr_with_metadata(tiny_dataset):
    import zarr

    from napari_mx2_defects.learn.dataset import load_dataset

    root = zarr.open_group(str(tiny_dataset), mode="r")
    assert root["images"].shape == (6, 128, 128) and root["images"].chunks == (1, 128, 128)
    images, labels, metas = load_dataset(tiny_dataset)
    assert labels.max() > 0 and len(metas) == 6
    assert all(m["material"] == "MoS2" and 1e4 <= m["dose_e_per_A2"] <= 1e8 for m in metas)
    assert len({m["seed"] for m in metas}) == 6


def test_real_optics_samples_draw_dopants_blur_and_acquisitions():
    """The real-optics dataset: every TM_D is one of the named dopants (never the host), each request
    calibrates all of them with the standard columns (one calibration per parent and microscope), source
    sizes, flyback and denoising are drawn, and the same seed gives the same request."""
    from napari_mx2_defects.learn.dataset import (MICROSCOPE_PRESETS, REAL_DOPANTS, REAL_OPTICS_BANK, DatasetSpec,
                                                  acquire, sample_request)
    from napari_mx2_defects.twin.microscope import OPTICS_PRESETS

    bank = {MICROSCOPE_PRESETS[name].key() for name in REAL_OPTICS_BANK}
    assert {name for name, m in OPTICS_PRESETS.items() if m.key() in bank} == {"80kV-HAADF"}  # the default
    spec = DatasetSpec(parents=["MoS2", "WSe2"], presets=list(REAL_OPTICS_BANK), dopants=REAL_DOPANTS,
                       real_acquisition=True, source_size_range_A=(0.2, 1.0), pixel_size_range_A=(0.12, 0.42))
    requests = [sample_request(spec, seed)[0] for seed in range(60)]
    dopants = [(r.material, d.element) for r in requests for d in r.defect_requests() if d.element]
    assert len({el for _, el in dopants}) >= 4
    assert all(el in REAL_DOPANTS and el != ("Mo" if m == "MoS2" else "W") for m, el in dopants)
    assert all(r.calibration_dopants == REAL_DOPANTS for r in requests)
    assert all(0.2 <= r.microscope.source_size_A <= 1.0 and 0.12 <= r.pixel_size_A <= 0.42 for r in requests)
    assert 10 < sum(r.imperfections.flyback_A > 0 for r in requests) < 50
    assert sample_request(spec, 7)[0] == requests[7]
    image = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    kinds = {acquire(image, np.random.default_rng(seed))[1].split(" ")[0] for seed in range(40)}
    assert kinds == {"", "gaussian", "svd"}
    with pytest.raises(ValueError, match="chemical elements"):
        DatasetSpec(dopants=("Xx",))


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


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), chunk_rows=st.integers(1, 40), density=st.floats(0.02, 0.7))
def test_streamed_regions_equal_whole_image_labelling(seed, chunk_rows, density):
    """Regions found chunk by chunk are exactly the connected regions of the whole label map."""
    from scipy import ndimage

    from napari_mx2_defects.learn.inference import _components

    rng = np.random.default_rng(seed)
    h, w = rng.integers(1, 90, 2)
    labels = ((rng.random((h, w)) < density) * rng.integers(1, 4, (h, w))).astype(np.uint8)
    streamed = sorted((cid, tuple(rr * w + cc)) for cid, rr, cc in _components(labels, [1, 2, 3], chunk_rows))
    whole = []
    for cid in (1, 2, 3):
        regions, n = ndimage.label(labels == cid)
        for k in range(1, n + 1):
            rr, cc = np.nonzero(regions == k)
            whole.append((cid, tuple(rr * w + cc)))
    assert streamed == sorted(whole)


def test_instances_carry_centroid_area_and_confidence():
    from napari_mx2_defects.learn.inference import instances_from_labels

    labels = np.zeros((2100, 40), np.uint8)
    yy, xx = np.mgrid[:2100, :40]
    labels[(yy - 1023.5) ** 2 + (xx - 20) ** 2 <= 25] = 1  # straddles the 1024-row chunk edge
    labels[(yy - 10) ** 2 + (xx - 8) ** 2 <= 25] = 4
    score = np.full(labels.shape, 200, np.uint8)
    found = instances_from_labels(labels, 0.2, score).sort_values("y_A").reset_index(drop=True)
    assert list(found.defect_class) == ["M_X", "V_X"]
    assert found.y_A.tolist() == pytest.approx([10 * 0.2, 1023.5 * 0.2])
    assert found.x_A.tolist() == pytest.approx([8 * 0.2, 20 * 0.2])
    assert found.confidence.tolist() == pytest.approx([200 / 255] * 2)
    assert found.area_A2.tolist() == pytest.approx([(labels == 4).sum() * 0.04, (labels == 1).sum() * 0.04])


def test_resampled_segmentation_keeps_the_image_grid(tmp_path):
    """An image finer than the model's pixel size comes back on its own grid, input untouched."""
    from napari_mx2_defects.learn.inference import segment_image

    torch.manual_seed(1)
    path = save_checkpoint(build_model("light", len(CLASS_NAMES)), _card(), tmp_path / "m.safetensors")
    image = np.random.default_rng(2).normal(size=(150, 170)).astype(np.float32)
    before = image.copy()
    seg = segment_image(image, 0.1, model=path, tile=64, overlap=16, return_probabilities=True)
    assert np.array_equal(image, before)
    assert seg.labels.shape == image.shape and seg.labels.dtype == np.uint8
    assert seg.probabilities.shape == (len(CLASS_NAMES), *image.shape)
    total = seg.probabilities.astype(np.float32).sum(0)[2:-2, 2:-2]
    assert np.allclose(total, 1.0, atol=0.02)
    assert set(np.unique(seg.labels)) <= set(CLASS_NAMES)


@pytest.mark.parametrize("factor", [1.0, 0.5, 1.37, 2.0, 0.23])
def test_tiles_resampled_on_the_fly_equal_the_resampled_image(factor):
    """Per-tile resampling gives the whole-image zoom, mirrored past the edges like numpy's pad."""
    from napari_mx2_defects.learn.inference import ModelScaleTiles
    from napari_mx2_defects.learn.preprocess import resample_to

    image = np.random.default_rng(3).normal(size=(97, 131)).astype(np.float32)
    whole = resample_to(image, 0.2 * factor, 0.2, order=1)
    tiles = ModelScaleTiles(image, 0.2 * factor, 0.2)
    assert tiles.shape == whole.shape
    padded = np.pad(whole, ((0, 64), (0, 64)), mode="symmetric")
    for r, c in [(0, 0), (10, 20), (whole.shape[0] - 20, whole.shape[1] - 7), (whole.shape[0] - 1, 0)]:
        np.testing.assert_allclose(tiles(r, c, 48), padded[r : r + 48, c : c + 48], atol=1e-5)


@pytest.mark.parametrize("factor", [1.0, 0.8, 1.6])
def test_tile_normalisation_is_that_of_the_resampled_image(factor):
    from napari_mx2_defects.learn.inference import ModelScaleTiles
    from napari_mx2_defects.learn.preprocess import normalisation_stats, resample_to

    image = np.random.default_rng(4).gamma(2.0, size=(1300, 900)).astype(np.float32)
    expected = normalisation_stats(resample_to(image, 0.2 * factor, 0.2, order=1))
    assert ModelScaleTiles(image, 0.2 * factor, 0.2).normalisation_stats() == pytest.approx(expected, rel=1e-5)


def test_sublattice_check_tile_by_tile_equals_the_whole_image(monkeypatch):
    """The second stage fits the lattice tile by tile on a large image: swapped look-alikes (every empty
    metal site labelled V_XX, every empty X2 column V_M) on a drifting MoS2 twin come back to their
    sublattice's class whether the check runs on one tile or on nine."""
    from napari_mx2_defects.learn import inference
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections

    twin = simulate_twin(TwinRequest(material="MoS2", defects="V_M=1.5%,V_XX=1.5%", fov_A=130.0, pixel_size_A=0.2,
                                     seed=4, imperfections=Imperfections(dose_e_per_A2=1e6,
                                                                         nonlinear_drift_A=0.4)))
    ids = {name: cid for cid, name in CLASS_NAMES.items()}
    swapped = twin.labels.copy()
    swapped[twin.labels == ids["V_M"]] = ids["V_XX"]
    swapped[twin.labels == ids["V_XX"]] = ids["V_M"]
    whole, n_whole = inference.assign_sublattices(swapped, 0.2, twin.image, "MoS2")
    monkeypatch.setattr(inference, "SUBLATTICE_TILE_PX", 230)
    tiled, n_tiled = inference.assign_sublattices(swapped, 0.2, twin.image, "MoS2")
    truth_instances = (twin.defects.defect_class.isin(["V_M", "V_XX"])).sum()
    assert n_whole == n_tiled >= 0.9 * truth_instances
    assert np.array_equal(whole, tiled)
    assert (whole == twin.labels).mean() > 0.999
