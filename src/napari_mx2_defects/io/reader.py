"""napari reader contribution: vendor STEM files as calibrated Image layers."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .formats import ReaderError, is_supported, load_images
from .writer import LABELS_TITLE

__all__ = ["ReaderError", "layer_data", "napari_get_reader", "read_stem"]

LayerData = tuple[Any, dict, str]


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return :func:`read_stem` when ``path`` is a file this plugin reads, else None.

    Parameters
    ----------
    path : str or list of str
        Path (or list of paths) napari asks about.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    if not paths or not all(is_supported(p) for p in paths):
        return None
    return read_stem


def is_labels_image(image) -> bool:
    """True for a labels TIFF this plugin wrote (its title starts with ``defect labels``; integer pixels)."""
    import numpy as np

    general = (image.original_metadata.get("metadata") or {}).get("General") or {}
    title = general.get("title") if isinstance(general, dict) else None
    return (isinstance(title, str) and title.startswith(LABELS_TITLE)
            and np.issubdtype(np.asarray(image.data).dtype, np.integer))


def layer_data(image, source: str | Path) -> LayerData:
    """napari ``LayerData`` tuple for one :class:`~.formats.CalibratedImage` (a Labels layer for the
    labels TIFFs the plugin writes, so saved results come back as they were)."""
    unit = "angstrom" if image.calibrated else "pixel"
    kwargs = {
        "name": image.name,
        "scale": list(image.scale_A),
        "translate": list(image.offset_A),
        "axis_labels": list(image.axis_names),
        "units": [unit if n in ("y", "x") else "pixel" for n in image.axis_names],
        "metadata": image.layer_metadata(source),
    }
    if is_labels_image(image):
        from .writer import save_with

        return image.data, {**kwargs, "opacity": 0.6, "metadata": {**kwargs["metadata"], **save_with("labels")}}, \
            "labels"
    return image.data, {**kwargs, "colormap": "gray"}, "image"


def read_stem(path: str | list[str]) -> list[LayerData]:
    """Read one or more files into napari layer data.

    Uncalibrated files open with pixel size 1 and a visible warning; corrupt,
    truncated or pathological files raise :class:`~.formats.ReaderError` with a
    one-line message naming the file. Vendor files are parsed in a worker process
    with a time budget (:mod:`.isolation`), so no file can freeze the viewer. The
    layer metadata carries the calibration and, under ``"optics"``, the optics the
    file records (convergence and detector angles in mrad, camera length in mm,
    dwell time in s, probe current in A, beam energy in keV).

    Opened from napari's window (*File → Open*, drag and drop), a refused file is not raised: napari
    would bury the reason under its generic "Tried to read … Try associating a different plugin". Its
    reason is shown as the error toast itself and nothing is opened (napari's "no layers" answer).
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    layers: list[LayerData] = []
    refused: list[str] = []
    for p in paths:
        try:
            images = load_images(p)
        except ReaderError as exc:
            if not _opened_from_napari_window():
                raise
            refused.append(str(exc))
            continue
        for image in images:
            for message in image.warnings:
                _notify(message)
            layers.append(layer_data(image, p))
    for reason in refused:
        _refused(reason)
    if any(kind == "labels" for _, _, kind in layers):
        from .writer import remind_writers

        remind_writers()
    return layers if layers or not refused else [(None,)]


def _opened_from_napari_window() -> bool:
    """Whether napari's window is opening the file (``QtViewer._qt_open``: *File → Open*, drag and drop,
    *Open with plugin*), where napari replaces a reader's error by a generic one; a script's
    ``viewer.open`` gets the reader's own error."""
    import sys

    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_qt_open" and code.co_filename.replace("\\", "/").endswith("napari/_qt/qt_viewer.py"):
            return True
        frame = frame.f_back
    return False


def _refused(reason: str) -> None:
    """A refused file's reason as napari's error toast (and in the log)."""
    import logging

    logging.getLogger("napari_mx2_defects").warning("refused: %s", reason)
    try:
        from napari.utils.notifications import show_error
    except ImportError:  # pragma: no cover - napari is a dependency
        return
    show_error(f"MX2 defects cannot open this file: {reason}")


def _notify(message: str) -> None:
    """Show ``message`` in napari's notification area (and as a Python warning)."""
    warnings.warn(message, UserWarning, stacklevel=3)
    try:
        from napari.utils.notifications import show_warning
    except ImportError:  # pragma: no cover - napari is a dependency
        return
    show_warning(message)
