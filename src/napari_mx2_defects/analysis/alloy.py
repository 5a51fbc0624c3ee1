"""Alloy and Janus composition: the species of every column, from calibrated site intensities.

In a random alloy such as Mo₁₋ₓWₓS₂₍₁₋ᵧ₎Se₂ᵧ, or a Janus layer (MoSSe, MoWS₂Se), every metal site
holds one of the metals and every chalcogen column one of the pairs (S2, SSe, Se2; Paduri et al.'s
column-intensity classification).  Three steps:

1. **Levels** (:func:`alloy_levels`).  A forward-model twin of the parent alloyed with the named
   species in equal shares (so every column type is common) plus vacancies, at the image's pixel
   size, optics, fitted source size and noise, measured by the same code as the image
   (:func:`~.sites.measure_twin_sites`): the median intensity of each column type.  Empty sites
   (V_M, V_XX), single chalcogens (V_X in an alloyed column) and a chalcogen on a metal site (X_M)
   are column types too, so defects are told apart and kept out of the composition: a dim metal
   site is named X_M or a light metal by whichever level it sits at, and where the two cannot be
   separated at the image's noise the defect type is dropped with a note.
2. **A mixture with one scale** (:func:`fit_alloy_sites`).  Each sublattice's intensities are a
   mixture of Gaussians whose means are the levels times **one scale shared by both sublattices**;
   weights and widths are free.  The scale is needed because both the image and the model are
   normalised to their own median chalcogen column, which is S2 in a S-rich alloy and Se2 in a
   Se-rich one; tying the means to it is what names a single peak (a Janus layer's SSe columns,
   a pure metal sublattice) by the ratio of the two sublattices.  scikit-learn's ``GaussianMixture``
   cannot tie means to a common scale, so the expectation–maximisation is written out here (the
   M step for the scale is a weighted least squares); it is started from a grid of scales and the
   best likelihood kept.  Each site gets the column type of its highest posterior (``p_class``),
   flagged below :data:`~.classes.MIN_POSTERIOR`; a vacancy type only where its posterior reaches
   that (an unsure site keeps its likeliest intact type).  The image's and the model's
   sublattices may be swapped and the levels depend on the neighbours' composition, so
   :func:`fit_alloy` fits both assignments, each with forward models matched to its composition.
3. **Composition** (:func:`composition_table`): per region, each element's fraction of the metal
   sites or of the chalcogen atoms with a 95 % Wilson interval, and the column counts.

Level ratios are the calibrated forward model's at the file's (or the default) optics and the
fitted blur: an alloy whose sublattices each show one level cannot also fit the detector's Z
contrast from the image (:func:`~.classes.z_contrast_levels` assumes the parent's columns), so
give the detector angles where they are not the default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import combinations_with_replacement

import numpy as np
import pandas as pd

from ..twin.columns import signature
from .classes import MIN_POSTERIOR, RESOLVABLE_SD, SublatticeMixture

__all__ = ["COMPOSITION_COLUMNS", "EMPTY", "AlloyFit", "alloy_levels", "composition_table", "corrected_intensity",
           "counted_levels", "defect_class_of", "fit_alloy", "fit_alloy_sites", "formula", "forward_shares",
           "neighbour_intensity", "parse_alloy_species", "site_fractions"]

#: Name of an emptied site's column type (a metal vacancy, or both chalcogens of a column missing).
EMPTY = "(empty)"
COMPOSITION_COLUMNS = ["region", "sublattice", "element", "atoms", "of_atoms", "fraction", "ci_low", "ci_high"]
#: Narrowest width of a component, in units of the normalised intensity (median chalcogen column = 1).
MIN_SD = 0.01
#: Scales the expectation–maximisation starts from (the model and the image may be normalised to
#: different columns: S2 against Se2 is a factor ~3.5).
SCALE_STARTS = np.geomspace(0.25, 4.0, 21)


def parse_alloy_species(text: str | Sequence, parent) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"Mo,W:S,Se"`` → (metals, chalcogens), the parent's species first; one-line ValueErrors."""
    from ..twin.alloys import CHALCOGENS, _transition_metal

    if not isinstance(text, str):
        text = ":".join(",".join(part) for part in text)
    parts = [p.strip() for p in str(text).split(":")]
    if len(parts) != 2:
        raise ValueError(f"alloy species {text!r}: write the metals, a colon, the chalcogens, e.g. Mo,W:S,Se")
    metals, chalcogens = ([s.strip() for s in p.split(",") if s.strip()] for p in parts)
    for el in metals:
        if not _transition_metal(el):
            raise ValueError(f"alloy species: {el!r} is not a transition metal (metals come before the colon)")
    for el in chalcogens:
        if el not in CHALCOGENS:
            raise ValueError(f"alloy species: {el!r} is not a chalcogen (chalcogens come after the colon)")
    if len(set(metals)) != len(metals) or len(set(chalcogens)) != len(chalcogens):
        raise ValueError("alloy species: an element is named twice")
    if parent.metal not in metals or parent.chalcogen not in chalcogens:
        raise ValueError(f"alloy species {text!r} must include the parent's own {parent.metal} and "
                         f"{parent.chalcogen} (the parent gives the lattice; choose the parent of the host)")
    if len(metals) + len(chalcogens) < 3:
        raise ValueError(f"alloy species {text!r} hold only the parent's species: name a second metal or chalcogen")
    metals = (parent.metal, *sorted(set(metals) - {parent.metal}))
    chalcogens = (parent.chalcogen, *sorted(set(chalcogens) - {parent.chalcogen}))
    return metals, chalcogens


