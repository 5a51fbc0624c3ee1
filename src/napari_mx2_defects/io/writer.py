"""napari writer contributions and the file writers the CLI shares.

* Labels layers become calibrated TIFF (rosettasciio's writer, ImageJ and
  DigitalMicrograph tags, pixel size in Å), so our own reader opens them with
  the same scale.
* Points layers become CSV: positions in Å (``x_A``, ``y_A``; x along
  columns, y along rows, from the image origin) followed by every feature.

Every file is written atomically (:mod:`.atomic`): a temporary file in the target folder,
flushed and renamed over the target, so an interrupted or failed write leaves the previous file
(or nothing), never a truncated one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..core.multiscale import full_resolution
from .atomic import atomic_path

__all__ = ["LABELS_TITLE", "SAVE_WITH", "labels_title", "points_table", "remind_writers", "save_with",
           "write_calibrated_tiff", "write_labels", "write_points"]

#: Title of every labels TIFF the plugin writes; the reader opens such files as Labels layers.
LABELS_TITLE = "defect labels"

#: The file type to choose in napari's *Save Selected Layer(s)* dialog for each kind of layer this plugin makes,
#: as the dialog lists it (the manifest's display name and the writer's). napari 0.9 offers its own writers
#: first and has no per-plugin default (``settings.plugins.extension2writer`` is declared but never read), so a
#: layer says in its metadata (``save_with``) which writer keeps its pixel size in Å and its features.
SAVE_WITH = {"labels": "MX2 defects calibrated TIFF (*.tif *.tiff)", "points": "MX2 defects points CSV (Å) (*.csv)"}

#: When this plugin's writers last wrote (``time.monotonic()``), to tell a save through them from one through
#: napari's own.
_LAST_WRITE = [float("-inf")]
_REMINDED = [False]
#: napari's Save commands (*File → Save Selected Layer(s)…*, *Save All Layers…*) and whether each saves the
#: selection only.
SAVE_COMMANDS = {"napari.window.file.save_layers_dialog.selected": True,
                 "napari.window.file.save_layers_dialog": False}


def save_with(kind: str) -> dict:
    """Layer metadata naming the writer to choose for a ``kind`` ("labels", "points") layer of this plugin
    (and, inside napari's window, the watch on its Save commands that says it once: :func:`remind_writers`)."""
    remind_writers()
    return {"save_with": SAVE_WITH[kind]}


def remind_writers(viewer=None) -> None:
    """Watch napari's Save commands in ``viewer``'s window (default: napari's current viewer): after the first
    save of a layer of this plugin (metadata ``save_with``) that did not go through this plugin's writers, say
    once which file type keeps its calibration. Connected once per window, from napari's GUI thread; nothing
    happens outside napari (the commands never import it)."""
    import sys

    if "napari" not in sys.modules or "qtpy" not in sys.modules:
        return
    import weakref

    import napari
    from qtpy.QtCore import QThread
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None or QThread.currentThread() is not app.thread():
        return
    viewer = viewer or napari.current_viewer()
    menu = getattr(getattr(viewer, "window", None), "file_menu", None)
    if menu is None:
        return
    ref = weakref.ref(viewer)
    for action in menu.actions():
        selected = SAVE_COMMANDS.get(getattr(action, "_command_id", None))
        if selected is None or action.property("mx2_save_reminder"):
            continue
        action.setProperty("mx2_save_reminder", True)
        # connected after napari's own slot: runs once its (modal) Save dialog has saved
        action.triggered.connect(lambda *_, selected=selected: _saved(ref(), selected))


def _saved(viewer, selected: bool) -> None:
    import time

    if viewer is None or _REMINDED[0] or time.monotonic() - _LAST_WRITE[0] < 30.0:  # said, or saved through ours
        return
    from napari.utils.notifications import show_info

    layers = list(viewer.layers.selection) if selected else list(viewer.layers)
    kinds = sorted({type(layer).__name__.lower() for layer in layers if "save_with" in (layer.metadata or {})})
    kinds = [k for k in kinds if k in SAVE_WITH]
    if not kinds:
        return
    _REMINDED[0] = True
    lost = {"labels": "labels lose their pixel size in Å", "points": "points lose the image's origin"}
    choices = " and ".join(f"'{SAVE_WITH[k]}' for {k}" for k in kinds)
    show_info(f"napari's own file types, listed first in the Save dialog, drop what these layers carry: "
              f"{'; '.join(lost[k] for k in kinds)}. To keep them choose {choices} "
              f"(each layer's metadata 'save_with' names it). Said once.")


def labels_title(name: str = "") -> str:
    """The TIFF title of a labels image (``defect labels`` or ``defect labels: NAME``)."""
    return f"{LABELS_TITLE}: {name}" if name and name != LABELS_TITLE else LABELS_TITLE


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another name or delete it first (nothing was written).")


def write_calibrated_tiff(
    path: str | Path,
    data: np.ndarray,
    pixel_size_A: float | tuple[float, float] | None,
    *,
    title: str = "",
    overwrite: bool = True,
) -> Path:
    """Write a 2-D (or frame stack) image as TIFF with its pixel size in Å.

    Parameters
    ----------
    path : str or Path
        Output file (``.tif``/``.tiff``).
    data : numpy.ndarray
        Image; the last two axes are y and x.
    pixel_size_A : float, (float, float) or None
        Pixel size in Å (y, x), or None for an uncalibrated file.
    title : str
        Stored as the image title.
    overwrite : bool
        If False, refuse to replace an existing file.
    """
    from rsciio.tiff import file_writer

    path = Path(path)
    _refuse_overwrite(path, overwrite)
    data = np.asarray(full_resolution(data))
    if data.ndim < 2 or 0 in data.shape:
        raise ValueError(f"{path.name}: cannot write an image of shape {data.shape} as TIFF")
    if pixel_size_A is None:
        sy = sx = 1.0
        unit = None
    else:
        sy, sx = (pixel_size_A, pixel_size_A) if np.isscalar(pixel_size_A) else pixel_size_A
        if not all(np.isfinite(v) and v > 0 for v in (sy, sx)):
            raise ValueError(f"{path.name}: pixel size must be a positive finite number of Å, got {(sy, sx)}")
        unit = "Å"
    axes = [
        {"name": f"frame{i}", "size": n, "scale": 1.0, "offset": 0.0, "units": None, "navigate": True}
        for i, n in enumerate(data.shape[:-2])
    ]
    axes += [
        {"name": "y", "size": data.shape[-2], "scale": float(sy), "offset": 0.0, "units": unit, "navigate": False},
        {"name": "x", "size": data.shape[-1], "scale": float(sx), "offset": 0.0, "units": unit, "navigate": False},
    ]
    signal = {
        "data": data,
        "axes": axes,
        "metadata": {"General": {"title": title}},
        "original_metadata": {},
    }
    # the title goes into the standard DocumentName tag (269), which the reader gives back
    extratags = [(269, "s", 0, title, True)] if title else None
    with atomic_path(path) as tmp:
        file_writer(str(tmp), signal, export_scale=unit is not None, extratags=extratags)
    return path


def write_labels(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: a Labels layer to calibrated TIFF.

    The pixel size is the layer's ``scale`` on its last two axes when the layer
    carries Å units (all layers this plugin makes do).
    """
    labels = np.asarray(full_resolution(data))  # a multiscale layer is saved at full resolution, not its smallest level
    if labels.max(initial=0) < 2**16 and labels.min(initial=0) >= 0:
        labels = labels.astype(np.uint16)
    scale = meta.get("scale")
    metadata = meta.get("metadata") or {}
    calibrated = metadata.get("calibrated", scale is not None)
    pixel = tuple(float(s) for s in scale[-2:]) if (scale is not None and calibrated) else None
    out = write_calibrated_tiff(path, labels, pixel, title=labels_title(meta.get("name", "")))
    _wrote()
    return [str(out)]


def points_table(data: Any, meta: dict) -> pd.DataFrame:
    """Points layer data (world coordinates in Å) and features as one table."""
    coords = np.asarray(data, dtype=float).reshape(-1, np.asarray(data).shape[-1] if np.asarray(data).size else 2)
    features = meta.get("features")
    table = pd.DataFrame({"x_A": coords[:, -1], "y_A": coords[:, -2]}) if len(coords) else pd.DataFrame(
        {"x_A": [], "y_A": []}
    )
    scale = np.asarray(meta.get("scale") or [1.0] * coords.shape[1], dtype=float)
    translate = np.asarray(meta.get("translate") or [0.0] * coords.shape[1], dtype=float)
    if len(coords):
        # napari stores points in data coordinates; the world (Å) is data*scale+translate
        table["x_A"] = coords[:, -1] * scale[-1] + translate[-1]
        table["y_A"] = coords[:, -2] * scale[-2] + translate[-2]
    if features is not None and len(features):
        feats = pd.DataFrame(features).reset_index(drop=True)
        table = pd.concat([table, feats], axis=1)
    return table


def write_points(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer: a Points layer and its features to CSV (positions in Å)."""
    out = Path(path)
    table = points_table(data, meta)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False)
    _wrote()
    return [str(out)]


def _wrote() -> None:
    import time

    _LAST_WRITE[0] = time.monotonic()
