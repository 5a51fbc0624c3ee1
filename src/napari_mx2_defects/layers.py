"""napari ``LayerData`` tuples for twins and analyses (no Qt; shared by widgets, sample data and demo)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .core.classes import CLASS_COLORS, CLASS_NAMES
from .io.writer import save_with

__all__ = ["DEFECT_POINT_SIZE_A", "LayerData", "add_layers", "contamination_layer", "corrections_from_layers", "image_frame",
           "image_pyramid", "label_pyramid",
           "label_colormap", "label_colormap_layer", "phase_labels_layer", "phase_layer", "phase_legend", "label_features", "napari_get_points_reader", "object_layers",
           "points_table", "read_points_csv", "region_layer", "strain_layers", "reviewed_regions_A", "science_positions", "segmentation_layers", "sites_layer",
           "twin_layers", "uncertain_layer"]

LayerData = tuple[Any, dict, str]

#: Diameter (Å) of a defect point: a column's disc, so the border rings the column without hiding it.
DEFECT_POINT_SIZE_A = 1.2


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
        "metadata": {**metadata, **save_with("points")},
    }
    if colour_by in features and len(features):  # each class in its legend colour (as the Labels colormap)
        kwargs["border_color_cycle"] = {CLASS_NAMES[c]: CLASS_COLORS[c][:3] + (1.0,) for c in CLASS_COLORS if c}
    return coords, kwargs, "points"


def twin_layers(twin, name: str = "twin") -> list[LayerData]:
    """Image, ground-truth Labels and defect Points of a :class:`~.twin.api.Twin`, all in Å."""
    from .twin.microscope import Microscope

    scale = list(twin.pixel_size_A)
    micro = twin.settings["request"]["microscope"]  # the optics the twin was imaged with, as a reader records them
    meta = {
        "pixel_size_A": float(np.mean(twin.pixel_size_A)),
        "calibrated": True,
        "beam_energy_keV": micro["energy_keV"],
        "material": twin.settings["parent"]["formula"],
        "optics": Microscope(**micro).recorded_optics(),
        "twin_settings": twin.settings,
    }
    pixels, truth = image_pyramid(twin.image), label_pyramid(twin.labels)  # large twins: smooth panning
    image = (pixels, {"name": f"{name} HAADF", "scale": scale, "units": ["angstrom", "angstrom"],
                      "colormap": "gray", "metadata": meta, "multiscale": isinstance(pixels, list)}, "image")
    labels = (truth, {"name": f"{name} truth labels", "scale": scale, "units": ["angstrom", "angstrom"],
                            "multiscale": isinstance(truth, list),
                            "colormap": label_colormap_layer(), "opacity": 0.6,
                            "features": label_features(),
                            "metadata": {**meta, "class_names": CLASS_NAMES, **save_with("labels")}}, "labels")
    defects = twin.defects[["x_A", "y_A", "defect_class", "element"]]
    points = _points(defects, twin.pixel_size_A, f"{name} truth defects", "defect_class", DEFECT_POINT_SIZE_A,
                     {"pixel_size_A": meta["pixel_size_A"]})
    layers = [image, labels, points]
    if getattr(twin, "phase_labels", None) is not None:  # a stacked twin: its truth phase map
        from .twin.stacking import monolayer_phase

        layers.append(phase_labels_layer(twin.phase_labels, f"{name} truth phases",
                                         monolayer_phase(twin.lattice.parent), scale=scale,
                                         metadata={"stacking": twin.settings["request"].get("stacking", ""),
                                                   **save_with("labels")}))
    return layers


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
    cols += [c for c in ("p_class", "flagged", "dopant", "species", "model_class", "reported_class")
             if c in result.sites]
    table = result.sites[cols].copy()
    table["defect_class"] = table.defect_class.replace("", "intact")
    coords = table[["y_A", "x_A"]].to_numpy(float)
    features = table.drop(columns=["x_A", "y_A"]).reset_index(drop=True)
    if "species" in features:  # an alloy: the per-site species map
        features["species"] = features.species.replace("", "empty")
    kwargs = {
        "name": name,
        "features": features,
        "size": 0.6,
        "face_color": "species" if "species" in features else "sublattice",
        "face_color_cycle": (["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                              "#bcbd22", "#17becf"] if "species" in features else ["#1f77b4", "#ff7f0e"]),
        "border_color": "defect_class",
        "border_color_cycle": ["#00000000", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"],
        "units": ["angstrom", "angstrom"],
        "metadata": {"lattice": result.lattice, **save_with("points")},
    }
    return coords, kwargs, "points"


#: Labels wider or taller than this (pixels) are added as a multiscale pyramid, so panning stays smooth.
MULTISCALE_FROM_PX = 4096


def label_pyramid(labels: np.ndarray, smallest_px: int = 1024) -> list[np.ndarray] | np.ndarray:
    """``labels`` as napari multiscale levels (full size, then every 2nd, 4th … pixel, down to about
    ``smallest_px``) when larger than :data:`MULTISCALE_FROM_PX`, else as it is. The levels are strided
    views (nearest-neighbour, the only resampling a class map allows), so they cost no memory."""
    if max(labels.shape[-2:]) <= MULTISCALE_FROM_PX:
        return labels
    levels, step = [labels], 2
    while max(labels.shape[-2:]) / step >= smallest_px:
        levels.append(labels[..., ::step, ::step])
        step *= 2
    return levels


def image_pyramid(image: np.ndarray, smallest_px: int = 1024) -> list[np.ndarray] | np.ndarray:
    """``image`` as napari multiscale levels when larger than :data:`MULTISCALE_FROM_PX` (full size, then
    2×2 block means of the level above, float32, down to about ``smallest_px``), else as it is.

    Block means, not strided views as for labels: every 2nd pixel of an atomic lattice aliases into a
    moiré that is not in the sample.  The levels below the first cost a third of the image's size.
    """
    from skimage.measure import block_reduce

    if np.ndim(image) != 2 or max(np.shape(image)) <= MULTISCALE_FROM_PX:
        return image
    levels = [image]
    while max(levels[-1].shape) / 2 >= smallest_px:
        levels.append(block_reduce(levels[-1], (2, 2), np.mean).astype(np.float32))
    return levels


def segmentation_layers(seg, image_layer, pixel_size_A: float, name: str | None = None) -> list[LayerData]:
    """The layers of a :class:`~.learn.inference.Segmentation` on top of ``image_layer``: Labels (class per
    pixel, on the image pixel for pixel, with the class names and colours in its features), Points (one
    per defect, placed by :func:`image_frame`, coloured by class) and, when computed, the hidden
    probability image.  The *Find defects* dock, the demo and the docs scripts all add these. Labels larger
    than :data:`MULTISCALE_FROM_PX` come as a multiscale pyramid (:func:`label_pyramid`).
    """
    base = name or image_layer.name
    scale = [float(v) for v in image_layer.scale[-2:]]
    translate = [float(v) for v in image_layer.translate[-2:]]
    units = image_frame(image_layer, pixel_size_A)["units"]  # the image's (Å, or pixels when uncalibrated)
    levels = label_pyramid(seg.labels)
    labels = (levels, {"name": f"{base} defects", "multiscale": isinstance(levels, list), "scale": scale, "translate": translate, "opacity": 0.6,
                           "colormap": label_colormap_layer(), "units": units, "features": label_features(),
                           "metadata": {"pixel_size_A": float(pixel_size_A), "calibrated": True,
                                        "model": seg.card.architecture, "class_names": seg.card.classes,
                                        **save_with("labels")}}, "labels")
    coords, kwargs, _ = _points(seg.defects, (pixel_size_A, pixel_size_A), f"{base} defect points", "defect_class",
                                DEFECT_POINT_SIZE_A, {"pixel_size_A": float(pixel_size_A)})
    kwargs.update(image_frame(image_layer, pixel_size_A))
    layers = [labels, (coords, kwargs, "points")]
    if seg.probabilities is not None:
        probabilities = label_pyramid(seg.probabilities)  # strided views: a hidden layer, no copies
        layers.append((probabilities, {"name": f"{base} probabilities", "scale": [1.0, *scale],
                                           "multiscale": isinstance(probabilities, list),
                                           "translate": [0.0, *translate], "units": ["pixel", *units],
                                           "axis_labels": ("class", "y", "x"), "visible": False}, "image"))
    return layers


def image_frame(layer, pixel_size_A: float) -> dict[str, list]:
    """``scale``, ``translate`` and ``units`` that put science positions (Å from the image origin, measured
    with ``pixel_size_A``) on top of the image ``layer`` in world coordinates.

    The one place layers ↔ science positions are mapped: a calibrated layer gives scale 1 and its own
    origin offset (a Velox file's −76.8 Å), an uncalibrated one with a typed-in pixel size gives
    1/pixel so the overlay still lands on the right pixels. The units are the image's (Å, or pixels for
    an uncalibrated file), so napari finds every layer in one unit and does not warn.
    """
    scale = np.asarray(layer.scale[-2:], float)
    translate = np.asarray(layer.translate[-2:], float)
    return {"scale": list(scale / float(pixel_size_A)), "translate": list(translate), "units": layer_units(layer)}


def layer_units(layer) -> list[str]:
    """The units of ``layer``'s last two axes as napari names them (``angstrom``, ``pixel``)."""
    units = getattr(layer, "units", None)
    return [str(u) for u in units[-2:]] if units is not None and len(units) >= 2 else ["angstrom", "angstrom"]