def column_types(metals: Sequence[str], chalcogens: Sequence[str], phase: str = "2H") -> dict[str, list[str]]:
    """The column types (signatures, :data:`EMPTY`) each sublattice of such an alloy holds: on metal
    sites the metals, the parent's chalcogen (X_M) and an empty site; on chalcogen sites the pairs, the
    single chalcogens and an empty column."""
    pairs = [signature([a, b]) for a, b in combinations_with_replacement(chalcogens, 2)] if phase == "2H" else []
    return {"M": [*metals, chalcogens[0], EMPTY], "X": [*pairs, *chalcogens, EMPTY]}


def defect_class_of(sublattice: str, column: str) -> str:
    """The defect class a column type is (V_M, V_XX, V_X for a single chalcogen in a 2H column, X_M for a
    chalcogen on a metal site), or ''."""
    from ..twin.alloys import CHALCOGENS

    if column == EMPTY:
        return "V_M" if sublattice == "M" else "V_XX"
    if "+" not in column:
        if sublattice == "X":
            return "V_X"
        if column in CHALCOGENS:
            return "X_M"
    return ""


#: Shares of each substituting species in the forward twin are rounded to this step (a cache key) and kept
#: within :data:`SHARE_RANGE`, so every column type stays common enough to have a level.
SHARE_STEP = 0.1
SHARE_RANGE = (0.1, 0.9)
#: Passes of the composition-matched forward model (each after the first starts from the last composition).
MATCH_PASSES = 3


def forward_shares(metals: Sequence[str], chalcogens: Sequence[str],
                   composition: dict[str, float] | None = None) -> tuple[tuple[str, float], ...]:
    """The forward twin's share of each substituting species: equal shares, or ``composition`` (element →
    fraction of its sublattice) rounded to :data:`SHARE_STEP` within :data:`SHARE_RANGE` (several
    substituents of one sublattice scaled down together so the parent's species keeps its share too)."""
    shares = []
    for group in (metals, chalcogens):
        values = [1.0 / len(group) if composition is None else composition.get(el, 0.0) for el in group[1:]]
        values = [float(np.clip(round(v / SHARE_STEP) * SHARE_STEP, *SHARE_RANGE)) for v in values]
        total = sum(values)
        if total > SHARE_RANGE[1]:
            values = [round(v * SHARE_RANGE[1] / total, 3) for v in values]
        shares += list(zip(group[1:], values))
    return tuple(shares)


