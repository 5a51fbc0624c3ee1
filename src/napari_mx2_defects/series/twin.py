"""Digital twins of a frame series: the same area imaged frame after frame while the beam removes atoms.

A thin layer over the twin engine (:func:`~..twin.api.simulate_twin`, fast mode): one twin request builds
the specimen — the parent's periodic ase structure with the requested initial defects, larger than the field
of view by the drift of the whole series — and gives the calibrated column kernels. Then, for every frame k:

1. the field of view, moved over the specimen by the drift (the specimen moves by ``frame_drift_A`` in the
   image from one frame to the next), is rendered from the columns as they are now (the fast mode's
   :func:`~..twin.render.render_columns`) and imaged at the request's dose with its noise and scan
   imperfections (:func:`~..twin.imperfections.apply_imperfections`);
2. the truth of that frame is recorded: every site in the field with its class (from the atoms left on it);
3. the frame's dose D removes atoms at random: each chalcogen atom of an X2 column (intact or V_X) with
   probability 1 − exp(−σ_X·D), the last atom of a V_X column with σ_{V_X→V_XX} if given, each metal atom of
   an intact metal site with 1 − exp(−σ_M·D) (σ in barn = 1e-8 Å²). Columns of other initial defects keep
   their atoms.

So frame k shows the structure after k frames of dose (``cumulative_dose_e_per_A2`` = k·D, the dose the
structure seen in that frame has received), and frame 0 the initial one. The realised cross-sections —
what the atoms in the field actually did, which an analysis of the series should recover — are computed
from the truth by the same likelihood the analysis uses (:mod:`.rates`), over the sites inside every frame.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.jobs import CancelFn, ProgressFn, check_cancelled, never, no_progress
from .rates import BARN_A2, PROCESSES, cross_sections, missing_chalcogens

__all__ = ["SERIES_TWIN_FILES", "SeriesTwin", "SeriesTwinRequest", "parse_damage", "simulate_series"]

#: What :meth:`SeriesTwin.save` writes.
SERIES_TWIN_FILES = ("image.tif", "labels.tif", "truth.csv", "sites.csv", "truth_frames.csv",
                     "truth_cross_section.csv", "settings.json")
#: Process names as typed (ASCII arrows too) → their names in tables.
_PROCESS_NAMES = {"X_loss": "X_loss", "M_loss": "M_loss", "V_X->V_XX": "V_X→V_XX", "V_X→V_XX": "V_X→V_XX"}
#: Sites this far inside every frame's edge make up the field the realised cross-sections are counted on (Å),
#: as the analysis leaves out sites within 2 Å of the edge.
BORDER_A = 2.0
#: Specimen beyond the field of view on every side (Å): more than a column's kernel reaches.
MARGIN_A = 6.0


def parse_damage(text: str, option: str = "--damage") -> dict[str, float]:
    """``"X_loss=12,M_loss=0.5,V_X->V_XX=20"`` → cross-sections in barn by process (one-line ValueErrors)."""
    damage: dict[str, float] = {}
    for item in (text or "").replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in _PROCESS_NAMES:
            raise ValueError(f"{option}: {item!r} is not PROCESS=BARN with a process of "
                             f"{', '.join(('X_loss', 'M_loss', 'V_X->V_XX'))} (e.g. X_loss=12)")
        try:
            sigma = float(value)
        except ValueError:
            raise ValueError(f"{option}: the cross-section of {name} must be a number of barn, got {value!r}") from None
        if not (np.isfinite(sigma) and 0 <= sigma <= 1e8):
            raise ValueError(f"{option}: the cross-section of {name} must be between 0 and 1e8 barn, got {value}")
        damage[_PROCESS_NAMES[name]] = sigma
    return damage


@dataclass
class SeriesTwinRequest:
    """A twin request (the specimen's parent, initial defects, field of view, pixel size, optics, the dose
    *per frame* and the noise of each frame) plus the frames, the damage and the drift between frames."""

    twin: Any  # TwinRequest
    n_frames: int = 16
    damage_barn: dict = field(default_factory=dict)
    drift_A_per_frame: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        from ..core.validation import BOUNDS

        self.n_frames = BOUNDS["n_frames"].check(self.n_frames)
        if self.n_frames < 2:
            raise ValueError("a series needs at least 2 frames (--frames 2 or more)")
        if isinstance(self.damage_barn, str):
            self.damage_barn = parse_damage(self.damage_barn)
        self.drift_A_per_frame = tuple(BOUNDS["drift_A_per_frame"].check(v) for v in self.drift_A_per_frame)
        t = self.twin
        if t.method != "fast":
            raise ValueError("a series twin is rendered by the fast mode: use --method fast")
        if t.structure_path or t.rotation_deg or t.grain_boundary is not None or t.stacking:
            raise ValueError("a series twin is built on the parent's periodic lattice: leave out --structure, "
                             "--rotation, --grain-boundary and --stacking")
        if t.imperfections.amorphous_carbon_coverage:
            raise ValueError("a series twin has no amorphous carbon patches")
        dose = t.imperfections.dose_e_per_A2
        if any(self.damage_barn.values()) and not dose:
            raise ValueError("beam damage needs a dose per frame: give --dose (e/Å² of each frame)")
        for process, sigma in self.damage_barn.items():
            if dose and sigma * BARN_A2 * dose > 0.5:
                raise ValueError(f"{process}: {sigma:g} barn × {dose:g} e/Å² removes more than half the atoms "
                                 "in one frame; lower --dose or the cross-section")

    @property
    def dose_per_frame_e_per_A2(self) -> float | None:
        return self.twin.imperfections.dose_e_per_A2

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> SeriesTwinRequest:
        """From the flat values of :data:`~..core.parameters.REQUEST_PARAMETERS` and
        :data:`~..core.parameters.SERIES_TWIN_PARAMETERS` (as ``simulate`` and the dock give them)."""
        from ..twin.api import TwinRequest

        drift = values.get("frame_drift_A") or (values.get("frame_drift_x_A", 0.0), values.get("frame_drift_y_A", 0.0))
        return cls(TwinRequest.from_values(values), int(values.get("n_frames", 16)),
                   parse_damage(values.get("damage") or ""), (float(drift[0]), float(drift[1])))

    def as_dict(self) -> dict:
        return {"twin": self.twin.as_dict(), "n_frames": self.n_frames, "damage_barn": dict(self.damage_barn),
                "drift_A_per_frame": list(self.drift_A_per_frame)}


@dataclass
class SeriesTwin:
    """A simulated frame series with its truth per frame."""

    frames: np.ndarray  # (n, ny, nx) float32
    labels: np.ndarray  # (n, ny, nx) uint8 truth class ids
    pixel_size_A: tuple[float, float]  # (y, x)
    sites: pd.DataFrame  # frame, site, x_A, y_A (that frame's image), sublattice, defect_class
    truth_frames: pd.DataFrame  # frame, cumulative_dose_e_per_A2, counts per class, drift_x_A, drift_y_A
    truth_cross_section: pd.DataFrame  # process, sigma_barn (given), realised cross-section and its events
    history: np.ndarray  # (n, n_common) classes of the sites inside every frame (truth)
    common_sites: pd.DataFrame  # site, x_A, y_A (frame 0's image), sublattice of those sites
    settings: dict

    @property
    def dose_per_frame_e_per_A2(self) -> float | None:
        return self.settings["dose_per_frame_e_per_A2"]

    def truth_table(self) -> pd.DataFrame:
        """``frame, x_A, y_A, defect_class`` of every defect in every frame (truth.csv)."""
        d = self.sites[self.sites.defect_class != ""]
        return d[["frame", "x_A", "y_A", "defect_class"]].reset_index(drop=True)

    def save(self, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
        """Write :data:`SERIES_TWIN_FILES` atomically (:class:`~..io.atomic.StagedOutput`): the frames as one
        calibrated TIFF stack (frames first), the truth labels as another, the truth tables and settings."""
        from ..io.atomic import StagedOutput
        from ..io.writer import LABELS_TITLE, write_calibrated_tiff

        with StagedOutput(out_dir, SERIES_TWIN_FILES, overwrite=overwrite) as stage:
            write_calibrated_tiff(stage / "image.tif", self.frames.astype(np.float32), self.pixel_size_A,
                                  title="digital twin HAADF series")
            write_calibrated_tiff(stage / "labels.tif", self.labels, self.pixel_size_A, title=LABELS_TITLE)
            self.truth_table().to_csv(stage / "truth.csv", index=False)
            self.sites.to_csv(stage / "sites.csv", index=False)
            self.truth_frames.to_csv(stage / "truth_frames.csv", index=False)
            self.truth_cross_section.to_csv(stage / "truth_cross_section.csv", index=False)
            (stage / "settings.json").write_text(json.dumps(self.settings, indent=2, default=str))
        return [Path(out_dir) / n for n in SERIES_TWIN_FILES]


def _site_of_atom(n_atoms: int, site_atoms) -> np.ndarray:
    owner = np.full(n_atoms, -1, int)
    for s, members in enumerate(site_atoms):
        owner[np.asarray(members, int)] = s
    return owner


def simulate_series(request: SeriesTwinRequest, progress: ProgressFn = no_progress,
                    cancelled: CancelFn = never) -> SeriesTwin:
    """Image ``request.n_frames`` frames of one specimen under beam damage and drift (module docstring)."""
    from ..twin.api import label_mask, simulate_twin
    from ..twin.calibration import Calibration
    from ..twin.columns import projected_columns, signature
    from ..twin.defects import CLASS_IDS
    from ..twin.imperfections import Imperfections, apply_imperfections, distorted_positions
    from ..twin.parents import CHALCOGENS
    from ..twin.render import render_columns

    t0 = time.perf_counter()
    base = request.twin
    n = request.n_frames
    dose = request.dose_per_frame_e_per_A2
    drift = np.asarray(request.drift_A_per_frame, float)
    travel = np.arange(n)[:, None] * drift[None, :]  # where frame 0's content is in frame k, relative (x, y)
    span = travel.max(axis=0) - travel.min(axis=0)
    fov = float(base.fov_A)
    specimen_fov = fov + float(span.max()) + 2 * MARGIN_A
    progress(0.0, "building the specimen")
    specimen = simulate_twin(replace(base, fov_A=specimen_fov, imperfections=Imperfections()),
                             progress=lambda f, m: progress(0.15 * f, f"specimen: {m}"), cancelled=cancelled)
    calibration = Calibration.from_json(specimen.settings["calibration"])
    lattice = specimen.lattice
    atoms = lattice.atoms
    period = np.array(lattice.extent_xy_A, float)
    symbols = np.asarray(atoms.get_chemical_symbols(), dtype=object)
    columns = projected_columns(atoms, periodic=True)
    col_xy = np.mod(columns[["x_A", "y_A"]].to_numpy(float), period)
    members = list(columns.atoms)
    owner = _site_of_atom(len(atoms), lattice.site_atoms)
    sites = lattice.sites
    sub = sites.sublattice.to_numpy().astype(str)
    site_xy = sites[["x_A", "y_A"]].to_numpy(float)
    initial = specimen.sites.defect_class.to_numpy().astype(object)
    chalcogen = np.isin(symbols, CHALCOGENS)
    owner_sub = np.where(owner >= 0, sub[np.maximum(owner, 0)], "")
    owner_class = np.where(owner >= 0, initial[np.maximum(owner, 0)], "NA")
    x_damage_set = np.isin(initial, ("", "V_X", "V_XX")) & (sub == "X")
    m_damage_set = (initial == "") & (sub == "M")
    x_atom = chalcogen & (owner_sub == "X") & np.isin(owner_class, ("", "V_X", "V_XX"))
    m_atom = ~chalcogen & (owner_sub == "M") & (owner_class == "")
    sig = request.damage_barn
    p_x = -np.expm1(-sig.get("X_loss", 0.0) * BARN_A2 * dose) if dose else 0.0
    p_vx = -np.expm1(-sig.get("V_X→V_XX", sig.get("X_loss", 0.0)) * BARN_A2 * dose) if dose else 0.0
    p_m = -np.expm1(-sig.get("M_loss", 0.0) * BARN_A2 * dose) if dose else 0.0
    rng = np.random.default_rng([int(base.seed), 2027])
    alive = np.ones(len(atoms), bool)
    n_px = max(8, int(round(fov / base.pixel_size_A)))
    pixel = fov / n_px
    shape = (n_px, n_px)
    half_out = (period - fov) / 2
    origin0 = period / 2 - fov / 2 + travel.max(axis=0) / 2 + travel.min(axis=0) / 2  # the series centred
    signatures: dict[tuple, str] = {}
    frames, labels, truth = [], [], []
    site_members = [np.asarray(m, int) for m in lattice.site_atoms]
    history_all = []
    for k in range(n):
        check_cancelled(cancelled, "series twin")
        progress(0.15 + 0.8 * k / n, f"frame {k + 1} of {n}")
        origin = origin0 - travel[k]
        # the columns as they are now, around the field of view (the specimen is periodic)
        sig_now = []
        keep = []
        for c, idx in enumerate(members):
            here = tuple(symbols[i] for i in idx if alive[i])
            if here:
                keep.append(c)
                if here not in signatures:
                    signatures[here] = signature(list(here))
                sig_now.append(signatures[here])
        keep = np.asarray(keep, int)
        rel = np.mod(col_xy[keep] - origin + half_out, period) - half_out
        clean = render_columns(rel[:, 0], rel[:, 1], calibration.column_weights(sig_now), shape, (fov, fov),
                               base.microscope, periodic=False)
        state = apply_imperfections(clean, (pixel, pixel), False, base.imperfections,
                                    np.random.default_rng([int(base.seed), k, 17]))
        frames.append(state.image.astype(np.float32))
        # truth of this frame: classes from the atoms left on each site
        left = np.array([int(alive[m].sum()) for m in site_members])
        classes = initial.copy()
        xs = x_damage_set
        classes[xs] = np.where(left[xs] >= 2, "", np.where(left[xs] == 1, "V_X", "V_XX"))
        classes[m_damage_set] = np.where(left[m_damage_set] >= 1, "", "V_M")
        history_all.append(classes)
        srel = np.mod(site_xy - origin + half_out, period) - half_out
        sx, sy = distorted_positions(state, srel[:, 0], srel[:, 1])
        inside = (sx >= 0) & (sx < fov) & (sy >= 0) & (sy < fov) & ((sub != "H") | (classes != ""))
        table = pd.DataFrame({"frame": k, "site": np.flatnonzero(inside), "x_A": sx[inside], "y_A": sy[inside],
                              "sublattice": sub[inside], "defect_class": classes[inside]})
        truth.append(table)
        d = table[table.defect_class != ""]
        labels.append(label_mask(shape, (pixel, pixel), d.x_A, d.y_A, [CLASS_IDS[c] for c in d.defect_class])
                      if len(d) else np.zeros(shape, np.uint8))
        # this frame's dose removes atoms
        if dose and (p_x or p_m or p_vx):
            column_left = left[np.maximum(owner, 0)]
            p = np.where(x_atom, np.where(column_left >= 2, p_x, p_vx), np.where(m_atom, p_m, 0.0))
            alive &= ~(alive & (rng.random(len(atoms)) < p))
    sites_table = pd.concat(truth, ignore_index=True)
    history_all = np.asarray(history_all, dtype=object)
    # the sites inside every frame (away from its edge): the field the realised cross-sections are counted on
    inner = sites_table[(sites_table.x_A >= BORDER_A) & (sites_table.x_A < fov - BORDER_A)
                        & (sites_table.y_A >= BORDER_A) & (sites_table.y_A < fov - BORDER_A)]
    inner_counts = inner.groupby("site").frame.nunique()
    common = np.sort(inner_counts.index[inner_counts == n].to_numpy())
    common = common[sub[common] != "H"]
    first = sites_table[sites_table.frame == 0].set_index("site").loc[common]
    common_sites = pd.DataFrame({"site": common, "x_A": first.x_A.to_numpy(), "y_A": first.y_A.to_numpy(),
                                 "sublattice": sub[common]})
    history = history_all[:, common]
    doses = np.full(n, float(dose or 0.0))
    realised = cross_sections(history, sub[common], doses) if dose else \
        pd.DataFrame({"process": list(PROCESSES)})
    realised.insert(1, "sigma_barn_given", [float(sig.get(p, sig.get("X_loss", 0.0) if p == "V_X→V_XX" else 0.0))
                                            for p in realised.process])
    realised = realised.rename(columns={"sigma_barn": "realised_sigma_barn", "ci_low_barn": "realised_ci_low_barn",
                                        "ci_high_barn": "realised_ci_high_barn"})
    names = sorted(set(sites_table.defect_class) - {""})
    rows = []
    for k in range(n):
        seen = sites_table[sites_table.frame == k]
        row = {"frame": k, "cumulative_dose_e_per_A2": k * float(dose or 0.0)}
        row.update({c: int((seen.defect_class == c).sum()) for c in names})
        row["missing_X_common"] = int(missing_chalcogens(history[k : k + 1], sub[common])[0])
        row["drift_x_A"], row["drift_y_A"] = float(travel[k, 0]), float(travel[k, 1])
        rows.append(row)
    settings = {
        "request": request.as_dict(),
        "specimen": {"extent_xy_A": list(map(float, period)), "n_atoms": len(atoms),
                     "initial_defects": specimen.truth_table().defect_class.value_counts().to_dict()},
        "pixel_size_A": [pixel, pixel],
        "dose_per_frame_e_per_A2": dose,
        "damage_barn": dict(sig),
        "drift_A_per_frame": list(map(float, drift)),
        "n_common_sites": len(common),
        "cumulative_dose": "frame k shows the structure after k frames of dose (k × dose per frame)",
        "calibration": specimen.settings["calibration"],
        "seconds": time.perf_counter() - t0,
    }
    progress(1.0, "done")
    return SeriesTwin(frames=np.stack(frames), labels=np.stack(labels), pixel_size_A=(pixel, pixel),
                      sites=sites_table, truth_frames=pd.DataFrame(rows), truth_cross_section=realised,
                      history=history, common_sites=common_sites, settings=settings)
