"""Calibrated images from vendor STEM files, through rosettasciio.

One contract for every format, as in rosettasciio: :func:`load_images` turns a
file into a list of :class:`CalibratedImage` (data, per-axis pixel size in Å,
axis names, metadata).  The napari reader (:mod:`.reader`) and the command
line (``mx2-defects info``) are thin layers over it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .units import is_length_unit, length_to_angstrom

__all__ = [
    "SUFFIXES",
    "CalibratedImage",
    "ReaderError",
    "is_supported",
    "load_images",
]

log = logging.getLogger(__name__)


class ReaderError(ValueError):
    """A file of a supported format could not be read.

    The message names the file and the problem, and says what to do.
    """


@dataclass
class CalibratedImage:
    """One signal of a file, with its calibration in ångström.

    Attributes
    ----------
    data : numpy.ndarray
        Pixel values; the last two axes are rows (y) and columns (x); a stack
        has its frame axis first.
    name : str
        Layer name (file stem, plus the signal title when a file holds several).
    axis_names : tuple of str
        One name per axis, e.g. ``("frame", "y", "x")``.
    scale_A : tuple of float
        Pixel size per axis in Å (1.0 on non-spatial axes, and on every axis
        of an uncalibrated image).
    offset_A : tuple of float
        Origin per axis in Å (0.0 when unknown).
    calibrated : bool
        True when every spatial axis carried a length unit and a positive
        scale in the file (or its sidecar).
    beam_energy_keV : float or None
        Accelerating voltage when the file records it.
    original_units : tuple of str
        Units per axis exactly as the file stored them.
    original_metadata : dict
        The metadata as rosettasciio (or the sidecar) returned it.
    warnings : list of str
        Problems worth showing the user (e.g. missing calibration).
    """

    data: np.ndarray
    name: str
    axis_names: tuple[str, ...]
    scale_A: tuple[float, ...]
    offset_A: tuple[float, ...]
    calibrated: bool
    beam_energy_keV: float | None = None
    original_units: tuple[str, ...] = ()
    original_metadata: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def pixel_size_A(self) -> float | None:
        """Pixel size of the image plane in Å (mean of y and x), None if uncalibrated."""
        if not self.calibrated:
            return None
        return float(np.mean(self.scale_A[-2:]))

    @property
    def is_square_pixel(self) -> bool:
        """True when the y and x pixel sizes agree to 0.1 %."""
        sy, sx = self.scale_A[-2:]
        return abs(sy - sx) <= 1e-3 * max(sy, sx)

    def layer_metadata(self, source: str | Path) -> dict[str, Any]:
        """Metadata dict stored on the napari layer."""
        return {
            "pixel_size_A": self.pixel_size_A,
            "pixel_size_yx_A": tuple(float(s) for s in self.scale_A[-2:]),
            "calibrated": self.calibrated,
            "beam_energy_keV": self.beam_energy_keV,
            "axis_names": list(self.axis_names),
            "original_units": list(self.original_units),
            "source_path": str(source),
            "original_metadata": self.original_metadata,
        }


def _rsciio_reader(module: str) -> Callable[..., list[dict]]:
    def read(path: Path) -> list[dict]:
        import importlib

        reader = importlib.import_module(f"rsciio.{module}").file_reader
        return reader(str(path))

    return read


def _read_tiff(path: Path) -> list[dict]:
    from rsciio.tiff import file_reader

    return file_reader(str(path))


#: suffix -> function returning rosettasciio-style signal dicts
_FORMAT_READERS: dict[str, Callable[[Path], list[dict]]] = {
    ".dm3": _rsciio_reader("digitalmicrograph"),
    ".dm4": _rsciio_reader("digitalmicrograph"),
    ".emd": _rsciio_reader("emd"),
    ".ser": _rsciio_reader("tia"),
    ".emi": _rsciio_reader("tia"),
    ".mrc": _rsciio_reader("mrc"),
    ".tif": _read_tiff,
    ".tiff": _read_tiff,
}

#: Every suffix the reader claims.
SUFFIXES: tuple[str, ...] = (*_FORMAT_READERS, ".npy")


def is_supported(path: str | Path) -> bool:
    """True when ``path`` has a suffix this package reads."""
    return Path(path).suffix.lower() in SUFFIXES


def load_images(path: str | Path) -> list[CalibratedImage]:
    """Read every image signal in ``path`` with its calibration in Å.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.dm3/.dm4/.emd/.ser/.emi/.mrc/.tif/.tiff`` file, or a ``.npy``
        array with an optional JSON sidecar (see :func:`read_npy_sidecar`).

    Returns
    -------
    list of CalibratedImage
        One entry per signal with at least two spatial axes.

    Raises
    ------
    ReaderError
        When the file is missing, corrupt, truncated or holds no image.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ReaderError(f"{path.name}: unsupported file type {suffix!r}; supported: {', '.join(SUFFIXES)}")
    if not path.exists():
        raise ReaderError(f"{path}: no such file")
    if suffix == ".npy":
        return [_load_npy(path)]
    try:
        with warnings.catch_warnings(), _quiet_loggers("tifffile", "rsciio"):
            warnings.simplefilter("ignore")
            signals = _FORMAT_READERS[suffix](path)
    except ReaderError:
        raise
    except Exception as exc:  # rosettasciio raises many types for bad files
        problem = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ReaderError(
            f"{path.name}: cannot read this {suffix} file ({type(exc).__name__}: {problem}). "
            "It may be truncated or corrupt: copy it again from the microscope PC."
        ) from exc
    images = []
    many = len(signals) > 1
    for index, signal in enumerate(signals):
        try:
            image = _from_signal_dict(signal, path, index if many else None)
        except ReaderError:
            raise
        except Exception as exc:
            raise ReaderError(
                f"{path.name}: signal {index} could not be interpreted ({type(exc).__name__}: {exc})."
            ) from exc
        if image is not None:
            images.append(image)
    if not images:
        raise ReaderError(
            f"{path.name}: no image with two spatial axes could be read; the file may be truncated "
            "or hold only spectra or metadata."
        )
    return images


