"""Microscope optics as the vendor files record them, in named units.

:func:`read_optics` looks in a file's original metadata (as rosettasciio returns it, or a ``.npy``
sidecar) for the optics that decide HAADF contrast and dose, and returns them under unit-carrying
keys:

========================== ===========================================================================
key                        where it comes from
========================== ===========================================================================
beam_energy_keV            Velox ``Optics/AccelerationVoltage`` (V); DM ``Microscope Info/Voltage`` (V);
                           TIA ``High tension_kV``; Berkeley EMD ``microscope/high tension`` (V); MRC
                           FEI1/FEI2 extended header ``HT`` (V); sidecar ``voltage`` (``"60 kV"``)
convergence_semiangle_mrad Velox ``Optics/BeamConvergence`` (rad, magnitude); Berkeley EMD
                           ``microscope/convergence angle`` (rad); MRC extended header (rad)
detector_inner_mrad,       Velox ``Detectors/<detector of this image>/CollectionAngleRange``
detector_outer_mrad        ``begin``/``end`` (rad; 0/0 means "not recorded")
camera_length_mm           STEM only: Velox ``Optics/CameraLength`` (m); DM ``Microscope Info/STEM
                           Camera Length`` (mm); TIA ``Camera length_m``; Berkeley EMD
                           ``microscope/camera length`` (m); MRC extended header (m)
dwell_time_s               Velox ``Scan/DwellTime``; DM ``DigiScan/Sample Time`` (µs); TIA
                           ``AcquireInfo/DwellTimePath`` (STEM modes); Berkeley EMD ``microscope/dwell
                           time``; MRC extended header ``Dwell time``
exposure_time_s            camera images: Velox detector ``ExposureTime``; DM ``DataBar/Exposure Time
                           (s)``; TIA ``DwellTimePath`` in TEM modes; MRC ``Integration time``
probe_current_A            Velox ``Optics/ScreenCurrent`` (A, when > 0); DM ``Microscope Info/Probe
                           Current (nA)`` (when > 0); sidecar ``probe_current`` (``"30 pA"``)
========================== ===========================================================================

and the strings ``detector`` (the detector that recorded the image) and ``mode`` (``"STEM"``/``"TEM"``
where the file says). Values the file does not hold, or holds as 0 / out of physical range (vendors write 0
for "not measured"), are left out: nothing is invented. :func:`read_optics` also returns where each
value came from, so a user can check it against the vendor software.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

__all__ = ["OPTICS_KEYS", "format_optics", "parse_quantity", "read_optics"]

#: Numeric optics keys, their display label and unit, and the physically plausible range.
OPTICS_KEYS: dict[str, tuple[str, str, float, float]] = {
    "beam_energy_keV": ("beam energy", "keV", 1.0, 3000.0),
    "convergence_semiangle_mrad": ("convergence semi-angle", "mrad", 0.05, 300.0),
    "detector_inner_mrad": ("detector inner angle", "mrad", 0.0, 2000.0),
    "detector_outer_mrad": ("detector outer angle", "mrad", 0.0, 2000.0),
    "camera_length_mm": ("camera length", "mm", 0.1, 1e6),
    "dwell_time_s": ("dwell time", "s", 1e-10, 1e3),
    "exposure_time_s": ("exposure time", "s", 1e-7, 1e5),
    "probe_current_A": ("probe current", "A", 1e-17, 1e-4),
}

_UNIT_FACTORS: dict[str, dict[str, float]] = {
    "keV": {"v": 1e-3, "kv": 1.0, "mv": 1e3, "ev": 1e-3, "kev": 1.0, "mev": 1e3},
    "A": {"a": 1.0, "ma": 1e-3, "ua": 1e-6, "na": 1e-9, "pa": 1e-12, "fa": 1e-15},
    "s": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "sec": 1.0},
    "mrad": {"rad": 1e3, "mrad": 1.0, "urad": 1e-3, "deg": 1e3 * math.pi / 180, "°": 1e3 * math.pi / 180},
    "mm": {"m": 1e3, "cm": 10.0, "mm": 1.0, "um": 1e-3, "nm": 1e-6},
}

_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\d\s].*?)?\s*$")


def _number(value: Any) -> float | None:
    """A finite float from a number or a numeric string; None otherwise (bools are not numbers)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        if len(value) > 64:
            return None
        value = value.strip()
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def parse_quantity(value: Any, target: str, default_unit: str | None = None) -> float | None:
    """Value in the ``target`` unit (``keV``, ``A``, ``s``, ``mrad``, ``mm``) from ``"30 pA"``-style input.

    Parameters
    ----------
    value : number or str
        A plain number (taken in ``default_unit``) or ``"<number> <unit>"``.
    target : str
        One of the keys of the unit tables: ``keV``, ``A``, ``s``, ``mrad``, ``mm``.
    default_unit : str, optional
        Unit of a bare number; without it a bare number is refused (None).

    Returns
    -------
    float or None
        None when the value has no number, an unknown unit, or is not finite.
    """
    table = _UNIT_FACTORS[target]
    number = _number(value)
    unit = default_unit
    if number is None:
        if not isinstance(value, str) or len(value) > 64:
            return None
        match = _QUANTITY.match(value)
        if not match:
            return None
        number = _number(match.group(1))
        unit = match.group(2) or default_unit
    if number is None or unit is None:
        return None
    key = unit.strip().replace("\u00b5", "u").replace("\u03bc", "u").lower()
    if key not in table:
        return None
    result = number * table[key]
    return result if math.isfinite(result) else None


