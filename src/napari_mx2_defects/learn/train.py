"""Training on digital-twin datasets: augmentation, class-imbalance-aware loss, validation, early stopping."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.classes import CLASS_NAMES
from ..core.validation import BOUNDS, check_allocation
from .checkpoint import ModelCard, card_path, save_checkpoint, weights_path
from .dataset import load_dataset, open_dataset
from .models import ARCHITECTURES, build_model, pick_device
from .preprocess import NORMALISATION, normalise, resample_to

__all__ = ["TrainConfig", "fit", "per_class_pixel_metrics", "train"]

N_CLASSES = len(CLASS_NAMES)
#: Target value of pixels whose class is not known (a site the site physics is unsure of, in adaptation):
#: they add nothing to the loss and are not scored.
IGNORE_LABEL = 255


@dataclass
class TrainConfig:
    """Training settings (stored in the model card)."""

    architecture: str = "light"
    pixel_size_A: float = 0.2
    crop_px: int = 128
    batch_size: int = 16
    epochs: int = 30
    steps_per_epoch: int = 60
    learning_rate: float = 2e-3
    validation_fraction: float = 0.15
    patience: int = 6
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # 0: torch's default
    init_from: str | None = None  # a .safetensors checkpoint (same architecture) to start from

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {str(self.architecture)[:40]!r}; choose from "
                             f"{', '.join(ARCHITECTURES)}")
        self.pixel_size_A = BOUNDS["model_pixel_size_A"].check(self.pixel_size_A)
        for name in ("crop_px", "batch_size", "epochs", "steps_per_epoch", "learning_rate", "validation_fraction",
                     "patience", "seed", "threads"):
            setattr(self, name, BOUNDS[name].check(getattr(self, name)))
        stride = 2 ** ARCHITECTURES[self.architecture].encoder_depth
        if self.crop_px % stride:
            raise ValueError(f"--crop (training crop) must be a multiple of {stride} px for the {self.architecture} "
                             f"architecture, got {self.crop_px}")


def _prepare(images, labels, metas, pixel_size_A):
    xs, ys = [], []
    for img, lab, meta in zip(images, labels, metas):
        xs.append(normalise(resample_to(img, meta["pixel_size_A"], pixel_size_A, order=1)))
        ys.append(resample_to(lab, meta["pixel_size_A"], pixel_size_A, order=0).astype(np.int64))
    return xs, ys


def _batch(xs, ys, indices, crop, rng, augment=True):
    bx = np.zeros((len(indices), 1, crop, crop), np.float32)
    by = np.zeros((len(indices), crop, crop), np.int64)
    for k, i in enumerate(indices):
        x, y = xs[i], ys[i]
        h, w = x.shape
        r0 = int(rng.integers(0, max(1, h - crop + 1)))
        c0 = int(rng.integers(0, max(1, w - crop + 1)))
        px, py = x[r0 : r0 + crop, c0 : c0 + crop], y[r0 : r0 + crop, c0 : c0 + crop]
        if augment:  # the paper's augmentation: flips and 90° rotations
            k90 = int(rng.integers(4))
            px, py = np.rot90(px, k90), np.rot90(py, k90)
            if rng.random() < 0.5:
                px, py = px[:, ::-1], py[:, ::-1]
        bx[k, 0, : px.shape[0], : px.shape[1]] = px
        by[k, : py.shape[0], : py.shape[1]] = py
    return torch.from_numpy(bx), torch.from_numpy(by)


def _class_weights(ys) -> torch.Tensor:
    values = np.concatenate([y.ravel() for y in ys])
    counts = np.bincount(values[values != IGNORE_LABEL], minlength=N_CLASSES)[:N_CLASSES].astype(float)
    freq = counts / counts.sum()
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-8)), 0.0)
    weights /= weights[0] if weights[0] > 0 else 1.0
    return torch.tensor(np.minimum(weights, 50.0), dtype=torch.float32)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Soft Dice over the classes present in the training set (lattice included); pixels at
    :data:`IGNORE_LABEL` take no part."""
    known = (target != IGNORE_LABEL).unsqueeze(1).float()
    prob = logits.softmax(1) * known
    onehot = F.one_hot(torch.where(target == IGNORE_LABEL, 0, target), logits.shape[1]).permute(0, 3, 1, 2).float()
    onehot = onehot * known
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return 1 - dice[present].mean()


