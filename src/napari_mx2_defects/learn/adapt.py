"""Adaptation with no clicks: the network fine-tuned on the user's own image, taught by the site physics.

A network trained on twins meets a real microscope it never saw (another detector, blur, drift, a dopant
it never learned to name: on a real Ti-doped WSe2 ADF scan the shipped model names no Ti at all).  The
calibrated site physics (:func:`~..analysis.api.analyze_image`) does know this image: its levels are
fitted to it.  Adaptation takes the physics' word where it is sure and nowhere else:

1. the image is segmented with the starting model and analysed with those detections (file optics, the
   named dopant), which gives the **model–physics agreement before** (``model_vs_physics``);
2. the sites the physics names with a posterior ≥ :data:`MIN_POSTERIOR` (default 0.99) become the
   corrections — a defect where it names one, intact where it is sure of intact; every site below that
   bar, every site in a hole or left out of the counts, and every off-lattice detection of the starting
   model (interstitials and adatoms, which the physics cannot judge) is **unknown**: left out of the loss
   (:data:`~.train.IGNORE_LABEL`), not taught as intact;
3. :func:`~.finetune.finetune` trains on them, mixed with twins of the parent imaged at the optics the
   file records and the source size fitted on the image, with the named dopant as TM_D; the bottom
   quarter of the image is held out and a model worse there than the starting one is not kept;
4. the image is segmented and analysed again with the adapted model: the **agreement after**.

The adapted model belongs to this image (and this parent, dopant, optics and starting model): it is kept
in the cache folder under a key of all of them, never in the shipped model, and a second run on the same
image reuses it.  ``segment --adapt`` and the *Find defects* dock's *adapt to this image* call
:func:`adapt_to_image`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.classes import DEFECT_CLASSES
from ..core.jobs import CancelFn, ProgressFn, never, no_progress
from .finetune import Correction, FinetuneConfig, finetune

__all__ = ["MIN_POSTERIOR", "AdaptResult", "adapt_to_image", "adapted_model_folder", "overall_agreement"]

#: The site physics' posterior at or above which a site's class is taught to the network.
MIN_POSTERIOR = 0.99
#: Adaptation's own defaults: a short run (the image is one, the twins few).
ADAPT_CONFIG = FinetuneConfig(minutes=4.0, epochs=10, twins=6)


@dataclass
class AdaptResult:
    """What :func:`adapt_to_image` did: the model segmenting the image now, the segmentation, and the
    model–physics agreement before and after (``model_vs_physics`` of the analysis, per class)."""

    model: Path | str
    segmentation: object  # learn.inference.Segmentation
    agreement_before: dict
    agreement_after: dict
    adapted: bool
    reused: bool = False
    message: str = ""
    report: dict = field(default_factory=dict)
    taught: dict = field(default_factory=dict)  # sites taught per class, and how many were left unknown

    def summary(self) -> str:
        before, after = overall_agreement(self.agreement_before), overall_agreement(self.agreement_after)
        head = (f"model–physics agreement {before:.2f} → {after:.2f}" if self.adapted else
                f"model–physics agreement {before:.2f} (not adapted)")
        return head + (f"; {self.message}" if self.message else "")


def overall_agreement(per_class: dict) -> float:
    """Sites both name the same class over sites either names a lattice-site class (1: full agreement)."""
    both = sum(v["both"] for v in per_class.values())
    union = sum(v["model"] + v["physics"] - v["both"] for v in per_class.values())
    return float(both / union) if union else 1.0


def _image_digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image, dtype=np.float32).tobytes()).hexdigest()


def adapted_model_folder(image: np.ndarray, pixel_size_A: float, material: str, dopant: str | None,
                         optics: dict | None, base_model: str | Path) -> Path:
    """Where the model adapted to this image (and these settings) is kept: the cache folder, keyed by the
    image's pixels and everything else that shaped it."""
    from ..twin.calibration import cache_dir
    from .inference import model_path
    from .runtime import _file_digest

    key = json.dumps({"image": _image_digest(image), "pixel_size_A": round(float(pixel_size_A), 6),
                      "material": material, "dopant": dopant or "", "optics": optics or {},
                      "base": _file_digest(model_path(base_model)), "min_posterior": MIN_POSTERIOR},
                     sort_keys=True, default=str)
    return cache_dir() / "adapted" / hashlib.sha256(key.encode()).hexdigest()[:20]