def _get(tree: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


class _Collector:
    """Accumulates optics values with their source, keeping only plausible, first-found values."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def add(self, key: str, value: float | None, source: str) -> None:
        if value is None or key in self.values:
            return
        low, high = OPTICS_KEYS[key][2:]
        if not (math.isfinite(value) and low <= value <= high):
            return
        self.values[key] = float(value)
        self.sources[key] = source

    def text(self, key: str, value: Any, source: str) -> None:
        if isinstance(value, str) and value.strip() and key not in self.values:
            self.values[key] = value.strip()[:40]
            self.sources[key] = source


def _velox(om: dict, out: _Collector) -> None:
    optics = om.get("Optics") if isinstance(om.get("Optics"), dict) else {}
    energy = _number(optics.get("AccelerationVoltage"))
    out.add("beam_energy_keV", None if energy is None else energy * 1e-3, "Velox Optics/AccelerationVoltage")
    convergence = _number(optics.get("BeamConvergence"))
    if convergence:
        # Velox stores the semi-angle in rad; some versions write it with a negative sign.
        out.add("convergence_semiangle_mrad", abs(convergence) * 1e3, "Velox Optics/BeamConvergence")
    current = _number(optics.get("ScreenCurrent"))
    if current and current > 0:
        out.add("probe_current_A", current, "Velox Optics/ScreenCurrent")
    dwell = _number(_get(om, "Scan", "DwellTime"))
    out.add("dwell_time_s", dwell, "Velox Scan/DwellTime")
    result = om.get("BinaryResult") if isinstance(om.get("BinaryResult"), dict) else {}
    detector_name = result.get("Detector")
    detectors = om.get("Detectors") if isinstance(om.get("Detectors"), dict) else {}
    detector = None
    index = _number(result.get("DetectorIndex"))
    if index is not None and isinstance(detectors.get(f"Detector-{int(index)}"), dict):
        candidate = detectors[f"Detector-{int(index)}"]
        if not detector_name or candidate.get("DetectorName") == detector_name:
            detector = candidate
    if detector is None and detector_name:
        detector = next((d for d in detectors.values()
                         if isinstance(d, dict) and d.get("DetectorName") == detector_name), None)
    if detector is None:
        return
    out.text("detector", detector.get("DetectorName"), "Velox BinaryResult/Detector")
    angles = detector.get("CollectionAngleRange")
    if isinstance(angles, dict):
        begin, end = _number(angles.get("begin")), _number(angles.get("end"))
        if begin is not None and end is not None and end > begin >= 0:
            out.add("detector_inner_mrad", begin * 1e3, "Velox Detectors/CollectionAngleRange/begin")
            out.add("detector_outer_mrad", end * 1e3, "Velox Detectors/CollectionAngleRange/end")
    if detector.get("DetectorType") == "ImagingDetector":
        out.add("exposure_time_s", _number(detector.get("ExposureTime")), "Velox Detectors/ExposureTime")
        out.text("mode", "TEM", "Velox Detectors/DetectorType")
    elif detector.get("DetectorType") == "ScanningDetector":
        out.text("mode", "STEM", "Velox Detectors/DetectorType")
        # the camera length sets a STEM detector's angles; in a camera image it is a stale setting
        camera = _number(optics.get("CameraLength"))
        out.add("camera_length_mm", None if camera is None else camera * 1e3, "Velox Optics/CameraLength")


def _dm_image_tags(om: dict) -> Iterator[dict]:
    image_list = om.get("ImageList")
    if not isinstance(image_list, dict):
        return
    for group in image_list.values():
        tags = _get(group, "ImageTags")
        if isinstance(tags, dict):
            yield tags


_DM_CONVERGENCE = re.compile(r"(?i)^(?:probe\s+)?convergence\s+(?:semi[\s-]?)?angle\s*\((mrad|rad)\)$")


def _dm(om: dict, out: _Collector) -> None:
    for tags in _dm_image_tags(om):
        info = tags.get("Microscope Info") if isinstance(tags.get("Microscope Info"), dict) else {}
        if not info and "DigiScan" not in tags and "DataBar" not in tags:
            continue
        energy = _number(info.get("Voltage"))
        out.add("beam_energy_keV", None if energy is None else energy * 1e-3, "DM Microscope Info/Voltage")
        operation = str(info.get("Operation Mode", "")).upper()
        illumination = str(info.get("Illumination Mode", "")).upper()
        stem = "DigiScan" in tags or operation == "SCANNING" or "STEM" in illumination
        if stem or operation == "IMAGING" or illumination == "TEM":
            out.text("mode", "STEM" if stem else "TEM", "DM Microscope Info/Operation Mode")
        if stem:
            # DM keeps the last STEM camera length in TEM images too: only a STEM image's is its own.
            out.add("camera_length_mm", _number(info.get("STEM Camera Length")),
                    "DM Microscope Info/STEM Camera Length")
            sample_us = _number(_get(tags, "DigiScan", "Sample Time"))
            out.add("dwell_time_s", None if sample_us is None else sample_us * 1e-6,
                    "DM DigiScan/Sample Time")
        for key, value in info.items():
            match = _DM_CONVERGENCE.match(str(key))
            if match:
                out.add("convergence_semiangle_mrad", parse_quantity(value, "mrad", match.group(1).lower()),
                        f"DM Microscope Info/{key}")
        current_nA = _number(info.get("Probe Current (nA)"))
        if current_nA and current_nA > 0:
            out.add("probe_current_A", current_nA * 1e-9, "DM Microscope Info/Probe Current (nA)")
        if not stem:
            out.add("exposure_time_s", _number(_get(tags, "DataBar", "Exposure Time (s)")),
                    "DM DataBar/Exposure Time (s)")
        return


def _tia(om: dict, out: _Collector) -> None:
    info = om.get("ObjectInfo")
    if not isinstance(info, dict):
        return
    description = info.get("ExperimentalDescription") if isinstance(info.get("ExperimentalDescription"),
                                                                    dict) else {}
    out.add("beam_energy_keV", _number(description.get("High tension_kV")), "TIA High tension_kV")
    voltage = _number(_get(info, "ExperimentalConditions", "MicroscopeConditions", "AcceleratingVoltage"))
    out.add("beam_energy_keV", None if voltage is None else voltage * 1e-3, "TIA AcceleratingVoltage")
    camera = _number(description.get("Camera length_m"))
    out.add("camera_length_mm", None if camera is None else camera * 1e3, "TIA Camera length_m")
    mode = str(description.get("Mode", "")).split()
    dwell = _number(_get(info, "AcquireInfo", "DwellTimePath"))
    if mode and mode[0].upper() in ("STEM", "TEM"):
        out.text("mode", mode[0].upper(), "TIA ExperimentalDescription/Mode")
        if mode[0].upper() == "STEM":
            out.add("dwell_time_s", dwell, "TIA AcquireInfo/DwellTimePath")
        else:
            out.add("exposure_time_s", dwell, "TIA AcquireInfo/DwellTimePath")


def _berkeley(om: dict, out: _Collector) -> None:
    # ncempy writes SI values without units: V, rad, m, s.
    scope = om.get("microscope")
    if not isinstance(scope, dict):
        return
    voltage = _number(scope.get("high tension"))
    out.add("beam_energy_keV", None if voltage is None else voltage * 1e-3, "EMD microscope/high tension")
    convergence = _number(scope.get("convergence angle"))
    out.add("convergence_semiangle_mrad", None if convergence is None else convergence * 1e3,
            "EMD microscope/convergence angle")
    camera = _number(scope.get("camera length"))
    out.add("camera_length_mm", None if camera is None else camera * 1e3, "EMD microscope/camera length")
    out.add("dwell_time_s", _number(scope.get("dwell time")), "EMD microscope/dwell time")


def _mrc_fei(om: dict, out: _Collector) -> None:
    """Thermo Fisher MRC extended header (read by :mod:`.vendor`; SI units)."""
    fei = om.get("fei_extended_header")
    if not isinstance(fei, dict):
        return
    voltage = _number(fei.get("HT_V"))
    out.add("beam_energy_keV", None if voltage is None else voltage * 1e-3, "MRC FEI extended header HT")
    convergence = _number(fei.get("Convergence angle_rad"))
    out.add("convergence_semiangle_mrad", None if convergence is None else convergence * 1e3,
            "MRC FEI extended header Convergence angle")
    mode = {1: "TEM", 2: "STEM"}.get(_number(fei.get("Instrument mode")))
    if mode:
        out.text("mode", mode, "MRC FEI extended header Instrument mode")
    if mode == "STEM":
        out.text("detector", fei.get("STEM Detector name"), "MRC FEI extended header STEM Detector name")
        camera = _number(fei.get("Camera length_m"))
        out.add("camera_length_mm", None if camera is None else camera * 1e3,
                "MRC FEI extended header Camera length")
        out.add("dwell_time_s", _number(fei.get("Dwell time_s")), "MRC FEI extended header Dwell time")
    elif mode == "TEM":
        out.add("exposure_time_s", _number(fei.get("Integration time_s")),
                "MRC FEI extended header Integration time")


def _flat_items(tree: Any, depth: int = 0) -> Iterator[tuple[str, Any]]:
    if depth > 16 or not isinstance(tree, dict):
        return
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flat_items(value, depth + 1)
        else:
            yield str(key), value


def _sidecar(meta: dict, out: _Collector) -> None:
    """Experimenters' JSON: unit-carrying keys (``dwell_time_s``) or quantities (``"30 pA"``)."""
    quantities = {
        "voltage": ("beam_energy_keV", "keV", None),
        "beam_energy": ("beam_energy_keV", "keV", None),
        "probe_current": ("probe_current_A", "A", None),
        "beam_current": ("probe_current_A", "A", None),
        "convergence_semiangle": ("convergence_semiangle_mrad", "mrad", None),
        "convergence_angle": ("convergence_semiangle_mrad", "mrad", None),
        "detector_inner_angle": ("detector_inner_mrad", "mrad", None),
        "detector_outer_angle": ("detector_outer_mrad", "mrad", None),
        "camera_length": ("camera_length_mm", "mm", None),
        "dwell_time": ("dwell_time_s", "s", None),
        "exposure_time": ("exposure_time_s", "s", None),
    }
    for key, value in _flat_items(meta):
        if key in OPTICS_KEYS:
            out.add(key, _number(value), f"sidecar {key}")
        elif key in quantities:
            target_key, unit, default = quantities[key]
            out.add(target_key, parse_quantity(value, unit, default), f"sidecar {key}")


def read_optics(original_metadata: dict | None, *,
                sidecar: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """Optics recorded in a file's original metadata.

    Parameters
    ----------
    original_metadata : dict
        rosettasciio's ``original_metadata`` (Velox, DM, TIA, Berkeley EMD trees are recognised),
        or the parsed JSON sidecar of a ``.npy`` when ``sidecar`` is True.
    sidecar : bool
        Treat the tree as an experimenter's JSON sidecar.

    Returns
    -------
    optics, sources : dict, dict
        ``optics`` maps the keys of :data:`OPTICS_KEYS` (plus ``detector`` and ``mode``) to the
        values found; ``sources`` maps the same keys to the vendor tag each was read from.
    """
    out = _Collector()
    om = original_metadata if isinstance(original_metadata, dict) else {}
    if sidecar:
        _sidecar(om, out)
    else:
        for reader in (_velox, _dm, _tia, _berkeley, _mrc_fei):
            try:
                reader(om, out)
            except (RecursionError, TypeError, ValueError, AttributeError, OverflowError):
                continue  # a malformed tree yields no optics, never an error
    inner, outer = out.values.get("detector_inner_mrad"), out.values.get("detector_outer_mrad")
    if inner is not None and outer is not None and not outer > inner:
        for key in ("detector_inner_mrad", "detector_outer_mrad"):
            out.values.pop(key)
            out.sources.pop(key)
    return out.values, out.sources


def format_optics(optics: dict[str, Any]) -> list[tuple[str, str]]:
    """``(label, value)`` pairs for display, one per recorded value.

    For example ``("convergence", "28.8 mrad semi-angle")``.

    The beam energy is left to the caller (it has its own line everywhere).
    """
    rows: list[tuple[str, str]] = []
    inner, outer = optics.get("detector_inner_mrad"), optics.get("detector_outer_mrad")
    if optics.get("convergence_semiangle_mrad") is not None:
        rows.append(("convergence", f"{optics['convergence_semiangle_mrad']:.4g} mrad semi-angle"))
    if inner is not None and outer is not None:
        name = f"{optics['detector']} " if optics.get("detector") else ""
        rows.append(("detector", f"{name}{inner:.4g}–{outer:.4g} mrad"))
    elif optics.get("detector"):
        rows.append(("detector", str(optics["detector"])))
    if optics.get("camera_length_mm") is not None:
        rows.append(("camera length", f"{optics['camera_length_mm']:.4g} mm"))
    for key, label in (("dwell_time_s", "dwell time"), ("exposure_time_s", "exposure")):
        value = optics.get(key)
        if value is not None:
            rows.append((label, f"{value * 1e6:.4g} µs" if value < 1e-2 else f"{value:.4g} s"))
    if optics.get("probe_current_A") is not None:
        rows.append(("probe current", f"{optics['probe_current_A'] * 1e12:.4g} pA"))
    if optics.get("mode"):
        rows.append(("mode", str(optics["mode"])))
    return rows
