"""A frame series through the per-image pipeline: drift, one common lattice, counts, tracks, cross-sections.

Data flow (the same from ``mx2-defects series`` and the *Series* dock)::

    file ──load_series──► FrameStack (frames first, Å/px, optics, dose of each frame)
       frames ──align.measure_drift──► drift_x_A, drift_y_A per frame (phase correlation)
       each frame ──learn.segment_image + analysis.analyze_image──► sites and classes (as ``analyze`` with a model)
       sites ──tracking.index_sites──► frame 0's lattice, every site's class in every frame
             ──tracking.defect_tracks──► tracks;  rates.cross_sections──► σ per process with exact intervals

Each frame is analysed as recorded (no interpolation of its noise); positions are carried to frame 0 by
the measured drift. ``cumulative_dose_e_per_A2`` of frame k is the dose delivered before it (the sum of the
doses of frames 0…k−1): the dose the structure seen in frame k has received.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.jobs import check_cancelled
from .rates import CROSS_SECTION_COLUMNS, cross_sections, expected_counts, missing_chalcogens
from .tracking import TRACK_COLUMNS, defect_tracks, index_sites

__all__ = ["ELEMENTARY_CHARGE_C", "SERIES_FILES", "FrameStack", "SeriesResult", "analyze_series",
           "dose_from_optics", "frame_stack", "load_series"]

#: What a series result writes.
SERIES_FILES = ["frames.csv", "tracks.csv", "cross_section.csv", "series.json"]
#: Smallest frame (px per side) the per-image analysis takes.
MIN_FRAME_PX = 32
#: The elementary charge (C): electrons per second in an ampere.
ELEMENTARY_CHARGE_C = 1.602176634e-19


def dose_from_optics(optics: Mapping | None, pixel_size_A: float) -> float | None:
    """Dose of one frame (e/Å²) from the recorded probe current and dwell time per pixel: I·t/e over the
    pixel's area; None when the file does not record both."""
    optics = optics or {}
    current, dwell = optics.get("probe_current_A"), optics.get("dwell_time_s")
    try:
        current, dwell = float(current), float(dwell)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(current) and np.isfinite(dwell) and current > 0 and dwell > 0 and pixel_size_A > 0):
        return None
    return current * dwell / ELEMENTARY_CHARGE_C / float(pixel_size_A) ** 2


@dataclass
class FrameStack:
    """The frames of a series (first axis) with what the analysis needs of each."""

    frames: np.ndarray  # (n, ny, nx)
    pixel_size_A: float
    beam_energy_keV: float | None
    optics: dict
    dose_e_per_A2: np.ndarray  # (n,) dose of each frame
    dose_source: str
    name: str = "series"
    notes: list[str] = field(default_factory=list)

    @property
    def cumulative_dose_e_per_A2(self) -> np.ndarray:
        """The dose delivered before each frame (0 for frame 0)."""
        return np.concatenate([[0.0], np.cumsum(self.dose_e_per_A2)[:-1]])


def frame_stack(data, scale_yx, calibrated: bool, beam_energy_keV, optics: dict | None, values: Mapping,
                name: str = "the stack", option_of=lambda p: p.flag) -> FrameStack:
    """A :class:`FrameStack` from a stack's array and calibration (a file's, or an Image layer's), by the rules
    ``analyze`` uses for one image (:func:`~..inputs.analysis_settings`); ``values`` are those of
    :data:`~..core.parameters.SERIES_PARAMETERS`. One-line ValueErrors for what cannot make a series."""
    from ..core.parameters import DOSE_PER_FRAME
    from ..inputs import analysis_settings

    arr = np.asarray(data)
    if arr.ndim == 2 or (arr.ndim >= 3 and arr.shape[0] == 1):
        raise ValueError(f"{name} holds a single frame; a series needs a stack of at least 2 frames "
                         "(frames on the first axis): open or save the frames as one stack")
    if arr.ndim != 3:
        raise ValueError(f"{name} has shape {arr.shape}; a series is a stack of 2-D frames (frame, y, x)")
    if min(arr.shape[1:]) < MIN_FRAME_PX:
        raise ValueError(f"{name}: frames of {arr.shape[2]}×{arr.shape[1]} px are too small to analyse (need at least "
                         f"{MIN_FRAME_PX}×{MIN_FRAME_PX} pixels of atomic resolution)")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} is not a grey-level image stack (dtype {arr.dtype})")
    pixel, energy, optics = analysis_settings(scale_yx, calibrated, beam_energy_keV,
                                              {**values, "self_calibrate": False}, name, option_of=option_of,
                                              recorded_optics=optics)
    typed = values.get(DOSE_PER_FRAME.name)
    recorded = dose_from_optics(optics, pixel)
    notes = []
    if typed:
        dose = DOSE_PER_FRAME.check(typed, option_of(DOSE_PER_FRAME))
        source = option_of(DOSE_PER_FRAME)
        if recorded and abs(recorded / dose - 1) > 0.05:
            notes.append(f"{source} {dose:g} e/Å² replaces the {recorded:.3g} e/Å² per frame the file's beam current "
                         "and dwell time give")
    elif recorded:
        dose, source = recorded, "the file's probe current × dwell time per pixel area"
    else:
        raise ValueError(f"{name} records no beam current and dwell time, so the dose of each frame is unknown: "
                         f"give {option_of(DOSE_PER_FRAME)} in e/Å²")
    n = arr.shape[0]
    return FrameStack(arr, float(pixel), energy, dict(optics), np.full(n, float(dose)), source, name, notes)