def science_positions(world_yx: np.ndarray, layer, pixel_size_A: float) -> np.ndarray:
    """World coordinates (y, x) on the image ``layer`` → Å from its origin (the inverse of
    :func:`image_frame`)."""
    frame = image_frame(layer, pixel_size_A)
    return (np.asarray(world_yx, float)[:, -2:] - frame["translate"]) / frame["scale"]


def add_layers(viewer, layer_data: list[LayerData]) -> list:
    """Add ``LayerData`` tuples to a viewer; returns the layers (as napari's reader path would)."""
    from .io.writer import remind_writers

    remind_writers()  # a first save of these layers through napari's own writer says which one keeps Å
    return [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in layer_data]


def points_table(points, image_layer, pixel_size_A: float | None) -> pd.DataFrame:
    """A Points layer as a table: ``x_A, y_A`` in Å from ``image_layer``'s origin (the inverse of
    :func:`image_frame`; world coordinates when there is no pixel size) plus every feature."""
    world = np.asarray(points.data, float)[:, -2:] * np.asarray(points.scale[-2:]) + np.asarray(points.translate[-2:])
    yx = science_positions(world, image_layer, pixel_size_A) if pixel_size_A is not None else world
    table = pd.DataFrame({"x_A": yx[:, 1], "y_A": yx[:, 0]})
    features = points.features.reset_index(drop=True)
    return pd.concat([table, features], axis=1) if len(features) == len(table) else table


