"""Site classes the data support: the forward model re-scaled to the image's Z contrast, then a mixture fit.

Two steps turn measured site intensities into classes a microscopist can check:

1. **Z contrast from the image** (:func:`z_contrast_levels`).  The forward model is a twin at the
   default optics; a real detector (ADF from ~30 mrad, HAADF from ~50) scatters with another
   effective power of the atomic number, so its metal/chalcogen ratio differs (W/Se2 1.12 in the
   model, 1.40 on a JEOL ADF detector).  Column intensities in annular dark field grow roughly as
   Σ Zᵢ^γ (Pennycook & Jesson 1991; γ ≈ 1.6–2 for HAADF, lower for ADF).  The exponent γ that
   reproduces the image's own intact M/X2 ratio is solved for, and every site type's level is
   re-scaled by Σ Z^γ / Σ Z^γ₀ of its column (γ₀: the exponent the forward model implies), relative
   to the intact X2 column.  Channelling and the probe's shape stay the forward model's: only their
   ratio is corrected.
2. **A mixture per sublattice** (:func:`fit_site_classes`): scikit-learn's Gaussian mixture with one
   component per candidate class, means seeded at the re-scaled levels, widths fitted to the data
   (floored at a third of the intact peak's robust width so a class with few sites cannot collapse),
   plus a broad component around the intact level that takes the heavy tails real images have
   (scan noise, contamination, strain) — those sites are intact — on a side of intact where no defect
   class lies (see :meth:`SublatticeMixture.posteriors`).  A component the data do not
   support is dropped: its fitted mean left its level (the data hold no peak on its side of
   intact within half the way to it — it was fitting the tail of another), its peak lies nearer
   another class's level, it takes the same peak as a class whose level is nearer, it holds less
   than one site, or the model without it has a BIC lower, or higher by less than :data:`MIN_BIC_GAIN`,
   over the sites the component and its absorber take (:func:`_local_bic_gain`).  (Absolute levels may
   be off where the image's blur and background differ from the model's; the order of the levels is
   what physics fixes.)  Each site
   gets the class of its highest posterior and that posterior (``p_class``); sites below :data:`MIN_POSTERIOR` are flagged for review.  Two classes
   whose levels lie closer than :data:`RESOLVABLE_SD` widths cannot be told apart at this noise:
   that is said, and when the user named a dopant the dopant's class is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = ["MIN_POSTERIOR", "RESOLVABLE_SD", "VERIFIABLE_SD", "SiteClasses", "SublatticeMixture",
           "fit_site_classes", "z_contrast_levels"]

#: Sites whose class posterior is below this are flagged for review.
MIN_POSTERIOR = 0.9
#: Two levels closer than this many fitted widths are not separable by intensity.
RESOLVABLE_SD = 2.0
#: A model's detection of a class is counted only when the class's calibrated level lies at least this many
#: intact widths from intact: a site at that level is then e^(3²/2) ≈ 90 times likelier that class than
#: intact.  Nearer, the image cannot confirm a single site, and a model never trained at such optics named
#: the lower tail of the intact S2 peak V_X (200 kV HAADF, 1e5 e/Å²: V_X 1.3–2.0 widths from intact, against
#: ≥ 8.6 at every held-out optics preset at that dose; benchmarks/RESULTS.md).
VERIFIABLE_SD = 3.0
#: Narrowest component, as a fraction of the intact peak's robust width (a class with few sites must
#: not collapse onto them).
WIDTH_FLOOR = 0.3
#: Range of the effective Z-contrast exponent accepted from an image (ADF ≈ 1.2 … HAADF ≈ 2).
EXPONENT_RANGE = (0.8, 2.5)


#: Effective Z-contrast exponents any annular detector may give measured column intensities: a lower-angle
#: annulus reaches ~0.75 (the shared Ti-doped WSe2 scan's second detector: W/Se2 0.90), HAADF ~1.3–2.
DETECTOR_EXPONENT_RANGE = (0.6, 2.5)


def sublattice_order_depends_on_detector(compositions: dict, m_over_x2: float,
                                         exponents: tuple[float, float] = DETECTOR_EXPONENT_RANGE) -> bool:
    """Whether some annular detector could give these two sublattices' brightness ratio with metal and
    chalcogen the other way round: both ``m_over_x2`` and its inverse are Σ Z_M^γ / Σ Z_X2^γ for some γ in
    ``exponents``.  Then only the detector's angles say which sublattice is the metal (WSe2 at M/X2 1.11:
    yes; at 1.34, or MoS2 at 1.65: no)."""
    metal, x2 = compositions.get("M", {}).get(""), compositions.get("X", {}).get("")
    if not metal or not x2 or not (m_over_x2 > 0 and np.isfinite(m_over_x2)):
        return False
    ratios = [_zsum(metal, g) / _zsum(x2, g) for g in exponents]
    lo, hi = min(ratios), max(ratios)
    return bool(lo <= m_over_x2 <= hi and lo <= 1 / m_over_x2 <= hi)


def _zsum(zs, gamma: float) -> float:
    return float(np.sum(np.asarray(zs, float) ** gamma)) if len(zs) else 0.0


def _exponent_for_ratio(metal: tuple, x2: tuple, ratio: float) -> float | None:
    """γ with Σ Z_M^γ / Σ Z_X2^γ = ratio (monotonic in γ for single-species columns), or None."""
    from scipy.optimize import brentq

    def f(g):
        return np.log(_zsum(metal, g) / _zsum(x2, g)) - np.log(ratio)

    lo, hi = 0.3, 4.0
    if not (ratio > 0 and np.isfinite(ratio)) or f(lo) * f(hi) > 0:
        return None
    return float(brentq(f, lo, hi))


def z_contrast_levels(levels: dict, compositions: dict, m_over_x2: float) -> tuple[dict, dict]:
    """The forward model's levels re-scaled to the image's measured intact M/X2 ratio.

    Returns ``(levels, record)``; ``record`` (for ``lattice.json``) holds the fitted exponent, the
    forward model's, both ratios and whether the levels were changed.
    """
    out = {sub: dict(v) for sub, v in levels.items()}
    metal, x2 = compositions.get("M", {}).get(""), compositions.get("X", {}).get("")
    model_ratio = levels.get("M", {}).get("")
    record = {"m_over_x2_image": float(m_over_x2), "m_over_x2_forward_model": model_ratio,
              "z_exponent": None, "z_exponent_forward_model": None, "applied": False}
    if not metal or not x2 or not model_ratio or not np.isfinite(m_over_x2):
        return out, record
    gamma0 = _exponent_for_ratio(metal, x2, model_ratio)
    gamma = _exponent_for_ratio(metal, x2, m_over_x2)
    record.update(z_exponent_forward_model=gamma0, z_exponent=gamma)
    if gamma0 is None or gamma is None or not (EXPONENT_RANGE[0] <= gamma <= EXPONENT_RANGE[1]):
        return out, record
    x2_gain = _zsum(x2, gamma) / _zsum(x2, gamma0)
    for sub, classes in out.items():
        for name, level in classes.items():
            zs = compositions.get(sub, {}).get(name)
            if zs:  # empty sites keep the forward model's residual
                classes[name] = level * (_zsum(zs, gamma) / _zsum(zs, gamma0)) / x2_gain
    record["applied"] = True
    return out, record


@dataclass
class SublatticeMixture:
    """The mixture fitted to one sublattice's site intensities (``tail``: the broad intact component)."""

    sublattice: str
    classes: list[str]
    means: list[float]
    sds: list[float]
    weights: list[float]
    seeds: dict[str, float]
    dropped: dict[str, str] = field(default_factory=dict)
    tail: tuple[float, float, float] | None = None  # mean, sd, weight
    intact_width: float = float("nan")  # the sublattice's robust width, in which separability is measured
    merged_into: dict[str, str] = field(default_factory=dict)  # a class the noise cannot tell from the named dopant's

    def refutes(self, name: str, x: np.ndarray) -> np.ndarray:
        """Whether each intensity ``x`` refutes class ``name`` on this sublattice: the site sits inside the intact
        peak (within :data:`RESOLVABLE_SD` intact widths of intact) and is ≥ e^(VERIFIABLE_SD²/2) ≈ 90 times
        likelier intact than at ``name``'s calibrated level (both at the intact width).  A class without a level
        here (off-lattice) or an alloy's column types are never refuted."""
        x = np.asarray(x, float)
        if "" not in self.seeds or name not in self.seeds or not name or not np.isfinite(self.intact_width):
            return np.zeros(x.shape, bool)
        intact, level, w = self.seeds[""], self.seeds[name], self.intact_width
        log_ratio = ((x - level) ** 2 - (x - intact) ** 2) / (2 * w**2)
        return (np.abs(x - intact) <= RESOLVABLE_SD * w) & (log_ratio >= VERIFIABLE_SD**2 / 2)

    @property
    def unverifiable(self) -> list[str]:
        """Classes whose calibrated level lies within :data:`VERIFIABLE_SD` widths of intact: at this
        image's noise no single site of theirs can be confirmed by its intensity."""
        if "" not in self.seeds:  # an alloy's column types: no intact level to measure from
            return []
        return sorted(name for name, level in self.seeds.items()
                      if name and abs(level - self.seeds[""]) < VERIFIABLE_SD * self.intact_width)

    def posteriors(self, x: np.ndarray) -> np.ndarray:
        """Posterior of each class (columns in ``classes`` order; the tail counts as intact).

        The tail stands for the intact peak's heavy skirts on a side where no defect class lies: on the side
        of intact where a defect component is, a site is weighed between the intact core and the defect
        components alone. Otherwise the broad skirt reached across to a defect's own peak: a V_X at 0.33 of
        S2 (its class at 0.10 ± 0.04, intact at 0.99 ± 0.06, the skirt 1.11 ± 0.18) was counted intact.
        """
        x = np.asarray(x, float)[:, None]
        means, sds, w = (np.asarray(v, float) for v in (self.means, self.sds, self.weights))
        core = means[self.classes.index("")] if "" in self.classes else None
        if self.tail is not None:
            means, sds, w = (np.append(a, t) for a, t in zip((means, sds, w), self.tail))
        logp = -0.5 * ((x - means) / sds) ** 2 - np.log(sds) + np.log(np.maximum(w, 1e-300))
        if self.tail is not None and core is not None:
            sides = {np.sign(m - core) for m, c in zip(self.means, self.classes) if c}
            covered = np.isin(np.sign(x[:, 0] - core), list(sides))
            logp[covered, -1] = -np.inf
        logp -= logp.max(axis=1, keepdims=True)
        p = np.exp(logp)
        p /= p.sum(axis=1, keepdims=True)
        if self.tail is not None:
            p = p[:, :-1].copy() + np.where(np.array(self.classes) == "", 1.0, 0.0) * p[:, -1:]
        return np.clip(p, 0.0, 1.0)

    @property
    def thresholds(self) -> list[float]:
        """Intensities where the most probable class changes (within the components' range ± 0.5)."""
        if len(self.classes) < 2:
            return []
        grid = np.linspace(min(self.means) - 0.5, max(self.means) + 0.5, 4001)
        best = self.posteriors(grid).argmax(axis=1)
        return [float((grid[i] + grid[i + 1]) / 2) for i in np.flatnonzero(np.diff(best))]

    def as_dict(self) -> dict:
        return {"classes": [c or "intact" for c in self.classes], "means": self.means, "sds": self.sds,
                "weights": self.weights, "intact_tail": list(self.tail) if self.tail else None,
                "seeds": {k or "intact": v for k, v in self.seeds.items()},
                "dropped": {k or "intact": v for k, v in self.dropped.items()}, "thresholds": self.thresholds,
                "intact_width": self.intact_width if np.isfinite(self.intact_width) else None,
                "unverifiable": self.unverifiable}


