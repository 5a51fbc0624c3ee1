"""Length units as microscope files write them, converted to ångström.

Vendor files spell lengths in many ways: ``nm``, ``µm`` (micro sign or Greek
mu), ``um``, ``pm``, ``Å``, ``A``, ``angstrom`` and even the literal ``n_m``
that Berkeley EMD files written by some Velox exporters store.  Everything in
this package works in ångström, so every reader goes through
:func:`length_to_angstrom`.
"""

from __future__ import annotations

import re

__all__ = ["ANGSTROM_PER_UNIT", "is_length_unit", "length_to_angstrom", "normalise_unit"]

#: Exact SI factors (1 Å = 1e-10 m).
ANGSTROM_PER_UNIT: dict[str, float] = {
    "m": 1e10,
    "cm": 1e8,
    "mm": 1e7,
    "um": 1e4,
    "nm": 10.0,
    "A": 1.0,
    "pm": 1e-2,
}

_ALIASES = {
    "\u00b5m": "um",  # micro sign U+00B5
    "\u03bcm": "um",  # Greek small mu U+03BC
    "\u00c2\u00b5m": "um",  # UTF-8 micro sign read as Latin-1 ("Âµm")
    "micron": "um",
    "microns": "um",
    "micrometer": "um",
    "micrometre": "um",
    "nanometer": "nm",
    "nanometre": "nm",
    "å": "A",
    "\u00c5": "A",  # U+00C5
    "\u212b": "A",  # angstrom sign U+212B
    "a": "A",
    "ang": "A",
    "angstrom": "A",
    "angstroms": "A",
    "\\aa": "A",
    "picometer": "pm",
    "picometre": "pm",
    "meter": "m",
    "metre": "m",
}


def normalise_unit(unit: object) -> str | None:
    """Return the canonical spelling of a length unit, or None if it is not one.

    Parameters
    ----------
    unit : object
        Unit as stored in a file (``str`` or ``bytes``); underscores and
        spaces inside the unit are ignored (``"n_m"`` is nanometre).

    Returns
    -------
    str or None
        One of the keys of :data:`ANGSTROM_PER_UNIT`, or None when the unit is
        empty, a placeholder such as ``<undefined>``, or not a length.
    """
    if unit is None:
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    # Java-style escapes as Fiji writes non-ASCII units in its TIFF description (\u00B5m, \u00C5)
    text = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), str(unit)[:64])
    text = re.sub(r"[\s_]", "", text)
    if not text:
        return None
    if text in ANGSTROM_PER_UNIT:
        return text
    if text in _ALIASES:
        return _ALIASES[text]
    lowered = text.lower()
    if lowered in ANGSTROM_PER_UNIT:
        return lowered
    return _ALIASES.get(lowered)


def is_length_unit(unit: object) -> bool:
    """True when ``unit`` names a length that can be converted to ångström."""
    return normalise_unit(unit) is not None


def length_to_angstrom(value: float, unit: object) -> float:
    """Convert ``value`` expressed in ``unit`` to ångström.

    Raises
    ------
    ValueError
        If ``unit`` is not a length unit.
    """
    canonical = normalise_unit(unit)
    if canonical is None:
        raise ValueError(f"{unit!r} is not a length unit this reader knows")
    return float(value) * ANGSTROM_PER_UNIT[canonical]
