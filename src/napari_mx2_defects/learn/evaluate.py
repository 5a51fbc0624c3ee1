"""Per-instance scoring as the papers report it: predicted defect centroids matched to true sites."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

__all__ = ["evaluate_model_on_twins", "held_out_twins", "inside_border", "instance_scores", "match_instances",
           "score_pipeline_on_twin"]


def match_instances(pred: pd.DataFrame, truth: pd.DataFrame, radius_A: float = 1.0) -> dict[str, dict[str, int]]:
    """TP/FP/FN per class: one-to-one matches within ``radius_A`` with the same class."""
    counts: dict[str, dict[str, int]] = {}
    for name in sorted(set(pred.defect_class) | set(truth.defect_class)):
        p = pred[pred.defect_class == name][["x_A", "y_A"]].to_numpy()
        t = truth[truth.defect_class == name][["x_A", "y_A"]].to_numpy()
        tp = 0
        if len(p) and len(t):
            d = np.hypot(p[:, None, 0] - t[None, :, 0], p[:, None, 1] - t[None, :, 1])
            cost = np.where(d <= radius_A, d, 1e6)
            rows, cols = linear_sum_assignment(cost)
            tp = int((cost[rows, cols] <= radius_A).sum())
        counts[name] = {"tp": tp, "fp": len(p) - tp, "fn": len(t) - tp}
    return counts


def instance_scores(counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    """Precision, recall and F1 per class from summed TP/FP/FN."""
    rows = []
    for name, c in sorted(counts.items()):
        tp, fp, fn = c["tp"], c["fp"], c["fn"]
        precision = tp / (tp + fp) if tp + fp else float("nan")
        recall = tp / (tp + fn) if tp + fn else float("nan")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan")
        rows.append({"defect_class": name, "tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall,
                     "f1": f1})
    return pd.DataFrame(rows)


def _add(total: dict, counts: dict) -> None:
    for name, c in counts.items():
        slot = total.setdefault(name, {"tp": 0, "fp": 0, "fn": 0})
        for k in slot:
            slot[k] += c[k]


def held_out_twins(materials=("MoSe2", "WS2"), doses=(1e6,), n_per: int = 3, seed: int = 10_000,
                   fov_A: float = 60.0, defects: str = "V_X=2%,V_XX=1%,V_M=1%"):
    """The held-out twins every evaluation scores on, checked and then made one at a time.

    Twin ``j`` of the (dose, material, k) list has seed ``seed + j mod (materials × n_per)``, a pixel size
    drawn in 0.12–0.2 Å and drawn scan jitter, contamination and probe-current variation: a dose sweep
    sees the same structures and conditions at every dose (only the shot noise changes), so its doses
    compare like with like. At a single dose this is the earlier ``seed + j``. Yields ``(index, count, dose, material, k, twin)``.
    """
    from ..core.validation import BOUNDS
    from ..twin.api import TwinRequest, simulate_twin
    from ..twin.imperfections import Imperfections
    from ..twin.parents import get_parent

    n_per = BOUNDS["n_per"].check(n_per)
    seed = BOUNDS["seed"].check(seed)
    fov_A = BOUNDS["fov_A"].with_option("field of view").check(fov_A)
    doses = [BOUNDS["dose_e_per_A2"].with_option("--doses").check(d) for d in doses]
    for material in materials:
        get_parent(material)  # an unknown parent is refused before the first twin
    jobs = [(dose, material, k) for dose in doses for material in materials for k in range(n_per)]
    per_dose = len(materials) * n_per
    for j, (dose, material, k) in enumerate(jobs):
        structure = seed + j % per_dose  # the same structure and conditions at every dose
        rng = np.random.default_rng(structure)
        twin = simulate_twin(TwinRequest(
            material=material, defects=defects, fov_A=fov_A, pixel_size_A=float(rng.uniform(0.12, 0.2)),
            seed=structure, imperfections=Imperfections(
                dose_e_per_A2=dose, scan_jitter_A=float(rng.uniform(0, 0.05)),
                contamination=float(rng.uniform(0, 0.2)), probe_current_variation=float(rng.uniform(0, 0.03)))))
        yield j, len(jobs), dose, material, k, twin


def inside_border(table: pd.DataFrame, twin, border_A: float) -> pd.DataFrame:
    """Rows of a defects table at least ``border_A`` from the twin's edges."""
    ex, ey = twin.extent_xy_A
    return table[(table.x_A > border_A) & (table.y_A > border_A) & (table.x_A < ex - border_A)
                 & (table.y_A < ey - border_A)]


