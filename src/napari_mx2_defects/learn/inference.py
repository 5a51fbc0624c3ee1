"""Inference: any image size in overlapping tiles with blended stitching, into labels and instances."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from ..twin.defects import CLASS_NAMES
from .checkpoint import ModelCard, default_model_path, load_checkpoint
from .models import pick_device
from .train import normalise, resample_to

__all__ = ["Segmentation", "segment_image", "segment_layer_image", "instances_from_labels", "load_model"]

DEFECTS_COLUMNS = ["x_A", "y_A", "defect_class", "confidence", "area_A2"]


@dataclass
class Segmentation:
    """Result of :func:`segment_image`, at the input image's pixel size."""

    labels: np.ndarray  # class id per pixel
    defects: pd.DataFrame  # x_A, y_A, defect_class, confidence, area_A2
    probabilities: np.ndarray | None  # (n_classes, H, W) when asked for
    card: ModelCard
    device: str


_MODEL_CACHE: dict = {}


def load_model(model: str | Path = "default", device: str = "auto"):
    """A model and its card (``default``: the shipped one); cached per path and device."""
    path = default_model_path() if str(model) == "default" else Path(model)
    dev = pick_device(device)
    key = (str(path), str(dev))
    if key not in _MODEL_CACHE:
        if str(model) == "default" and not path.exists():
            raise FileNotFoundError("the default model is not installed with this package")
        _MODEL_CACHE[key] = load_checkpoint(path, dev)
    return _MODEL_CACHE[key]


def _window(tile: int) -> np.ndarray:
    ramp = np.hanning(tile + 2)[1:-1]
    w = np.outer(ramp, ramp).astype(np.float32)
    return np.maximum(w, 1e-3)


