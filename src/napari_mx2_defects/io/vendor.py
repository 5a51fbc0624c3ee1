"""Vendor parsing through rosettasciio, with the declared sizes checked before any pixel is read.

:func:`read_signals` is what runs inside the reader's worker process (:mod:`._worker`), or in
process when isolation is off. It

1. checks the companion files (the ``.ser`` of an ``.emi`` and back) are regular files;
2. for HDF5 (Velox and Berkeley EMD) and TIFF, compares every declared dataset/series size with
   the bytes the file stores for it and with the memory available;
3. opens the file with rosettasciio *lazily*, so each signal's shape and dtype are known before
   its pixels are read, and checks them again (uncompressed formats cannot hold more pixel bytes
   than the file has);
4. reads the pixels, applies ImageJ/Fiji calibration to TIFFs (rosettasciio only knows
   ``micron``), and returns plain JSON-friendly metadata.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .imagej import imagej_calibration
from .safety import ReaderError, check_allocation, check_declared_size, check_regular_file, one_line
from .units import length_to_angstrom, normalise_unit

__all__ = ["RSCIIO_MODULES", "companion_files", "jsonable", "read_signals"]

#: suffix -> rosettasciio plugin module
RSCIIO_MODULES: dict[str, str] = {
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".emd": "emd",
    ".ser": "tia",
    ".emi": "tia",
    ".mrc": "mrc",
    ".tif": "tiff",
    ".tiff": "tiff",
}

#: Formats whose pixels are stored uncompressed: they cannot declare more pixel bytes than they hold.
_UNCOMPRESSED = {".dm3", ".dm4", ".ser", ".emi", ".mrc"}
#: Compressed data may legitimately be larger than the file, but not by more than this (or 64 MiB).
MAX_COMPRESSION_RATIO = 200
_SMALL_BYTES = 64 * 2**20
#: Uncompressed formats may expand stored pixels (DM packed-complex FFTs, 2×) but not by more than this.
UNCOMPRESSED_SLACK = 4


def companion_files(path: Path) -> list[Path]:
    """Other files rosettasciio opens for ``path``: the ``.ser`` files of an ``.emi`` and back."""
    suffix = path.suffix.lower()
    if suffix == ".emi":
        return sorted(path.parent.glob(f"{_glob_escape(path.stem)}_*.ser"))
    if suffix == ".ser":
        stem = path.stem.rsplit("_", 1)[0] if "_" in path.stem else path.stem
        return [p for p in (path.with_name(stem + ".emi"),) if p.exists() or p.is_symlink()]
    return []


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


@contextlib.contextmanager
def quiet_libraries():
    """Silence warnings and library loggers that print tracebacks for files the reader reports itself."""
    loggers = [logging.getLogger(n) for n in ("tifffile", "rsciio", "h5py")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _describe(shape: tuple[int, ...], dtype: Any) -> str:
    return f"a {' × '.join(str(int(n)) for n in shape)} {np.dtype(dtype)} array"


def _check_hdf5(path: Path, file_bytes: int) -> None:
    """Every dataset's declared size against its stored bytes and the memory available."""
    import h5py

    def visit(name: str, obj: Any) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        shape = obj.shape or ()
        if any(n < 0 for n in shape):
            raise ReaderError(f"{path.name}: dataset {name} declares a negative size {shape}; the file is "
                              "corrupt.")
        nbytes = math.prod(shape) * obj.dtype.itemsize
        if nbytes <= _SMALL_BYTES // 64:
            return
        what = f"dataset {name} as {_describe(shape, obj.dtype)}"
        check_allocation(path, nbytes, what)
        stored = obj.id.get_storage_size()
        if obj.chunks is None:  # contiguous: every declared byte must be stored
            check_declared_size(path, nbytes, stored, what, where="its stored data")
        elif nbytes > max(_SMALL_BYTES, MAX_COMPRESSION_RATIO * max(stored, 1)):
            # chunked (maybe compressed): no microscope image compresses by more than this
            check_declared_size(path, nbytes, stored, what, where="its stored data",
                                factor=MAX_COMPRESSION_RATIO)

    try:
        with h5py.File(path, "r") as fh:
            fh.visititems(visit)
    except ReaderError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError, KeyError, RuntimeError, ValueError...
        raise ReaderError(f"{path.name}: not a readable HDF5/EMD file ({type(exc).__name__}: "
                          f"{one_line(exc, 120)}); it may be truncated or corrupt: copy it again from the "
                          "microscope PC.") from None