#: Keys under which vendors store the accelerating voltage, with the factor to keV.
_VOLTAGE_KEYS: tuple[tuple[str, float], ...] = (
    ("beam_energy", 1.0),  # rosettasciio's own metadata, keV
    ("Voltage", 1e-3),  # DigitalMicrograph "Microscope Info", V
    ("AccelerationVoltage", 1e-3),  # Velox EMD "Optics", V
    ("AcceleratingVoltage", 1e-3),  # TIA "MicroscopeConditions", V
    ("High tension_kV", 1.0),  # TIA "ExperimentalDescription", kV
    ("HT", 1e-3),
)


def _find_key(tree: Any, key: str, depth: int = 0) -> Any:
    if depth > 16:
        return None
    if isinstance(tree, dict):
        if key in tree and not isinstance(tree[key], dict):
            return tree[key]
        for value in tree.values():
            found = _find_key(value, key, depth + 1)
            if found is not None:
                return found
    return None


def _beam_energy(metadata: dict, original: dict | None = None) -> float | None:
    """Accelerating voltage in keV from rosettasciio metadata or the vendor tags."""
    for tree in (metadata, original or {}):
        for key, to_keV in _VOLTAGE_KEYS:
            value = _find_key(tree, key)
            try:
                value = float(value) * to_keV
            except (TypeError, ValueError):
                continue
            if np.isfinite(value) and 1.0 <= value <= 3000.0:
                return value
    return None


def _signal_title(metadata: dict) -> str:
    general = metadata.get("General", {}) if isinstance(metadata, dict) else {}
    title = general.get("title") or ""
    return str(title).strip()


