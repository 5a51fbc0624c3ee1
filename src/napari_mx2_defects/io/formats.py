"""Calibrated images from vendor STEM files, through rosettasciio.

One contract for every format, as in rosettasciio: :func:`load_images` turns a
file into a list of :class:`CalibratedImage` (data, per-axis pixel size in Å,
axis names, optics, metadata).  The napari reader (:mod:`.reader`) and the command
line (``mx2-defects info``) are thin layers over it.

Every path either opens or raises :class:`ReaderError` with one line naming the
image file and saying what to do:

* only regular files are read (FIFOs, devices and folders are refused at once);
* ``.npy`` headers and MRC headers are checked in process against the file size and
  the memory available before anything is allocated;
* every other format is parsed by rosettasciio in a worker process with a time
  budget (:mod:`.isolation`), where the declared sizes are checked again before the
  pixels are read (:mod:`.vendor`);
* a calibration that is zero, negative, not finite or outside physical range opens
  uncalibrated with a warning, never as a made-up scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .npy import check_sidecar_values, read_npy_array, read_npy_sidecar, sidecar_path
from .optics import read_optics
from .safety import ReaderError, check_allocation, check_declared_size, check_regular_file, one_line
from .units import is_length_unit, length_to_angstrom

__all__ = [
    "SUFFIXES",
    "CalibratedImage",
    "ReaderError",
    "describe",
    "is_supported",
    "load_images",
    "sidecar_path",
]

#: Pixel sizes outside this range (Å) are not a calibration but a broken or placeholder value.
PLAUSIBLE_PIXEL_A = (1e-4, 1e9)


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
    optics : dict
        Optics the file records, under unit-carrying keys (see :mod:`.optics`):
        ``convergence_semiangle_mrad``, ``detector_inner_mrad``, ``detector_outer_mrad``,
        ``camera_length_mm``, ``dwell_time_s``, ``exposure_time_s``, ``probe_current_A``,
        ``beam_energy_keV``, and the strings ``detector`` and ``mode``. Only what the file holds.
    optics_source : dict
        For each optics key, the vendor tag it was read from.
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
    optics: dict[str, Any] = field(default_factory=dict)
    optics_source: dict[str, str] = field(default_factory=dict)

    @property
    def pixel_size_A(self) -> float | None:
        """Pixel size of the image plane in Å (mean of y and x), None if uncalibrated."""
        if not self.calibrated:
            return None
        return float(np.mean(self.scale_A[-2:]))

    @property
    def is_square_pixel(self) -> bool:
        """True when the y and x pixel sizes agree within :data:`~..core.validation.SQUARE_PIXEL_TOLERANCE`."""
        from ..core.validation import SQUARE_PIXEL_TOLERANCE

        sy, sx = self.scale_A[-2:]
        return abs(sy - sx) <= SQUARE_PIXEL_TOLERANCE * max(sy, sx)

    def layer_metadata(self, source: str | Path) -> dict[str, Any]:
        """Metadata dict stored on the napari layer (``optics`` holds the recorded optics)."""
        return {
            "pixel_size_A": self.pixel_size_A,
            "pixel_size_yx_A": tuple(float(s) for s in self.scale_A[-2:]),
            "calibrated": self.calibrated,
            "beam_energy_keV": self.beam_energy_keV,
            "optics": dict(self.optics),
            "optics_source": dict(self.optics_source),
            "axis_names": list(self.axis_names),
            "original_units": list(self.original_units),
            "source_path": str(source),
            "original_metadata": self.original_metadata,
        }


def _isolated_reader(path: Path) -> list[dict]:
    from .isolation import read_signals_isolated

    return read_signals_isolated(path, _file_bytes(path))


def _file_bytes(path: Path) -> int:
    from .vendor import companion_files

    total = path.stat().st_size
    for other in companion_files(path):
        try:
            total += other.stat().st_size
        except OSError:
            pass
    return total


#: suffix -> function returning rosettasciio-style signal dicts (pixels as numpy arrays)
_FORMAT_READERS: dict[str, Callable[[Path], list[dict]]] = {
    suffix: _isolated_reader for suffix in (".dm3", ".dm4", ".emd", ".ser", ".emi", ".mrc", ".tif", ".tiff")
}

#: Every suffix the reader claims.
SUFFIXES: tuple[str, ...] = (*_FORMAT_READERS, ".npy")

#: MRC modes rosettasciio reads, with their item size in bytes.
_MRC_ITEMSIZE = {0: 1, 1: 2, 2: 4, 4: 8, 6: 2, 12: 2}


def is_supported(path: str | Path) -> bool:
    """True when ``path`` has a suffix this package reads."""
    return Path(path).suffix.lower() in SUFFIXES


def load_images(path: str | Path) -> list[CalibratedImage]:
    """Read every image signal in ``path`` with its calibration in Å.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.dm3/.dm4/.emd/.ser/.emi/.mrc/.tif/.tiff`` file, or a ``.npy``
        array with an optional JSON sidecar (see :func:`.npy.read_npy_sidecar`).

    Returns
    -------
    list of CalibratedImage
        One entry per signal with at least two spatial axes.

    Raises
    ------
    ReaderError
        When the file is missing, not a regular file, corrupt, truncated, declares
        more data than it holds or than memory allows, takes longer than the time
        budget to parse, or holds no image. The message is one line naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ReaderError(f"{path.name}: unsupported file type {suffix!r}; supported: {', '.join(SUFFIXES)}")
    st = check_regular_file(path)
    if suffix == ".npy":
        return [_load_npy(path)]
    if suffix == ".mrc":
        _check_mrc_header(path, st.st_size)
    try:
        signals = _FORMAT_READERS[suffix](path)
    except ReaderError:
        raise
    except Exception as exc:  # noqa: BLE001 - a reader hook (tests) raising anything else
        raise ReaderError(
            f"{path.name}: cannot read this {suffix} file ({type(exc).__name__}: {one_line(exc, 120)}). "
            "It may be truncated or corrupt: copy it again from the microscope PC."
        ) from None
    images = []
    many = len(signals) > 1
    for index, signal in enumerate(signals):
        try:
            image = _from_signal_dict(signal, path, index if many else None)
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001 - malformed metadata must not escape as a traceback
            raise ReaderError(
                f"{path.name}: signal {index} could not be interpreted ({type(exc).__name__}: "
                f"{one_line(exc, 120)}); the file may be corrupt."
            ) from None
        if image is not None:
            images.append(image)
    if not images:
        raise ReaderError(
            f"{path.name}: no image with two spatial axes could be read; the file may be truncated "
            "or hold only spectra or metadata."
        )
    return images


