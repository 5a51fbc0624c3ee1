"""napari ``LayerData`` tuples for twins and analyses (no Qt; shared by widgets, sample data and demo)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .twin.defects import CLASS_COLORS, CLASS_NAMES

__all__ = ["LayerData", "label_colormap", "label_colormap_layer", "label_features", "sites_layer",
           "twin_layers"]

LayerData = tuple[Any, dict, str]


def label_colormap() -> dict:
    """Class id → RGBA for Labels layers (lattice transparent)."""
    return {None: (0, 0, 0, 0), **{cid: rgba for cid, rgba in CLASS_COLORS.items()}}


def _points(table: pd.DataFrame, pixel_size_A: tuple[float, float], name: str, colour_by: str,
            size_A: float, metadata: dict) -> LayerData:
    coords = table[["y_A", "x_A"]].to_numpy(dtype=float) if len(table) else np.zeros((0, 2))
    features = table.drop(columns=["x_A", "y_A"], errors="ignore").reset_index(drop=True)
    kwargs = {
        "name": name,
        "features": features,
        "size": size_A,
        "face_color": "transparent",
        "border_color": colour_by if colour_by in features and len(features) else "yellow",
        "border_width": 0.15,
        "border_width_is_relative": True,
        "units": ["angstrom", "angstrom"],
        "metadata": metadata,
    }
    if colour_by in features and len(features):
        kwargs["border_color_cycle"] = [CLASS_COLORS[c][:3] + (1.0,) for c in sorted(CLASS_COLORS)][1:]
    return coords, kwargs, "points"


def twin_layers(twin, name: str = "twin") -> list[LayerData]:
    """Image, ground-truth Labels and defect Points of a :class:`~.twin.api.Twin`, all in Å."""
    scale = list(twin.pixel_size_A)
    meta = {
        "pixel_size_A": float(np.mean(twin.pixel_size_A)),
        "calibrated": True,
        "beam_energy_keV": twin.settings["request"]["microscope"]["energy_keV"],
        "material": twin.settings["parent"]["formula"],
        "twin_settings": twin.settings,
    }
    image = (twin.image, {"name": f"{name} HAADF", "scale": scale, "units": ["angstrom", "angstrom"],
                          "colormap": "gray", "metadata": meta}, "image")
    labels = (twin.labels, {"name": f"{name} truth labels", "scale": scale, "units": ["angstrom", "angstrom"],
                            "colormap": label_colormap_layer(), "opacity": 0.6,
                            "features": label_features(),
                            "metadata": {**meta, "class_names": CLASS_NAMES}}, "labels")
    defects = twin.defects[["x_A", "y_A", "defect_class", "element"]]
    points = _points(defects, twin.pixel_size_A, f"{name} truth defects", "defect_class", 1.2,
                     {"pixel_size_A": meta["pixel_size_A"]})
    return [image, labels, points]


def label_features() -> pd.DataFrame:
    """Features table of a defect Labels layer: one row per class id with its name and colour."""
    def hex_colour(rgba) -> str:
        return "#" + "".join(f"{round(255 * float(v)):02x}" for v in rgba)

    return pd.DataFrame({"index": list(CLASS_NAMES), "class": list(CLASS_NAMES.values()),
                         "color": [hex_colour(CLASS_COLORS.get(cid, (0, 0, 0, 0))) for cid in CLASS_NAMES]})


def label_colormap_layer():
    """A napari DirectLabelColormap for the defect classes."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=label_colormap())


def sites_layer(result, name: str = "sites") -> LayerData:
    """Points layer of analysed sites with sublattice, intensity and class as features."""
    cols = ["x_A", "y_A", "sublattice", "intensity", "defect_class", "region", "in_hole"]
    cols += ["model_class"] if "model_class" in result.sites else []
    table = result.sites[cols].copy()
    table["defect_class"] = table.defect_class.replace("", "intact")
    coords = table[["y_A", "x_A"]].to_numpy(float)
    features = table.drop(columns=["x_A", "y_A"]).reset_index(drop=True)
    kwargs = {
        "name": name,
        "features": features,
        "size": 0.6,
        "face_color": "sublattice",
        "face_color_cycle": ["#1f77b4", "#ff7f0e"],
        "border_color": "defect_class",
        "border_color_cycle": ["#00000000", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"],
        "units": ["angstrom", "angstrom"],
        "metadata": {"lattice": result.lattice},
    }
    return coords, kwargs, "points"