def uncertain_layer(table: pd.DataFrame, image_layer, pixel_size_A: float,
                    name: str | None = None) -> LayerData:
    """Points layer of review candidates (:func:`~.learn.uncertainty.rank_uncertain_sites`) on top of
    ``image_layer``: rings coloured by uncertainty (brighter = less certain), rank and classes as
    features; the *Fine-tune* dock's "next uncertain site" walks it in rank order."""
    coords = table[["y_A", "x_A"]].to_numpy(float) if len(table) else np.zeros((0, 2))
    features = table.drop(columns=["x_A", "y_A"]).reset_index(drop=True)
    kwargs = {"name": name or f"{image_layer.name} uncertain sites", "features": features,
              "size": 1.6 * DEFECT_POINT_SIZE_A, "face_color": "transparent", "border_width": 0.12,
              "border_width_is_relative": True,
              "metadata": {"pixel_size_A": float(pixel_size_A), "review": "uncertain sites", **save_with("points")}}
    if len(table):
        kwargs.update(border_color="uncertainty", border_colormap="plasma",
                      border_contrast_limits=(0.0, 0.5))  # 0.5: two classes equally likely
    else:
        kwargs["border_color"] = "yellow"
    kwargs.update(image_frame(image_layer, pixel_size_A))
    return coords, kwargs, "points"