def neighbour_intensity(sites: pd.DataFrame) -> np.ndarray:
    """Mean ``intensity`` of each site's three nearest sites of the other sublattice (its nearest
    neighbours in projection, whose probe tails reach into its integration disc); NaN where one of them
    lies outside the analysed sites."""
    from scipy.spatial import cKDTree

    out = np.full(len(sites), np.nan)
    xy = sites[["x_px", "y_px"]].to_numpy(float)
    sub = sites.sublattice.to_numpy()
    value = sites.intensity.to_numpy(float)
    for this, other in (("M", "X"), ("X", "M")):
        a, b = np.flatnonzero(sub == this), np.flatnonzero(sub == other)
        if len(a) and len(b) >= 3:
            d, idx = cKDTree(xy[b]).query(xy[a], k=3)
            out[a] = value[b][idx].mean(axis=1)
            # at the analysed border a neighbour lies outside: no value
            out[a[~(d <= 1.3 * np.median(d[:, 0])).all(axis=1)]] = np.nan
    return out


def corrected_intensity(sites: pd.DataFrame, crosstalk: dict[str, float]) -> np.ndarray:
    """Site intensities less their neighbours' crosstalk, ``intensity − κ · neighbour_intensity`` (NaN at
    the border, where a neighbour is not measured)."""
    if not crosstalk:
        return sites.intensity.to_numpy(float)
    kappa = sites.sublattice.map(crosstalk).fillna(0.0).to_numpy(float)
    return sites.intensity.to_numpy(float) - kappa * neighbour_intensity(sites)


def _crosstalk(intensity: np.ndarray, neighbours: np.ndarray, types: np.ndarray) -> float:
    """κ of one sublattice's sites: the slope of intensity on neighbour intensity shared by all column
    types, one intercept per type (least squares)."""
    kinds = sorted(set(types) - {"?"})
    use = np.isin(types, kinds) & np.isfinite(neighbours)
    if not kinds or use.sum() < len(kinds) + 5:
        return 0.0
    design = np.column_stack([neighbours[use]] + [(types[use] == k).astype(float) for k in kinds])
    coef, *_ = np.linalg.lstsq(design, intensity[use], rcond=None)
    return float(max(coef[0], 0.0))




@lru_cache(maxsize=64)
def alloy_levels(parent_key: str, pixel_size_A: float, microscope, metals: tuple[str, ...],
                 chalcogens: tuple[str, ...], noise_rel: float = 0.0,
                 shares: tuple[tuple[str, float], ...] | None = None,
                 crosstalk: bool = False) -> tuple[dict[str, dict[str, float]], dict]:
    """Median intensity of each column type of the alloy per sublattice, from a forward-model twin
    measured as the image is (see the module docstring); a type the twin does not hold is absent.

    ``shares`` (:func:`forward_shares`) sets the twin's composition: a column's disc also collects the
    tails of its neighbours, so its level depends on what they hold (an SSe column reads ~13 % brighter
    among W than among Mo), and the levels are taken on a twin of the image's own composition.  That
    crosstalk is also removed to first order with ``crosstalk``: κ per sublattice, the slope of a site's intensity on its
    three nearest neighbours' mean (:func:`neighbour_intensity`), is fitted on the twin, and the levels
    are those of the corrected intensities (:func:`corrected_intensity`), which the image's sites are
    corrected by too.  Returns the levels and κ (empty without ``crosstalk``)."""
    from ..twin.api import TwinRequest, simulate_twin
    from ..twin.parents import get_parent
    from .sites import measure_twin_sites

    parent = get_parent(parent_key)
    shares = shares or forward_shares(metals, chalcogens)
    alloy = ",".join(f"{el}={100 * share:.4g}%" for el, share in shares)
    vacancies = "V_X=16,V_M=6,X_M=6" + (",V_XX=6" if parent.phase == "2H" else "")
    twin = simulate_twin(TwinRequest(material=parent_key, alloy=alloy, defects=vacancies, fov_A=60.0,
                                     pixel_size_A=float(pixel_size_A), microscope=microscope, seed=7))
    _, _, pooled, labels = measure_twin_sites(twin, parent.a_A, noise_rel, ("species",))
    species = np.where(labels["species"] == "", EMPTY, labels["species"])
    neighbours = np.concatenate([neighbour_intensity(group) for _, group in pooled.groupby("realization", sort=True)])
    sub_of, intensity = pooled.sublattice.to_numpy(), pooled.intensity.to_numpy(float)
    crosstalk = {sub: _crosstalk(intensity[sub_of == sub], neighbours[sub_of == sub], species[sub_of == sub])
                 for sub in ("M", "X")} if crosstalk else {}
    corrected = intensity - np.array([crosstalk.get(v, 0.0) for v in sub_of]) * neighbours
    levels: dict[str, dict[str, float]] = {}
    for sub, names in column_types(metals, chalcogens, parent.phase).items():
        levels[sub] = {}
        for name in names:
            sel = (sub_of == sub) & (species == name) & np.isfinite(corrected)
            if sel.any():
                levels[sub][name] = float(np.median(corrected[sel]))
    return levels, crosstalk


