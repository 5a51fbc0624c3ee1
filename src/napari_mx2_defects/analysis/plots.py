"""Figures of an analysis: site-intensity histogram with a Gaussian mixture, concentrations with CIs.

Figures are built with matplotlib's object API (no pyplot state), so the
widget can embed them and the CLI can save them from any thread.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["concentration_figure", "draw_concentrations", "draw_histogram", "fit_mixture", "histogram_figure"]


def fit_mixture(values: np.ndarray, max_components: int = 4, seed: int = 0):
    """Gaussian mixture of the normalised site intensities, components chosen by BIC."""
    from sklearn.mixture import GaussianMixture

    values = np.asarray(values, float).reshape(-1, 1)
    if len(values) < 10:
        return None
    best = None
    for k in range(1, max_components + 1):
        gm = GaussianMixture(k, random_state=seed).fit(values)
        bic = gm.bic(values)
        if best is None or bic < best[0]:
            best = (bic, gm)
    return best[1]


def draw_histogram(ax, result) -> None:
    """Histogram of normalised site intensities per sublattice, mixture fit, levels and model marks."""
    sites = result.sites[~result.sites.in_hole]
    values = sites.intensity.to_numpy()
    bins = np.linspace(min(-0.1, values.min()), max(values.max(), 2.0) * 1.02, 90)
    for sub, colour in (("X", "tab:orange"), ("M", "tab:blue")):
        sel = sites.sublattice == sub
        ax.hist(sites.intensity[sel], bins=bins, alpha=0.55, color=colour, label=f"{sub} sites ({int(sel.sum())})")
    gm = fit_mixture(values)
    if gm is not None:
        xs = np.linspace(bins[0], bins[-1], 400)
        dens = np.exp(gm.score_samples(xs.reshape(-1, 1))) * len(values) * (bins[1] - bins[0])
        ax.plot(xs, dens, color="k", lw=1, label=f"Gaussian mixture ({gm.n_components})")
    for sub, levels in result.levels.items():
        for name, level in levels.items():
            ax.axvline(level, color="grey", lw=0.6, ls=":")
            ax.text(level, ax.get_ylim()[1] * 0.95, name or f"{sub}", rotation=90, fontsize=7, va="top", ha="right")
    if "model_class" in sites:
        flagged = sites[sites.model_class != ""]
        if len(flagged):
            ax.plot(flagged.intensity, np.full(len(flagged), ax.get_ylim()[1] * 0.02), "v", color="red", ms=5,
                    label=f"model defects ({len(flagged)})")
    ax.set_yscale("symlog", linthresh=5)
    ax.set_xlabel("site intensity (median X column = 1)")
    ax.set_ylabel("sites")
    ax.legend(fontsize=7, loc="upper right")


def draw_concentrations(ax, result) -> None:
    """Bar chart of concentrations per cm² with 95 % Poisson intervals."""
    table = result.concentrations
    if table.empty:
        ax.text(0.5, 0.5, "no concentrations", ha="center", transform=ax.transAxes)
        return
    labels = [f"{c}" if table.region.nunique() == 1 else f"{c} [{r}]" for c, r in zip(table.defect_class, table.region)]
    x = np.arange(len(table))
    per = table.per_cm2.to_numpy()
    err = np.vstack([per - table.ci_low_per_cm2.to_numpy(), table.ci_high_per_cm2.to_numpy() - per])
    ax.bar(x, per, yerr=err, capsize=3, color="tab:blue")
    ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("defects per cm² (95 % CI)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))


def histogram_figure(result) -> Figure:
    fig = Figure(figsize=(6, 3.6), tight_layout=True)
    draw_histogram(fig.add_subplot(111), result)
    return fig


def concentration_figure(result) -> Figure:
    fig = Figure(figsize=(6, 3.6), tight_layout=True)
    draw_concentrations(fig.add_subplot(111), result)
    return fig