def object_layers(objects, image_layer, pixel_size_A: float, name: str | None = None) -> list[LayerData]:
    """Two Shapes layers of :func:`~.analysis.objects.defect_objects` on top of ``image_layer``: the
    contours (one polygon per defect, edged in its class colour; clusters in white) and the bounding
    boxes (one rectangle per defect and per cluster). The objects table rides along as features, so
    napari's layer controls and ``layer.features`` show class, cluster and area per shape."""
    from .core.classes import CLASS_IDS

    base = name or image_layer.name
    table = objects.table.reset_index(drop=True)
    colours = [CLASS_COLORS[CLASS_IDS[c]][:3] + (1.0,) if k == "defect" else (1.0, 1.0, 1.0, 1.0)
               for k, c in zip(table.kind, table.defect_class)]
    polygons = [np.asarray(ring, float)[:-1, ::-1] for ring in objects.contours_A]  # (y, x), open ring
    boxes = [np.array([[r.y_min_A, r.x_min_A], [r.y_min_A, r.x_max_A], [r.y_max_A, r.x_max_A],
                       [r.y_max_A, r.x_min_A]]) for r in table.itertuples()]
    common = {"features": table, "face_color": "transparent",
              "metadata": {"pixel_size_A": float(pixel_size_A), "objects": "defect objects"},
              **image_frame(image_layer, pixel_size_A)}
    contours = (polygons, {**common, "name": f"{base} defect contours", "shape_type": "polygon",
                           "edge_color": colours or "white", "edge_width": 0.15}, "shapes")
    rectangles = (boxes, {**common, "name": f"{base} defect boxes", "shape_type": "rectangle",
                          "edge_color": colours or "white", "edge_width": 0.1, "visible": False}, "shapes")
    return [contours, rectangles]


def strain_layers(strain, image_layer, pixel_size_A: float, name: str | None = None) -> list[LayerData]:
    """Image layers of a :class:`~.analysis.structure.StrainMap` on top of ``image_layer``: ε_xx, ε_yy, ε_xy
    (in %) and the rotation (degrees), each on a diverging colour map centred on zero, its grid cell
    covering the image area it was fitted at."""
    base = name or image_layer.name
    frame = image_frame(image_layer, pixel_size_A)
    scale = [s * strain.step_A for s in frame["scale"]]
    translate = [t + o * s for t, o, s in zip(frame["translate"], strain.origin_A[::-1], frame["scale"])]
    layers = []
    for key, label, factor in (("e_xx", "strain εxx (%)", 100.0), ("e_yy", "strain εyy (%)", 100.0),
                               ("e_xy", "strain εxy (%)", 100.0), ("rotation_deg", "rotation (°)", 1.0)):
        values = strain.components[key] * factor
        finite = values[np.isfinite(values)]
        limit = float(np.percentile(np.abs(finite), 99)) if finite.size else 1.0
        layers.append((values, {"name": f"{base} {label}", "scale": scale, "translate": translate,
                                "colormap": "PiYG", "contrast_limits": (-(limit or 1.0), limit or 1.0),
                                "opacity": 0.6, "visible": key == "e_xx", "units": frame["units"],
                                "metadata": {"strain_component": key, "window_A": strain.window_A}}, "image"))
    return layers