def evaluate_model_on_twins(model: str = "default", materials=("MoSe2", "WS2"), doses=(1e6,), n_per: int = 3,
                            seed: int = 10_000, fov_A: float = 60.0, defects: str = "V_X=2%,V_XX=1%,V_M=1%",
                            border_A: float = 1.5, runtime: str = "auto", progress=lambda f, m: None) -> dict:
    """Generate held-out twins (:func:`held_out_twins`) and score the model.

    Defects within ``border_A`` of the image edge are left out of both sides (a disc cut by the
    edge has no well-defined centroid). ``runtime`` is what runs the network (:mod:`.runtime`).

    Returns
    -------
    dict
        ``{"by_dose": {dose: DataFrame}, "overall": DataFrame}``
    """
    from .inference import segment_image

    by_dose = {}
    overall: dict = {}
    for j, n_jobs, dose, material, k, twin in held_out_twins(materials, doses, n_per, seed, fov_A, defects):
        seg = segment_image(twin.image, twin.pixel_size_A[1], model=model, material=material, runtime=runtime)
        counts = match_instances(inside_border(seg.defects, twin, border_A),
                                 inside_border(twin.truth_table(), twin, border_A))
        _add(by_dose.setdefault(dose, {}), counts)
        _add(overall, counts)
        progress((j + 1) / n_jobs, f"{material} dose {dose:g}: {k + 1}/{n_per}")
    return {"by_dose": {d: instance_scores(c) for d, c in by_dose.items()}, "overall": instance_scores(overall)}


def score_pipeline_on_twin(twin, material: str, microscope=None, dopant: str | None = None, model: str = "default",
                           runtime: str = "auto", border_A: float = 3.0) -> dict[str, dict]:
    """Per-instance TP/FP/FN on one twin of the model alone and of the answer the plugin reports.

    The twin is segmented (``material`` named, as the CLI does) and analysed with the model's defects,
    ``dopant`` and the microscope's beam energy, convergence and detector angles typed in (what a user
    reads off the instrument); nothing else of the twin's optics (defocus, aberrations, source size,
    pixel-size error) is given.  ``model``: the model's defects; ``reported``: each site's
    ``reported_class`` (the one answer per site that the counts use) at the fitted site.  Defects within
    ``border_A`` of an edge are left out of both sides.

    Returns ``{"model": counts, "reported": counts, "sites": n_analysed_sites}`` (counts as
    :func:`match_instances`).
    """
    from ..analysis.api import analyze_image
    from .inference import segment_image

    pixel = twin.pixel_size_A[1]
    energy = microscope.energy_keV if microscope is not None else None
    optics = microscope.recorded_optics() if microscope is not None else None
    seg = segment_image(twin.image, pixel, model=model, material=material, beam_energy_keV=energy, optics=optics,
                        runtime=runtime)
    result = analyze_image(twin.image, pixel, material, defects=seg.defects, beam_energy_keV=energy, dopant=dopant,
                           optics=optics)
    sites = result.sites
    reported = sites[sites.reported_class.astype(str) != ""]
    reported = pd.DataFrame({"x_A": reported.x_A.to_numpy(float), "y_A": reported.y_A.to_numpy(float),
                             "defect_class": reported.reported_class.astype(str).to_numpy()})
    truth = inside_border(twin.truth_table(), twin, border_A)
    return {"model": match_instances(inside_border(seg.defects, twin, border_A), truth),
            "reported": match_instances(inside_border(reported, twin, border_A), truth),
            "sites": int(len(inside_border(sites, twin, border_A)))}