def _from_signal_dict(signal: dict, path: Path, index: int | None) -> CalibratedImage | None:
    data = np.asarray(signal["data"])
    axes = signal.get("axes") or []
    metadata = signal.get("metadata") or {}
    if data.dtype.names:  # e.g. RGB structured arrays: not a HAADF image
        return None
    if len(axes) != data.ndim:
        axes = [{"name": f"axis{i}", "scale": 1.0, "offset": 0.0, "units": None} for i in range(data.ndim)]
    # rosettasciio puts navigation axes first and signal axes last in array order;
    # keep only axes with >1 pixel so singleton dimensions vanish.
    keep = [i for i in range(data.ndim) if data.shape[i] > 1]
    data = data.reshape([data.shape[i] for i in keep])
    axes = [axes[i] for i in keep]
    spatial = [i for i, ax in enumerate(axes) if is_length_unit(ax.get("units"))]
    if data.ndim < 2:
        return None
    # The last two axes are the image plane; a 2-D signal with non-length units
    # (uncalibrated) is still an image.
    plane = list(range(data.ndim - 2, data.ndim))
    frames = list(range(data.ndim - 2))
    if spatial and not set(plane) <= set(spatial):
        # A file whose image plane is not spatial (e.g. a spectrum image):
        # not something this plugin analyses.
        if len(spatial) < 2:
            return None
    warnings_list: list[str] = []
    scale_A = []
    offset_A = []
    calibrated = True
    for i, ax in enumerate(axes):
        unit = ax.get("units")
        scale = float(ax.get("scale", 1.0) or 1.0)
        offset = float(ax.get("offset", 0.0) or 0.0)
        if i in plane:
            if is_length_unit(unit) and scale > 0 and np.isfinite(scale):
                scale_A.append(length_to_angstrom(scale, unit))
                offset_A.append(length_to_angstrom(offset, unit))
            else:
                calibrated = False
                scale_A.append(1.0)
                offset_A.append(0.0)
        else:
            scale_A.append(1.0)
            offset_A.append(0.0)
    if not calibrated:
        scale_A = [1.0] * data.ndim
        offset_A = [0.0] * data.ndim
        warnings_list.append(
            f"{path.name}: no spatial calibration in the file; opened with pixel size 1 "
            "(unitless). Set the pixel size in Å before measuring lengths or concentrations."
        )
    names = ["frame"] * len(frames) + ["y", "x"]
    if len(frames) > 1:
        names = [f"frame{j}" for j in range(len(frames))] + ["y", "x"]
    title = _signal_title(metadata)
    name = path.stem if index is None else f"{path.stem} [{title or index}]"
    return CalibratedImage(
        data=data,
        name=name,
        axis_names=tuple(names),
        scale_A=tuple(scale_A),
        offset_A=tuple(offset_A),
        calibrated=calibrated,
        beam_energy_keV=_beam_energy(metadata, signal.get("original_metadata")),
        original_units=tuple(str(ax.get("units")) for ax in axes),
        original_metadata={"metadata": _jsonable(metadata), "axes": _jsonable(axes)},
        warnings=warnings_list,
    )


def sidecar_path(path: Path) -> Path:
    """Calibration sidecar of a ``.npy`` file: the same stem with ``.json``."""
    return path.with_suffix(".json")


