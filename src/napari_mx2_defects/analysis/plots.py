"""Figures of an analysis: site-intensity histogram with the fitted mixture, concentrations with CIs.

Figures are built with matplotlib's object API (no pyplot state), so the
widget can embed them and the CLI can save them from any thread.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

__all__ = ["class_average_figure", "concentration_figure", "draw_class_averages", "draw_concentrations",
           "draw_histogram", "histogram_figure"]


def draw_histogram(ax, result) -> None:
    """Histogram of normalised site intensities per sublattice with the mixture the classes come from:
    each fitted component (class, mean, width), the thresholds where the class changes, and the sites
    flagged for review (posterior below 0.9, or a model answer not counted)."""
    from .sites import left_out

    keep = ~result.sites.in_hole
    keep &= ~left_out(result.sites)  # the classes were fitted without contaminated and other-phase sites
    sites = result.sites[keep]
    column = "intensity_corrected" if "intensity_corrected" in sites else "intensity"  # an alloy's fit
    sites = sites.assign(intensity=sites[column])
    values = sites.intensity.to_numpy()
    bins = np.linspace(min(-0.1, values.min()), max(values.max(), 2.0) * 1.02, 90)
    width = bins[1] - bins[0]
    xs = np.linspace(bins[0], bins[-1], 600)
    mixtures = result.lattice.get("mixture", {})
    for sub, colour in (("X", "tab:orange"), ("M", "tab:blue")):
        sel = (sites.sublattice == sub).to_numpy()
        ax.hist(sites.intensity[sel], bins=bins, alpha=0.5, color=colour, label=f"{sub} sites ({int(sel.sum())})")
        mix = mixtures.get(sub)
        if not mix:
            continue
        n = int(sel.sum())
        parts = list(zip(mix["classes"], mix["means"], mix["sds"], mix["weights"]))
        if mix.get("intact_tail"):
            parts.append(("intact", *mix["intact_tail"]))
        total = np.zeros_like(xs)
        for name, mean, sd, weight in parts:
            density = weight * n * width * np.exp(-0.5 * ((xs - mean) / sd) ** 2) / (sd * np.sqrt(2 * np.pi))
            total += density
            if name != "intact":
                ax.text(mean, max(density.max(), 1.0) * 1.3, f"{sub}:{name}", fontsize=7, ha="center", color=colour)
        ax.plot(xs, total, color=colour, lw=1.2)
        for cut in mix.get("thresholds", []):
            ax.axvline(cut, color=colour, lw=0.8, ls="--")
    ax.plot([], [], color="k", lw=1.2, label="fitted mixture")
    ax.plot([], [], color="k", lw=0.8, ls="--", label="class thresholds")
    for sub, levels in result.levels.items():
        for name, level in levels.items():
            if level is not None and np.isfinite(level):  # an alloy's vacancy class may have no level
                ax.axvline(level, color="grey", lw=0.5, ls=":")
    if "flagged" in sites and sites.flagged.any():
        flagged = sites[sites.flagged.to_numpy(bool)]
        ax.plot(flagged.intensity, np.full(len(flagged), 0.6), "|", color="k", ms=8,
                label=f"flagged for review ({len(flagged)})")
    if "model_class" in sites:
        detected = sites[sites.model_class != ""]
        if len(detected):
            ax.plot(detected.intensity, np.full(len(detected), 0.3), "v", color="red", ms=5,
                    label=f"model defects ({len(detected)})")
    ax.set_yscale("symlog", linthresh=5)
    ax.set_xlabel("site intensity (median X column = 1" + (", less the neighbours' crosstalk" if column !=
                  "intensity" else "") + "); dotted: forward-model levels")
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


def draw_class_averages(figure: Figure, structure, columns: int = 4) -> None:
    """A gallery of class averages (:func:`~.structure.class_averages`) on ``figure``: one panel per
    class with its count and a 1 Å scale bar, each panel on its own grey scale."""
    averages = structure.averages
    figure.clear()
    if not averages:
        figure.text(0.5, 0.5, "no site to average", ha="center", va="center")
        return
    columns = min(columns, len(averages))
    rows = int(np.ceil(len(averages) / columns))
    for k, average in enumerate(averages):
        ax = figure.add_subplot(rows, columns, k + 1)
        ax.imshow(average.image, cmap="gray", interpolation="nearest")
        ax.set_title(f"{average.defect_class} (n = {average.n})", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        bar_px = 1.0 / average.pixel_size_A
        n = average.image.shape[1]
        ax.plot([0.06 * n, 0.06 * n + bar_px], [0.92 * n] * 2, color="yellow", lw=2)
    figure.text(0.01, 0.01, "scale bar 1 Å", fontsize=7)


def class_average_figure(structure) -> Figure:
    figure = Figure(figsize=(8, 2.3 * int(np.ceil(max(1, len(structure.averages)) / 4))), tight_layout=True)
    draw_class_averages(figure, structure)
    return figure