@torch.no_grad()
def _predict_tiled(model, image: np.ndarray, device: torch.device, tile: int, overlap: int,
                   progress: Callable[[float, str], None], cancelled: Callable[[], bool], n_classes: int,
                   keep_probabilities: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Class map, winning-class probability and (optionally) all probabilities, by overlapping
    tiles blended with a Hann window.

    Memory: one band of tile rows is accumulated at a time (n_classes × tile × W floats); the
    outputs are the uint8 labels and a float16 score per pixel, so an 8192² image needs well
    under 2 GB. All probabilities (float16, n_classes × H × W) are kept only on request.
    """
    from ..twin.simulate import Cancelled

    h, w = image.shape
    step = tile - overlap
    pad_h = max(tile, int(np.ceil((h - tile) / step)) * step + tile if h > tile else tile)
    pad_w = max(tile, int(np.ceil((w - tile) / step)) * step + tile if w > tile else tile)

    def tile_at(r: int, c: int) -> np.ndarray:
        """One tile; tiles that run past the image are reflect-padded on their own (no padded copy)."""
        block = image[r : r + tile, c : c + tile]
        if block.shape != (tile, tile):
            block = np.pad(block, ((0, tile - block.shape[0]), (0, tile - block.shape[1])), mode="symmetric")
        return block

    win = _window(tile)
    labels = np.zeros((h, w), np.uint8)
    score = np.zeros((h, w), np.float16)
    probs_out = np.zeros((n_classes, h, w), np.float16) if keep_probabilities else None
    rows = list(range(0, pad_h - tile + 1, step))
    cols = list(range(0, pad_w - tile + 1, step))
    total = len(rows) * len(cols)
    done = 0
    # process one band of rows at a time: the band's accumulator is n_classes × tile × W
    carry = None
    for r_index, r in enumerate(rows):
        if cancelled():
            raise Cancelled("segmentation cancelled")
        band = np.zeros((n_classes, tile, pad_w), np.float32)
        weight = np.zeros((tile, pad_w), np.float32)
        batch = np.stack([tile_at(r, c) for c in cols])[:, None]
        for start in range(0, len(batch), 8):
            x = torch.from_numpy(batch[start : start + 8]).to(device)
            p = model(x).softmax(1).float().cpu().numpy()
            for k, c in enumerate(cols[start : start + 8]):
                band[:, :, c : c + tile] += p[k] * win
                weight[:, c : c + tile] += win
        done += len(cols)
        progress(done / total, f"tile {done}/{total}")
        if carry is not None:  # add the overlapping part of the previous band
            band[:, :overlap] += carry[0]
            weight[:overlap] += carry[1]
        carry = (band[:, step:], weight[step:]) if r_index < len(rows) - 1 else None
        final_rows = step if carry is not None else tile
        top = r
        bottom = min(h, r + final_rows)
        if top >= h:
            break
        prob = band[:, : bottom - top, :w] / weight[None, : bottom - top, :w]
        labels[top:bottom] = prob.argmax(0).astype(np.uint8)
        score[top:bottom] = prob.max(0).astype(np.float16)
        if probs_out is not None:
            probs_out[:, top:bottom] = prob.astype(np.float16)
        if carry is not None:
            carry = (carry[0].copy(), carry[1].copy())
    return labels, score, probs_out


def instances_from_labels(labels: np.ndarray, pixel_size_A: float, score: np.ndarray | None = None,
                          min_area_A2: float = 0.6) -> pd.DataFrame:
    """One defect per connected region of a class: centroid (Å), class, mean probability, area.

    ``score`` is the probability of the predicted class per pixel; regions smaller than
    ``min_area_A2`` (a fifth of a 0.95 Å ground-truth disc) are dropped as speckle.
    """
    rows = []
    for cid, name in CLASS_NAMES.items():
        if cid == 0:
            continue
        mask = labels == cid
        if not mask.any():
            continue
        regions, n = ndimage.label(mask)
        index = np.arange(1, n + 1)
        areas = ndimage.sum(mask, regions, index) * pixel_size_A**2
        centres = ndimage.center_of_mass(mask, regions, index)
        conf = (ndimage.mean(score.astype(np.float32), regions, index) if score is not None
                else np.full(n, np.nan))
        for (cy, cx), area, c in zip(centres, areas, conf):
            if area < min_area_A2:
                continue
            rows.append({"x_A": cx * pixel_size_A, "y_A": cy * pixel_size_A, "defect_class": name,
                         "confidence": float(c), "area_A2": float(area)})
    return pd.DataFrame(rows, columns=DEFECTS_COLUMNS)


#: Classes that look alike on the two sublattices (an empty column; a single chalcogen), keyed by
#: class → (sublattice it belongs to, its look-alike on the other sublattice).
SUBLATTICE_TWINS = {"V_M": ("M", "V_XX"), "V_XX": ("X", "V_M"), "X_M": ("M", "V_X"), "V_X": ("X", "X_M")}


def assign_sublattices(labels: np.ndarray, pixel_size_A: float, image: np.ndarray, material: str,
                       beam_energy_keV: float | None = None) -> tuple[np.ndarray, int]:
    """Second stage: give sublattice look-alikes the class of the sublattice they sit on.

    Where metal and chalcogen columns are about equally bright (MoSe2: Mo Z=42, Se2 2×34), an empty
    metal site and an empty X2 site look the same and the network cannot tell the sublattices
    apart. The site analysis can — it fits the lattice and decides which sublattice is the metal
    from a forward model of the named parent — so each look-alike instance takes the class of the
    sublattice under its centroid.

    Returns
    -------
    labels, n_changed
    """
    from ..analysis.sites import measure_sites, reference_levels
    from ..twin.parents import get_parent

    parent = get_parent(material)
    energy = float(beam_energy_keV) if beam_energy_keV else 80.0
    _, m_brighter = reference_levels(parent.key, round(float(pixel_size_A), 4), energy, None)
    sites = measure_sites(image, parent.a_A / pixel_size_A, m_brighter, border_px=0.0).sites
    tree = cKDTree(sites[["x_px", "y_px"]].to_numpy())
    nn_px = parent.a_A / np.sqrt(3) / pixel_size_A
    out = labels.copy()
    changed = 0
    ids = {name: cid for cid, name in CLASS_NAMES.items()}
    for name, (sub, other) in SUBLATTICE_TWINS.items():
        regions, n = ndimage.label(labels == ids[name])
        if n == 0:
            continue
        centres = np.array(ndimage.center_of_mass(labels == ids[name], regions, np.arange(1, n + 1)))
        d, idx = tree.query(centres[:, ::-1])
        for k in range(n):
            if d[k] < 0.5 * nn_px and sites.sublattice.iat[idx[k]] != sub:
                out[regions == k + 1] = ids[other]
                changed += 1
    return out, changed


def segment_image(image: np.ndarray, pixel_size_A: float | None, model: str | Path = "default",
                  device: str = "auto", tile: int = 256, overlap: int = 64, return_probabilities: bool = False,
                  material: str | None = None, beam_energy_keV: float | None = None,
                  progress: Callable[[float, str], None] = lambda f, m: None,
                  cancelled: Callable[[], bool] = lambda: False) -> Segmentation:
    """Segment a HAADF image of any size.

    The image is resampled to the model's pixel size, normalised as in training, predicted in
    overlapping tiles blended with a Hann window, and the labels resampled back. With
    ``material`` the sublattice of each empty-site or single-chalcogen instance is checked against
    the fitted lattice (:func:`assign_sublattices`).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"expected one 2-D image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise ValueError("the image holds NaN/inf pixels; crop or fill them before segmenting")
    if pixel_size_A is None or not (pixel_size_A > 0):
        raise ValueError("the image has no pixel size: give one in Å (or self-calibrate with the analysis)")
    net, card = load_model(model, device)
    dev = next(net.parameters()).device
    work = normalise(resample_to(img, pixel_size_A, card.pixel_size_A, order=1))
    n_classes = len(card.classes)
    labels_m, score_m, probs_m = _predict_tiled(net, work, dev, tile, overlap, progress, cancelled, n_classes,
                                                return_probabilities)
    if material:
        model_scale_image = resample_to(img, pixel_size_A, card.pixel_size_A, order=1)
        labels_m, _ = assign_sublattices(labels_m, card.pixel_size_A, model_scale_image, material, beam_energy_keV)
    instances = instances_from_labels(labels_m, card.pixel_size_A, score_m)
    labels = resample_to(labels_m, card.pixel_size_A, pixel_size_A, order=0)[: img.shape[0], : img.shape[1]]
    if labels.shape != img.shape:
        labels = np.pad(labels, ((0, img.shape[0] - labels.shape[0]), (0, img.shape[1] - labels.shape[1])))
    probabilities = None
    if return_probabilities:
        probabilities = np.stack([resample_to(p.astype(np.float32), card.pixel_size_A, pixel_size_A, order=1)
                                  [: img.shape[0], : img.shape[1]] for p in probs_m])
    return Segmentation(labels=labels.astype(np.uint8), defects=instances, probabilities=probabilities, card=card,
                        device=str(dev))


def segment_layer_image(image: np.ndarray, pixel_size_A: float, **kwargs) -> Segmentation:
    """What the demo calls: :func:`segment_image` with the shipped model."""
    return segment_image(image, pixel_size_A, **kwargs)