def _check_mrc_header(path: Path, file_bytes: int) -> None:
    """MRC sizes from the 1024-byte header, checked against the file before rosettasciio maps it."""
    if file_bytes < 1024:
        raise ReaderError(f"{path.name}: {file_bytes} bytes, shorter than the 1024-byte MRC header; the file "
                          "is truncated: copy it again.")
    with open(path, "rb") as fh:
        header = fh.read(1024)
    nx, ny, nz, mode = (int(v) for v in np.frombuffer(header, "<i4", count=4))
    extended = int(np.frombuffer(header, "<u4", count=1, offset=92)[0])
    if min(nx, ny, nz) < 1:
        raise ReaderError(f"{path.name}: the MRC header declares an invalid size nx={nx}, ny={ny}, nz={nz}; "
                          "the file is corrupt: copy it again.")
    if mode not in _MRC_ITEMSIZE:
        raise ReaderError(f"{path.name}: MRC mode {mode} is not a pixel type this reader knows "
                          "(0, 1, 2, 4, 6, 12); the file is corrupt or not an image.")
    nbytes = nx * ny * nz * _MRC_ITEMSIZE[mode]
    what = f"a {nz} × {ny} × {nx} image (mode {mode})"
    check_declared_size(path, nbytes, file_bytes - 1024 - extended, what)
    check_allocation(path, nbytes, what)