@dataclass
class SiteClasses:
    """Class, posterior and review flag of every site, and the mixtures behind them."""

    classes: np.ndarray
    p_class: np.ndarray
    flagged: np.ndarray
    mixtures: dict[str, SublatticeMixture]
    notes: list[str] = field(default_factory=list)

    @property
    def unverifiable(self) -> dict[str, list[str]]:
        """Per sublattice, the classes no single site of which this image's noise lets one confirm."""
        return {sub: mix.unverifiable for sub, mix in self.mixtures.items()}


def _fit(x: np.ndarray, names: list[str], seeds: dict, sd0: float, tail: bool = True, seed: int = 0):
    """Components ``names`` (means at their seeds) and, with ``tail``, the broad intact tail last."""
    from sklearn.mixture import GaussianMixture

    k = len(names) + int(tail)
    weights = np.full(k, 0.01)
    weights[names.index("")] = 0.9
    means = [seeds[n] for n in names]
    precisions = [1.0 / sd0**2] * len(names)
    if tail:
        weights[-1] = 0.08
        means.append(seeds[""])
        precisions.append(1.0 / (3 * sd0) ** 2)
    gm = GaussianMixture(k, covariance_type="full", means_init=np.array(means).reshape(-1, 1),
                         weights_init=weights / weights.sum(), precisions_init=np.array(precisions).reshape(-1, 1, 1),
                         reg_covar=(WIDTH_FLOOR * sd0) ** 2, max_iter=500, tol=1e-7, random_state=seed)
    return gm.fit(x.reshape(-1, 1))