@dataclass
class AlloyFit:
    """Column type, posterior and review flag of every site, the mixtures and the fitted scale."""

    columns: np.ndarray  # column type per site (signature or EMPTY)
    p_class: np.ndarray
    flagged: np.ndarray
    mixtures: dict[str, SublatticeMixture]
    scale: float
    mean_loglik: float  # per fitted site, in the units of the intensities given
    levels: dict = field(default_factory=dict)  # the forward model's levels the fit was seeded with
    crosstalk: dict = field(default_factory=dict)  # κ per sublattice the intensities were corrected by
    corrected: np.ndarray | None = None  # each site's intensity less its neighbours' crosstalk
    swapped: bool = False  # whether the brighter sublattice turned out to be the chalcogen's
    notes: list[str] = field(default_factory=list)


def _em(xs: dict, levels: dict, scale: float, n_iter: int = 400) -> tuple[float, float, dict, dict]:
    """Expectation–maximisation of the tied-scale mixture from ``scale``: (log-likelihood, scale,
    weights per sublattice, widths per sublattice).  A vacancy type takes the narrowest width of its
    sublattice's intact types (vacancies are too rare to fit a width of their own, and a free width
    balloons over the tails of the intact peaks)."""
    names = {sub: list(levels[sub]) for sub in xs}
    vacancy = {sub: np.array([bool(defect_class_of(sub, n)) for n in names[sub]]) for sub in xs}
    L = {sub: np.array([levels[sub][n] for n in names[sub]]) for sub in xs}
    w = {sub: np.full(len(names[sub]), 1.0 / len(names[sub])) for sub in xs}
    sd = {sub: np.maximum(0.05 * np.abs(scale * L[sub]), MIN_SD) + 0.02 for sub in xs}
    loglik = -np.inf
    for _ in range(n_iter):
        num = den = 0.0
        total = 0.0
        resp = {}
        for sub, x in xs.items():
            z = (x[:, None] - scale * L[sub]) / sd[sub]
            logp = np.log(np.maximum(w[sub], 1e-300)) - np.log(sd[sub]) - 0.5 * z**2
            top = logp.max(axis=1, keepdims=True)
            p = np.exp(logp - top)
            norm = p.sum(axis=1, keepdims=True)
            total += float(np.sum(np.log(norm) + top)) - 0.5 * len(x) * np.log(2 * np.pi)
            resp[sub] = p / norm
        for sub, x in xs.items():
            r = resp[sub]
            nk = r.sum(axis=0) + 1e-12
            w[sub] = nk / nk.sum()
            sd[sub] = np.maximum(np.sqrt((r * (x[:, None] - scale * L[sub]) ** 2).sum(axis=0) / nk), MIN_SD)
            intact = ~vacancy[sub] & (nk >= 1.0)
            if intact.any():
                sd[sub][vacancy[sub]] = sd[sub][intact].min()
            num += float((r * x[:, None] * L[sub] / sd[sub] ** 2).sum())
            den += float((r * L[sub] ** 2 / sd[sub] ** 2).sum())
        scale = num / den if den > 0 else scale
        if total - loglik < 1e-8 * abs(total):
            loglik = total
            break
        loglik = total
    return loglik, scale, w, sd