def _finite(value: Any, default: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if math.isfinite(number) else default


def _signal_title(metadata: dict) -> str:
    general = metadata.get("General", {}) if isinstance(metadata, dict) else {}
    title = general.get("title") if isinstance(general, dict) else ""
    return one_line(title or "", 80)


def _from_signal_dict(signal: dict, path: Path, index: int | None) -> CalibratedImage | None:
    data = np.asarray(signal["data"])
    axes = signal.get("axes") or []
    metadata = signal.get("metadata") or {}
    if data.dtype.names or data.dtype.hasobject:  # e.g. RGB structured arrays: not a HAADF image
        return None
    if len(axes) != data.ndim or not all(isinstance(ax, dict) for ax in axes):
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
    if spatial and not set(plane) <= set(spatial) and len(spatial) < 2:
        # A file whose image plane is not spatial (e.g. a spectrum image):
        # not something this plugin analyses.
        return None
    warnings_list: list[str] = []
    scale_A, offset_A = [1.0] * data.ndim, [0.0] * data.ndim
    calibrated = True
    problems = []
    low, high = PLAUSIBLE_PIXEL_A
    for i in plane:
        ax = axes[i]
        unit = ax.get("units")
        scale = _finite(ax.get("scale"), math.nan) if ax.get("scale") is not None else math.nan
        if not is_length_unit(unit):
            calibrated = False
            continue
        size_A = length_to_angstrom(scale, unit) if math.isfinite(scale) else math.nan
        if not (math.isfinite(size_A) and low <= size_A <= high):
            calibrated = False
            problems.append(f"{ax.get('name') or 'axis'} {scale:g} {one_line(unit, 12)}")
            continue
        scale_A[i] = size_A
        offset_A[i] = length_to_angstrom(_finite(ax.get("offset"), 0.0), unit)
    if not calibrated:
        scale_A = [1.0] * data.ndim
        offset_A = [0.0] * data.ndim
        if problems:
            warnings_list.append(
                f"{path.name}: the file records an impossible pixel size ({', '.join(problems)}); opened "
                "uncalibrated with pixel size 1. Set the pixel size in Å before measuring lengths or "
                "concentrations."
            )
        else:
            warnings_list.append(
                f"{path.name}: no spatial calibration in the file; opened with pixel size 1 "
                "(unitless). Set the pixel size in Å before measuring lengths or concentrations."
            )
    names = ["frame"] * len(frames) + ["y", "x"]
    if len(frames) > 1:
        names = [f"frame{j}" for j in range(len(frames))] + ["y", "x"]
    title = _signal_title(metadata)
    name = path.stem if index is None else f"{path.stem} [{title or index}]"
    optics, sources = read_optics(signal.get("original_metadata"))
    if "beam_energy_keV" not in optics:  # rosettasciio's own mapping, in keV
        for mode in ("TEM", "SEM"):
            instrument = metadata.get("Acquisition_instrument", {}) if isinstance(metadata, dict) else {}
            tem = instrument.get(mode, {}) if isinstance(instrument, dict) else {}
            energy = _finite(tem.get("beam_energy") if isinstance(tem, dict) else None, math.nan)
            if 1.0 <= energy <= 3000.0:
                optics["beam_energy_keV"] = energy
                sources["beam_energy_keV"] = f"rosettasciio Acquisition_instrument/{mode}/beam_energy"
                break
    return CalibratedImage(
        data=data,
        name=name,
        axis_names=tuple(names),
        scale_A=tuple(scale_A),
        offset_A=tuple(offset_A),
        calibrated=calibrated,
        beam_energy_keV=optics.get("beam_energy_keV"),
        original_units=tuple(one_line(ax.get("units"), 40) for ax in axes),
        original_metadata={"metadata": metadata, "axes": axes},
        warnings=warnings_list,
        optics=optics,
        optics_source=sources,
    )


def _load_npy(path: Path) -> CalibratedImage:
    data = np.squeeze(read_npy_array(path))
    if data.ndim < 2:
        raise ReaderError(f"{path.name}: expected an image of 2 or more dimensions, got shape {data.shape}; "
                          "save the image itself, not a profile or a scalar.")
    side = read_npy_sidecar(path)
    check_sidecar_values(path, side.meta)
    warn = []
    pixel_yx = side.pixel_size_yx_A
    fov_y, fov_x = side.fov_yx_A
    if pixel_yx is None and fov_x is not None:
        pixel_x = fov_x / data.shape[-1]
        pixel_y = fov_y / data.shape[-2] if fov_y is not None else pixel_x
        pixel_yx = (pixel_y, pixel_x)
    calibrated = pixel_yx is not None
    if not calibrated:
        pixel_yx = (1.0, 1.0)
        warn.append(
            f"{path.name}: no calibration (no {sidecar_path(path).name} with pixel_size_A or a field of "
            "view); opened with pixel size 1. Set the pixel size in Å before measuring."
        )
    nframes = data.ndim - 2
    optics, sources = read_optics(side.meta, sidecar=True)
    return CalibratedImage(
        data=data,
        name=path.stem,
        axis_names=tuple(["frame"] * nframes + ["y", "x"]),
        scale_A=(1.0,) * nframes + tuple(float(s) for s in pixel_yx),
        offset_A=(0.0,) * data.ndim,
        calibrated=calibrated,
        beam_energy_keV=optics.get("beam_energy_keV"),
        original_units=("",) * nframes + (("A", "A") if calibrated else ("", "")),
        original_metadata={"sidecar": side.meta},
        warnings=warn,
        optics=optics,
        optics_source=sources,
    )


def describe(image: CalibratedImage) -> dict[str, Any]:
    """What the reader found, as plain data (``mx2-defects info --json`` prints it; the docks show the optics)."""
    return {
        "name": image.name,
        "shape": list(image.data.shape),
        "dtype": str(image.data.dtype),
        "axes": list(image.axis_names),
        "pixel_size_A": [round(s, 6) for s in image.scale_A[-2:]] if image.calibrated else None,
        "calibrated": image.calibrated,
        "beam_energy_keV": image.beam_energy_keV,
        "optics": dict(image.optics),
        "optics_source": dict(image.optics_source),
        "original_units": list(image.original_units),
    }