def _tail_is_intact(gm, names: list[str]) -> bool:
    """Whether the tail component stayed a broad skirt of the intact peak (not a peak of its own)."""
    means, sds = gm.means_.ravel(), np.sqrt(gm.covariances_.ravel())
    core = names.index("")
    return bool(sds[-1] >= 1.5 * sds[core] and abs(means[-1] - means[core]) <= sds[-1])


def _unsupported(gm, x: np.ndarray, names: list[str], seeds: dict, sd0: float,
                 tail: bool, n_sites: int) -> tuple[str, str] | None:
    """The least supported defect component and why, or None when every one is supported (``x`` may be a
    sample of the sublattice's ``n_sites``)."""
    means = gm.means_.ravel()
    sds = np.sqrt(gm.covariances_.ravel())
    weak = gm.weights_ * n_sites < 1.0
    intact = seeds[""]
    worst = None
    for i, name in enumerate(names):
        if name == "":
            continue
        seed = seeds[name]
        # a defect level may be off in absolute terms (the image's blur and background are not the
        # model's), but it stays on its side of intact: it may move up to half-way towards intact
        room = 0.5 * abs(intact - seed)
        drift = abs(means[i] - seed)
        if drift > room or np.sign(means[i] - means[names.index("")]) != np.sign(seed - intact):
            reason = (f"no peak at its level {seed:.2f}: the fit moved to {means[i]:.2f}, the tail of another "
                      f"class")
            score = drift / max(room, 1e-9)
        elif (nearest := min((o for o in names if o != ""), key=lambda o: abs(means[i] - seeds[o]))) != name:
            # its peak lies nearer another class's level: that class's peak, split by EM (60 kV ADF, 0.4 Å/px:
            # eleven empty Mo sites at −0.15…−0.01 went to V_M, level −0.17, and X_M, level 0.13, five and six)
            reason = f"its peak ({means[i]:.2f}) lies nearer the level of {nearest} ({seeds[nearest]:.2f})"
            score = 0.8
        else:
            # two classes on one peak: the one whose level is nearer keeps it (EM may give it either's weight)
            twins = [j for j, other in enumerate(names) if other not in ("", name) and not weak[i]
                     and (abs(means[j] - means[i]) < max(sds[i], sds[j]) or weak[j])
                     and abs(means[i] - seeds[other]) < abs(means[i] - seed)]
            if twins:
                other = names[twins[0]]
                reason = f"the same peak ({means[i]:.2f}) as {other}, whose level ({seeds[other]:.2f}) is nearer"
                score = 0.9
            elif weak[i]:
                reason, score = "fewer than one site", 0.5
            else:
                continue
        if worst is None or score > worst[2]:
            worst = (name, reason, score)
    if worst is not None:
        return worst[0], worst[1]
    best = None
    for name in names:
        if name == "":
            continue
        rest = [n for n in names if n != name]
        refit = _fit(x, rest, seeds, sd0, tail)
        if tail and not _tail_is_intact(refit, rest):
            # without it, the intact peak's broad skirt would have to become a narrow peak of its own at
            # this class's level (8 empty metal sites of a 120 Å twin were counted intact that way)
            continue
        refit_means = refit.means_.ravel()
        if any(other != "" and abs(refit_means[j] - seeds[name]) < abs(refit_means[j] - seeds[other])
               for j, other in enumerate(rest)):
            # without it, another class takes its peak although this class's level is nearer: the peak is
            # this class's (13 V_X at 0.34 of S2 were named V_XX, level −0.04, when V_X, level 0.29, went)
            continue
        gain = _local_bic_gain(gm, refit, x, names.index(name))
        if gain < MIN_BIC_GAIN and (best is None or gain < best[1]):
            best = (name, gain)
    if best is not None:
        return best[0], (f"not supported by the data (BIC {best[1]:+.1f} without it, over the sites it takes; "
                             f"keeping a class takes ≥ {MIN_BIC_GAIN:+.0f})")
    return None