def _unresolvable_defect(levels: dict, scale: float, sds: dict, weights: dict,
                         n_sites: dict) -> tuple[str, str, str] | None:
    """(sublattice, defect type, other type) of the first defect column type whose fitted level lies
    within two widths of a supported intact column type's (one holding at least a site), or None.  A
    chalcogen on a metal site (X_M) is also dropped where it lies that close to an empty metal site's level:
    beside heavy neighbours the two read alike (measured on a W₀.₄ alloy at 60 kV: 0.09 of an S2
    column apart), and a site that could be either is reported as the vacancy."""
    for sub, lv in levels.items():
        names = list(lv)
        for i, name in enumerate(names):
            cls = defect_class_of(sub, name)
            if not cls:
                continue
            for j, other in enumerate(names):
                if defect_class_of(sub, other):
                    if not (cls == "X_M" and other == EMPTY):
                        continue
                elif weights[sub][j] * n_sites[sub] < 1.0:
                    continue
                if abs(lv[name] - lv[other]) * scale < RESOLVABLE_SD * sds[sub][j]:
                    return sub, name, other
    return None


def _least_supported(xs: dict, levels: dict, scale: float, weights: dict, loglik: float):
    """(sublattice, column type, BIC gain) of the column type the data support least, where the model
    without it has the lower BIC (a tail of another peak, not a peak of its own), or None.  The parent's
    own column type of each sublattice (the first) is always kept; a type holding less than one site is
    left alone (it changes nothing)."""
    n = sum(len(x) for x in xs.values())
    worst = None
    for sub, lv in levels.items():
        names = list(lv)
        for i, name in enumerate(names[1:], start=1):
            if weights[sub][i] * len(xs[sub]) < 1.0:
                continue
            rest = {s: ({k: v for k, v in l.items() if k != name} if s == sub else l) for s, l in levels.items()}
            without = _em(xs, rest, scale)[0]
            params = 1 if defect_class_of(sub, name) else 2  # a vacancy's width is tied
            excess = -2.0 * (loglik - without) + params * np.log(n)  # BIC(full) − BIC(without)
            if excess >= 0 and (worst is None or excess > -worst[2]):
                worst = (sub, name, -float(excess))  # the BIC change without it (≤ 0)
    return worst


#: Most sites per sublattice the mixture is fitted on (a fixed random sample above that).
FIT_SAMPLE = 20_000