def _check_tiff(path: Path, file_bytes: int) -> dict[str, Any] | None:
    """Declared series sizes against the file; returns the ImageJ calibration, if any."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for series in tif.series:
                shape = tuple(int(n) for n in series.shape)
                nbytes = math.prod(shape) * np.dtype(series.dtype).itemsize
                check_allocation(path, nbytes, _describe(shape, series.dtype))
                page = series.pages[0] if len(series.pages) else None
                compression = int(getattr(page, "compression", 1) or 1) if page is not None else 1
                if compression == 1 or nbytes > _SMALL_BYTES:
                    check_declared_size(path, nbytes, file_bytes, _describe(shape, series.dtype),
                                        factor=1 if compression == 1 else MAX_COMPRESSION_RATIO)
            page = tif.pages[0]
            tags = page.tags
            x_res = tags["XResolution"].value if "XResolution" in tags else None
            y_res = tags["YResolution"].value if "YResolution" in tags else None
            meta = tif.imagej_metadata if tif.is_imagej else None
    except ReaderError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises TiffFileError, ValueError, struct.error...
        raise ReaderError(f"{path.name}: not a readable TIFF file ({type(exc).__name__}: "
                          f"{one_line(exc, 120)}); it may be truncated or corrupt: save it again.") from None
    if x_res is None:
        return None
    return imagej_calibration(meta, x_res, y_res)


def _tiff_document_name(path: Path) -> str | None:
    """The TIFF DocumentName tag (where the plugin's writer stores a title), at most 200 characters."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags.get("DocumentName")
            value = tag.value if tag is not None else None
    except Exception:  # noqa: BLE001 - already checked by _check_tiff; a title is optional
        return None
    return value[:200] if isinstance(value, str) else None


def _apply_imagej(signal: dict, calibration: dict) -> None:
    """Set the image plane's scale from Fiji's calibration unless rosettasciio already agrees."""
    axes = signal.get("axes") or []
    if len(axes) < 2:
        return
    for axis, scale, unit, scale_A in zip(axes[-2:], calibration["scale"], calibration["units"],
                                          calibration["scale_A"]):
        current_unit = normalise_unit(axis.get("units"))
        try:
            current_A = length_to_angstrom(float(axis.get("scale")), current_unit) if current_unit else None
        except (TypeError, ValueError):
            current_A = None
        if current_A is not None and math.isclose(current_A, scale_A, rel_tol=1e-3):
            continue
        axis["scale"], axis["units"], axis["offset"] = float(scale), unit, 0.0
    signal.setdefault("original_metadata", {})["ImageJ_calibration"] = {
        "unit_y": calibration["units"][0], "unit_x": calibration["units"][1],
        "pixel_size_y": calibration["scale"][0], "pixel_size_x": calibration["scale"][1]}


#: Fields of the Thermo Fisher (FEI1/FEI2) MRC extended header used here: byte offset in a frame's
#: metadata block, struct format, (bitmask word offset, bit) that says the value is valid.
_FEI_FIELDS: dict[str, tuple[int, str, tuple[int, int]]] = {
    "HT_V": (84, "<d", (8, 5)),
    "Pixel size X_m": (156, "<d", (8, 14)),
    "Instrument mode": (244, "<i", (8, 25)),  # 1 TEM, 2 STEM
    "Camera length_m": (301, "<d", (297, 0)),
    "Convergence angle_rad": (329, "<d", (297, 4)),
    "Integration time_s": (419, "<d", (297, 16)),
    "STEM Detector name": (519, "16s", (490, 7)),
    "Dwell time_s": (571, "<d", (490, 15)),
}
_FEI_MIN_BLOCK = 579


def _fei_extended_header(path: Path) -> dict[str, Any] | None:
    """The first frame's metadata from a Thermo Fisher MRC extended header (EXTTYP FEI1/FEI2).

    rosettasciio reads only the older 128-byte FEI header; Velox and EPU write this one. Only
    fields whose bitmask bit is set are returned, in SI units as stored.
    """
    import struct

    with open(path, "rb") as fh:
        header = fh.read(1024)
        if len(header) < 1024 or header[104:108] not in (b"FEI1", b"FEI2"):
            return None
        extended = struct.unpack_from("<I", header, 92)[0]
        block = fh.read(min(extended, 4096))
    if len(block) < _FEI_MIN_BLOCK:
        return None
    size = struct.unpack_from("<i", block, 0)[0]
    if not _FEI_MIN_BLOCK <= size <= len(block):
        return None
    out: dict[str, Any] = {"Metadata version": struct.unpack_from("<i", block, 4)[0]}
    for name, (offset, fmt, (mask_offset, bit)) in _FEI_FIELDS.items():
        if not struct.unpack_from("<I", block, mask_offset)[0] >> bit & 1:
            continue
        value = struct.unpack_from(fmt, block, offset)[0]
        if isinstance(value, bytes):
            value = value.split(b"\0", 1)[0].decode("latin-1").strip()
        out[name] = value
    return out


def _materialise(path: Path, signal: dict, suffix: str, file_bytes: int) -> np.ndarray | None:
    data = signal["data"]
    shape = tuple(int(n) for n in getattr(data, "shape", ()))
    dtype = np.dtype(getattr(data, "dtype", np.float64))
    if dtype.names is not None or dtype.hasobject:
        return None  # RGB / structured / object: not a HAADF image
    if any(n < 0 for n in shape):
        raise ReaderError(f"{path.name}: declares a negative image size {shape}; the file is corrupt.")
    nbytes = math.prod(shape) * dtype.itemsize
    what = _describe(shape, dtype)
    if suffix in _UNCOMPRESSED:  # (DM expands packed-complex FFTs up to 2×)
        check_declared_size(path, nbytes, file_bytes, what, factor=UNCOMPRESSED_SLACK)
    check_allocation(path, nbytes, what)
    if hasattr(data, "compute"):
        data = data.compute(scheduler="synchronous")
    return np.ascontiguousarray(data)


def _file_bytes(path: Path) -> int:
    total = check_regular_file(path).st_size
    for other in companion_files(path):
        role = "data file" if other.suffix.lower() == ".ser" else "metadata file"
        total += check_regular_file(other, image=path, role=role).st_size
    return total


def read_signals(path: Path) -> list[dict[str, Any]]:
    """rosettasciio signal dicts for ``path`` with pixels as numpy arrays and JSON-friendly metadata.

    Raises
    ------
    ReaderError
        For anything the file cannot give: a declared size larger than the file or than the
        memory available, an unreadable header, a library error (one line, naming the file).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    file_bytes = _file_bytes(path)
    with quiet_libraries():
        calibration = document_name = None
        if suffix == ".emd":
            _check_hdf5(path, file_bytes)
        elif suffix in (".tif", ".tiff"):
            calibration = _check_tiff(path, file_bytes)
            document_name = _tiff_document_name(path)
        try:
            reader = importlib.import_module(f"rsciio.{RSCIIO_MODULES[suffix]}").file_reader
            try:
                signals = reader(str(path), lazy=True)  # shapes known before any pixel is read
            except ValueError as exc:
                if "lazy" not in str(exc).lower():
                    raise
                signals = reader(str(path))  # e.g. DM RGBA images, which rosettasciio reads eagerly only
            out = []
            for signal in signals:
                data = _materialise(path, signal, suffix, file_bytes)
                if data is None:
                    continue
                item = {"data": data, "axes": signal.get("axes") or [],
                        "metadata": signal.get("metadata") or {},
                        "original_metadata": signal.get("original_metadata") or {}}
                if calibration is not None:
                    _apply_imagej(item, calibration)
                if document_name:  # the title the plugin's own TIFF writer stores (DocumentName tag)
                    general = item["metadata"].setdefault("General", {})
                    if isinstance(general, dict) and not general.get("title"):
                        general["title"] = document_name
                if suffix == ".mrc":
                    fei = _fei_extended_header(path)
                    if fei:
                        item["original_metadata"] = {**item["original_metadata"], "fei_extended_header": fei}
                out.append({key: (value if key == "data" else jsonable(value))
                            for key, value in item.items()})
        except ReaderError:
            raise
        except MemoryError:
            raise ReaderError(f"{path.name}: reading it needs more memory than is available; the file is "
                              "corrupt, or open it on a machine with more memory.") from None
        except RecursionError:
            raise ReaderError(f"{path.name}: its metadata is nested too deeply to parse; the file is "
                              "corrupt: copy it again from the microscope PC.") from None
        except Exception as exc:  # noqa: BLE001 - rosettasciio raises many types for bad files
            raise ReaderError(
                f"{path.name}: cannot read this {suffix} file ({type(exc).__name__}: {one_line(exc, 120)}). "
                "It may be truncated or corrupt: copy it again from the microscope PC."
            ) from None
    return out


def jsonable(obj: Any, depth: int = 0) -> Any:
    """A JSON-friendly copy of rosettasciio metadata (bytes decoded, small arrays listed, depth-bounded)."""
    if depth > 24:
        return "<nested too deep>"
    if isinstance(obj, dict):
        return {str(k)[:200]: jsonable(v, depth + 1) for k, v in list(obj.items())[:5000]}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, depth + 1) for v in obj[:1000]]
    if isinstance(obj, (bytes, bytearray, np.void)):
        return bytes(obj)[:4096].decode("utf-8", "replace")
    if isinstance(obj, np.ndarray):
        if obj.size <= 64:
            return jsonable(obj.tolist(), depth + 1)
        return f"<array shape={obj.shape} dtype={obj.dtype}>"
    if isinstance(obj, np.generic):
        return jsonable(obj.item(), depth + 1)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, str):
        return obj[:10000]
    if isinstance(obj, (int, bool)) or obj is None:
        return obj if not isinstance(obj, int) or abs(obj) < 2**63 else str(obj)
    return one_line(obj, 200)
