"""The plot of a series: counts per class against cumulative dose with the cross-sections' expected counts
(matplotlib only; the *Series* dock and docs/series.py draw it)."""

from __future__ import annotations

__all__ = ["PLOTTED", "draw_series"]

#: Classes drawn in the plot (with the missing chalcogens, V_X + 2·V_XX), and their colours.
PLOTTED = {"V_X": "#d62728", "V_XX": "#9467bd", "V_M": "#2ca02c", "missing_X": "#1f77b4"}


def draw_series(figure, result, frame: int | None = None) -> None:
    """Counts per class against cumulative dose (points) with the cross-sections' expected counts (lines);
    a vertical line at ``frame``'s dose."""
    figure.clear()
    ax = figure.add_subplot(111)
    dose = result.frames.cumulative_dose_e_per_A2.to_numpy()
    for name, colour in PLOTTED.items():
        if name not in result.frames or not (result.frames[name].any() or result.fits.get(name, [0]).any()):
            continue
        label = "missing X (V_X + 2·V_XX)" if name == "missing_X" else name
        ax.plot(dose, result.frames[name], "o", ms=3, color=colour, label=label)
        if name in result.fits:
            ax.plot(result.fits.cumulative_dose_e_per_A2, result.fits[name], "-", lw=1, color=colour)
    sigma = dict(zip(result.cross_section.process, result.cross_section.sigma_barn))
    ax.set_xlabel("cumulative dose (e/Å²)")
    ax.set_ylabel("count on the tracked sites")
    ax.set_title(f"X_loss {sigma.get('X_loss', float('nan')):.3g} barn, M_loss {sigma.get('M_loss', float('nan')):.3g}"
                 " barn (lines: expected counts)", fontsize=9)
    if frame is not None and 0 <= frame < len(dose):
        ax.axvline(dose[frame], color="0.5", lw=0.8, ls=":")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