def fit_alloy_sites(sites: pd.DataFrame, levels: dict[str, dict[str, float]], crosstalk: dict | None = None,
                    min_posterior: float = MIN_POSTERIOR, start_scale: float | None = None,
                    prune: bool = True) -> AlloyFit:
    """Column type of every site from the tied-scale mixture over both sublattices (module docstring), on
    the intensities less the neighbours' ``crosstalk`` (:func:`corrected_intensity`); the EM starts from
    every scale of :data:`SCALE_STARTS`, or from ``start_scale`` alone.  A vacancy type too close to an
    intact type is dropped; with ``prune``, so is any type the data do not support (BIC)."""
    intensity = corrected_intensity(sites, crosstalk or {})
    all_levels = levels
    sub_of = sites.sublattice.to_numpy()
    rng = np.random.default_rng(0)
    xs = {}
    for sub in levels:
        x = intensity[(sub_of == sub) & np.isfinite(intensity)]
        if len(x) > FIT_SAMPLE:
            x = rng.choice(x, FIT_SAMPLE, replace=False)
        if len(x) and levels[sub]:
            xs[sub] = x
    if not xs:
        raise ValueError("no metal or chalcogen site to fit the alloy's column types on")
    levels = {sub: dict(levels[sub]) for sub in xs}
    dropped: dict[str, dict[str, str]] = {sub: {} for sub in xs}
    while True:
        starts = SCALE_STARTS if start_scale is None else [start_scale]
        loglik, scale, weights, sds = max((_em(xs, levels, s) for s in starts), key=lambda fit: fit[0])
        # a vacancy type as bright as an intact column at this noise (one Se ≈ S2) cannot be told from it:
        # it is dropped, and the sites go to the intact column (vacancies are rare, intact columns are not)
        clash = _unresolvable_defect(levels, scale, sds, weights, {sub: len(x) for sub, x in xs.items()})
        if clash is not None:
            sub, name, other = clash
            dropped[sub][name] = (f"level {scale * levels[sub][name]:.2f} within two widths of {other} "
                                  f"({scale * levels[sub][other]:.2f}): not separable at this noise")
            del levels[sub][name]
            continue
        weak = _least_supported(xs, levels, scale, weights, loglik) if prune else None
        if weak is None:
            break
        sub, name, gain = weak
        dropped[sub][name] = f"not supported by the data (BIC {gain:+.1f} without it)"
        del levels[sub][name]
    columns = np.full(len(sites), "", dtype=object)
    p_class = np.full(len(sites), np.nan)
    mixtures = {}
    notes = []
    for sub, x in xs.items():
        names = list(levels[sub])
        mix = SublatticeMixture(sub, names, [float(scale * levels[sub][n]) for n in names],
                                [float(v) for v in sds[sub]], [float(v) for v in weights[sub]],
                                {n: float(levels[sub][n]) for n in names})
        mix.dropped.update(dropped[sub])
        notes += [f"{sub} sites: {_named(sub, name)} is not reported — {why}" for name, why in dropped[sub].items()]
        for n, wk in zip(names, weights[sub]):
            if wk * len(x) < 1.0:
                mix.dropped[n] = "fewer than one site"
        mixtures[sub] = mix
        mask = (sub_of == sub) & np.isfinite(intensity)
        post = mix.posteriors(intensity[mask])
        k = post.argmax(axis=1)
        # a vacancy is reported only where the data are sure of it; an unsure site keeps its likeliest
        # intact column type (and is flagged by its low posterior): vacancies are rare, tails are not
        vacancy = np.array([bool(defect_class_of(sub, n)) for n in names])
        unsure = vacancy[k] & (post[np.arange(len(k)), k] < min_posterior)
        if unsure.any() and (~vacancy).any():
            k[unsure] = np.where(~vacancy, post[unsure], -1.0).argmax(axis=1)
        columns[mask] = np.array(names, dtype=object)[k]
        p_class[mask] = post[np.arange(len(k)), k]
    # two column types closer than two widths cannot be told apart: say which
    for sub, mix in mixtures.items():
        order = np.argsort(mix.means)
        for a, b in zip(order[:-1], order[1:]):
            gap = mix.means[b] - mix.means[a]
            if gap < RESOLVABLE_SD * max(mix.sds[a], mix.sds[b]) and not ({mix.classes[a], mix.classes[b]} & set(mix.dropped)):
                notes.append(f"{sub} sites: {mix.classes[a]} and {mix.classes[b]} lie within two widths of each "
                             f"other here; their sites are flagged where the posterior is below {min_posterior:g}")
    flagged = np.nan_to_num(p_class, nan=1.0) < min_posterior
    n_fitted = sum(len(x) for x in xs.values())
    return AlloyFit(columns, p_class, flagged, mixtures, float(scale), float(loglik / n_fitted), all_levels,
                    dict(crosstalk or {}), intensity, notes=notes)


def site_fractions(sites: pd.DataFrame, columns: np.ndarray) -> dict[str, float]:
    """Each element's fraction of the metal sites or of the chalcogen atoms these column types give."""
    sub = sites.sublattice.to_numpy()
    out: dict[str, float] = {}
    for sublattice in ("M", "X"):
        atoms = [el for col in columns[sub == sublattice] if _holds_its_atoms(sublattice, col)
                 for el in col.split("+")]
        for el in set(atoms):
            out[el] = atoms.count(el) / len(atoms)
    return out


