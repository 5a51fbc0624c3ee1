"""Inference: any image size in overlapping tiles with blended stitching, into labels and instances."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from ..core.classes import CLASS_NAMES
from ..core.parameters import DEFAULTS
from ..core.pixels import pixel_size_key
from .checkpoint import ModelCard, default_model_path, load_checkpoint
from .models import pick_device
from .preprocess import (
    needs_resampling,
    normalisation_stats,
    normalise,
    resample_to,
    sample_step,
    stats_of_sample,
)
from .runtime import make_runner

__all__ = ["Segmentation", "instances_from_labels", "load_model", "segment_image", "segment_layer_image"]

DEFECTS_COLUMNS = ["x_A", "y_A", "defect_class", "confidence", "area_A2"]


@dataclass
class Segmentation:
    """Result of :func:`segment_image`, at the input image's pixel size."""

    labels: np.ndarray  # class id per pixel
    defects: pd.DataFrame  # x_A, y_A, defect_class, confidence, area_A2
    probabilities: np.ndarray | None  # float16 (n_classes, H, W) when asked for
    card: ModelCard
    device: str
    runtime: str = "torch"  # what ran the network: a learn.runtime runner's name (torch-bfloat16, openvino-bf16…)


_MODEL_CACHE: dict = {}


def model_path(model: str | Path = "default") -> Path:
    """The weights file ``model`` names (``default``: the shipped one)."""
    return default_model_path() if str(model) == "default" else Path(model)


def load_model(model: str | Path = "default", device: str = "auto"):
    """A model and its card (``default``: the shipped one); cached per path and device."""
    path = model_path(model)
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


def _reflect(index: np.ndarray, n: int) -> np.ndarray:
    """Indices past either end of ``0..n-1`` mirrored back (numpy's "symmetric" padding)."""
    k = np.mod(index, 2 * n)
    return np.where(k < n, k, 2 * n - 1 - k)