#: A class is kept only when the data give positive evidence for it: twice the log Bayes factor, which the
#: local BIC difference approximates, of at least 2 (Kass & Raftery 1995, J. Am. Stat. Assoc. 90, 773: 0–2
#: "not worth more than a bare mention", 2–6 positive).  With 0 as the bar, M_X on the X sites of the shared
#: Ti:WSe2 scan sat at −0.2 and the last digits of an abTEM calibration (5·10⁻⁷) flipped it in or out with
#: 25 sites: evidence that weak must not decide a count.
MIN_BIC_GAIN = 2.0


def _local_bic_gain(full, refit, x: np.ndarray, component: int) -> float:
    """BIC without a component minus BIC with it, over the sites that component and its absorber take.

    A component's three numbers (level, width, weight) are informed by the sites near its level only, and
    the two models agree on every other site; a BIC over the whole sublattice charges ln(all sites) per
    number, so a peak of 16 empty X2 columns beside 29 V_X in 1,500 sites was merged into V_X although the
    two lay 3.4 widths apart (0.4 Å/px, ADF), and a larger image made the same peak harder to keep.  The
    sites compared: those the full model gives to ``component``, and those the model without it gives to
    the component that took most of them.
    """
    xx = x.reshape(-1, 1)
    mine = full.predict(xx) == component
    if not mine.any():
        return -np.inf
    to = refit.predict(xx)
    absorber = np.bincount(to[mine]).argmax()
    local = mine | (to == absorber)
    n = int(local.sum())
    return float(2 * (full.score_samples(xx[local]).sum() - refit.score_samples(xx[local]).sum()) - 3 * np.log(n))