def load_series(path: str | Path, values: Mapping | None = None) -> FrameStack:
    """Read a frame stack through the package's reader (any format it knows; frames on the first axis)."""
    from ..core.parameters import SERIES_PARAMETERS
    from ..io.formats import load_images

    path = Path(path)
    values = {**{p.name: p.default for p in SERIES_PARAMETERS}, **dict(values or {})}
    images = load_images(path)
    stacks = [im for im in images if np.ndim(im.data) >= 3 and np.shape(im.data)[0] > 1]
    image = stacks[0] if stacks else images[0]
    stack = frame_stack(image.data, image.scale_A[-2:], image.calibrated, image.beam_energy_keV, image.optics,
                        values, path.name)
    stack.notes[:0] = list(image.warnings)
    stack.name = path.stem
    return stack


@dataclass
class SeriesResult:
    """What a series gave."""

    frames: pd.DataFrame  # frame, cumulative_dose_e_per_A2, one count column per class, missing_X, drift_x_A, drift_y_A
    tracks: pd.DataFrame  # TRACK_COLUMNS
    cross_section: pd.DataFrame  # CROSS_SECTION_COLUMNS
    sites: pd.DataFrame  # the tracked sites of frame 0's lattice: site, x_A, y_A, sublattice
    history: np.ndarray  # (n_frames, n_sites) class of every tracked site in every frame
    fits: pd.DataFrame  # expected V_X, V_XX, V_M, missing_X per frame from the cross-sections
    drift_xy_A: np.ndarray  # (n_frames, 2)
    pixel_size_A: float
    a_A: float
    settings: dict
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """The count columns of :attr:`frames`, one per class."""
        fixed = {"frame", "cumulative_dose_e_per_A2", "missing_X", "drift_x_A", "drift_y_A"}
        return [c for c in self.frames.columns if c not in fixed]

    def points(self) -> pd.DataFrame:
        """``frame, x_A, y_A, sublattice, defect_class`` of every defect in every frame (frame 0's frame, Å)."""
        k, s = np.nonzero(self.history != "")
        return pd.DataFrame({"frame": k, "x_A": self.sites.x_A.to_numpy()[s], "y_A": self.sites.y_A.to_numpy()[s],
                             "sublattice": self.sites.sublattice.to_numpy()[s],
                             "defect_class": self.history[k, s].astype(str)})

    def summary(self) -> str:
        """One line per process: σ with its 95 % interval, events and atoms at risk."""
        lines = []
        for r in self.cross_section.itertuples():
            sigma = "n/a" if not np.isfinite(r.sigma_barn) else f"{r.sigma_barn:.3g} barn"
            lines.append(f"{r.process}: {sigma} (95 %: {r.ci_low_barn:.3g}–{r.ci_high_barn:.3g}), "
                         f"{r.n_events} events / {r.n_at_risk} at risk")
        return "\n".join(lines)

    def save(self, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
        """Write :data:`SERIES_FILES` atomically (all appear together, or none)."""
        from ..io.atomic import StagedOutput

        with StagedOutput(out_dir, SERIES_FILES, overwrite=overwrite) as stage:
            self.write(stage)
        return [Path(out_dir) / n for n in SERIES_FILES]

    def write(self, folder: Path) -> None:
        """The files into ``folder`` (a staging folder)."""
        self.frames.to_csv(folder / "frames.csv", index=False)
        self.tracks.to_csv(folder / "tracks.csv", index=False)
        self.cross_section.to_csv(folder / "cross_section.csv", index=False)
        (folder / "series.json").write_text(json.dumps({**self.settings, "notes": self.notes}, indent=2,
                                                       default=str))


def analyze_series(stack: FrameStack, material: str = "MoS2", values: Mapping | None = None,
                   model: str = "default", runtime: str = "auto",
                   progress: Callable[[float, str], None] = lambda f, m: None,
                   cancelled: Callable[[], bool] = lambda: False) -> SeriesResult:
    """Drift, per-frame defects on one common lattice, tracks and cross-sections (module docstring).

    ``values`` may name a ``dopant`` (as ``analyze --dopant``); the pixel size, energy and optics are the
    stack's. ``progress(fraction, message)`` and ``cancelled()`` are the job protocol (:mod:`..core.jobs`).
    """
    import time

    from ..analysis.api import analyze_image
    from ..learn.inference import segment_image
    from ..twin.parents import get_parent
    from .align import lattice_basis, measure_drift

    t0 = time.perf_counter()
    parent = get_parent(material)
    values = dict(values or {})
    dopant = values.get("dopant") or None
    n = stack.frames.shape[0]
    if n < 2:
        raise ValueError("a series needs at least 2 frames")

    def check():
        check_cancelled(cancelled, "series")

    analysed = []
    a_values = []
    notes = list(stack.notes)
    for k in range(n):
        check()
        progress(0.9 * k / n, f"frame {k + 1} of {n}: defects")
        frame = np.asarray(stack.frames[k], np.float32)
        seg = segment_image(frame, stack.pixel_size_A, model=model, runtime=runtime, material=parent.key,
                            beam_energy_keV=stack.beam_energy_keV, optics=stack.optics, cancelled=cancelled)
        check()
        progress(0.9 * (k + 0.5) / n, f"frame {k + 1} of {n}: sites")
        result = analyze_image(frame, stack.pixel_size_A, material=parent.key, defects=seg.defects,
                               beam_energy_keV=stack.beam_energy_keV, dopant=dopant, optics=stack.optics,
                               cancelled=cancelled)
        analysed.append(result.sites)
        a_values.append(result.lattice["a_A"])
        notes.extend(f"frame {k}: {note}" for note in result.notes if k == 0)
    check()
    progress(0.95, "drift between frames (phase correlation, modulo frame 0's lattice)")
    metal = analysed[0][analysed[0].sublattice == "M"]
    basis = lattice_basis(metal[["x_ideal_A", "y_ideal_A"] if "x_ideal_A" in metal else ["x_A", "y_A"]].to_numpy())
    drift = measure_drift(stack.frames, stack.pixel_size_A, basis_A=basis, cancelled=cancelled)
    progress(0.97, "indexing sites through the series")
    a_A = float(np.median(a_values))
    reference, classes, tracked = index_sites(analysed, drift, a_A)
    if not tracked.any():
        raise ValueError("no lattice site was found in every frame: the frames do not overlap (drift larger than "
                         "the field of view?)")
    sites = reference[tracked].reset_index(drop=True)
    sites["site"] = np.arange(len(sites))
    history = classes[:, tracked].astype(object)
    sub = sites.sublattice.to_numpy().astype(str)
    names = sorted({c for frame_sites in analysed for c in
                    frame_sites[("reported_class" if "reported_class" in frame_sites else "defect_class")]
                    .fillna("").astype(str)} - {""})
    cumulative = stack.cumulative_dose_e_per_A2
    rows = []
    for k in range(n):
        row = {"frame": k, "cumulative_dose_e_per_A2": float(cumulative[k])}
        row.update({c: int((history[k] == c).sum()) for c in names})
        row["missing_X"] = int(missing_chalcogens(history[k : k + 1], sub)[0])
        row["drift_x_A"], row["drift_y_A"] = round(float(drift[k, 0]), 4), round(float(drift[k, 1]), 4)
        rows.append(row)
    frames = pd.DataFrame(rows)
    doses = np.asarray(stack.dose_e_per_A2, float)
    table = cross_sections(history, sub, doses)
    tracks = defect_tracks(sites, history, cumulative, a_A)
    sigma = dict(zip(table.process, table.sigma_barn))
    first = {c: int((history[0] == c).sum()) for c in ("V_X", "V_XX", "V_M")}
    fits = expected_counts(first, int((sub == "X").sum()), int((sub == "M").sum()), sigma, doses)
    fits.insert(1, "cumulative_dose_e_per_A2", cumulative)
    n_tracked = int(tracked.sum())
    if n_tracked < 0.5 * len(reference):
        notes.append(f"only {n_tracked} of frame 0's {len(reference)} sites were found in every frame; counts and "
                     "cross-sections are made on those")
    settings = {
        "material": parent.key,
        "n_frames": n,
        "pixel_size_A": stack.pixel_size_A,
        "a_A": a_A,
        "beam_energy_keV": stack.beam_energy_keV,
        "dose_per_frame_e_per_A2": [float(d) for d in doses],
        "dose_source": stack.dose_source,
        "cumulative_dose": "the dose delivered before each frame (frame k: the doses of frames 0…k−1)",
        "model": str(model),
        "runtime": runtime,
        "n_tracked_sites": n_tracked,
        "n_tracked_X_columns": int((sub == "X").sum()),
        "n_tracked_M_sites": int((sub == "M").sum()),
        "events": tracks.event.value_counts().to_dict(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    progress(1.0, f"{n} frames, {n_tracked} sites tracked")
    return SeriesResult(frames=frames, tracks=tracks[TRACK_COLUMNS], cross_section=table[CROSS_SECTION_COLUMNS],
                        sites=sites, history=history, fits=fits, drift_xy_A=drift,
                        pixel_size_A=stack.pixel_size_A, a_A=a_A, settings=settings, notes=notes)