def contamination_layer(result, image_layer, name: str | None = None) -> LayerData:
    """Labels layer of an analysis's contamination map (1 = amorphous contamination, left out of the
    counts) on top of ``image_layer``, pixel for pixel."""
    frame = image_frame(image_layer, result.lattice["pixel_size_A"])
    return (result.contamination.astype(np.uint8),
            {"name": name or f"{image_layer.name} contamination", "opacity": 0.35,
             "scale": [s * result.lattice["pixel_size_A"] for s in frame["scale"]], "translate": frame["translate"],
             "units": frame["units"], "features": pd.DataFrame({"index": [0, 1],
                                                                          "class": ["clean", "contaminated"]}),
             "metadata": {"contamination": result.lattice.get("contamination", {}), **save_with("labels")}},
            "labels")


#: Display colours (RGBA) of the phase map's ids (1 + index in :data:`~.twin.stacking.PHASES`): the
#: parent's monolayers transparent, so the image shows through where the defects are counted.
PHASE_COLOURS: dict[str, tuple[float, float, float, float]] = {
    "1L-2H": (0.0, 0.0, 0.0, 0.0), "1L-1T": (0.89, 0.47, 0.76, 1.0), "2L-2H": (0.12, 0.47, 0.71, 1.0),
    "2L-3R": (0.17, 0.63, 0.17, 1.0), "3L-2H": (0.58, 0.40, 0.74, 1.0), "3L-3R": (0.85, 0.65, 0.10, 1.0),
    "2L-1T": (0.90, 0.30, 0.10, 1.0), "3L-1T": (0.55, 0.34, 0.29, 1.0),
}


def phase_labels_layer(phase_ids: np.ndarray, name: str, monolayer: str, **kwargs) -> LayerData:
    """Labels layer of a phase map (ids 1 + index in :data:`~.twin.stacking.PHASES`, 0 unassigned): each
    phase in its colour (``monolayer``, the parent's own, transparent; unassigned grey) and its name as
    the label's feature, which napari's status bar shows under the cursor; ``kwargs`` go to the layer."""
    from napari.utils.colormaps import DirectLabelColormap

    from .twin.stacking import PHASES

    colours = {None: (0, 0, 0, 0), 0: (0.5, 0.5, 0.5, 0.8)}
    for i, phase in enumerate(PHASES, start=1):
        colours[i] = (0.0, 0.0, 0.0, 0.0) if phase == monolayer else PHASE_COLOURS[phase]
    return (np.asarray(phase_ids).astype(np.uint8),
            {"name": name, "opacity": 0.35, "units": ["angstrom", "angstrom"],
             "colormap": DirectLabelColormap(color_dict=colours),
             "features": pd.DataFrame({"index": list(range(len(PHASES) + 1)), "phase": ["unassigned", *PHASES]}),
             **kwargs}, "labels")


def phase_legend(result) -> str:
    """The phase map's legend for a dock (rich text): a swatch in each mapped phase's layer colour, its name and
    its share of the analysed sites; '' when no phase was mapped."""
    if result.phases is None:
        return ""
    monolayer = result.lattice["phases"]["monolayer"]
    items = []
    for rec in result.phase_table().itertuples():
        rgba = (0.5, 0.5, 0.5, 0.8) if not rec.phase else PHASE_COLOURS[rec.phase]
        colour = "#" + "".join(f"{round(255 * v):02x}" for v in rgba[:3])
        swatch = "□" if rec.phase == monolayer else f'<span style="color:{colour}">■</span>'
        counted = " (counted)" if rec.phase == monolayer else ""
        items.append(f"{swatch} {rec.phase or 'unassigned'} {100 * rec.fraction:.0f} %{counted}")
    return " &nbsp; ".join(items)


