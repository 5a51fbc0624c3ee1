"""Analyse one image: lattice, sites, intensity histogram, concentrations; export.

:func:`analyze_image` is what the "Defect statistics" widget, ``mx2-defects
analyze`` and the demo all call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.path import Path as PolygonPath
from scipy.spatial import cKDTree

from ..core.jobs import stepper
from ..core.parameters import DEFAULTS
from ..core.pixels import pixel_size_key
from ..core.validation import BOUNDS
from ..core.classes import DEFECT_CLASSES, on_home_sublattice
from ..twin.parents import get_parent
from .lattice import fft_lattice_spacing_px
from .classes import (
    RESOLVABLE_SD,
    VERIFIABLE_SD,
    fit_site_classes,
    sublattice_order_depends_on_detector,
    z_contrast_levels,
)
from .columns import real_image, values_at
from .sites import (find_holes, fit_source_size, follow_the_field, forward_model, left_out, measure_sites, microscope_for,
                    relative_noise)
from .statistics import concentration_table

__all__ = ["ANALYSIS_FILES", "COMPOSITION_FILE", "CONTAMINATION_FILE", "PHASE_MAP_FILE", "PHASE_TABLE_FILE", "SITES_COLUMNS", "AnalysisResult", "analyze_image", "model_physics_agreement"]

SITES_COLUMNS = ["x_A", "y_A", "sublattice", "intensity", "defect_class", "p_class", "flagged", "dopant",
                 "x_ideal_A", "y_ideal_A", "peak_found"]  # the fitted lattice's site and whether a column was found
#: What :meth:`AnalysisResult.save` writes: the only names its ``overwrite`` replaces.
ANALYSIS_FILES = ["sites.csv", "concentrations.csv", "lattice.json", "histogram.png", "concentrations.png"]
#: Written beside them when contamination was mapped (``exclude_contamination``): 1 = contaminated.
CONTAMINATION_FILE = "contamination.tif"
#: Written beside them when the analysis named alloy species: each element's fraction per region.
COMPOSITION_FILE = "composition.csv"
#: Written beside them when phases were mapped (``map_phases``): the map (1 + index in
#: :data:`~..twin.stacking.PHASES`, 0 unassigned) and each phase's area and fraction.
PHASE_MAP_FILE = "phases.tif"
PHASE_TABLE_FILE = "phases.csv"


def optional_files(exclude_contamination: bool = False, alloy_species: str | None = None,
                   map_phases: bool = False) -> list[str]:
    """The files an analysis with these options writes beside :data:`ANALYSIS_FILES` (the one list the
    result, the command and the batch take them from)."""
    return ([CONTAMINATION_FILE] if exclude_contamination else []) + ([COMPOSITION_FILE] if alloy_species else []) \
        + ([PHASE_MAP_FILE, PHASE_TABLE_FILE] if map_phases else [])


#: Every optional file an older result may have left (a new result without the option removes it).
OPTIONAL_FILES = optional_files(True, "x", True)


@dataclass
class AnalysisResult:
    """Everything the analysis measured."""

    sites: pd.DataFrame  # x_A, y_A, sublattice, intensity, defect_class, region, in_hole, model_class
    concentrations: pd.DataFrame
    lattice: dict
    levels: dict
    notes: list[str] = field(default_factory=list)
    contamination: np.ndarray | None = None  # (ny, nx) bool, when mapped (exclude_contamination)
    composition: pd.DataFrame | None = None  # per region and element, when alloy species were named
    phases: np.ndarray | None = None  # (ny, nx) uint8 phase ids, when mapped (map_phases)

    def optics_summary(self) -> str:
        """One line on the optics fitted to the image (the CLI prints it, the *Defect statistics* dock shows
        it): the forward model's beam, probe and detector, the source size with its 68 % interval and the
        Z-contrast exponent."""
        fitted = self.lattice.get("fitted_optics", {})
        m = fitted.get("forward_model_microscope", {})
        parts = [f"{m.get('energy_keV', float('nan')):g} kV"]
        if "semiangle_mrad" in m:
            probe = "aberration-free (fitted: sharper than the nominal probe)" if fitted.get("probe") else \
                f"Cs {m.get('Cs_A', 0) / 1e4:g} µm, defocus {m.get('defocus_A', 0):g} Å"
            parts.append(f"probe {m['semiangle_mrad']:g} mrad, {probe}")
        if "detector_inner_mrad" in m:
            parts.append(f"detector {m['detector_inner_mrad']:g}–{m['detector_outer_mrad']:g} mrad")
        if fitted.get("source_size_A") is not None:
            low, high = fitted.get("source_size_interval_A") or (None, None)
            interval = f" (68 %: {low:g}–{high:g})" if low is not None else ""
            parts.append(f"source size {fitted['source_size_A']:g} Å{interval}")
        if fitted.get("z_exponent") is not None:
            parts.append(f"Z exponent {fitted['z_exponent']:.2f}")
        return "fitted optics: " + ", ".join(parts)

    @property
    def optional_files(self) -> list[str]:
        """The files beside :data:`ANALYSIS_FILES` this result also writes (contamination map, composition,
        phase map and table)."""
        return optional_files(self.contamination is not None, "alloy" if self.composition is not None else None,
                              self.phases is not None)

    def phase_table(self) -> pd.DataFrame:
        """Each mapped phase's label, area (nm², counted as the concentrations count area: metal sites
        times the cell) and fraction of the analysed sites; unassigned sites as phase ''."""
        record = self.lattice.get("phases", {})
        rows = [{"phase": name, "label": v["label"], "area_nm2": v["area_nm2"], "fraction": v["fraction"]}
                for name, v in record.get("areas", {}).items()]
        return pd.DataFrame(rows, columns=["phase", "label", "area_nm2", "fraction"])

    def save(self, out_dir: str | Path, overwrite: bool = False, files: Sequence[str] | None = None) -> list[Path]:
        """Write ``files`` (by default all of sites.csv, concentrations.csv, lattice.json,
        histogram.png and concentrations.png, contamination.tif when the analysis mapped
        contamination, composition.csv when it named alloy species, phases.tif and phases.csv when it
        mapped phases) into ``out_dir``.

        The files are written into a staging folder and moved into ``out_dir`` together when all
        are complete (:class:`~..io.atomic.StagedOutput`): a failure or an interrupt leaves the
        previous files, or none.  ``overwrite`` replaces only these names.
        """
        from ..io.atomic import StagedOutput
        from .plots import concentration_figure, histogram_figure

        known = ANALYSIS_FILES + self.optional_files
        files = known if files is None else files
        unknown = sorted(set(files) - set(known))
        if unknown or not files:
            raise ValueError(f"the analysis writes {', '.join(known)}; cannot write {unknown or 'nothing'}")
        files = [n for n in known if n in files]
        stage = StagedOutput(out_dir, files, overwrite=overwrite)
        columns = SITES_COLUMNS + [c for c in ("local_level", "species", "intensity_corrected", "region", "in_hole", "in_contamination", "phase", "in_other_phase",
                                                  "model_class", "reported_class")
                                   if c in self.sites]
        writers = {
            "sites.csv": lambda path: self.sites[columns].to_csv(path, index=False),
            "concentrations.csv": lambda path: self.concentrations.to_csv(path, index=False),
            "lattice.json": lambda path: path.write_text(json.dumps({**self.lattice, "levels": self.levels,
                                                                     "notes": self.notes}, indent=2)),
            "histogram.png": lambda path: histogram_figure(self).savefig(path, dpi=120),
            "concentrations.png": lambda path: concentration_figure(self).savefig(path, dpi=120),
            CONTAMINATION_FILE: self._write_contamination,
            COMPOSITION_FILE: lambda path: self.composition.to_csv(path, index=False),
            PHASE_MAP_FILE: self._write_phases,
            PHASE_TABLE_FILE: lambda path: self.phase_table().to_csv(path, index=False),
        }
        with stage as staging:
            for name in files:
                writers[name](staging / name)
        return [Path(out_dir) / n for n in files]


    def _write_phases(self, path: Path) -> None:
        from ..io.writer import write_calibrated_tiff
        from ..twin.stacking import PHASES

        write_calibrated_tiff(path, self.phases.astype(np.uint8), self.lattice["pixel_size_A"],
                              title="phase map (0 unassigned, " + ", ".join(f"{i + 1} {p}" for i, p in
                                                                           enumerate(PHASES)) + ")")

    def _write_contamination(self, path: Path) -> None:
        from ..io.writer import write_calibrated_tiff

        write_calibrated_tiff(path, self.contamination.astype(np.uint8), self.lattice["pixel_size_A"],
                              title="contamination map (1 = contaminated)")


def _validate(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"expected one 2-D image, got shape {img.shape}; pick a single frame first")
    if min(img.shape) < 32:
        raise ValueError(f"image {img.shape} is too small to analyse (need at least 32×32 pixels)")
    img = real_image(img)  # float32 and float64 images are analysed as they are (no copy)
    bad = ~np.isfinite(img)
    if bad.all():
        raise ValueError("the image holds no finite values")
    if bad.any():
        raise ValueError(
            f"the image holds {int(bad.sum())} NaN/inf pixels; crop them away or fill them before analysing"
        )
    if np.ptp(img) == 0:
        raise ValueError("the image is flat (all pixels equal)")
    return img


#: Metal and chalcogen columns closer in brightness than this fraction cannot be told apart by the image.
SAME_BRIGHTNESS = 0.05
#: A measured lattice constant further than this from the parent's says the calibration is wrong
#: (vendor pixel sizes are often 3–15 % off; strain in a monolayer is below 3 %).
CALIBRATION_WARNING_FRACTION = 0.03


def analyze_image(
    image: np.ndarray,
    pixel_size_A: float | None,
    material: str = "MoS2",
    defects: pd.DataFrame | None = None,
    regions: Sequence[np.ndarray] | None = None,
    beam_energy_keV: float | None = None,
    dopant: str | None = None,
    optics: dict | None = None,
    border_A: float = 2.0,
    exclude_contamination: bool = False,
    alloy_species: str | None = None,
    map_phases: bool = False,
    progress: Callable[[float, str], None] = lambda f, m: None,
    cancelled: Callable[[], bool] = lambda: False,
) -> AnalysisResult:
    """Measure every M and X site, classify by intensity and count defects per cm².

    Parameters
    ----------
    image : 2-D array
        HAADF image (bright columns).
    pixel_size_A : float or None
        Calibration; None self-calibrates from the parent's lattice constant
        (said in the result's ``lattice["self_calibrated"]`` and notes).
    material : str
        Parent (``"MoS2"``, ``"2H-WSe2"``, …).
    defects : DataFrame, optional
        Model predictions (``x_A, y_A, defect_class``): matched to sites
        within 1 Å and shown on the histogram; with them, the counts come from
        the model rather than from site intensities.
    regions : list of (n, 2) arrays, optional
        Polygons in Å as (y, x) vertex rows (napari Shapes data order); one
        concentration block per region.
    beam_energy_keV : float, optional
        For the forward model of expected intensities (80 keV if unknown).
    dopant : str, optional
        Dopant element to look for on metal sites (TM_D), lighter or heavier than the host.
    optics : dict, optional
        What the file records (:attr:`~..io.formats.CalibratedImage.optics`): the forward model
        takes its convergence semi-angle and detector angles from it (an ADF image is modelled as
        ADF); the image's own M/X2 ratio then fits the remaining Z contrast.
    border_A : float
        Sites within this distance of the image edge are not analysed.
    exclude_contamination : bool
        Map amorphous contamination (:mod:`.contamination`) and leave its sites out of the counts
        and the area (``sites.in_contamination``; ``contaminated_area_nm2`` beside each concentration).
    alloy_species : str, optional
        ``"Mo,W:S,Se"``: the metals and chalcogens of an alloy or Janus layer on ``material``'s
        lattice.  Every column is then named by its species (``sites.species``, :mod:`.alloy`),
        vacancies are told from light columns, and ``composition`` holds each element's fraction
        per region.
    map_phases : bool
        Map mono-, bi- and trilayer 2H/3R stacks and 1T regions (:mod:`.phases`, against forward-model
        twins at the fitted optics) and leave every site that is not on the parent's monolayer out of
        the classes, the counts and the area (``sites.phase``, ``sites.in_other_phase``;
        ``other_phase_area_nm2`` beside each concentration; the map in ``phases``).
    progress, cancelled : callables, optional
        The job protocol: ``progress(fraction, message)``; ``cancelled()`` is polled between
        steps and a True return raises :class:`~napari_mx2_defects.core.jobs.Cancelled`.
    """
    step = stepper(progress, cancelled, "analysis")
    img = _validate(image)
    parent = get_parent(material)
    alloy = None
    if alloy_species:
        from .alloy import parse_alloy_species

        alloy = parse_alloy_species(alloy_species, parent)
        if dopant:
            raise ValueError("name the dopant among the alloy species (e.g. Mo,W,Ti:S,Se) rather than as a dopant")
    notes: list[str] = []
    step(0.05, "measuring the lattice")
    self_calibrated = pixel_size_A is None
    energy = float(BOUNDS["energy_keV"].check(beam_energy_keV)) if beam_energy_keV else DEFAULTS["energy_keV"]
    microscope = microscope_for(energy, optics)
    pixel_size_A = _pixel_size(img, pixel_size_A, parent, microscope, dopant, border_A, notes)
    pixel_key = pixel_size_key(pixel_size_A)  # every cached model below is keyed on it
    step(0.15, "forward model of site intensities (first time per material: ~20 s of abTEM)")
    forward = forward_model(parent.key, pixel_key, microscope, dopant)
    step(0.5, "finding columns")
    meas = measure_sites(img, parent.a_A / pixel_size_A, forward.m_brighter, border_px=border_A / pixel_size_A)
    notes += meas.notes
    sites = meas.sites
    sites["x_A"], sites["y_A"] = sites.x_px * pixel_size_A, sites.y_px * pixel_size_A
    sites["x_ideal_A"], sites["y_ideal_A"] = sites.x_ideal_px * pixel_size_A, sites.y_ideal_px * pixel_size_A
    contamination, contamination_record = _contamination(img, meas, sites, exclude_contamination, notes)
    step(0.6, "fitting the forward model's blur to the image's columns")
    noise = relative_noise(img)
    nominal = forward
    forward, blur = fit_source_size(img, sites, meas.a_px, parent.key, pixel_key, microscope,
                                    dopant, noise)
    phases = None
    if map_phases:
        step(0.65, "mapping phases and stacking (forward-model twins of each phase at the fitted optics)")
        phases = _phases(img, meas, sites, parent, pixel_key, forward.microscope)
        if sites.in_other_phase.any():
            # several phases: the blur above was fitted on all of them. Map at the nominal optics, decide the
            # metal sublattice and fit the blur on the monolayer's own columns, and map again at that blur
            phases = _phases(img, meas, sites, parent, pixel_key, nominal.microscope)
            _metal_from_monolayer(sites, phases.record["monolayer"], forward.m_brighter, notes)
            step(0.67, "fitting the blur on the monolayer's columns and mapping again")
            monolayer = _inside_monolayer(sites, 1.5 * meas.a_px)
            forward, blur = fit_source_size(img, sites[monolayer].reset_index(drop=True), meas.a_px, parent.key,
                                            pixel_key, microscope, dopant, noise)
            phases = _phases(img, meas, sites, parent, pixel_key, forward.microscope)
        _phase_notes(sites, phases.record["monolayer"], notes)
    step(0.7, "classifying sites")
    field = None
    if alloy is None:
        field = _follow_the_field(sites, pixel_size_A, notes)
        # the detector is known when the forward model took the recorded angle (microscope_for drops an
        # unusable one and falls back to the default)
        recorded = (optics or {}).get("detector_inner_mrad")
        levels, z_contrast = _image_levels(sites, forward, microscope, notes,
                                           detector_recorded=recorded == microscope.detector_inner_mrad)
        site_classes = _classify_sites(sites, levels, dopant, meas.a_px, defects, notes)
    else:
        levels, z_contrast, site_classes = _classify_alloy(img, sites, parent, pixel_key,
                                                           forward, alloy, meas.a_px, defects, notes)
    z_contrast.update(blur)
    a_A = meas.a_px * pixel_size_A
    _check_scale(a_A, parent, pixel_size_A, self_calibrated, "model_class" in sites, notes)
    region_masks = _assign_regions(sites, list(regions or []))
    cell_area = a_A**2 * np.sqrt(3) / 2
    concentrations = _concentrations(sites, region_masks, levels, cell_area, notes)
    lattice = _lattice_record(meas, sites, parent, pixel_size_A, self_calibrated, cell_area, energy)
    _record_fits(lattice, sites, z_contrast, forward, site_classes)
    if field is not None:
        lattice["intensity_reference"] = field
    if contamination is not None:
        dirty_m = (sites.sublattice == "M") & sites.in_contamination & ~sites.in_hole
        lattice["contamination"] = {**contamination_record,  # area as the concentrations count it: metal sites
                                    "area_nm2": float(dirty_m.sum() * cell_area / 100)}
    if phases is not None:
        _phase_record(lattice, sites, phases, cell_area)
    composition = None
    if alloy is not None:
        composition = _alloy_record(lattice, sites, region_masks, alloy, site_classes)
    progress(1.0, "done")
    return AnalysisResult(sites=sites, concentrations=concentrations, lattice=lattice, levels=levels, notes=notes,
                          contamination=contamination, composition=composition,
                          phases=None if phases is None else phases.labels)


def _contamination(img, meas, sites: pd.DataFrame, wanted: bool, notes: list[str]):
    """The contamination map and its record when ``wanted`` (each site's ``in_contamination``), else None."""
    sites["in_contamination"] = False
    if not wanted:
        return None, {}
    from .contamination import contamination_mask

    mask, record = contamination_mask(img, meas.fit.a1, meas.fit.a2, meas.a_px)
    sites["in_contamination"] = values_at(mask, sites.x_px, sites.y_px)
    clean_x = (sites.sublattice == "X").to_numpy() & ~sites.in_contamination.to_numpy()
    if clean_x.sum() >= 10:  # the median chalcogen column of the clean area is 1, as in a clean image
        sites["intensity"] = sites.intensity_raw / float(np.median(sites.intensity_raw[clean_x]))
    if record["fraction"] > 0:
        notes.append(f"amorphous contamination covers {100 * record['fraction']:.0f} % of the image; its sites are "
                     f"left out of the counts and the area")
    if record["fraction"] > 0.45:
        notes.append("more than 45 % of the image looks contaminated: the map takes the commoner level as clean, "
                     "so check it on the image")
    return mask, record


#: Sites closer than this (lattice constants) to a site of another mapped phase are not counted either: the
#: map places a boundary to within ~1-2 a, and a monolayer column beside a stack has the stack's tails in its
#: disc (a six-stripe twin at 1e5 e/Å² counted 47 M_X in its monolayer stripe without this margin).
BOUNDARY_MARGIN_A_UNITS = 2.0


def _phases(img, meas, sites: pd.DataFrame, parent, pixel_size_A: float, microscope):
    """The phase map (:mod:`.phases`), each site's ``phase`` and ``in_other_phase`` (in place: off the
    parent's monolayer or within :data:`BOUNDARY_MARGIN_A_UNITS` of another phase; intensities
    re-normalised to the median chalcogen column of the counted monolayer)."""
    from ..twin.stacking import PHASES
    from .phases import map_phases

    phase_map = map_phases(img, sites, meas.a_px, parent.key, pixel_size_A, microscope)
    ids = values_at(phase_map.labels, sites.x_px, sites.y_px)
    sites["phase"] = np.array([PHASES[i - 1] if i else "" for i in ids], dtype=object)
    monolayer = phase_map.record["monolayer"]
    # unassigned sites stay counted: nothing says they are not the monolayer (see the notes)
    other = (sites.phase != monolayer).to_numpy() & (sites.phase != "").to_numpy()
    if other.any() and not other.all():
        xy = sites[["x_px", "y_px"]].to_numpy(float)
        other |= cKDTree(xy[other]).query(xy)[0] <= BOUNDARY_MARGIN_A_UNITS * meas.a_px
    sites["in_other_phase"] = other
    counted_x = (sites.sublattice == "X").to_numpy() & ~left_out(sites)
    if counted_x.sum() >= 10:
        sites["intensity"] = sites.intensity_raw / float(np.median(sites.intensity_raw[counted_x]))
    return phase_map


def _phase_notes(sites: pd.DataFrame, monolayer: str, notes: list[str]) -> None:
    """What to say of a phase map: how much is left out and why, how much matches no phase."""
    other = float(sites.in_other_phase.mean())
    if other > 0:
        present = sorted(set(sites.phase[sites.in_other_phase]) - {monolayer})
        notes.append(f"{100 * other:.0f} % of the sites are not on the {monolayer} monolayer or lie within "
                     f"{BOUNDARY_MARGIN_A_UNITS:g} a of another phase ({', '.join(present)}): they are left out of "
                     f"the classes, the counts and the area")
    unassigned = float((sites.phase == "").mean())
    if unassigned > 0.02:
        notes.append(f"{100 * unassigned:.0f} % of the sites match no phase (vacuum, thick contamination or a phase "
                     f"not mapped): they are counted as the monolayer; check the phase map")
    if other > 0.5:
        notes.append("most of the image is not the parent's monolayer: the lattice is fitted on it all, so check it")


def _metal_from_monolayer(sites: pd.DataFrame, monolayer: str, m_brighter: bool, notes: list[str]) -> None:
    """Decide again which sublattice holds the metal, on the parent's monolayer alone (in place).

    :func:`~.sites.measure_sites` decided it on the medians over the whole image, which stacks can turn
    (a 3R bilayer's metal-over-chalcogen column outshines its metal column): on a twin of six equal
    stripes the S2 columns were taken for the metal and the blur fitted 0.85 Å for 0."""
    on_monolayer = (sites.phase == monolayer).to_numpy()
    if on_monolayer.sum() < 20:
        return
    raw, sub = sites.intensity_raw.to_numpy(float), sites.sublattice.to_numpy()
    if (np.median(raw[on_monolayer & (sub == "M")]) > np.median(raw[on_monolayer & (sub == "X")])) != bool(m_brighter):
        sites["sublattice"] = np.where(sub == "M", "X", "M")
        counted_x = (sites.sublattice == "X").to_numpy() & ~left_out(sites)
        sites["intensity"] = sites.intensity_raw / float(np.median(sites.intensity_raw[counted_x]))
        notes.append("the metal sublattice was taken from the monolayer's columns (the whole image's medians, "
                     "lifted by the stacks, said otherwise)")


def _inside_monolayer(sites: pd.DataFrame, margin_px: float) -> np.ndarray:
    """Sites of the parent's monolayer further than ``margin_px`` from any other phase's site (all sites when
    no phase was mapped): the columns the blur is fitted on, whose neighbours are all monolayer columns
    (a 2H bilayer's column beside a monolayer's lifts its rings: σ 0.85 Å fitted for 0 on a twin)."""
    if "in_other_phase" not in sites or not sites.in_other_phase.any():
        return np.ones(len(sites), bool)
    other = sites.in_other_phase.to_numpy(bool)
    xy = sites[["x_px", "y_px"]].to_numpy(float)
    far = cKDTree(xy[other]).query(xy)[0] > margin_px
    return ~other & far


def _phase_record(lattice: dict, sites: pd.DataFrame, phases, cell_area_A2: float) -> None:
    """What lattice.json records of the phase map: the fit and each phase's area (metal sites × cell)."""
    from ..twin.stacking import PHASES

    metal = (sites.sublattice == "M").to_numpy()
    n = max(int(metal.sum()), 1)
    areas = {}
    for name in [*PHASES, ""]:
        k = int((metal & (sites.phase == name).to_numpy()).sum())
        if k:
            areas[name] = {"label": PHASES.index(name) + 1 if name else 0, "area_nm2": k * cell_area_A2 / 100,
                           "fraction": k / n}
    lattice["phases"] = {**phases.record, "areas": areas,
                         "other_phase_area_nm2": float((metal & sites.in_other_phase.to_numpy(bool)).sum()
                                                       * cell_area_A2 / 100)}


def _pixel_size(img, pixel_size_A, parent, microscope, dopant, border_A, notes: list[str]) -> float:
    """The given pixel size, checked; or, if None, self-calibrated from the parent's lattice (said in notes)."""
    if pixel_size_A is None:
        pixel_size_A = _self_calibrate(img, parent, microscope, dopant, border_A)
        notes.append(
            f"no calibration: pixel size {pixel_size_A:.5f} Å self-calibrated from {parent.key} a = {parent.a_A} Å"
        )
    if not (np.isfinite(pixel_size_A) and pixel_size_A > 0):
        raise ValueError(f"pixel size must be a positive number of Å, got {pixel_size_A}")
    return pixel_size_A


def _classify_sites(sites: pd.DataFrame, levels, dopant, a_px: float, defects, notes: list[str]):
    """Site classes from the per-sublattice mixture, holes blanked, the model's detections matched (in place)."""
    dirty = left_out(sites)  # carbon on a column lifts its intensity, a stack is not the monolayer: fit without them
    site_classes = fit_site_classes(sites[~dirty].reset_index(drop=True), levels, dopant)
    notes += site_classes.notes
    uncounted = _set_classes(sites, site_classes.classes, site_classes.p_class, site_classes.flagged, dopant, a_px,
                             defects, mixtures=site_classes.mixtures)
    _note_uncounted(sites, uncounted, site_classes.mixtures, notes, dopant)
    return site_classes


def _note_uncounted(sites: pd.DataFrame, uncounted: np.ndarray, mixtures: dict, notes: list[str],
                    dopant: str | None = None) -> None:
    """Say which of the model's detections are not counted (``uncounted``, :func:`one_answer_per_site`), and
    why, and which were read as the named dopant's look-alike."""
    for sub, mix in mixtures.items():
        for name, winner in mix.merged_into.items():
            n = int(((sites.sublattice == sub) & (sites.model_class.astype(str) == name)
                     & (sites.reported_class.astype(str) == winner)).sum()) if "reported_class" in sites else 0
            if n:
                notes.append(f"{n} of the model's {name} detections on {sub} sites are counted as "
                             f"{winner}{f'({dopant})' if dopant and winner == 'TM_D' else ''}: at this noise the two "
                             f"levels cannot be told apart, and you named the dopant")
    if not uncounted.any():
        return
    left = sites[uncounted]
    for (sub, name), group in left.groupby(["sublattice", "model_class"]):
        n = len(group)
        head = f"{n} of the model's {name} detections are not counted (flagged for review)"
        if not on_home_sublattice([name], [sub])[0]:
            notes.append(f"{head}: they sit on {sub} sites of the fitted lattice, and {name} is a defect of the "
                         f"other sublattice")
            continue
        mix = mixtures[sub]
        if name in mix.unverifiable:
            notes.append(f"{head}: {name}'s level {mix.seeds[name]:.2f} lies within {VERIFIABLE_SD:g} widths "
                         f"({mix.intact_width:.3f}) of intact {sub} ({mix.seeds['']:.2f}), so at this image's noise "
                         f"no single site of it can be confirmed; a higher dose, or a detector with more Z contrast, "
                         f"would")
        else:
            read_as = mix.merged_into.get(name, name)
            notes.append(f"{head}: their columns are as bright as intact {sub} (within {RESOLVABLE_SD:g} widths of "
                         f"{mix.seeds['']:.2f}), at least e^{VERIFIABLE_SD ** 2 / 2:g} times likelier intact than at "
                         f"{read_as}'s level {mix.seeds[read_as]:.2f}")


def _classify_alloy(img, sites: pd.DataFrame, parent, pixel_size_A: float, forward, alloy,
                    a_px: float, defects, notes: list[str]):
    """Column types of an alloy (:mod:`.alloy`): ``sites.species`` and the vacancy classes they imply (in
    place), imaged with the fitted optics of ``forward``; returns the levels as the concentrations count
    them, the optics record and the fit."""
    from .alloy import EMPTY, alloy_levels, counted_levels, defect_class_of, fit_alloy, forward_shares

    metals, chalcogens = alloy
    noise = relative_noise(img)

    def levels_for(composition, crosstalk):
        return alloy_levels(parent.key, pixel_size_A, forward.microscope, metals, chalcogens, noise,
                            forward_shares(metals, chalcogens, composition), crosstalk)

    dirty = left_out(sites)
    fit = fit_alloy(sites, ~dirty, levels_for)
    if fit.swapped:  # the alloy's chalcogen columns outshine its metal: the brighter sublattice is X
        sites["sublattice"] = np.where(sites.sublattice == "M", "X", "M")
        sites["intensity"] = sites.intensity_raw / float(np.median(sites.intensity_raw[(sites.sublattice == "X")
                                                                                       & ~dirty]))
        notes.append("the chalcogen columns are brighter than the metal columns here: the sublattices were "
                     "assigned by the alloy's column types")
    notes += fit.notes
    sites["intensity_corrected"] = np.nan  # what the alloy's mixture was fitted on (the histogram shows it)
    sites.loc[~dirty, "intensity_corrected"] = fit.corrected
    sub = sites.sublattice.to_numpy()[~dirty]
    columns = np.full(len(sites), "", dtype=object)
    columns[~dirty] = fit.columns
    defect = np.array([defect_class_of(s, c) for s, c in zip(sub, fit.columns)], dtype=object)
    uncounted = _set_classes(sites, defect, fit.p_class, fit.flagged, None, a_px, defects, dirty=dirty)
    _note_uncounted(sites, uncounted, {}, notes)  # no intact level per sublattice: only the other-sublattice rule
    sites["species"] = np.where((columns == EMPTY) | sites.in_hole.to_numpy(bool), "", columns)
    levels = counted_levels(fit, metals, chalcogens, parent.phase)
    record = {"z_exponent": None, "applied": False,
              "note": "alloy: level ratios are the forward model's at these optics (no Z-contrast fit)"}
    return levels, record, fit


def _alloy_record(lattice: dict, sites: pd.DataFrame, region_masks, alloy, fit) -> pd.DataFrame:
    """The composition table, and what ``lattice.json`` records of the alloy fit."""
    from .alloy import composition_table, formula

    composition = composition_table(sites, region_masks, *alloy)
    use = ~sites.in_hole.to_numpy(bool) & ~left_out(sites)
    counts = sites[use].groupby(["sublattice", "species"]).size()
    lattice["alloy"] = {
        "metals": list(alloy[0]), "chalcogens": list(alloy[1]), "scale": fit.scale,
        "crosstalk": fit.crosstalk, "levels": fit.levels, "sublattices_swapped": fit.swapped,
        "formula": {int(r): formula(composition, int(r)) for r in sorted(set(composition.region))},
        "columns": {f"{s}:{c or 'empty'}": int(n) for (s, c), n in counts.items()},
    }
    return composition


def _set_classes(sites: pd.DataFrame, classes, p_class, flagged, dopant, a_px: float, defects,
                 dirty: np.ndarray | None = None, mixtures: dict | None = None) -> np.ndarray:
    """Classes of the counted sites (``dirty``: contaminated or another phase, left '') with holes blanked and the model's
    detections matched, into ``sites`` (in place; ``mixtures``: see :func:`one_answer_per_site`); returns the
    mask of the model's detections that are not counted (flagged for review)."""
    dirty = left_out(sites) if dirty is None else dirty
    n = len(sites)
    all_classes, all_p, all_flagged = np.full(n, "", dtype=object), np.full(n, np.nan), np.zeros(n, bool)
    all_classes[~dirty], all_p[~dirty], all_flagged[~dirty] = classes, p_class, flagged
    classes, p_class, flagged = all_classes, all_p, all_flagged
    in_hole = find_holes(sites, classes, a_px)
    classes[in_hole] = ""
    sites["defect_class"] = classes
    sites["p_class"] = p_class
    sites["flagged"] = flagged & ~in_hole
    sites["dopant"] = np.where(classes == "TM_D", dopant or "", "")
    sites["in_hole"] = in_hole
    if defects is not None and len(defects):
        sites["model_class"] = _match_to_sites(sites, defects)
        sites["reported_class"] = one_answer_per_site(sites, mixtures)
        uncounted = ((sites.model_class.astype(str) != "") & (sites.reported_class.astype(str) == "")).to_numpy()
        uncounted = uncounted & ~in_hole
        sites["flagged"] = sites.flagged.to_numpy(bool) | uncounted  # the model's answers not counted: review
        return uncounted
    return np.zeros(n, bool)


def _check_scale(a_A: float, parent, pixel_size_A: float, self_calibrated: bool, from_model: bool,
                 notes: list[str]) -> None:
    """Say when the measured lattice says the pixel size is wrong, and where the counts come from."""
    if not self_calibrated and abs(a_A / parent.a_A - 1) > CALIBRATION_WARNING_FRACTION:
        notes.append(f"the measured lattice constant a = {a_A:.3f} Å is {100 * (a_A / parent.a_A - 1):+.0f} % off "
                     f"{parent.key}'s {parent.a_A} Å: the pixel size ({pixel_size_A:.4g} Å) is probably wrong, and "
                     f"so is every per-cm² value; correct it, or self-calibrate from the parent")
    if from_model:
        notes.append("counts come from the model's detections matched to sites, each named by the calibrated site "
                     "physics where it is sure of a lattice-site defect (see lattice.json: model_vs_physics)")


def _record_fits(lattice: dict, sites: pd.DataFrame, z_contrast: dict, forward, site_classes) -> None:
    """What was fitted on the image (optics, mixture, flags, model agreement) into lattice.json's record."""
    lattice["fitted_optics"] = {**z_contrast, "forward_model_microscope": forward.microscope.as_dict()}
    lattice["mixture"] = {sub: mix.as_dict() for sub, mix in site_classes.mixtures.items()}
    lattice["n_flagged_sites"] = int(sites.flagged.sum())
    if "model_class" in sites:
        lattice["model_vs_physics"] = model_physics_agreement(sites)


#: A local intact level varying by more than this (p95/p5 − 1) across the field is said in the notes.
DRIFT_NOTE = 0.10


def _follow_the_field(sites: pd.DataFrame, pixel_size_A: float, notes: list[str]) -> dict:
    """Each column's intensity against its own neighbourhood of the same sublattice (:func:`.sites.follow_the_field`;
    contaminated and other-phase sites are no guide to the intact level), and what to say of the drift."""
    record = follow_the_field(sites, ~left_out(sites))
    if not record.get("applied"):
        return record
    record["radius_A"] = {k: round(v * pixel_size_A, 2) for k, v in record.pop("radius_px").items()}
    spread = {k: hi / lo - 1 for k, (lo, hi) in record["drift_p5_p95"].items() if lo > 0}
    if spread and max(spread.values()) > DRIFT_NOTE:
        worst = max(spread, key=spread.get)
        notes.append(f"the intact {worst} level drifts by {100 * spread[worst]:.0f} % across the field (5th to 95th "
                     f"percentile; contamination, thickness or scan): each column is measured against its "
                     f"{record['neighbours']} nearest columns of the same sublattice (within "
                     f"~{record['radius_A'][worst]:.0f} Å)")
    return record


def _image_levels(sites: pd.DataFrame, forward, microscope, notes: list[str],
                  detector_recorded: bool = True) -> tuple[dict, dict]:
    """The forward model's levels re-scaled to the image's Z contrast (intact M/X2), with what to say."""
    clean = ~left_out(sites)
    m_over_x2 = float(np.median(sites.intensity[(sites.sublattice == "M") & clean]))  # X: median 1 by construction
    levels, z_contrast = z_contrast_levels(forward.levels, forward.compositions, m_over_x2)
    if z_contrast["applied"] and abs(m_over_x2 / z_contrast["m_over_x2_forward_model"] - 1) > 0.05:
        notes.append(f"intact M/X2 = {m_over_x2:.2f} here, {z_contrast['m_over_x2_forward_model']:.2f} in the "
                     f"forward model: its levels are re-scaled to this detector's Z contrast "
                     f"(exponent {z_contrast['z_exponent']:.2f} instead of {z_contrast['z_exponent_forward_model']:.2f})")
    if abs(m_over_x2 - 1) < SAME_BRIGHTNESS:
        notes.append(f"metal and chalcogen columns are about equally bright here (M/X2 = {m_over_x2:.2f}): the "
                     f"sublattices are told apart by the forward model at {microscope.detector_inner_mrad:g}–"
                     f"{microscope.detector_outer_mrad:g} mrad; if the detector differs, give its angles")
    elif not detector_recorded and sublattice_order_depends_on_detector(forward.compositions, m_over_x2):
        # the shared Ti-doped WSe2 scan's second detector: the default 50–200 mrad model (M/X2 1.12) matched
        # its bright/dim 1.11 with the sublattices swapped, and no Ti was named (docs/real_data.md)
        contrast = 100 * abs(max(m_over_x2, 1 / m_over_x2) - 1)
        detector = f"{microscope.detector_inner_mrad:g}–{microscope.detector_outer_mrad:g} mrad"
        notes.append(f"no detector angles are known (the file records none and none were given), and its two "
                     f"sublattices differ in brightness by {contrast:.0f} % only: which of them is the metal "
                     f"depends on the detector (a lower-angle annulus makes X2 the brighter). The sites were "
                     f"named with the {detector} default; give the detector's inner and outer angles to be "
                     f"sure")
    return levels, z_contrast


def one_answer_per_site(sites: pd.DataFrame, mixtures: dict | None = None) -> np.ndarray:
    """The class reported for each site when a model's detections are given (``reported_class``).

    The rule: **the model localises, the calibrated site physics names lattice-site classes, the model
    alone names off-lattice classes.**  A site the model detects is reported with the physics class
    when the physics names a lattice-site defect there with a posterior ≥ ``MIN_POSTERIOR`` (its levels
    are calibrated on this image; the model's class is a twin-trained guess); otherwise with the
    model's class (the physics is unsure, calls it intact, or the class is off-lattice) — read as the named
    dopant's TM_D where the physics found its level and the model's class inseparable at this noise
    (``mixtures[sub].merged_into``: a light dopant and a single chalcogen on a metal site, say; the model,
    trained on twins, names real Ti in WSe2 X_M) — unless

    * the model's class belongs to the other sublattice (``M_X`` on a metal site): the fitted lattice
      contradicts it, or
    * its calibrated level lies within :data:`~.classes.VERIFIABLE_SD` intact widths of intact on that
      sublattice (:attr:`.classes.SublatticeMixture.unverifiable`): at this image's noise nothing can
      confirm that single site, or
    * the site's own intensity refutes it (:meth:`.classes.SublatticeMixture.refutes`: inside the intact
      peak and ≥ 90 times likelier intact than at the class's level).  This judges the column by the
      calibrated level, not by the mixture: a mixture that lost a rare class calls its columns intact,
      but their intensities still lie at the class's level and are not refuted;

    such a site is reported intact (the caller flags it for review).  Without these, a model never
    trained at such optics named the lower tail of the intact S2 peak V_X and bright metal columns M_X
    (30 per 1,000 intact sites at 200 kV HAADF, 1e5 e/Å², 0.4 Å/px).  A site the
    model does not detect is reported intact: the physics' own calls stay in ``defect_class``, and how
    often the two agree is in ``model_vs_physics``.
    """
    model = sites.model_class.astype(str).to_numpy().astype(object)
    physics = sites.defect_class.astype(str).to_numpy()
    sublattice = sites.sublattice.astype(str).to_numpy()
    mixtures = mixtures or {}
    for sub, mix in mixtures.items():
        for name, winner in mix.merged_into.items():
            model[(sublattice == sub) & (model == name)] = winner
    sure = ~sites.flagged.to_numpy(bool)
    named = (model != "") & (physics != "") & sure
    reported = np.where(named, physics, model).astype(object)
    reported[~named & ~on_home_sublattice(model, sublattice)] = ""
    intensity = sites.intensity.to_numpy(float) if "intensity" in sites else None
    for sub, mix in mixtures.items():
        on = ~named & (sublattice == sub)
        reported[on & np.isin(model, mix.unverifiable)] = ""
        if intensity is not None:
            for name in set(model[on]) - {""}:
                mine = on & (model == name)
                reported[mine & mix.refutes(name, intensity)] = ""
    return reported


def model_physics_agreement(sites: pd.DataFrame) -> dict:
    """Per class, how often the model and the calibrated site physics agree: a self-check on unlabelled data.

    For each lattice-site class either names: the sites the model calls it (``model``), the sites the
    physics calls it with a posterior ≥ :data:`~.classes.MIN_POSTERIOR` (``physics``), the sites both
    call it (``both``) and ``both`` as a fraction of the union (``agreement``, 1 = the two agree on
    every such site).  Off-lattice classes (interstitials, adatoms) are the model's alone.
    """
    lattice_classes = {name for name, _, sub in DEFECT_CLASSES.values() if sub in ("M", "X")}
    model = sites.model_class.astype(str).to_numpy()
    sure = ~sites.flagged.to_numpy(bool)
    physics = np.where(sure, sites.defect_class.astype(str).to_numpy(), "")
    out = {}
    for name in sorted(lattice_classes & (set(model) | set(physics))):
        m, p = model == name, physics == name
        union = int((m | p).sum())
        out[name] = {"model": int(m.sum()), "physics": int(p.sum()), "both": int((m & p).sum()),
                     "agreement": float((m & p).sum() / union) if union else None}
    return out


def _self_calibrate(img: np.ndarray, parent, microscope, dopant: str | None, border_A: float) -> float:
    """Pixel size (Å) of an uncalibrated image from the parent's lattice constant.

    A first guess from the FFT, then the area-equivalent a of the fitted (possibly sheared) lattice.
    """
    fft_a_px, _ = fft_lattice_spacing_px(img)
    guess = parent.a_A / fft_a_px
    m_brighter = forward_model(parent.key, pixel_size_key(guess), microscope, dopant).m_brighter
    fitted = measure_sites(img, None, m_brighter, border_px=border_A / guess)
    return parent.a_A / fitted.a_px


def _match_to_sites(sites: pd.DataFrame, defects: pd.DataFrame) -> np.ndarray:
    """The model's class at each site: predictions matched to the nearest site within 1 Å ('' elsewhere)."""
    tree = cKDTree(sites[["x_A", "y_A"]].to_numpy())
    d, idx = tree.query(defects[["x_A", "y_A"]].to_numpy())
    model = np.full(len(sites), "", dtype=object)
    ok = d <= 1.0
    model[idx[ok]] = defects.defect_class.to_numpy()[ok]
    return model


def _assign_regions(sites: pd.DataFrame, polygons: list) -> list[np.ndarray]:
    """Each site's region (``sites.region``: the first polygon holding it, −1 for none) and each
    region's site mask; without polygons, one region of every site."""
    sites["region"] = 0
    if not polygons:
        return [np.ones(len(sites), bool)]
    pts = sites[["y_A", "x_A"]].to_numpy()
    sites["region"] = -1
    masks = []
    for r, poly in enumerate(polygons):
        inside = PolygonPath(np.asarray(poly)[:, -2:]).contains_points(pts)
        sites.loc[inside & (sites.region.to_numpy() == -1), "region"] = r
        masks.append(inside)
    return masks


def _concentrations(sites: pd.DataFrame, region_masks: list[np.ndarray], levels: dict, cell_area_A2: float,
                    notes: list[str]) -> pd.DataFrame:
    """Counts and concentrations per region: the model's classes where given, else the intensity classes,
    each counted against its sublattice's sites (chalcogen columns for X defects, metal sites otherwise)."""
    sublattice_of = {DEFECT_CLASSES[c][0]: ("X" if DEFECT_CLASSES[c][2] == "X" else "M") for c in DEFECT_CLASSES}
    count_column = "reported_class" if "reported_class" in sites else "defect_class"
    in_hole = sites.in_hole.to_numpy()
    dirty = sites.in_contamination.to_numpy(bool) if "in_contamination" in sites else np.zeros(len(sites), bool)
    other = sites.in_other_phase.to_numpy(bool) if "in_other_phase" in sites else np.zeros(len(sites), bool)
    tables = []
    for r, mask in enumerate(region_masks):
        use = mask & ~in_hole & ~dirty & ~other
        n_sites = {"M": int((use & (sites.sublattice == "M")).sum()), "X": int((use & (sites.sublattice == "X")).sum())}
        area = n_sites["M"] * cell_area_A2
        names = [n for n in levels["X"] if n] + [n for n in levels["M"] if n]
        if count_column == "reported_class":
            names = sorted(set(names) | set(sites.reported_class[use]) - {""})
        counts = {n: int((sites[count_column].to_numpy()[use] == n).sum()) for n in names}
        if area <= 0:
            notes.append(f"region {r}: no lattice site inside; skipped")
            continue
        table = concentration_table(counts, n_sites, area, sublattice_of, region=r)
        metal = (sites.sublattice == "M").to_numpy()
        excluded_m = int((mask & ~in_hole & dirty & metal).sum())
        other_m = int((mask & ~in_hole & ~dirty & other & metal).sum())
        tables.append(table.assign(contaminated_area_nm2=excluded_m * cell_area_A2 / 100,
                                   other_phase_area_nm2=other_m * cell_area_A2 / 100))
    if not tables:
        return concentration_table({}, {}, 1.0, {}).assign(contaminated_area_nm2=0.0, other_phase_area_nm2=0.0)
    return pd.concat(tables, ignore_index=True)


def _lattice_record(meas, sites: pd.DataFrame, parent, pixel_size_A: float, self_calibrated: bool,
                    cell_area_A2: float, energy_keV: float) -> dict:
    """What ``lattice.json`` records: the fitted lattice in Å, the calibration and the analysed area."""
    counted = ~sites.in_hole.to_numpy(bool) & ~left_out(sites)
    intact_m = (sites.sublattice == "M").to_numpy() & counted
    return {
        "a_A": float(meas.a_px * pixel_size_A),
        "a_fft_A": float(meas.fft_a_px * pixel_size_A),
        "pixel_size_A": float(pixel_size_A),
        "self_calibrated": bool(self_calibrated),
        "parent": parent.key,
        "parent_a_A": parent.a_A,
        "rotation_deg": meas.fit.rotation_deg,
        "a1_A": meas.fit.lengths_px[0] * pixel_size_A,
        "a2_A": meas.fit.lengths_px[1] * pixel_size_A,
        "angle_deg": meas.fit.angle_deg,
        "fit_rms_A": meas.fit.rms_residual_px * pixel_size_A,
        "n_M_sites": int(intact_m.sum()),
        "n_X_sites": int(((sites.sublattice == "X").to_numpy() & counted).sum()),
        "analysed_area_nm2": float(intact_m.sum() * cell_area_A2 / 100),
        "beam_energy_keV_for_levels": energy_keV,
    }
