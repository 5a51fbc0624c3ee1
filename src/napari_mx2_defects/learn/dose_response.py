"""Dose-response of a model, as Fuhr et al. report it: F1 and IoU against dose per class, for several
class groupings, and their eqn. 1 fitted, D(B) = D0 + A·exp(−B/α), B the dose in e/Å².

The answer a user wants is "how much dose do I need": :func:`dose_for` solves the fitted curve for
the dose at which a class reaches F1 0.9 (NaN when its plateau D0 stays below).

Class groupings (``classes``): 1 = binary (any defect against the lattice); 3 = by where the defect
sits (chalcogen site, metal site, off the lattice); the model's own number = every class. A grouping
merges the model's and the truth's classes before matching, so the same trained model is scored at
each level of detail (Fuhr et al. trained one network per grouping; this measures how much of the
shipped model's error is confusion between classes of a group).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.classes import CLASS_IDS, CLASS_NAMES, EVERY_CLASS, class_grouping

__all__ = ["DOSE_FILES", "DoseResponse", "dose_for", "dose_response", "fit_dose_curve"]

#: What :meth:`DoseResponse.save` writes.
DOSE_FILES = ["dose_response.csv", "dose_fit.csv", "dose_response.png"]
#: The F1 a class must reach for :func:`dose_for` (the "enough dose" answer in the docs).
F1_ENOUGH = 0.9
def _grouped(table: pd.DataFrame, grouping: dict[str, str]) -> pd.DataFrame:
    return table.assign(defect_class=table.defect_class.map(grouping))


def _pixel_iou(pred_labels: np.ndarray, true_labels: np.ndarray, grouping: dict[str, str]) -> dict[str, tuple]:
    """Per group: (intersection, union) pixel counts of the two class maps."""
    groups = sorted(set(grouping.values()))
    lookup = np.zeros(max(CLASS_NAMES) + 1, int)  # class id → group index + 1 (0 = lattice)
    for name, group in grouping.items():
        lookup[CLASS_IDS[name]] = groups.index(group) + 1
    p, t = lookup[np.asarray(pred_labels)], lookup[np.asarray(true_labels)]
    return {g: (int(((p == k + 1) & (t == k + 1)).sum()), int(((p == k + 1) | (t == k + 1)).sum()))
            for k, g in enumerate(groups)}


def _inner(twin, border_A: float) -> tuple[slice, slice]:
    """The pixels at least ``border_A`` from the edges (where :func:`~.evaluate.inside_border` keeps defects)."""
    py, px = twin.pixel_size_A
    by, bx = int(np.ceil(border_A / py)), int(np.ceil(border_A / px))
    return slice(by, twin.labels.shape[0] - by), slice(bx, twin.labels.shape[1] - bx)


def dose_curve(dose, d0, amplitude, alpha):
    """Fuhr et al. eqn. 1: D(B) = D0 + A·exp(−B/α)."""
    return d0 + amplitude * np.exp(-np.asarray(dose, float) / alpha)


def fit_dose_curve(dose: np.ndarray, values: np.ndarray) -> tuple[float, float, float]:
    """(D0, A, α) of eqn. 1 by least squares; NaNs when fewer than three finite points or no fit.

    α is searched on a log grid of the measured doses first (the curve is a step in linear dose), then
    refined with scipy's ``curve_fit`` from the best grid point.
    """
    from scipy.optimize import curve_fit

    dose, values = np.asarray(dose, float), np.asarray(values, float)
    ok = np.isfinite(values) & np.isfinite(dose)
    dose, values = dose[ok], values[ok]
    if len(np.unique(dose)) < 3:
        return (np.nan, np.nan, np.nan)
    best = None
    for alpha in np.geomspace(dose.min() / 10, dose.max() * 10, 80):  # linear in D0, A at fixed α
        design = np.column_stack([np.ones_like(dose), np.exp(-dose / alpha)])
        coef, *_ = np.linalg.lstsq(design, values, rcond=None)
        err = float(np.sum((design @ coef - values) ** 2))
        if best is None or err < best[0]:
            best = (err, coef[0], coef[1], alpha)
    _, d0, amplitude, alpha = best
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (d0, amplitude, alpha), _ = curve_fit(dose_curve, dose, values, p0=(d0, amplitude, alpha),
                                                  bounds=([-1, -10, dose.min() / 100], [2, 10, dose.max() * 100]),
                                                  maxfev=5000)
    except (RuntimeError, ValueError):
        pass  # the grid's answer stands
    return float(d0), float(amplitude), float(alpha)


def dose_for(level: float, d0: float, amplitude: float, alpha: float) -> float:
    """The dose where the fitted curve reaches ``level`` (rising curves: A < 0); NaN if it never does."""
    if not np.all(np.isfinite([d0, amplitude, alpha])) or amplitude >= 0 or d0 <= level:
        return float("nan")
    ratio = (level - d0) / amplitude
    return float(max(0.0, -alpha * np.log(ratio))) if ratio > 0 else float("nan")


@dataclass
class DoseResponse:
    """``points``: one row per grouping × class × dose (tp, fp, fn, f1, iou, n_images); ``fits``: one
    row per grouping × class × metric (d0, amplitude, alpha_e_per_A2, dose_for_f1_0_9_e_per_A2)."""

    points: pd.DataFrame
    fits: pd.DataFrame
    model: str

    def save(self, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
        from ..io.atomic import StagedOutput

        with StagedOutput(out_dir, DOSE_FILES, overwrite=overwrite) as staging:
            self.write(staging)
        return [Path(out_dir) / n for n in DOSE_FILES]

    def write(self, folder: Path) -> None:
        folder = Path(folder)
        self.points.to_csv(folder / "dose_response.csv", index=False)
        self.fits.to_csv(folder / "dose_fit.csv", index=False)
        dose_response_figure(self).savefig(folder / "dose_response.png", dpi=120)

    def enough_dose(self) -> pd.DataFrame:
        """Per grouping and class: the dose (e/Å²) where the fitted F1 reaches 0.9 (NaN: never)."""
        f1 = self.fits[self.fits.metric == "f1"]
        return f1[["classes", "defect_class", "d0", "dose_for_f1_0_9_e_per_A2"]].reset_index(drop=True)


def draw_dose_response(figure, response: DoseResponse) -> None:
    """F1 (points) and the eqn. 1 fit (lines) against dose, one panel per grouping, log dose axis."""
    figure.clear()
    groupings = sorted(response.points.classes.unique()) if len(response.points) else []
    for k, n in enumerate(groupings):
        ax = figure.add_subplot(1, len(groupings), k + 1)
        rows = response.points[response.points.classes == n]
        doses = np.geomspace(rows.dose_e_per_A2.min(), rows.dose_e_per_A2.max(), 200)
        for name, group in rows.groupby("defect_class"):
            if int(group.tp.sum() + group.fn.sum()) == 0:
                continue  # no true instance at any dose: its false positives are in the table
            line = ax.plot(group.dose_e_per_A2, group.f1, "o", ms=4, label=name)[0]
            fit = response.fits[(response.fits.classes == n) & (response.fits.defect_class == name)
                                & (response.fits.metric == "f1")]
            if len(fit) and np.isfinite(fit.alpha_e_per_A2.iloc[0]):
                f = fit.iloc[0]
                ax.plot(doses, dose_curve(doses, f.d0, f.amplitude, f.alpha_e_per_A2), "-", color=line.get_color(),
                        lw=1)
        ax.axhline(F1_ENOUGH, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("dose (e/Å²)")
        ax.set_title(f"{n} class{'es' if n > 1 else ''}", fontsize=9)
        if k == 0:
            ax.set_ylabel("F1 (points), eqn. 1 fit (lines)")
        ax.legend(fontsize=6, loc="lower right")


def dose_response_figure(response: DoseResponse):
    from matplotlib.figure import Figure

    n = max(1, response.points.classes.nunique() if len(response.points) else 1)
    figure = Figure(figsize=(4.2 * n, 3.6), tight_layout=True)
    draw_dose_response(figure, response)
    return figure


def dose_response(model: str = "default", materials=("MoSe2", "WS2"), doses=(1e3, 1e4, 1e5, 1e6),
                  n_per: int = 2, seed: int = 10_000, classes=(1, 3, EVERY_CLASS), fov_A: float = 60.0,
                  defects: str = "V_X=2%,V_XX=1%,V_M=1%", border_A: float = 1.5, runtime: str = "auto",
                  progress=lambda f, m: None, cancelled=lambda: False) -> DoseResponse:
    """Score ``model`` on held-out twins (:func:`~.evaluate.held_out_twins`: the same structures at every
    dose) per class grouping and dose, and fit eqn. 1 to F1 and IoU per class."""
    from ..core.jobs import check_cancelled
    from .evaluate import _add, held_out_twins, inside_border, instance_scores, match_instances
    from .inference import segment_image

    groupings = {int(n): class_grouping(int(n)) for n in classes}
    counts: dict = {}
    overlaps: dict = {}
    images: dict = {}
    for j, n_jobs, dose, material, k, twin in held_out_twins(materials, doses, n_per, seed, fov_A, defects):
        check_cancelled(cancelled, "dose-response")
        seg = segment_image(twin.image, twin.pixel_size_A[1], model=model, material=material, runtime=runtime)
        pred, truth = inside_border(seg.defects, twin, border_A), inside_border(twin.truth_table(), twin, border_A)
        for n, grouping in groupings.items():
            _add(counts.setdefault((n, dose), {}), match_instances(_grouped(pred, grouping), _grouped(truth, grouping)))
            inner = _inner(twin, border_A)  # the same area as the instance scores
            for group, (inter, union) in _pixel_iou(seg.labels[inner], twin.labels[inner], grouping).items():
                slot = overlaps.setdefault((n, dose, group), [0, 0])
                slot[0] += inter
                slot[1] += union
        images[dose] = images.get(dose, 0) + 1
        progress((j + 1) / n_jobs, f"{material} dose {dose:g}: {k + 1}/{n_per}")
    rows = []
    for (n, dose), c in sorted(counts.items()):
        for r in instance_scores(c).itertuples():
            inter, union = overlaps.get((n, dose, r.defect_class), (0, 0))
            rows.append({"classes": n, "defect_class": r.defect_class, "dose_e_per_A2": dose, "tp": r.tp, "fp": r.fp,
                         "fn": r.fn, "f1": r.f1, "iou": inter / union if union else float("nan"),
                         "n_images": images[dose]})
    points = pd.DataFrame(rows, columns=["classes", "defect_class", "dose_e_per_A2", "tp", "fp", "fn", "f1", "iou",
                                         "n_images"])
    fits = []
    for (n, name), group in points.groupby(["classes", "defect_class"]):
        present = int(group.tp.sum() + group.fn.sum()) > 0  # a class no twin holds: false positives only, no curve
        for metric in ("f1", "iou"):
            d0, amplitude, alpha = (fit_dose_curve(group.dose_e_per_A2.to_numpy(), group[metric].to_numpy())
                                    if present else (np.nan, np.nan, np.nan))
            fits.append({"classes": n, "defect_class": name, "metric": metric, "d0": d0, "amplitude": amplitude,
                         "alpha_e_per_A2": alpha,
                         "dose_for_f1_0_9_e_per_A2": dose_for(F1_ENOUGH, d0, amplitude, alpha) if metric == "f1"
                         else float("nan")})
    return DoseResponse(points=points, fits=pd.DataFrame(fits), model=str(model))