def phase_layer(result, image_layer, name: str | None = None) -> LayerData:
    """Labels layer of an analysis's phase map on top of ``image_layer``, pixel for pixel
    (:func:`phase_labels_layer`; the fit and the areas in the metadata)."""
    frame = image_frame(image_layer, result.lattice["pixel_size_A"])
    record = result.lattice["phases"]
    return phase_labels_layer(result.phases, name or f"{image_layer.name} phases", record["monolayer"],
                              scale=[s * result.lattice["pixel_size_A"] for s in frame["scale"]],
                              translate=frame["translate"], units=frame["units"],
                              metadata={"phases": {k: v for k, v in record.items() if k != "references"},
                                        **save_with("labels")})


#: Edge colour of reviewed regions: outlined, never filled, so the columns inside stay visible.
REGION_EDGE = "yellow"


def region_layer(image_layer, pixel_size_A: float, boxes_A=(), name: str | None = None) -> LayerData:
    """Shapes layer for the regions a user reviewed, on top of ``image_layer``: rectangles ``(x0, y0, x1, y1)``
    in Å from the image origin (none: an empty layer to draw them in), outlined in :data:`REGION_EDGE` with no
    fill (napari's default fill is opaque white and hides the image). :func:`reviewed_regions_A` reads them
    back."""
    rectangles = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) for x0, y0, x1, y1 in boxes_A]
    frame = image_frame(image_layer, pixel_size_A)
    return (rectangles, {"name": name or f"{image_layer.name} reviewed region", "shape_type": "rectangle",
                         "face_color": "transparent", "edge_color": REGION_EDGE, "edge_width": 2 * pixel_size_A,
                         "ndim": 2, "metadata": {"pixel_size_A": float(pixel_size_A), "review": "reviewed region"},
                         **frame}, "shapes")


def reviewed_regions_A(shapes, image_layer, pixel_size_A: float) -> list[tuple[float, float, float, float]]:
    """Each shape of a Shapes layer as the (x0, y0, x1, y1) box in Å from ``image_layer``'s origin
    that bounds it: the regions a user marked as reviewed (every site inside not listed as a defect
    is intact). A rectangle is its own box; any other shape counts by its bounding box."""
    boxes = []
    for vertices in shapes.data:
        world = (np.asarray(vertices, float)[:, -2:] * np.asarray(shapes.scale[-2:])
                 + np.asarray(shapes.translate[-2:]))
        yx = science_positions(world, image_layer, pixel_size_A)
        (y0, x0), (y1, x1) = yx.min(0), yx.max(0)
        boxes.append((float(x0), float(y0), float(x1), float(y1)))
    return boxes


def corrections_from_layers(points, image_layer, pixel_size_A: float,
                            shapes=None) -> tuple[pd.DataFrame, list]:
    """A user's corrections from the layers: the defects of the Points layer (``x_A, y_A,
    defect_class`` in Å from ``image_layer``'s origin; sites marked ``intact`` or ``lattice`` are left
    out) and the reviewed regions of the Shapes layer ``shapes`` (``[None]``, the whole image less a
    border, without one). What :func:`~.learn.finetune.finetune` takes, as ``finetune --labels
    --region`` reads it from files."""
    if "defect_class" not in points.features:
        raise ValueError(f"the points layer {points.name!r} has no defect_class feature: choose a layer of "
                         f"defects (Find defects' or Defect statistics' points)")
    table = points_table(points, image_layer, pixel_size_A)
    table = table[~table.defect_class.astype(str).isin(["intact", "lattice", ""])]
    regions = reviewed_regions_A(shapes, image_layer, pixel_size_A) if shapes is not None else []
    if shapes is not None and not regions:
        raise ValueError(f"the shapes layer {shapes.name!r} holds no shape: draw a rectangle round the "
                         f"region you reviewed, or choose no region")
    return table[["x_A", "y_A", "defect_class"]].reset_index(drop=True), regions or [None]