def per_class_pixel_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-class IoU, F1, precision and recall over pixels."""
    out = {}
    for cid, name in CLASS_NAMES.items():
        tp = int(((pred == cid) & (target == cid)).sum())
        fp = int(((pred == cid) & (target != cid)).sum())
        fn = int(((pred != cid) & (target == cid)).sum())
        if tp + fn == 0 and fp == 0:
            continue
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[name] = {"iou": tp / (tp + fp + fn) if tp + fp + fn else 0.0, "f1": f1, "precision": precision,
                     "recall": recall}
    return out


#: Peak training memory per dataset pixel at the model scale: the stored image and labels
#: (float32 + uint8), the normalised float32 copy and the int64 targets, with margin.
TRAIN_BYTES_PER_PIXEL = 24


def check_training_inputs(datasets: list, out: str | Path, config: TrainConfig, overwrite: bool = False) -> Path:
    """Everything :func:`train` checks before any work; returns the checkpoint path it will write.

    The output (``.safetensors`` and its ``.json`` card) must be writable and, without
    ``overwrite``, not exist; every dataset must be complete; the resampled datasets must fit in
    memory.
    """
    from ..io.atomic import check_output_file

    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a checkpoint file name such as {out / 'model.safetensors'}")
    path = weights_path(out)
    check_output_file(path, overwrite=overwrite, others=[card_path(path)])
    if not datasets:
        raise ValueError("no dataset given; make one with 'mx2-defects dataset'")
    n_pixels = 0.0
    for d in datasets:
        root = open_dataset(d)
        n, h, w = root["images"].shape
        pixels = [m.get("pixel_size_A") for m in root.attrs["samples"]]
        finite = [float(p) for p in pixels if isinstance(p, (int, float)) and np.isfinite(p) and p > 0]
        if len(finite) != len(pixels):
            raise ValueError(f"{d}: a sample has no valid pixel size in its metadata; make the dataset again")
        n_pixels += sum(h * w * (p / config.pixel_size_A) ** 2 for p in finite)
    check_allocation("the training data at the model pixel size", n_pixels, TRAIN_BYTES_PER_PIXEL,
                     hint="train on fewer samples or a larger --model-pixel-size")
    return path


def _dataset_specs(datasets) -> list[dict | None]:
    """What each dataset sampled from (its :class:`~.dataset.DatasetSpec` and seed, as the store records them)."""
    from .dataset import open_dataset

    out = []
    for d in datasets:
        attrs = open_dataset(d).attrs
        out.append({"spec": attrs.get("spec"), "seed": attrs.get("seed")} if attrs.get("spec") else None)
    return out


def train(dataset: str | Path | list, out: str | Path, config: TrainConfig, command: str = "",
          progress: Callable[[float, str], None] = lambda f, m: None,
          log: Callable[[str], None] = print, overwrite: bool = True) -> tuple[Path, dict]:
    """Train a model on one or more datasets from ``mx2-defects dataset``; save the best checkpoint.

    Parameters
    ----------
    overwrite : bool
        Replace an existing checkpoint or card at ``out``; if False they are refused before any
        work (the CLI passes its ``--overwrite``).

    Returns
    -------
    path, history
        The safetensors checkpoint (its card beside it, both written atomically) and the
        per-epoch metrics.
    """
    datasets = [dataset] if isinstance(dataset, (str, Path)) else list(dataset)
    check_training_inputs(datasets, out, config, overwrite=overwrite)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    parts = [load_dataset(d) for d in datasets]
    images = [img for part in parts for img in part[0]]
    labels = [lab for part in parts for lab in part[1]]
    metas = [meta for part in parts for meta in part[2]]
    xs, ys = _prepare(images, labels, metas, config.pixel_size_A)
    order = rng.permutation(len(xs))
    n_val = max(1, int(round(config.validation_fraction * len(xs))))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if len(train_idx) == 0:
        raise ValueError("the dataset is too small to split into training and validation samples")
    weights = _class_weights([ys[i] for i in train_idx]).to(device)
    model = build_model(config.architecture, N_CLASSES).to(device)
    if config.init_from:
        from .checkpoint import load_checkpoint

        start, start_card = load_checkpoint(config.init_from)
        if start_card.architecture != config.architecture:
            raise ValueError(f"{config.init_from} is a {start_card.architecture} model, not {config.architecture}")
        model.load_state_dict(start.state_dict())
        initialised_from = {"checkpoint": str(config.init_from), "command": start_card.command,
                            "training_data": start_card.training_data,
                            "epochs_run": start_card.metrics.get("epochs_run")}
    else:
        initialised_from = None
    history, best_score = fit(model, xs, ys, train_idx, val_idx, config, device, weights, progress=progress, log=log)
    t_fit = history[-1]["seconds"] if history else 0.0
    spec = ARCHITECTURES[config.architecture]
    card = ModelCard(
        architecture=config.architecture,
        spec=spec.as_dict(),
        classes={str(k): v for k, v in CLASS_NAMES.items()},
        pixel_size_A=config.pixel_size_A,
        normalisation=NORMALISATION,
        training_data={"datasets": [str(d) for d in datasets], "n_samples": len(xs), "n_train": len(train_idx),
                       "n_validation": int(n_val), "materials": sorted({m["material"] for m in metas}),
                       "presets": sorted({m["preset"] for m in metas}), "specs": _dataset_specs(datasets),
                       "initialised_from": initialised_from},
        command=command,
        metrics={"validation_pixel": history[-1]["val"] if history else {}, "best_val_vacancy_f1": best_score,
                 "epochs_run": len(history), "config": asdict(config), "train_seconds": t_fit},
    )
    path = save_checkpoint(model, card, out, overwrite=overwrite)
    return path, {"history": history}


def vacancy_f1(metrics: dict) -> float:
    """Validation score of :func:`train`: mean pixel F1 of the three vacancy classes."""
    vac = [metrics[n]["f1"] for n in ("V_X", "V_XX", "V_M") if n in metrics]
    return float(np.mean(vac)) if vac else 0.0


def fit(model, xs, ys, train_idx, val_idx, config: TrainConfig, device, class_weights: torch.Tensor, *,
        score: Callable[[dict], float] = vacancy_f1, sample_weights: np.ndarray | None = None,
        max_seconds: float | None = None, progress: Callable[[float, str], None] = lambda f, m: None,
        log: Callable[[str], None] = print, cancelled: Callable[[], bool] = lambda: False,
        on_step: Callable[[int, float], None] | None = None) -> tuple[list, float]:
    """The training loop shared by :func:`train` and fine-tuning; leaves ``model`` at its best epoch.

    AdamW with a one-cycle schedule, cross-entropy weighted by ``class_weights`` plus soft Dice, random
    crops with flips and 90° rotations; after each epoch the pixel metrics on ``val_idx`` are scored
    by ``score`` and the best state kept; early stop after ``config.patience`` epochs without gain.
    ``sample_weights`` (one per training image) set how often each is drawn; ``max_seconds`` ends
    training early (the last epoch is still validated); ``cancelled`` is polled every step and raises
    :class:`~napari_mx2_defects.core.jobs.Cancelled`; ``on_step(step, loss)`` (if given) gets each
    optimiser step's training loss (the *Fine-tune* dock's live curve).

    Returns
    -------
    history, best_score
    """
    from tqdm.auto import tqdm

    from ..core.jobs import check_cancelled

    rng = np.random.default_rng(config.seed)
    present = class_weights > 0
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=config.learning_rate,
                                                    total_steps=config.epochs * config.steps_per_epoch)
    p = None if sample_weights is None else np.asarray(sample_weights, float) / np.sum(sample_weights)
    history: list = []
    best = (-1.0, None)
    stale = 0
    t0 = time.perf_counter()
    out_of_time = False
    for epoch in range(config.epochs):
        model.train()
        losses = []
        bar = tqdm(range(config.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=None)
        for _ in bar:
            check_cancelled(cancelled, "training")
            bx, by = _batch(xs, ys, rng.choice(train_idx, config.batch_size, p=p), config.crop_px, rng)
            bx, by = bx.to(device), by.to(device)
            logits = model(bx)
            loss = F.cross_entropy(logits, by, weight=class_weights, ignore_index=IGNORE_LABEL) + \
                dice_loss(logits, by, present)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(epoch * config.steps_per_epoch + len(losses), losses[-1])
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
            if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
                out_of_time = True
                break
        metrics = evaluate_pixels(model, [xs[i] for i in val_idx], [ys[i] for i in val_idx], device)
        value = float(score(metrics))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_score": value,
                        "val_vacancy_f1": vacancy_f1(metrics), "val": metrics, "seconds": time.perf_counter() - t0})
        log(f"epoch {epoch + 1}: loss {np.mean(losses):.4f}, val pixel F1 " +
            ", ".join(f"{k} {v['f1']:.3f}" for k, v in metrics.items()))
        progress((epoch + 1) / config.epochs, f"epoch {epoch + 1}: validation score {value:.3f}")
        if value > best[0]:
            best = (value, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            stale = 0
        else:
            stale += 1
            if stale >= config.patience:
                log(f"early stop after epoch {epoch + 1} (no improvement for {config.patience} epochs)")
                break
        if out_of_time:
            log(f"stopped after epoch {epoch + 1}: the time limit of {max_seconds:.0f} s was reached")
            break
    if best[1] is not None:
        model.load_state_dict(best[1])
    return history, best[0]


@torch.no_grad()
def evaluate_pixels(model, xs, ys, device) -> dict:
    model.eval()
    preds, targets = [], []
    for x, y in zip(xs, ys):
        h, w = x.shape
        ph, pw = (-h) % 32, (-w) % 32
        t = torch.from_numpy(np.pad(x, ((0, ph), (0, pw)), mode="reflect"))[None, None].to(device)
        preds.append(model(t).argmax(1)[0, :h, :w].cpu().numpy())
        targets.append(y)
    pred, target = np.concatenate([p.ravel() for p in preds]), np.concatenate([t.ravel() for t in targets])
    known = target != IGNORE_LABEL
    return per_class_pixel_metrics(pred[known], target[known])