def _teaching(sites: pd.DataFrame, model_defects: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(defects to teach, unknown positions, counts) from an analysis' sites and the starting model's detections."""
    sure = (sites.p_class.to_numpy(float) >= MIN_POSTERIOR) & ~sites.in_hole.to_numpy(bool)
    for column in ("in_contamination", "in_other_phase"):
        if column in sites:
            sure &= ~sites[column].to_numpy(bool)
    classes = sites.defect_class.astype(str).to_numpy()
    taught = sites[sure & (classes != "")][["x_A", "y_A", "defect_class"]].reset_index(drop=True)
    off_lattice = {name for name, _, sub in DEFECT_CLASSES.values() if sub not in ("M", "X")}
    off = model_defects[model_defects.defect_class.isin(off_lattice)][["x_A", "y_A"]]
    unknown = pd.concat([sites[~sure][["x_A", "y_A"]], off], ignore_index=True)
    counts = {"defects": {k: int(v) for k, v in taught.defect_class.value_counts().items()},
              "intact": int((sure & (classes == "")).sum()), "unknown_sites": int((~sure).sum()),
              "unknown_off_lattice": int(len(off))}
    return taught, unknown, counts


def adapt_to_image(image: np.ndarray, pixel_size_A: float, material: str, dopant: str | None = None,
                   beam_energy_keV: float | None = None, optics: dict | None = None,
                   base_model: str | Path = "default", config: FinetuneConfig | None = None,
                   runtime: str = "auto", device: str = "auto", name: str = "image",
                   progress: ProgressFn = no_progress, log: Callable[[str], None] = lambda m: None,
                   cancelled: CancelFn = never) -> AdaptResult:
    """Fine-tune ``base_model`` on this image where the site physics is sure (see the module docstring) and
    segment it with the result; a model adapted to the same image and settings before is reused."""
    from ..analysis.api import analyze_image
    from ..analysis.sites import microscope_for
    from ..core.parameters import DEFAULTS
    from .inference import checked_image, segment_image

    img = checked_image(image, pixel_size_A, "adapting the model to")
    config = config or ADAPT_CONFIG
    energy = float(beam_energy_keV) if beam_energy_keV else DEFAULTS["energy_keV"]

    def segment(model, lo, hi, what):
        return segment_image(img, pixel_size_A, model=model, device=device, material=material,
                             beam_energy_keV=energy, optics=optics, runtime=runtime,
                             progress=lambda f, m: progress(lo + (hi - lo) * f, f"{what}: {m}"), cancelled=cancelled)

    def analyse(defects, lo, hi, what):
        return analyze_image(np.asarray(img, float), pixel_size_A, material, defects=defects, beam_energy_keV=energy,
                             dopant=dopant, optics=optics, cancelled=cancelled,
                             progress=lambda f, m: progress(lo + (hi - lo) * f, f"{what}: {m}"))

    seg0 = segment(base_model, 0.0, 0.05, "segmenting with the starting model")
    result0 = analyse(seg0.defects, 0.05, 0.15, "site physics")
    before = result0.lattice.get("model_vs_physics", {})
    folder = adapted_model_folder(img, pixel_size_A, material, dopant, optics, base_model)
    weights = folder / "model.safetensors"
    if weights.is_file():
        log(f"reusing the model adapted to this image before ({weights})")
        seg1 = segment(weights, 0.15, 0.9, "segmenting with the adapted model")
        after = analyse(seg1.defects, 0.9, 1.0, "site physics").lattice.get("model_vs_physics", {})
        return AdaptResult(weights, seg1, before, after, adapted=True, reused=True,
                           message=f"the model adapted to this image before, {weights}")
    taught, unknown, counts = _teaching(result0.sites, seg0.defects)
    log(f"teaching {counts['intact']} intact sites and {sum(counts['defects'].values())} defects "
        f"({', '.join(f'{k} {v}' for k, v in counts['defects'].items()) or 'none'}) the physics is sure of "
        f"(posterior ≥ {MIN_POSTERIOR}); {counts['unknown_sites']} sites and {counts['unknown_off_lattice']} "
        f"off-lattice detections left unknown")
    source = result0.lattice.get("fitted_optics", {}).get("source_size_A")
    microscope = microscope_for(energy, optics)
    if source is not None and np.isfinite(source):
        microscope = replace(microscope, source_size_A=float(source))
    correction = Correction(np.asarray(img, float), float(pixel_size_A), taught, None, name=name,
                            sha256=_image_digest(img), labels_name=f"site physics, posterior ≥ {MIN_POSTERIOR}",
                            unknown=unknown)
    path, report = finetune([correction], material, folder, base_model=base_model, dopant=dopant,
                            config=replace(config, fit_lattice=False), microscope=microscope, optics=optics,
                            command=f"adapt to {name}: {material}" + (f", dopant {dopant}" if dopant else ""),
                            progress=lambda f, m: progress(0.15 + 0.7 * f, f"adapting: {m}"), log=log,
                            cancelled=cancelled, overwrite=True)
    if path is None:
        return AdaptResult(base_model, seg0, before, before, adapted=False, report=report, taught=counts,
                           message=report["why"])
    seg1 = segment(path, 0.85, 0.95, "segmenting with the adapted model")
    after = analyse(seg1.defects, 0.95, 1.0, "site physics").lattice.get("model_vs_physics", {})
    progress(1.0, "done")
    return AdaptResult(path, seg1, before, after, adapted=True, report=report, taught=counts,
                       message=f"adapted model kept for this image in {folder}")