def _points_header(path) -> list[str] | None:
    """The column names of a points CSV this plugin reads, else None: one whose header holds ``x_A`` and
    ``y_A`` (the plugin's writer and commands), or napari's own points CSV (``index, axis-0, axis-1, …`` then
    the features; not its shapes CSV, which has ``shape-type``)."""
    from pathlib import Path

    from .io.tables import MAX_POINTS_CSV_BYTES

    path = Path(path)
    if path.suffix.lower() != ".csv" or not path.is_file() or path.stat().st_size > MAX_POINTS_CSV_BYTES:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            header = handle.readline(64 * 1024).strip().split(",")
    except (OSError, UnicodeDecodeError):
        return None
    return header if {"x_A", "y_A"} <= set(header) or _napari_axes(header) else None


def _napari_axes(header) -> list[str]:
    """The ``axis-N`` columns of napari's points CSV header (``index`` first, at least two axes), else []."""
    axes = [c for c in header if c.startswith("axis-") and c[5:].isdigit()]
    if not header or header[0] != "index" or len(axes) < 2 or "shape-type" in header:
        return []
    return sorted(axes, key=lambda c: int(c[5:]))


def napari_get_points_reader(path):
    """npe2 reader: the points tables the plugin writes (``defects.csv``, ``truth.csv``, a saved Points
    layer: ``x_A``, ``y_A`` in Å plus features) and napari's own points CSV (*File → Save* with napari's
    writer) reopen as Points layers in Å with their features."""
    paths = [path] if isinstance(path, str) or not hasattr(path, "__iter__") else list(path)
    if not paths or not all(_points_header(p) for p in paths):
        return None
    return read_points_csv


def napari_points_table(path) -> pd.DataFrame:
    """napari's own points CSV as a points table: the last two ``axis-N`` columns are y and x (napari writes
    the layer's data coordinates, which for this plugin's Points layers are Å from the image origin) as
    ``y_A``, ``x_A``; every other column but ``index`` and the other axes is a feature, numbers and
    True/False read back as such (napari writes every cell as text when one feature is text)."""
    from pathlib import Path

    try:
        table = pd.read_csv(path, keep_default_na=False, dtype=str)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{Path(path).name}: not a CSV table ({' '.join(str(exc).split())[:100]})") from None
    axes = _napari_axes(list(table.columns))
    out = pd.DataFrame({"x_A": table[axes[-1]], "y_A": table[axes[-2]]})
    for column in table.columns:
        if column == "index" or column in axes:
            continue
        values = table[column]
        if len(values) and values.isin(["True", "False"]).all():
            out[column] = values.eq("True")
            continue
        numbers = pd.to_numeric(values.replace({"": "nan"}), errors="coerce")
        numeric = numbers.notna() | values.str.lower().isin(["nan", ""])
        out[column] = numbers if len(values) and numeric.all() and numbers.notna().any() else values
    return out


def read_points_csv(path) -> list[LayerData]:
    """Points layer data of one or more points tables (positions in Å, every other column a feature),
    read and checked by :func:`~.io.tables.read_points_table` as ``analyze --defects`` reads them; napari's
    own points CSV through :func:`napari_points_table` and the same checks."""
    from pathlib import Path

    from .io.tables import check_points_table, read_points_table

    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers = []
    for p in map(Path, paths):
        header = _points_header(p) or []
        if {"x_A", "y_A"} <= set(header):
            table = read_points_table(p)
        else:
            table = check_points_table(napari_points_table(p), p.name,
                                       what="napari's points CSV lists index, axis-0, axis-1 …")
        colour = "defect_class" if "defect_class" in table else ""
        layers.append(_points(table, (1.0, 1.0), p.stem, colour, DEFECT_POINT_SIZE_A,
                              {"source": str(p), "calibrated": True}))
    from .io.writer import remind_writers

    remind_writers()
    return layers
