"""Fine-tuning a segmentation model on a user's corrected defects, mixed with twins of the same parent.

The user lists every defect in a reviewed region of their own image (``x_A, y_A, defect_class``, the
columns of ``defects.csv``); inside that region every other site is intact.  The lattice is fitted on
each reviewed image (the analysis' sites): every corrected defect of a lattice-site class is moved
onto the nearest site of its sublattice within :data:`SNAP_A`, and the twins mixed in are imaged at
the source size fitted there (the blur of the user's microscope).  Targets are the same
discs of :data:`~napari_mx2_defects.twin.api.DEFECT_RADIUS_A` at each defect that twins carry, so the
corrected image trains exactly like a twin.  The bottom ``holdout_fraction`` of each reviewed region
is held out: the model is scored there (per-instance F1, as the papers report it) before and after,
and the card records both; the strip of ``validation_fraction`` above it picks the best epoch, so the
held-out part decides nothing but whether the result is kept.  A model worse there than the one it
started from (lower mean F1 over the classes either names) is **not saved**: any model already in the
output folder stays, and the report says so (``saved``).  Twins of the same parent at the model's
pixel size are mixed in (half of the draws) so the model does not forget what it knew; they and the
lattice fit take the optics the file records (``optics``, as ``analyze`` does: an ADF image is
modelled as ADF).

This is what ``mx2-defects finetune`` and the *Fine-tune* API call; nothing here touches napari.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.classes import CLASS_IDS
from ..core.jobs import CancelFn, ProgressFn, check_cancelled, never, no_progress
from ..core.validation import BOUNDS
from .checkpoint import ModelCard, card_path, default_model_path, save_checkpoint
from .evaluate import _add, instance_scores, match_instances
from .inference import ModelScaleTiles, _predict_tiled, instances_from_labels
from .models import ARCHITECTURES, build_model, pick_device
from .preprocess import NORMALISATION, normalise, resample_to
from .runtime import TorchRunner
from .train import IGNORE_LABEL, TrainConfig, _class_weights, fit

__all__ = ["FINETUNE_FILES", "Correction", "FinetuneConfig", "correction_targets", "finetune",
           "read_corrections", "snap_to_sites"]

#: What ``finetune`` writes into its output folder (the only names its ``--overwrite`` replaces).
FINETUNE_FILES = ["model.safetensors", "model.json"]
#: Default border left out of a reviewed image when no region is given (Å): a defect cut by the
#: image edge cannot be labelled reliably.
BORDER_A = 2.0
#: A corrected defect of a lattice-site class is moved onto the nearest site of its sublattice fitted on
#: the image when one lies this close (Å, under half the 1.8 Å M–X projected distance of MX2): a click
#: lands anywhere on a column, the training disc belongs on its centre.
SNAP_A = 0.8
#: Columns a corrections table must have.
CORRECTION_COLUMNS = ("x_A", "y_A", "defect_class")


@dataclass
class Correction:
    """One reviewed image: the pixels, their size, every defect in ``region_A`` and where it came from."""

    image: np.ndarray
    pixel_size_A: float
    defects: pd.DataFrame  # x_A, y_A, defect_class (Å from the image origin)
    region_A: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    name: str = "image"
    sha256: str = ""
    labels_name: str = ""
    #: Positions (``x_A, y_A``) whose class is not known: their discs are left out of the loss and the scores
    #: (:data:`~.train.IGNORE_LABEL`) instead of counting as intact. Adaptation puts the sites the site physics
    #: is unsure of here.
    unknown: pd.DataFrame | None = None


@dataclass
class FinetuneConfig:
    """Fine-tuning settings (stored in the model card)."""

    minutes: float = 10.0
    epochs: int = 12
    steps_per_epoch: int = 25
    batch_size: int = 8
    learning_rate: float = 5e-4
    twins: int = 8
    twin_fov_A: float = 60.0
    holdout_fraction: float = 0.25
    validation_fraction: float = 0.15  # the strip above the held-out part that picks the best epoch
    match_radius_A: float = 1.0
    seed: int = 0
    device: str = "auto"
    twin_defects: str = "V_X=2%,V_XX=0.5%,V_M=0.5%"
    fit_lattice: bool = True  # snap corrections to the fitted sites; twins at the fitted source size
    keep_worse: bool = False  # save a model worse on the held-out part than the one it started from, saying so

    def __post_init__(self) -> None:
        for name in ("minutes", "twins", "epochs", "steps_per_epoch", "batch_size", "learning_rate", "seed"):
            setattr(self, name, BOUNDS[name].check(getattr(self, name)))
        if not 0.05 <= self.holdout_fraction <= 0.5:
            raise ValueError(f"the held-out fraction must be between 0.05 and 0.5, got {self.holdout_fraction}")
        if not 0.05 <= self.validation_fraction <= 0.3:
            raise ValueError(f"the validation fraction must be between 0.05 and 0.3, got {self.validation_fraction}")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_corrections(path: str | Path, option: str = "") -> pd.DataFrame:
    """A corrections table (``x_A, y_A, defect_class``; other columns ignored), every row checked."""
    from ..io.tables import read_points_table

    table = read_points_table(path, option=option, columns=CORRECTION_COLUMNS, classes=CLASS_IDS, what=_WHAT)
    return table[list(CORRECTION_COLUMNS)]


def check_corrections(table: pd.DataFrame, name: str = "corrections") -> pd.DataFrame:
    """The same checks on a table already in memory (a Points layer's positions and classes)."""
    from ..io.tables import check_points_table

    return check_points_table(table, name, columns=CORRECTION_COLUMNS, classes=CLASS_IDS,
                              what=_WHAT)[list(CORRECTION_COLUMNS)]


#: What a corrections table holds, said when its columns are missing.
_WHAT = "a corrections table lists x_A, y_A, defect_class (the columns of defects.csv)"


def _region_px(shape: tuple[int, int], pixel_size_A: float, region_A, name: str) -> tuple[int, int, int, int]:
    """(i0, i1, j0, j1) of the reviewed region, checked against the image."""
    ny, nx = shape
    if region_A is None:
        b = BORDER_A
        region_A = (b, b, nx * pixel_size_A - b, ny * pixel_size_A - b)
    x0, y0, x1, y1 = (float(v) for v in region_A)
    if not all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
        raise ValueError(f"{name}: the region must be x0,y0,x1,y1 in Å with x0 < x1 and y0 < y1, got {region_A}")
    j0, i0 = max(0, int(np.ceil(x0 / pixel_size_A))), max(0, int(np.ceil(y0 / pixel_size_A)))
    j1, i1 = min(nx, int(np.floor(x1 / pixel_size_A))), min(ny, int(np.floor(y1 / pixel_size_A)))
    if (j1 - j0) * pixel_size_A < 10 or (i1 - i0) * pixel_size_A < 10:
        raise ValueError(f"{name}: the reviewed region {x0:g},{y0:g},{x1:g},{y1:g} Å leaves less than 10 × 10 Å of "
                         f"the {nx * pixel_size_A:.0f} × {ny * pixel_size_A:.0f} Å image; review a larger region")
    return i0, i1, j0, j1


def correction_targets(correction: Correction) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """The reviewed region's pixels, its label map (discs at the listed defects, 0 elsewhere) and the
    defects inside it (positions relative to the region's corner)."""
    from ..twin.api import label_mask

    image = np.asarray(correction.image, float)
    px = float(correction.pixel_size_A)
    i0, i1, j0, j1 = _region_px(image.shape, px, correction.region_A, correction.name)
    d = correction.defects
    labels = label_mask(image.shape, (px, px), d.x_A, d.y_A, [CLASS_IDS[c] for c in d.defect_class]) \
        if len(d) else np.zeros(image.shape, np.uint8)
    u = correction.unknown
    if u is not None and len(u):
        unknown = label_mask(image.shape, (px, px), u.x_A, u.y_A, np.ones(len(u), np.uint8)) > 0
        labels[unknown & (labels == 0)] = IGNORE_LABEL
    inside = (d.x_A >= j0 * px) & (d.x_A < j1 * px) & (d.y_A >= i0 * px) & (d.y_A < i1 * px)
    kept = d[inside].copy()
    kept["x_A"] -= j0 * px
    kept["y_A"] -= i0 * px
    return image[i0:i1, j0:j1], labels[i0:i1, j0:j1], kept.reset_index(drop=True)


def snap_to_sites(defects: pd.DataFrame, sites: pd.DataFrame,
                  radius_A: float = SNAP_A) -> tuple[pd.DataFrame, int]:
    """``defects`` with each lattice-site class (its sublattice in :data:`~..core.classes.SUBLATTICE_OF`)
    moved onto the nearest of ``sites`` (``x_A, y_A, sublattice``) of that sublattice within
    ``radius_A``; interstitials and defects with no site near stay put. Returns the table and how many
    moved."""
    from scipy.spatial import cKDTree

    from ..core.classes import SUBLATTICE_OF

    out = defects.copy()
    moved = 0
    for sub in ("M", "X"):
        mask = out.defect_class.map(SUBLATTICE_OF).eq(sub).to_numpy()
        candidates = sites[sites.sublattice == sub][["x_A", "y_A"]].to_numpy(float)
        if not mask.any() or not len(candidates):
            continue
        distance, nearest = cKDTree(candidates).query(out.loc[mask, ["x_A", "y_A"]].to_numpy(float))
        near = distance <= radius_A
        rows = out.index[mask][near]
        out.loc[rows, "x_A"] = candidates[nearest[near], 0]
        out.loc[rows, "y_A"] = candidates[nearest[near], 1]
        moved += int(np.count_nonzero(distance[near] > 0.05))  # moved by more than a rounding
    return out, moved


def _fit_lattices(corrections: list[Correction], material: str, energy_keV: float | None,
                  log: Callable[[str], None], cancelled: CancelFn,
                  optics: dict | None = None) -> tuple[list[Correction], list[dict]]:
    """Each correction snapped to the sites the analysis fits on its image, and what was fitted
    (moved defects, source size); an image whose lattice cannot be fitted is used as it was placed."""
    from dataclasses import replace

    from ..analysis.api import analyze_image

    snapped, fits = [], []
    for corr in corrections:
        check_cancelled(cancelled, "fine-tuning")
        try:
            result = analyze_image(np.asarray(corr.image, float), corr.pixel_size_A, material,
                                   beam_energy_keV=energy_keV, optics=optics, cancelled=cancelled)
        except ValueError as exc:
            log(f"{corr.name}: no lattice fitted ({exc}); its corrections are used where they were placed")
            snapped.append(corr)
            fits.append({"moved_to_sites": 0, "source_size_A": None})
            continue
        defects, moved = snap_to_sites(corr.defects, result.sites)
        snapped.append(replace(corr, defects=defects))
        source = result.lattice.get("fitted_optics", {}).get("source_size_A")
        fits.append({"moved_to_sites": moved, "source_size_A": None if source is None else float(source)})
    return snapped, fits


def _split(image, labels, defects, pixel_size_A, fraction, validation_fraction):
    """Training (top), validation (the strip above the held-out part) and held-out (bottom) parts of one
    reviewed region."""
    cut = int(round(image.shape[0] * (1 - fraction)))
    top = int(round(image.shape[0] * (1 - fraction - validation_fraction)))
    held = defects[defects.y_A >= cut * pixel_size_A].copy()
    held["y_A"] -= cut * pixel_size_A
    return ((image[:top], labels[:top]), (image[top:cut], labels[top:cut]),
            (image[cut:], labels[cut:], held.reset_index(drop=True)))


def _instances(net, card, image: np.ndarray, pixel_size_A: float, device) -> pd.DataFrame:
    """The model being trained (PyTorch, in whatever mode the caller set) on one image, tiled as before."""
    tiles = ModelScaleTiles(np.asarray(image, np.float32), pixel_size_A, card.pixel_size_A)
    labels, score, _ = _predict_tiled(TorchRunner(net, device), tiles, 256, 64, no_progress, never,
                                      len(card.classes), False)
    return instances_from_labels(labels, card.pixel_size_A, score)


def _held_out_scores(net, card, held: list, device, radius_A: float, border_A: float = 1.0) -> dict:
    """Per-instance precision/recall/F1 on the held-out strips (defects within ``border_A`` of a strip
    edge are not scored: their disc is cut)."""
    total: dict = {}
    net.eval()
    with torch.no_grad():
        for image, labels, truth, px in held:
            pred = _instances(net, card, image, px, device)
            if len(pred):  # a detection where the class is not known is neither right nor wrong
                i = np.clip(np.round(pred.y_A.to_numpy(float) / px).astype(int), 0, labels.shape[0] - 1)
                j = np.clip(np.round(pred.x_A.to_numpy(float) / px).astype(int), 0, labels.shape[1] - 1)
                pred = pred[labels[i, j] != IGNORE_LABEL]
            h, w = image.shape[0] * px, image.shape[1] * px

            def interior(t):
                return t[(t.x_A > border_A) & (t.y_A > border_A) & (t.x_A < w - border_A) & (t.y_A < h - border_A)]

            _add(total, match_instances(interior(pred), interior(truth), radius_A))
    table = instance_scores(total)
    return {row.defect_class: {"tp": int(row.tp), "fp": int(row.fp), "fn": int(row.fn),
                               "precision": _num(row.precision), "recall": _num(row.recall), "f1": _num(row.f1)}
            for row in table.itertuples()}


def _num(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _mean_f1(scores: dict) -> float:
    values = [v["f1"] for v in scores.values() if v["f1"] is not None]
    return float(np.mean(values)) if values else float("nan")


def _twins(material: str, dopant: str | None, config: FinetuneConfig, pixel_size_A: float, microscope,
           progress: ProgressFn, cancelled: CancelFn) -> tuple[list, list]:
    from ..twin.api import TwinRequest, simulate_twin
    from ..twin.imperfections import Imperfections

    rng = np.random.default_rng(config.seed + 1)
    defects = config.twin_defects + (f",TM_D({dopant})=1%" if dopant else "")
    xs, ys = [], []
    for k in range(config.twins):
        check_cancelled(cancelled, "fine-tuning")
        dose = float(10 ** rng.uniform(5, 7))
        request = TwinRequest(material=material, fov_A=config.twin_fov_A, pixel_size_A=pixel_size_A,
                              defects=defects, seed=int(config.seed * 1000 + k),
                              imperfections=Imperfections(dose_e_per_A2=dose, scan_jitter_A=0.03),
                              **({"microscope": microscope} if microscope is not None else {}))
        twin = simulate_twin(request, progress=lambda f, m, k=k: progress(0.05 + 0.15 * (k + f) / config.twins,
                                                                           f"twin {k + 1}/{config.twins}: {m}"),
                             cancelled=cancelled)
        xs.append(normalise(twin.image))
        ys.append(twin.labels.astype(np.int64))
    return xs, ys


def finetune(corrections: list[Correction], material: str, out: str | Path, base_model: str | Path = "default",
             dopant: str | None = None, config: FinetuneConfig | None = None, microscope=None,
             optics: dict | None = None, command: str = "",
             progress: ProgressFn = no_progress, log: Callable[[str], None] = print, cancelled: CancelFn = never,
             overwrite: bool = False,
             on_step: Callable[[int, float], None] | None = None) -> tuple[Path, dict]:
    """Fine-tune ``base_model`` on reviewed images; write ``out/model.safetensors`` and its card.

    Nothing is written until training has finished (atomically, weights and card together); a
    cancelled or interrupted run, or a model worse on the held-out part than ``base_model``, leaves any
    previous model in ``out`` as it was. ``on_step(step, loss)`` gets each training step's loss.
    ``microscope`` images the twins (its source size is fitted on the images); ``optics`` is what the
    files record (:attr:`~..io.formats.CalibratedImage.optics`), given to the lattice fit as
    :func:`~..analysis.api.analyze_image` takes it.

    Returns
    -------
    path, report
        The checkpoint (None when it was not saved) and ``{"held_out": {"before": …, "after": …},
        "history": […], "mean_f1": {…}, "saved": bool, "why": str}``.
    """
    from ..io.atomic import check_output_file
    from ..twin.parents import get_parent
    from .inference import load_model

    config = config or FinetuneConfig()
    if not corrections:
        raise ValueError("give at least one reviewed image with its corrections")
    get_parent(material)  # an unknown parent is refused before any work
    out = Path(out)
    target = out / FINETUNE_FILES[0]
    check_output_file(target, overwrite=overwrite, option="--out", others=[card_path(target)])
    base_path = default_model_path() if str(base_model) == "default" else Path(base_model)
    device = pick_device(config.device)
    base_net, base_card = load_model(base_path, config.device)  # cached and shared: trained as a copy
    model = build_model(base_card.architecture, len(base_card.classes)).to(device)
    model.load_state_dict(base_net.state_dict())
    model_px = base_card.pixel_size_A
    torch.manual_seed(config.seed)

    progress(0.0, "preparing the corrections")
    fits = [{"moved_to_sites": 0, "source_size_A": None}] * len(corrections)
    if config.fit_lattice:  # targets on the fitted sites; twins at the source size fitted on the images
        progress(0.01, "fitting the lattice of the reviewed images")
        energy = microscope.energy_keV if microscope is not None else None
        corrections, fits = _fit_lattices(corrections, material, energy, log, cancelled, optics)
        sources = [f["source_size_A"] for f in fits if f["source_size_A"] is not None]
        if sources:
            from dataclasses import replace

            from ..twin.microscope import Microscope

            microscope = replace(microscope or Microscope(), source_size_A=float(np.median(sources)))
        moved = sum(f["moved_to_sites"] for f in fits)
        source = microscope.source_size_A if microscope is not None else 0.0
        log(f"{moved} corrected defects moved onto fitted sites; twins at source size {source:.2f} Å")
    train_x, train_y, val_x, val_y, held, counts = _correction_sets(corrections, model_px, config.holdout_fraction,
                                                                     config.validation_fraction)
    before = _held_out_scores(model, base_card, held, device, config.match_radius_A)
    log("held out before fine-tuning: " + ", ".join(f"{k} F1 {v['f1']:.3f}" if v["f1"] is not None else f"{k} –"
                                                     for k, v in before.items()))
    twin_x, twin_y = _twins(material, dopant, config, model_px, microscope, progress, cancelled)
    xs = train_x + twin_x
    ys = train_y + twin_y
    # validation (to keep the best epoch): the strips above the held-out parts, never trained on
    xs_all, ys_all = xs + val_x, ys + val_y
    train_idx = np.arange(len(xs))
    val_idx = np.arange(len(xs), len(xs_all))
    # corrections drawn as often as all twins together
    weights = np.array([max(1, len(twin_x)) / len(train_x)] * len(train_x) + [1.0] * len(twin_x))
    stride = 2 ** ARCHITECTURES[base_card.architecture].encoder_depth
    crop = int(max(stride, min(128, min(min(x.shape) for x in train_x) // stride * stride)))
    train_config = TrainConfig(architecture=base_card.architecture, pixel_size_A=model_px, crop_px=crop,
                               batch_size=config.batch_size, epochs=config.epochs,
                               steps_per_epoch=config.steps_per_epoch, learning_rate=config.learning_rate,
                               patience=config.epochs, seed=config.seed, device=config.device)
    class_weights = _class_weights(ys).to(device)
    progress(0.2, "fine-tuning")
    history, best = fit(model, xs_all, ys_all, train_idx, val_idx, train_config, device, class_weights,
                        score=lambda m: float(np.mean([v["f1"] for k, v in m.items() if k != "lattice"] or [0.0])),
                        sample_weights=weights, max_seconds=60 * config.minutes,
                        progress=lambda f, m: progress(0.2 + 0.7 * f, m), log=log, cancelled=cancelled,
                        on_step=on_step)
    after = _held_out_scores(model, base_card, held, device, config.match_radius_A)
    log("held out after fine-tuning: " + ", ".join(f"{k} F1 {v['f1']:.3f}" if v["f1"] is not None else f"{k} –"
                                                    for k, v in after.items()))
    card = _card(base_card, base_path, corrections, counts, len(twin_x), material, dopant, config, microscope,
                 command, before, after, best, history, fits)
    check_cancelled(cancelled, "fine-tuning")
    mean_f1 = {"before": _mean_f1(before), "after": _mean_f1(after)}
    report = {"held_out": {"before": before, "after": after}, "history": history, "mean_f1": mean_f1}
    worse = mean_f1["after"] < mean_f1["before"] or not np.isfinite(mean_f1["after"])
    if worse and config.keep_worse:
        why = (f"saved as asked although on the held-out part it is worse than {base_path.name} (mean instance F1 "
               f"{mean_f1['before']:.3f} before, {mean_f1['after']:.3f} after)")
        log(why)
    elif worse:
        why = (f"not saved: on the held-out part the fine-tuned model is worse than {base_path.name} (mean "
               f"instance F1 {mean_f1['before']:.3f} before, {mean_f1['after']:.3f} after); keep using "
               f"{base_path.name}" + (f", and the model already in {out} is as it was" if target.exists() else "")
               + "; correct more of the image, or check the corrections and the dopant")
        log(why)
        progress(1.0, "done: the model was not saved")
        return None, {**report, "saved": False, "why": why}
    progress(0.95, "saving the model")
    out.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(model, card, target, overwrite=overwrite)
    progress(1.0, "done")
    return path, {**report, "saved": True, "why": why if worse else ""}


def _correction_sets(corrections: list[Correction], model_px: float, holdout_fraction: float,
                     validation_fraction: float):
    """Training and validation images and targets at the model's pixel size, held-out strips and the
    defects per image."""
    train_x, train_y, val_x, val_y, held, counts = [], [], [], [], [], []
    for corr in corrections:
        image, labels, defects = correction_targets(corr)
        px = corr.pixel_size_A
        (ti, tl), (vi, vl), (hi, hl, hd) = _split(image, labels, defects, px, holdout_fraction, validation_fraction)
        for x, y, xs, ys in ((ti, tl, train_x, train_y), (vi, vl, val_x, val_y)):
            xs.append(normalise(resample_to(x, px, model_px, order=1)))
            ys.append(resample_to(y, px, model_px, order=0).astype(np.int64))
        held.append((hi, hl, hd, px))
        counts.append({k: int(v) for k, v in defects.defect_class.value_counts().items()})
    return train_x, train_y, val_x, val_y, held, counts


def _card(base_card, base_path, corrections, counts, n_twins, material, dopant, config, microscope, command,
          before, after, best, history, fits) -> ModelCard:
    """The fine-tuned model's card: what it started from, what it saw, the held-out scores before and after."""
    model_px = base_card.pixel_size_A
    return ModelCard(
        architecture=base_card.architecture,
        spec=base_card.spec,
        classes=dict(base_card.classes),
        pixel_size_A=model_px,
        normalisation=NORMALISATION,
        training_data={
            "corrections": [{"image": c.name, "sha256": c.sha256, "labels": c.labels_name,
                             "pixel_size_A": c.pixel_size_A, "region_A": list(c.region_A) if c.region_A else None,
                             "defects_per_class": n, "fitted": fit}
                            for c, n, fit in zip(corrections, counts, fits)],
            "twins": {"n": n_twins, "material": material, "dopant": dopant, "fov_A": config.twin_fov_A,
                      "defects": config.twin_defects, "microscope": None if microscope is None else asdict(microscope)},
            "initialised_from": {"checkpoint": str(base_path), "command": base_card.command,
                                 "training_data": base_card.training_data},
        },
        command=command,
        metrics={"held_out_instances": {"before": before, "after": after,
                                        "holdout_fraction": config.holdout_fraction,
                                        "match_radius_A": config.match_radius_A},
                 "best_val_score": best, "epochs_run": len(history), "config": asdict(config),
                 "train_seconds": history[-1]["seconds"] if history else 0.0},
    )
