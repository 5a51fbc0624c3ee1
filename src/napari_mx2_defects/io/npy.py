"""``.npy`` images and their JSON calibration sidecar, validated before use.

A ``.npy`` holds pixels only. Its calibration, if any, is a JSON file with the same stem
(``image.npy`` → ``image.json``), written by people and by other tools, so every value in it is
checked (type, finite, positive, physical range) and every failure becomes one
:class:`ReaderError` line naming the image and the sidecar, saying what to fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .safety import (ReaderError, check_allocation, check_declared_size, check_regular_file, format_bytes,
                     one_line)
from .units import is_length_unit, length_to_angstrom

__all__ = ["SidecarCalibration", "read_npy_array", "read_npy_sidecar", "sidecar_path"]

#: A calibration sidecar is a few hundred bytes; anything above this is not one.
MAX_SIDECAR_BYTES = 1_000_000
#: Pixel sizes a sidecar may give, in Å (a 1 pm pixel to a 1 mm pixel).
PIXEL_RANGE_A = (1e-2, 1e7)
#: Beam energies a sidecar may give, in keV.
ENERGY_RANGE_KEV = (1.0, 3000.0)
_MAX_DEPTH = 32


def sidecar_path(path: Path) -> Path:
    """Calibration sidecar of a ``.npy`` file: the same stem with ``.json``."""
    return path.with_suffix(".json")


def read_npy_array(path: Path) -> np.ndarray:
    """The array in ``path``, after checking its header against the file size and free memory.

    Raises
    ------
    ReaderError
        Object arrays (loading them could run code), non-numeric dtypes, negative or huge shapes,
        truncated files and unreadable headers, each with a one-line message.
    """
    st = check_regular_file(path)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unknown .npy version {version}")
            data_offset = fh.tell()
    except ReaderError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, SyntaxError, MemoryError, ...
        raise ReaderError(
            f"{path.name}: not a readable .npy file ({type(exc).__name__}: {one_line(exc, 120)}); "
            "it is truncated or not a NumPy array file: save it again with numpy.save."
        ) from None
    if dtype.hasobject:
        raise ReaderError(
            f"{path.name}: holds Python objects, not pixel values; object arrays are refused because "
            "loading them would run code from the file. Save the image as a numeric array."
        )
    if dtype.kind not in "biuf" or dtype.names is not None or dtype.subdtype is not None:
        raise ReaderError(f"{path.name}: dtype {dtype} is not a numeric image; save the image as integers or "
                          "floats.")
    if any((not isinstance(n, int)) or n < 0 for n in shape):
        raise ReaderError(f"{path.name}: header declares an invalid shape {shape}; the file is corrupt.")
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    what = f"a {' × '.join(map(str, shape))} {dtype} array"
    check_declared_size(path, nbytes, st.st_size - data_offset, what)
    check_allocation(path, nbytes, what)
    try:
        with open(path, "rb") as fh:
            fh.seek(data_offset)
            data = np.fromfile(fh, dtype=dtype, count=count)
    except (OSError, ValueError, MemoryError) as exc:
        raise ReaderError(f"{path.name}: cannot read the pixel values ({one_line(exc, 120)}); copy the file "
                          "again.") from None
    if data.size != count:
        raise ReaderError(f"{path.name}: truncated: the header declares {count} values, the file holds "
                          f"{data.size}; copy the file again.")
    return data.reshape(shape, order="F" if fortran else "C")


class SidecarCalibration:
    """What a ``.npy`` sidecar says: pixel size (or field of view) per axis, and the raw tree.

    Attributes
    ----------
    pixel_size_yx_A : (float, float) or None
        Pixel size given directly.
    fov_yx_A : (float or None, float or None)
        Field of view per axis when given instead (divided by the image size by the caller).
    meta : dict
        The parsed JSON object.
    """

    def __init__(self, pixel_size_yx_A: tuple[float, float] | None = None,
                 fov_yx_A: tuple[float | None, float | None] = (None, None),
                 meta: dict | None = None) -> None:
        self.pixel_size_yx_A = pixel_size_yx_A
        self.fov_yx_A = fov_yx_A
        self.meta = meta or {}


def _flatten(tree: Any) -> dict[str, Any]:
    """First occurrence of every key in nested objects (lists are not searched), depth-bounded."""
    out: dict[str, Any] = {}
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop(0)
        if not isinstance(node, dict) or depth > _MAX_DEPTH:
            continue
        for key, value in node.items():
            if isinstance(value, dict):
                stack.append((value, depth + 1))
            else:
                out.setdefault(str(key), value)
    return out


def _bad(image: Path, side: Path, key: str, value: Any, expected: str) -> ReaderError:
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return ReaderError(f"{image.name}: {key} = {shown} in its calibration sidecar {side.name} is not "
                       f"{expected}; fix or delete {side.name}.")


def _positive(image: Path, side: Path, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(image, side, key, value, "a number")
    try:
        number = float(value)
    except OverflowError:
        raise _bad(image, side, key, value, "a finite number") from None
    if not math.isfinite(number) or number <= 0:
        raise _bad(image, side, key, value, "a finite positive number")
    return number


def _length_unit(image: Path, side: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not is_length_unit(value):
        raise _bad(image, side, key, value, "a length unit (nm, Å, pm, µm)")
    return value


def _pixel_in_range(image: Path, side: Path, key: str, value_A: float) -> float:
    low, high = PIXEL_RANGE_A
    if not low <= value_A <= high:
        raise ReaderError(f"{image.name}: {key} in its calibration sidecar {side.name} gives {value_A:.3g} Å "
                          f"per pixel, outside {low:g}–{high:g} Å; fix the value or its unit in {side.name}.")
    return value_A


def read_npy_sidecar(path: Path) -> SidecarCalibration:
    """Validated calibration from the JSON beside a ``.npy`` (empty when there is none).

    Accepted keys, first match wins: ``pixel_size_A`` (or ``pixel_size_y_A``/``pixel_size_x_A``);
    ``pixel_size`` with ``pixel_size_units``; or a field of view (``field_of_view_x`` and
    optionally ``field_of_view_y``, with ``field_of_view_units``, default nm), anywhere in the JSON
    as experimenters' metadata files store it. Optics are read separately
    (:func:`~.optics.read_optics`).

    Raises
    ------
    ReaderError
        A sidecar that is not a regular file, too large, not UTF-8, not a JSON object, nested too
        deep, or holds a calibration value of the wrong type, not finite, not positive or outside
        the physical range. The message names the image first.
    """
    side = sidecar_path(path)
    if not side.exists() and not side.is_symlink():
        return SidecarCalibration()
    check_regular_file(side, image=path, role="calibration sidecar")
    if side.stat().st_size > MAX_SIDECAR_BYTES:
        raise ReaderError(f"{path.name}: its calibration sidecar {side.name} is "
                          f"{format_bytes(side.stat().st_size)}, too large for calibration metadata; "
                          f"delete or replace {side.name}.")
    try:
        text = side.read_bytes().decode("utf-8-sig")
        meta = json.loads(text)
    except UnicodeDecodeError as exc:
        raise ReaderError(f"{path.name}: its calibration sidecar {side.name} is not UTF-8 text (byte "
                          f"{exc.start}); fix or delete {side.name}.") from None
    except RecursionError:
        raise ReaderError(f"{path.name}: its calibration sidecar {side.name} is nested too deeply to be "
                          f"calibration metadata; fix or delete {side.name}.") from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise ReaderError(f"{path.name}: its calibration sidecar {side.name} is not valid JSON "
                          f"({one_line(exc, 80)}); fix or delete {side.name}.") from None
    except OSError as exc:
        raise ReaderError(f"{path.name}: cannot read its calibration sidecar {side.name} "
                          f"({one_line(exc.strerror or exc, 80)}); check its permissions.") from None
    if not isinstance(meta, dict):
        raise ReaderError(f"{path.name}: its calibration sidecar {side.name} holds a JSON "
                          f"{type(meta).__name__ if meta is not None else 'null'}, not an object with "
                          f"pixel_size_A or field_of_view_x; fix or delete {side.name}.")
    flat = _flatten(meta)
    result = SidecarCalibration(meta=meta)
    if "pixel_size_A" in flat or "pixel_size_x_A" in flat:
        sx = _positive(path, side, "pixel_size_x_A" if "pixel_size_x_A" in flat else "pixel_size_A",
                       flat.get("pixel_size_x_A", flat.get("pixel_size_A")))
        sy = _positive(path, side, "pixel_size_y_A" if "pixel_size_y_A" in flat else "pixel_size_A",
                       flat.get("pixel_size_y_A", flat.get("pixel_size_A", sx)))
        result.pixel_size_yx_A = (_pixel_in_range(path, side, "pixel_size_A", sy),
                                  _pixel_in_range(path, side, "pixel_size_A", sx))
    elif "pixel_size" in flat:
        value = _positive(path, side, "pixel_size", flat["pixel_size"])
        unit = _length_unit(path, side, "pixel_size_units", flat.get("pixel_size_units"))
        size_A = _pixel_in_range(path, side, "pixel_size", length_to_angstrom(value, unit))
        result.pixel_size_yx_A = (size_A, size_A)
    elif "field_of_view_x" in flat:
        unit = _length_unit(path, side, "field_of_view_units", flat.get("field_of_view_units", "nm"))
        fov_x = length_to_angstrom(_positive(path, side, "field_of_view_x", flat["field_of_view_x"]), unit)
        fov_y = None
        if "field_of_view_y" in flat:
            fov_y = length_to_angstrom(_positive(path, side, "field_of_view_y", flat["field_of_view_y"]),
                                       unit)
        result.fov_yx_A = (fov_y, fov_x)
    return result


def check_sidecar_values(path: Path, meta: dict) -> None:
    """Refuse explicit optics values of the wrong type in a sidecar (``beam_energy_keV: "abc"``)."""
    side = sidecar_path(path)
    flat = _flatten(meta)
    if "beam_energy_keV" in flat:
        energy = _positive(path, side, "beam_energy_keV", flat["beam_energy_keV"])
        low, high = ENERGY_RANGE_KEV
        if not low <= energy <= high:
            raise _bad(path, side, "beam_energy_keV", flat["beam_energy_keV"],
                       f"between {low:g} and {high:g} keV")