#: Most sites of one sublattice a mixture is fitted on (a fixed random sample above that: a million-atom
#: image has ~330,000 per sublattice, and EM's cost is linear in them; 200,000 sites still hold ~1,000
#: of a 0.5 % class). Posteriors, classes and flags are computed for every site.
FIT_SAMPLE = 200_000


def fit_sublattice(x: np.ndarray, seeds: dict[str, float], preferred: str | None = None) -> SublatticeMixture:
    """Fit the mixture of one sublattice (see the module docstring); ``preferred`` wins an unresolvable pair."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    seeds = dict(seeds)
    intact = seeds.get("", float(np.median(x)) if len(x) else 1.0)
    seeds[""] = intact
    sd0 = max(1.4826 * float(np.median(np.abs(x - np.median(x)))) if len(x) else 0.05, 0.01)
    dropped: dict[str, str] = {}
    merged_into: dict[str, str] = {}
    # pairs of levels closer than the noise separates: keep the named dopant's, else the one nearer intact
    names = sorted(seeds, key=seeds.get)
    for a, b in zip(names[:-1], names[1:]):
        if a in dropped or b in dropped or abs(seeds[a] - seeds[b]) >= RESOLVABLE_SD * sd0:
            continue
        if "" in (a, b):
            loser = b if a == "" else a
        elif preferred in (a, b):
            loser = b if a == preferred else a
        else:
            continue  # both kept; the posterior says how sure each site is
        winner = b if loser == a else a
        if winner:
            merged_into[loser] = winner
        dropped[loser] = (f"level {seeds[loser]:.2f} within {RESOLVABLE_SD:g} widths ({sd0:.3f}) of "
                          f"{winner or 'intact'} ({seeds[winner]:.2f}): not separable at this noise")
    names = [n for n in names if n not in dropped]
    n_sites = len(x)
    if n_sites > FIT_SAMPLE:  # the mixture is fitted on a fixed random sample; every site gets its posterior
        x = np.random.default_rng(0).choice(x, FIT_SAMPLE, replace=False)
    if len(x) < 3 * (len(names) + 1) or len(names) == 1:
        return SublatticeMixture("", [""], [float(np.mean(x)) if len(x) else intact], [sd0], [1.0], seeds,
                                 {**dropped, **{n: "too few sites to fit" for n in names if n}}, intact_width=sd0,
                                 merged_into=merged_into)
    # the tail is for heavy skirts of the intact peak; where it would take a peak of its own, go without
    gm = _fit(x, names, seeds, sd0, True)
    tail = _tail_is_intact(gm, names)
    if not tail:
        gm = _fit(x, names, seeds, sd0, False)
    while len(names) > 1:
        worst = _unsupported(gm, x, names, seeds, sd0, tail, n_sites)
        if worst is None:
            break
        dropped[worst[0]] = worst[1]
        names = [n for n in names if n != worst[0]]
        gm = _fit(x, names, seeds, sd0, tail)
    means = [float(m) for m in gm.means_.ravel()]
    sds = [float(np.sqrt(c)) for c in gm.covariances_.ravel()]
    weights = [float(w) for w in gm.weights_]
    k = len(names)
    return SublatticeMixture("", names, means[:k], sds[:k], weights[:k], seeds, dropped,
                             tail=(means[k], sds[k], weights[k]) if tail else None, intact_width=sd0,
                             merged_into=merged_into)


def fit_site_classes(sites: pd.DataFrame, levels: dict, dopant: str | None = None,
                     min_posterior: float = MIN_POSTERIOR) -> SiteClasses:
    """Class ('' intact), posterior and review flag of every site from a mixture per sublattice.

    ``levels[sublattice][class]`` seeds the components (the calibrated forward model); with a named
    ``dopant``, ``TM_D`` wins a pair of metal-site levels the noise cannot separate.
    """
    n = len(sites)
    classes = np.full(n, "", dtype=object)
    p_class = np.ones(n)
    mixtures: dict[str, SublatticeMixture] = {}
    notes: list[str] = []
    intensity = sites.intensity.to_numpy(float)
    for sub, seeds in levels.items():
        mask = (sites.sublattice == sub).to_numpy()
        if not mask.any() or not seeds:
            continue
        mix = fit_sublattice(intensity[mask], seeds, preferred="TM_D" if dopant else None)
        mix.sublattice = sub
        mixtures[sub] = mix
        post = mix.posteriors(intensity[mask])
        best = post.argmax(axis=1)
        classes[mask] = np.array(mix.classes, dtype=object)[best]
        p_class[mask] = post[np.arange(len(best)), best]
        for name, why in mix.dropped.items():
            if name and "separable" in why:
                named = (lambda text: text.replace("TM_D", f"TM_D({dopant})")) if dopant else (lambda text: text)
                notes.append(f"{sub} sites: {named(name)} is not reported — {named(why)}")
    flagged = p_class < min_posterior
    return SiteClasses(classes, p_class, flagged, mixtures, notes)