def read_npy_sidecar(path: Path) -> tuple[float | None, float | None, dict]:
    """Pixel size (Å) and beam energy (keV) from the JSON beside a ``.npy``.

    Accepted keys, first match wins: ``pixel_size_A``; ``pixel_size`` with
    ``pixel_size_units`` (any length unit); or a field of view
    (``field_of_view_x`` + ``field_of_view_units``, anywhere in the JSON,
    as experimenters' metadata files store it) divided by the image width.
    Beam energy: ``beam_energy_keV`` or ``voltage`` (``"60 kV"``).

    Returns
    -------
    pixel_size_A, fov_x_A, metadata
        ``pixel_size_A`` is None when only a field of view is given (the
        caller divides by the image width) or nothing is; ``fov_x_A`` is the
        field of view in Å when present.
    """
    side = sidecar_path(path)
    if not side.exists():
        return None, None, {}
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReaderError(f"{side.name}: calibration sidecar is not valid JSON ({exc}).") from exc
    flat = _flatten(meta)
    pixel = None
    if "pixel_size_A" in flat:
        pixel = float(flat["pixel_size_A"])
    elif "pixel_size" in flat and is_length_unit(flat.get("pixel_size_units")):
        pixel = length_to_angstrom(float(flat["pixel_size"]), flat["pixel_size_units"])
    fov = None
    if "field_of_view_x" in flat:
        unit = flat.get("field_of_view_units", "nm")
        if is_length_unit(unit):
            fov = length_to_angstrom(float(flat["field_of_view_x"]), unit)
    return pixel, fov, meta


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Silence library loggers that print tracebacks for files we report ourselves."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _beam_energy_from_sidecar(meta: dict) -> float | None:
    flat = _flatten(meta)
    if "beam_energy_keV" in flat:
        return float(flat["beam_energy_keV"])
    voltage = flat.get("voltage")
    if isinstance(voltage, (int, float)):
        return float(voltage)
    if isinstance(voltage, str):
        parts = voltage.replace("kV", " kV").split()
        try:
            value = float(parts[0])
        except (ValueError, IndexError):
            return None
        if len(parts) > 1 and parts[1].lower() == "v":
            value /= 1000.0
        return value
    return None


def _load_npy(path: Path) -> CalibratedImage:
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ReaderError(
            f"{path.name}: not a plain numeric .npy array ({exc}); object arrays are refused "
            "because loading them would run code from the file."
        ) from exc
    except Exception as exc:
        raise ReaderError(f"{path.name}: cannot read this .npy file ({type(exc).__name__}: {exc}); "
                          "it may be truncated.") from exc
    data = np.squeeze(data)
    if data.ndim < 2 or not np.issubdtype(data.dtype, np.number):
        raise ReaderError(f"{path.name}: expected a numeric image of 2 or more dimensions, got shape {data.shape}.")
    pixel, fov, meta = read_npy_sidecar(path)
    if pixel is None and fov is not None:
        pixel = fov / data.shape[-1]
    calibrated = pixel is not None and pixel > 0 and np.isfinite(pixel)
    warn = []
    if not calibrated:
        pixel = 1.0
        warn.append(
            f"{path.name}: no calibration (no {sidecar_path(path).name} with pixel_size_A or a field of "
            "view); opened with pixel size 1. Set the pixel size in Å before measuring."
        )
    nframes = data.ndim - 2
    scale = (1.0,) * nframes + (pixel, pixel)
    return CalibratedImage(
        data=data,
        name=path.stem,
        axis_names=tuple(["frame"] * nframes + ["y", "x"]),
        scale_A=scale,
        offset_A=(0.0,) * data.ndim,
        calibrated=calibrated,
        beam_energy_keV=_beam_energy_from_sidecar(meta),
        original_units=("",) * nframes + (("A", "A") if calibrated else ("", "")),
        original_metadata={"sidecar": meta},
        warnings=warn,
    )


def _flatten(tree: Any, out: dict | None = None) -> dict:
    out = {} if out is None else out
    if isinstance(tree, dict):
        for key, value in tree.items():
            if isinstance(value, dict):
                _flatten(value, out)
            else:
                out.setdefault(key, value)
    return out


def _jsonable(obj: Any, depth: int = 0) -> Any:
    """A JSON-friendly copy of rosettasciio metadata (bytes decoded, arrays listed if small)."""
    if depth > 12:
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, depth + 1) for v in obj]
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    if isinstance(obj, np.ndarray):
        return obj.tolist() if obj.size <= 64 else f"<array shape={obj.shape} dtype={obj.dtype}>"
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def describe(image: CalibratedImage) -> dict[str, Any]:
    """Summary used by ``mx2-defects info``."""
    return {
        "name": image.name,
        "shape": list(image.data.shape),
        "dtype": str(image.data.dtype),
        "axes": list(image.axis_names),
        "pixel_size_A": [round(s, 6) for s in image.scale_A[-2:]] if image.calibrated else None,
        "calibrated": image.calibrated,
        "beam_energy_keV": image.beam_energy_keV,
        "original_units": list(image.original_units),
    }

