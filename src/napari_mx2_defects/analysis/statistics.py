"""Counting statistics: exact Poisson intervals and areal concentrations."""

from __future__ import annotations

import pandas as pd
from scipy.stats import chi2

__all__ = ["CONCENTRATION_COLUMNS", "concentration_table", "poisson_interval"]

CONCENTRATION_COLUMNS = [
    "region",
    "defect_class",
    "count",
    "area_nm2",
    "per_cm2",
    "ci_low_per_cm2",
    "ci_high_per_cm2",
    "site_fraction",
    "n_sites",
    "site_density_per_cm2",
]


def poisson_interval(count: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) two-sided confidence interval for a Poisson count."""
    alpha = 1 - confidence
    low = 0.0 if count == 0 else chi2.ppf(alpha / 2, 2 * count) / 2
    high = chi2.ppf(1 - alpha / 2, 2 * (count + 1)) / 2
    return float(low), float(high)


def concentration_table(counts: dict[str, int], n_sites: dict[str, int], area_A2: float,
                        sublattice_of: dict[str, str], region: int | str = 0) -> pd.DataFrame:
    """One row per defect class: count, area, per cm² with a 95 % Poisson interval, site fraction.

    Raises
    ------
    ValueError
        If a concentration exceeds the density of the sites that class lives
        on (which is impossible and means the area or calibration is wrong).
    """
    if area_A2 <= 0:
        raise ValueError("the analysed area is empty; choose a larger region or check the mask")
    area_cm2 = area_A2 * 1e-16
    rows = []
    for name, count in counts.items():
        sub = sublattice_of[name]
        sites = n_sites.get(sub, 0)
        low, high = poisson_interval(int(count))
        density = sites / area_cm2 if sites else float("nan")
        per_cm2 = count / area_cm2
        if sites and per_cm2 > density * (1 + 1e-9):
            raise ValueError(
                f"{name}: {per_cm2:.3g} per cm² is above the {sub}-site density {density:.3g} per cm²; "
                "the pixel size or the analysed area is wrong."
            )
        rows.append({
            "region": region,
            "defect_class": name,
            "count": int(count),
            "area_nm2": area_A2 / 100.0,
            "per_cm2": per_cm2,
            "ci_low_per_cm2": low / area_cm2,
            "ci_high_per_cm2": high / area_cm2,
            "site_fraction": count / sites if sites else float("nan"),
            "n_sites": int(sites),
            "site_density_per_cm2": density,
        })
    return pd.DataFrame(rows, columns=CONCENTRATION_COLUMNS)
