"""Which sites a user should review first: the model's uncertainty by test-time augmentation.

The network is run on the eight orientations of the image (the dihedral group of the square: four
90° rotations, each also mirrored); each orientation's class probabilities are turned back and
averaged.  A well-trained model gives the same answer on every orientation of a lattice with the
same symmetry, so where the averaged probability of the winning class is low (the orientations
disagree, or each is unsure) a human look is worth most.  Candidates are the local maxima of the
averaged probability of *any* defect above :data:`CANDIDATE_P_DEFECT` — defects the model reports
and columns it nearly reported alike — and each gets

* ``uncertainty`` = 1 − the averaged probability of its most probable class (``lattice`` included:
  0 for a certain defect or a certain intact column, up to 1 − 1/n_classes), the probabilities
  averaged over the orientations and over :data:`AVERAGE_OVER_A` round the candidate (a column's
  core, not its single brightest pixel: on low-dose twins this ranks the model's errors better,
  AUC 0.67–0.70 against 0.62–0.65, measured on four MoS2 twins);
* ``likely_class``: that class (``intact`` when the lattice wins; not named ``defect_class``, so no
  tool takes the candidates for a defects table), ``p_defect`` (1 − P(lattice));
* ``agreement``: the fraction of the eight orientations whose own winning class is that class.

Test-time augmentation rather than an ensemble: one shipped model, and no extra weights to train or
ship; the cost is eight inferences (about 3 s for a 512² image at 0.2 Å/px on two CPU cores).
Nothing here touches napari: the *Fine-tune* dock, ``mx2-defects uncertain`` and the API call this.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ..core.classes import CLASS_NAMES
from ..core.jobs import check_cancelled, never, no_progress

__all__ = ["CANDIDATE_P_DEFECT", "UNCERTAIN_COLUMNS", "rank_uncertain_sites"]

#: A column becomes a review candidate where the orientations' mean probability of any defect
#: reaches this (a tenth of the decision threshold of two equal classes).
CANDIDATE_P_DEFECT = 0.05
#: Candidates closer than this (Å) are one site (under the 1.8 Å M–X projected distance of MX2).
MIN_SEPARATION_A = 1.0
#: Candidates nearer the image edge than this (Å) are left out: the border fine-tuning leaves out by
#: default (:data:`~.finetune.BORDER_A`), where a cut column is uncertain for want of its neighbours.
EDGE_A = 2.0
#: Width (Å) of the square the class probabilities are averaged over at each candidate.
AVERAGE_OVER_A = 0.6
#: Columns of the ranked table (``uncertain.csv``; the Points layer's features less the positions).
UNCERTAIN_COLUMNS = ["rank", "x_A", "y_A", "uncertainty", "likely_class", "p_defect", "agreement"]


def _orientations():
    """(forward, inverse) pairs on the last two axes for the eight symmetries of the square."""
    out = []
    for k in range(4):
        for flip in (False, True):

            def forward(a, k=k, flip=flip):
                a = np.rot90(a, k, axes=(-2, -1))
                return a[..., ::-1] if flip else a

            def inverse(a, k=k, flip=flip):
                a = a[..., ::-1] if flip else a
                return np.rot90(a, -k, axes=(-2, -1))

            out.append((forward, inverse))
    return out


def rank_uncertain_sites(
    image: np.ndarray,
    pixel_size_A: float,
    model: str | Path = "default",
    device: str = "auto",
    runtime: str = "auto",
    tile: int = 384,
    overlap: int = 32,
    progress: Callable[[float, str], None] = no_progress,
    cancelled: Callable[[], bool] = never,
) -> pd.DataFrame:
    """Review candidates of ``image`` ranked by the model's uncertainty (most uncertain first).

    Positions are in Å from the image origin, as :func:`~.inference.segment_image` reports defects;
    the columns are :data:`UNCERTAIN_COLUMNS` (``rank`` from 1).
    """
    from skimage.feature import peak_local_max

    from .inference import ModelScaleTiles, _predict_tiled, checked_image, load_model, model_path
    from .runtime import make_runner

    img = checked_image(image, pixel_size_A, "ranking its sites")
    net, card = load_model(model, device)
    runner = make_runner(
        net, model_path(model), card.pixel_size_A, next(net.parameters()).device, runtime, progress
    )
    n_classes = len(card.classes)
    transforms = _orientations()
    total = None
    votes = []
    for k, (forward, inverse) in enumerate(transforms):
        check_cancelled(cancelled, "ranking")
        oriented = np.ascontiguousarray(forward(img))

        def step(f, m, k=k):
            progress((k + f) / len(transforms), f"orientation {k + 1}/{len(transforms)}: {m}")

        labels, _, probs = _predict_tiled(
            runner,
            ModelScaleTiles(oriented, pixel_size_A, card.pixel_size_A),
            tile,
            overlap,
            step,
            cancelled,
            n_classes,
            True,
        )
        probs, labels = inverse(probs), inverse(labels)
        if total is None:
            total = probs.astype(np.float32)
        else:  # the model-scale shape of a turned image rounds the same way, but crop to be safe
            h, w = min(total.shape[1], probs.shape[1]), min(total.shape[2], probs.shape[2])
            total = total[:, :h, :w] + probs[:, :h, :w]
        votes.append(np.ascontiguousarray(labels))
    mean = total / len(transforms)
    h, w = mean.shape[1:]
    p_defect = 1.0 - mean[0]
    separation_px = max(1, int(round(MIN_SEPARATION_A / card.pixel_size_A)))
    peaks = peak_local_max(
        p_defect, min_distance=separation_px, threshold_abs=CANDIDATE_P_DEFECT, exclude_border=False
    )
    if len(peaks) == 0:
        return pd.DataFrame(columns=UNCERTAIN_COLUMNS)
    edge_px = EDGE_A / card.pixel_size_A  # a column cut by the image edge is uncertain and never reviewed
    inside = (peaks >= edge_px).all(1) & (peaks[:, 0] < h - edge_px) & (peaks[:, 1] < w - edge_px)
    peaks = peaks[inside]
    if len(peaks) == 0:
        return pd.DataFrame(columns=UNCERTAIN_COLUMNS)
    r, c = peaks[:, 0], peaks[:, 1]
    width = max(1, int(round(AVERAGE_OVER_A / card.pixel_size_A)))
    at_peak = np.stack(
        [ndimage.uniform_filter(m, width, mode="nearest")[r, c] for m in mean]
    )  # (n_classes, n)
    winner = at_peak.argmax(0)
    agreement = np.mean([v[:h, :w][r, c] == winner for v in votes], axis=0)
    names = np.array([CLASS_NAMES.get(i, str(i)) if i else "intact" for i in range(n_classes)])
    table = pd.DataFrame(
        {
            "x_A": c * card.pixel_size_A,
            "y_A": r * card.pixel_size_A,
            "uncertainty": 1.0 - at_peak.max(0),
            "likely_class": names[winner],
            "p_defect": p_defect[r, c],
            "agreement": agreement,
        }
    )
    table = table.sort_values(["uncertainty", "y_A", "x_A"], ascending=[False, True, True], kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    progress(1.0, f"{len(table)} candidate sites ranked")
    return table[UNCERTAIN_COLUMNS].reset_index(drop=True)