def _named(sublattice: str, column: str) -> str:
    """A column type as a note names it: its signature, with its defect class where it is one."""
    cls = defect_class_of(sublattice, column)
    return f"{column} ({cls})" if cls else column


def _holds_its_atoms(sublattice: str, column: str) -> bool:
    """Whether a column type's atoms count in its sublattice's composition (not an empty site, not a
    chalcogen on a metal site)."""
    return column not in ("", EMPTY) and defect_class_of(sublattice, column) != "X_M"


def fit_alloy(sites: pd.DataFrame, clean: np.ndarray, levels_for) -> AlloyFit:
    """The column types of an alloy image: both sublattice assignments, each with a forward model matched
    to its own composition, the better one kept, then refined on crosstalk-corrected intensities.

    The two sublattices of a monolayer look alike in projection; an image tells the metal from the
    chalcogen by brightness, which an alloy can reverse (Se-rich chalcogen columns outshine Mo).  For
    each assignment the mixture is fitted with equal-share levels, then refitted with the levels of a
    forward twin at the composition found (``levels_for(composition or None, crosstalk)`` → levels, κ),
    up to :data:`MATCH_PASSES` times or until the rounded composition repeats.  The assignment whose
    mixture explains the raw intensities better (mean log-likelihood per site, in raw units) is kept.

    Last, each site's intensity less its neighbours' crosstalk (:func:`alloy_levels`) is fitted once
    more, from the scale the kept column types imply: that narrows peaks an alloy's mixed neighbours
    widen (an emptied chalcogen site beside three W reads like half an S2 column) and so finds its
    vacancies, while the column types and the assignment come from the uncorrected fit (a first-order
    correction alone can mistake one uniform layer for another, e.g. MoS2 for WSSe).
    """
    best = None
    for swap in (False, True):
        trial = sites[clean].reset_index(drop=True)
        if swap:
            trial["sublattice"] = np.where(trial.sublattice == "M", "X", "M")
        norm = float(np.median(trial.intensity_raw[trial.sublattice == "X"]))
        trial["intensity"] = trial.intensity_raw / norm
        composition, seen = None, set()
        for _ in range(MATCH_PASSES):
            fit = fit_alloy_sites(trial, *levels_for(composition, False))
            composition = site_fractions(trial, fit.columns)
            key = tuple(sorted((el, round(v / SHARE_STEP)) for el, v in composition.items()))
            if key in seen:
                break
            seen.add(key)
        score = fit.mean_loglik - np.log(norm)
        if best is None or score > best[0]:
            best = (score, swap, trial, composition, fit)
    _, swap, trial, composition, fit = best
    levels, crosstalk = levels_for(composition, True)
    unsupported = {(sub, name) for sub, mix in fit.mixtures.items() for name, why in mix.dropped.items()
                   if not why.startswith("fewer")}  # the refinement keeps the uncorrected fit's column types
    levels = {sub: {n: v for n, v in lv.items() if (sub, n) not in unsupported} for sub, lv in levels.items()}
    corrected = corrected_intensity(trial, crosstalk)
    types = fit.columns
    ratios = [corrected[i] / levels[s][t] for i, (s, t) in enumerate(zip(trial.sublattice, types))
              if t in levels.get(s, {}) and not defect_class_of(s, t) and levels[s][t] > 0
              and np.isfinite(corrected[i])]
    if crosstalk and ratios:
        # the corrected intensities once: fitted as they are, the crosstalk they were corrected by recorded
        refined = fit_alloy_sites(trial.assign(intensity=corrected), levels, start_scale=float(np.median(ratios)),
                                  prune=False)
        refined.crosstalk = dict(crosstalk)
        border = ~np.isfinite(corrected)  # no neighbourhood to correct by: the uncorrected fit's answer
        refined.columns[border] = fit.columns[border]
        refined.p_class[border] = fit.p_class[border]
        refined.flagged[border] = fit.flagged[border]
        refined.corrected = np.where(border, trial.intensity.to_numpy(float), corrected)
        # the refinement only finds and drops vacancies: between intact column types the uncorrected fit
        # decides (subtracting three noisy neighbours adds their noise to every site)
        both_intact = np.array([defect_class_of(s, a) == "" and defect_class_of(s, b) == ""
                                for s, a, b in zip(trial.sublattice, types, refined.columns)])
        refined.columns[both_intact] = types[both_intact]
        refined.p_class[both_intact] = fit.p_class[both_intact]
        refined.flagged[both_intact] = fit.flagged[both_intact]
        refined.notes = list(dict.fromkeys(fit.notes + refined.notes))
        for sub, mix in fit.mixtures.items():  # what the uncorrected fit left out stays left out, and said
            if sub in refined.mixtures:
                refined.mixtures[sub].dropped = {**mix.dropped, **refined.mixtures[sub].dropped}
        fit = refined
    fit.swapped = swap
    return fit