class ModelScaleTiles:
    """Tiles of an image at the model's pixel size, resampled on the fly.

    Resampling is linear with scipy's ``zoom(..., order=1, grid_mode=True, mode="nearest")``
    geometry (pixel centres map to pixel centres, the output shape is the rounded input shape ×
    factor), evaluated per tile, so no resampled copy of the whole image is ever held. Tiles that
    run past the image are mirrored ("symmetric" padding).
    """

    def __init__(self, image: np.ndarray, pixel_size_A: float, model_pixel_A: float):
        self.image = image
        h, w = image.shape
        self.resampled = needs_resampling(pixel_size_A, model_pixel_A)
        factor = pixel_size_A / model_pixel_A
        self.shape = (max(1, round(h * factor)), max(1, round(w * factor))) if self.resampled else (h, w)
        self.source_per_model_px = (h / self.shape[0], w / self.shape[1])

    def _source_coordinates(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source-image coordinates (y, x) of model-scale pixel rows and columns."""
        sy, sx = self.source_per_model_px
        return (rows + 0.5) * sy - 0.5, (cols + 0.5) * sx - 0.5

    def __call__(self, r: int, c: int, tile: int) -> np.ndarray:
        """The ``tile`` × ``tile`` block whose top-left model-scale pixel is (r, c), as float32."""
        h_m, w_m = self.shape
        rows, cols = _reflect(np.arange(r, r + tile), h_m), _reflect(np.arange(c, c + tile), w_m)
        if not self.resampled:
            if r + tile <= h_m and c + tile <= w_m:
                return np.asarray(self.image[r : r + tile, c : c + tile], np.float32)
            return np.asarray(self.image[np.ix_(rows, cols)], np.float32)
        y, x = self._source_coordinates(rows, cols)
        h, w = self.image.shape
        y0, x0 = max(0, int(np.floor(y.min()))), max(0, int(np.floor(x.min())))
        y1, x1 = min(h, int(np.floor(y.max())) + 2), min(w, int(np.floor(x.max())) + 2)
        yy, xx = np.meshgrid(y - y0, x - x0, indexing="ij")
        return ndimage.map_coordinates(self.image[y0:y1, x0:x1], [yy, xx], output=np.float32, order=1,
                                       mode="nearest")

    def normalisation_stats(self) -> tuple[float, float]:
        """:func:`~napari_mx2_defects.learn.train.normalisation_stats` of the image at the model's
        pixel size (as in training), from the same strided sample, without resampling the image."""
        if not self.resampled:
            return normalisation_stats(self.image)
        step = sample_step(self.shape)
        y, x = self._source_coordinates(np.arange(0, self.shape[0], step), np.arange(0, self.shape[1], step))
        yy, xx = np.meshgrid(y, x, indexing="ij")
        sample = ndimage.map_coordinates(self.image, [yy, xx], output=np.float32, order=1, mode="nearest")
        return stats_of_sample(sample)


def _predict_tiled(runner: Callable[[np.ndarray], np.ndarray], source: ModelScaleTiles, tile: int,
                   overlap: int, progress: Callable[[float, str], None], cancelled: Callable[[], bool],
                   n_classes: int, keep_probabilities: bool, batch_size: int = 4
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Class map, winning-class probability and (optionally) all probabilities at the model's
    pixel size, by overlapping tiles blended with a Hann window.

    ``runner`` maps a batch of normalised tiles to class probabilities (:mod:`.runtime`). Each tile
    is resampled (:class:`ModelScaleTiles`) and normalised on its own with the whole image's
    statistics, so neither a resampled nor a normalised copy of the image is made.

    Memory: one band of tile rows is accumulated at a time (n_classes × tile × W floats); the
    outputs are the uint8 labels and the winning probability quantised to uint8 (1/255), so the
    outputs of an 8192² image take 134 MB. All probabilities (float16, n_classes × H × W) are
    kept only on request.
    """
    from ..core.jobs import check_cancelled

    h, w = source.shape
    stats = source.normalisation_stats()
    step = tile - overlap
    pad_h = max(tile, int(np.ceil((h - tile) / step)) * step + tile if h > tile else tile)
    pad_w = max(tile, int(np.ceil((w - tile) / step)) * step + tile if w > tile else tile)

    def tile_at(r: int, c: int) -> np.ndarray:
        return normalise(source(r, c, tile), stats)

    win = _window(tile)
    labels = np.zeros((h, w), np.uint8)
    score = np.zeros((h, w), np.uint8)
    probs_out = np.zeros((n_classes, h, w), np.float16) if keep_probabilities else None
    rows = list(range(0, pad_h - tile + 1, step))
    cols = list(range(0, pad_w - tile + 1, step))
    total = len(rows) * len(cols)
    done = 0
    # one band of tile rows at a time: its accumulator is n_classes × tile × W
    band = np.zeros((n_classes, tile, pad_w), np.float32)
    weight = np.zeros((tile, pad_w), np.float32)
    for r_index, r in enumerate(rows):
        for start in range(0, len(cols), batch_size):
            check_cancelled(cancelled, "segmentation")
            chunk = cols[start : start + batch_size]
            p = runner(np.stack([tile_at(r, c) for c in chunk])[:, None])
            for k, c in enumerate(chunk):
                p[k] *= win
                band[:, :, c : c + tile] += p[k]
                weight[:, c : c + tile] += win
            done += len(chunk)
            progress(done / total, f"tile {done}/{total}")
        last_band = r_index == len(rows) - 1
        top = r
        bottom = min(h, r + (tile if last_band else step))  # rows no later band reaches
        if top < h:
            n = bottom - top
            prob = band[:, :n, :w]
            prob /= weight[None, :n, :w]
            labels[top:bottom] = prob.argmax(0)
            score[top:bottom] = np.rint(prob.max(0) * 255)
            if probs_out is not None:
                probs_out[:, top:bottom] = prob
        if last_band or top >= h:
            break
        # the overlap rows carry over to the next band, the rest starts from zero
        band[:, :overlap] = band[:, step:]
        band[:, overlap:] = 0
        weight[:overlap] = weight[step:]
        weight[overlap:] = 0
    return labels, score, probs_out


def _components(labels: np.ndarray, class_ids, chunk_rows: int = 1024):
    """Connected regions of each class, streamed in row chunks so only a chunk is ever labelled.

    Yields ``(class_id, rows, cols)`` (pixel coordinates of one whole region) once per region.
    A region that touches the lower edge of a chunk is left for the next chunk, which starts at
    the first row of such regions; a region the next chunk sees that ends before the previous
    chunk's last row was already yielded (its pixels and connections lie inside that chunk).
    """
    h = labels.shape[0]
    start, prev_stop = 0, 0
    while start < h:
        stop = min(h, max(start + chunk_rows, prev_stop + 1))
        block = labels[start:stop]
        next_start = stop
        for cid in class_ids:
            mask = block == cid
            if not mask.any():
                continue
            regions, _ = ndimage.label(mask)
            for k, sl in enumerate(ndimage.find_objects(regions), start=1):
                if sl is None:
                    continue
                top, bottom = sl[0].start + start, sl[0].stop + start
                if bottom < prev_stop:  # ended inside the previous chunk: already yielded
                    continue
                if stop < h and bottom == stop:  # may go on below: finish it with the next chunk
                    next_start = min(next_start, top)
                    continue
                rr, cc = np.nonzero(regions[sl] == k)
                yield cid, rr + top, cc + sl[1].start
        prev_stop, start = stop, next_start


def instances_from_labels(labels: np.ndarray, pixel_size_A: float, score: np.ndarray | None = None,
                          min_area_A2: float = 0.6) -> pd.DataFrame:
    """One defect per connected region of a class: centroid (Å), class, mean probability, area.

    ``score`` is the probability of the predicted class per pixel (float, or uint8 in 1/255);
    regions smaller than ``min_area_A2`` (a fifth of a 0.95 Å ground-truth disc) are dropped as
    speckle. Regions are found chunk by chunk, so memory does not grow with the image.
    """
    rows = []
    scale = 1 / 255 if score is not None and score.dtype == np.uint8 else 1.0
    for cid, rr, cc in _components(labels, [c for c in CLASS_NAMES if c != 0]):
        area = rr.size * pixel_size_A**2
        if area < min_area_A2:
            continue
        conf = float(score[rr, cc].astype(np.float32).mean() * scale) if score is not None else float("nan")
        rows.append({"x_A": cc.mean() * pixel_size_A, "y_A": rr.mean() * pixel_size_A,
                     "defect_class": CLASS_NAMES[cid], "confidence": conf, "area_A2": float(area)})
    return pd.DataFrame(rows, columns=DEFECTS_COLUMNS)


#: Classes that look alike on the two sublattices (an empty column; a single chalcogen), keyed by
#: class → (sublattice it belongs to, its look-alike on the other sublattice).
SUBLATTICE_TWINS = {"V_M": ("M", "V_XX"), "V_XX": ("X", "V_M"), "X_M": ("M", "V_X"), "V_X": ("X", "X_M")}


#: Most pixels (per side, at the model's scale) the sublattice check fits one lattice on: a larger image is
#: checked tile by tile, each tile with a margin of :data:`SUBLATTICE_MARGIN_PX`.
SUBLATTICE_TILE_PX = 2048
SUBLATTICE_MARGIN_PX = 64


def _tile_edges(n: int, tile: int) -> np.ndarray:
    """Edges of ⌈n / tile⌉ near-equal tiles covering 0…n (no thin remainder a lattice cannot be fitted on)."""
    return np.rint(np.linspace(0, n, max(1, int(np.ceil(n / tile))) + 1)).astype(int)


def assign_sublattices(labels: np.ndarray, pixel_size_A: float, image: np.ndarray, material: str,
                       beam_energy_keV: float | None = None, optics: dict | None = None) -> tuple[np.ndarray, int]:
    """Second stage: give sublattice look-alikes the class of the sublattice they sit on.

    Where metal and chalcogen columns are about equally bright (MoSe2: Mo Z=42, Se2 2×34), an empty
    metal site and an empty X2 site look the same and the network cannot tell the sublattices
    apart. The site analysis can — it fits the lattice and decides which sublattice is the metal
    from a forward model of the named parent — so each look-alike instance takes the class of the
    sublattice under its centroid.

    The sites are measured only where look-alikes are, on tiles of at most :data:`SUBLATTICE_TILE_PX`
    pixels a side (plus a margin): each tile fits its own lattice, which also follows slow scan
    distortion over a large field, and memory stays that of one tile (a whole 8613² image's site
    measurement held several full-size float64 copies).  An image up to that size is one tile.
    Which sublattice is brighter comes from the forward model at the beam energy and the detector the
    file records (``optics``, as the analysis takes it): under an ADF detector W and Se2 columns are
    about equally bright, and the HAADF default would swap them.

    Returns
    -------
    labels, n_changed
    """
    from ..analysis.sites import forward_model, measure_sites, microscope_for
    from ..twin.parents import get_parent

    parent = get_parent(material)
    out = labels.copy()
    ids = {name: cid for cid, name in CLASS_NAMES.items()}
    rule = {ids[name]: (sub, ids[other]) for name, (sub, other) in SUBLATTICE_TWINS.items()}
    found = list(_components(labels, list(rule)))
    if not found:
        return out, 0
    energy = float(beam_energy_keV) if beam_energy_keV else DEFAULTS["energy_keV"]
    m_brighter = forward_model(parent.key, pixel_size_key(pixel_size_A), microscope_for(energy, optics)).m_brighter
    a_px = parent.a_A / pixel_size_A
    nn_px = a_px / np.sqrt(3)
    centroids = np.array([[cc.mean(), rr.mean()] for _, rr, cc in found])
    ny, nx = image.shape
    edges_y, edges_x = _tile_edges(ny, SUBLATTICE_TILE_PX), _tile_edges(nx, SUBLATTICE_TILE_PX)
    tile_y = np.clip(np.searchsorted(edges_y, centroids[:, 1], side="right") - 1, 0, len(edges_y) - 2)
    tile_x = np.clip(np.searchsorted(edges_x, centroids[:, 0], side="right") - 1, 0, len(edges_x) - 2)
    changed = 0
    for ty, tx in sorted(set(zip(tile_y.tolist(), tile_x.tolist()))):  # one tile: the whole image
        y0, y1 = max(0, edges_y[ty] - SUBLATTICE_MARGIN_PX), min(ny, edges_y[ty + 1] + SUBLATTICE_MARGIN_PX)
        x0, x1 = max(0, edges_x[tx] - SUBLATTICE_MARGIN_PX), min(nx, edges_x[tx + 1] + SUBLATTICE_MARGIN_PX)
        sites = measure_sites(image[y0:y1, x0:x1], a_px, m_brighter, border_px=0.0).sites
        tree = cKDTree(sites[["x_px", "y_px"]].to_numpy())
        for k in np.flatnonzero((tile_y == ty) & (tile_x == tx)):
            cid, rr, cc = found[k]
            sub, other = rule[cid]
            d, idx = tree.query([centroids[k, 0] - x0, centroids[k, 1] - y0])
            if d < 0.5 * nn_px and sites.sublattice.iat[idx] != sub:
                out[rr, cc] = other
                changed += 1
    return out, changed


def checked_image(image, pixel_size_A: float | None, doing: str) -> np.ndarray:
    """``image`` as one 2-D numeric array with finite pixels and a positive pixel size, or a ValueError
    that says what to do (``doing``: what the caller is about to do, for the message)."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"expected one 2-D image, got shape {img.shape}")
    if not (np.issubdtype(img.dtype, np.floating) or np.issubdtype(img.dtype, np.integer)):
        raise ValueError(f"expected a numeric image, got {img.dtype}")
    if np.issubdtype(img.dtype, np.floating) and not np.isfinite(img).all():
        raise ValueError(f"the image holds NaN/inf pixels; crop or fill them before {doing}")
    if pixel_size_A is None or not (pixel_size_A > 0):
        raise ValueError("the image has no pixel size: give one in Å (or self-calibrate with the analysis)")
    return img


def segment_image(image: np.ndarray, pixel_size_A: float | None, model: str | Path = "default",
                  device: str = "auto", tile: int = 384, overlap: int = 32,
                  return_probabilities: bool = False, material: str | None = None,
                  beam_energy_keV: float | None = None, runtime: str = "auto", optics: dict | None = None,
                  progress: Callable[[float, str], None] = lambda f, m: None,
                  cancelled: Callable[[], bool] = lambda: False) -> Segmentation:
    """Segment a HAADF image of any size.

    The image is resampled to the model's pixel size and normalised as in training, tile by tile,
    predicted in overlapping tiles (384 px with 32 px overlap: 84 % of the network's pixels are new,
    against 56 % for 256/64, at the same held-out F1 — benchmarks/RESULTS.md) blended with a Hann
    window, and the labels resampled back.
    Apart from the outputs, memory does not grow with the image: an 8192² image at the model's
    pixel size needs about 0.5 GB on top of the libraries and the image (benchmarks/RESULTS.md). With
    ``material`` the sublattice of each empty-site or single-chalcogen instance is checked against
    the fitted lattice (:func:`assign_sublattices`, at ``beam_energy_keV`` and the detector in ``optics``,
    the keys :func:`~..analysis.api.analyze_image` takes). ``runtime`` chooses what runs the network
    (:mod:`.runtime`: ``auto`` is OpenVINO on the CPU, PyTorch on a GPU).
    """
    img = checked_image(image, pixel_size_A, "segmenting")
    net, card = load_model(model, device)
    dev = next(net.parameters()).device
    runner = make_runner(net, model_path(model), card.pixel_size_A, dev, runtime, progress)
    n_classes = len(card.classes)
    labels_m, score_m, probs_m = _predict_tiled(runner, ModelScaleTiles(img, pixel_size_A, card.pixel_size_A),
                                                tile, overlap, progress, cancelled, n_classes, return_probabilities)
    if material:
        # the site fit needs the whole image at the model's pixel size (the image itself if it is there)
        model_scale = resample_to(img.astype(np.float32, copy=False), pixel_size_A, card.pixel_size_A, order=1)
        labels_m, _ = assign_sublattices(labels_m, card.pixel_size_A, model_scale, material, beam_energy_keV,
                                         optics)
        del model_scale
    instances = instances_from_labels(labels_m, card.pixel_size_A, score_m)
    del score_m
    labels = resample_to(labels_m, card.pixel_size_A, pixel_size_A, order=0)[: img.shape[0], : img.shape[1]]
    if labels.shape != img.shape:
        labels = np.pad(labels, ((0, img.shape[0] - labels.shape[0]), (0, img.shape[1] - labels.shape[1])))
    probabilities = None
    if return_probabilities:  # float16, (n_classes, H, W): 1.5 GB for an 8192² image
        if not needs_resampling(pixel_size_A, card.pixel_size_A):
            probabilities = probs_m
        else:
            probabilities = np.zeros((n_classes, *img.shape), np.float16)
            for k, p in enumerate(probs_m):
                back = resample_to(p.astype(np.float32), card.pixel_size_A, pixel_size_A, order=1)
                probabilities[k, : back.shape[0], : back.shape[1]] = back[: img.shape[0], : img.shape[1]]
    return Segmentation(labels=labels.astype(np.uint8, copy=False), defects=instances,
                        probabilities=probabilities, card=card, device=str(dev), runtime=runner.name)


def segment_layer_image(image: np.ndarray, pixel_size_A: float, **kwargs) -> Segmentation:
    """What the demo calls: :func:`segment_image` with the shipped model."""
    return segment_image(image, pixel_size_A, **kwargs)