def _wilson(k: int, n: int) -> tuple[float, float]:
    if n <= 0:
        return float("nan"), float("nan")
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def counted_levels(fit: AlloyFit, metals: Sequence[str], chalcogens: Sequence[str], phase: str) -> dict:
    """The levels the concentrations count, per sublattice: ``""`` the parent's intact column, each
    defect class the lowest fitted level of its column types (in image units), and ``None`` for a
    defect class the data hold no level of (counted 0)."""
    scaled = {s: {n: fit.scale * v for n, v in lv.items()} for s, lv in fit.levels.items()}
    levels = {"M": {"": scaled["M"].get(metals[0], 1.0)},
              "X": {"": scaled["X"].get(signature([chalcogens[0]] * 2), 1.0)}}
    for s, lv in scaled.items():
        for name, value in lv.items():
            cls = defect_class_of(s, name)
            if cls:
                levels[s][cls] = min(levels[s].get(cls, np.inf), value)
    for s, name in (("M", "V_M"), ("M", "X_M"), ("X", "V_X")) + ((("X", "V_XX"),) if phase == "2H" else ()):
        levels[s].setdefault(name, None)
    return levels


def composition_table(sites: pd.DataFrame, region_masks: Sequence[np.ndarray], metals: Sequence[str],
                      chalcogens: Sequence[str]) -> pd.DataFrame:
    """Per region, each element's atoms, the atoms of its sublattice and their fraction with a 95 % Wilson
    interval (binomial over atoms); sites in holes, contamination or other phases, emptied sites and chalcogens on metal
    sites (X_M) are left out."""
    column = sites.species.astype(str).to_numpy()
    sub = sites.sublattice.to_numpy()
    from .sites import left_out

    keep = ~sites.in_hole.to_numpy(bool) & ~left_out(sites)
    keep &= np.array([_holds_its_atoms(s, c) for s, c in zip(sub, column)], dtype=bool)
    rows = []
    for r, mask in enumerate(region_masks):
        use = mask & keep
        metal_sites = column[use & (sub == "M")]
        x_atoms = [el for col in column[use & (sub == "X")] for el in col.split("+")]
        for sublattice, elements, atoms in (("M", metals, list(metal_sites)), ("X", chalcogens, x_atoms)):
            n = len(atoms)
            for el in elements:
                k = sum(1 for a in atoms if a == el)
                low, high = _wilson(k, n)
                rows.append({"region": r, "sublattice": sublattice, "element": el, "atoms": k, "of_atoms": n,
                             "fraction": k / n if n else float("nan"), "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=COMPOSITION_COLUMNS)


def formula(composition: pd.DataFrame, region: int = 0) -> str:
    """``Mo0.70W0.30S1.20Se0.80`` of one region (metal fractions, chalcogen fractions times two)."""
    part = composition[composition.region == region]
    text = ""
    for row in part.itertuples():
        if not np.isfinite(row.fraction) or row.atoms == 0:
            continue
        text += f"{row.element}{row.fraction * (2 if row.sublattice == 'X' else 1):.2f}"
    return text
