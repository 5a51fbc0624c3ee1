"""Length units as vendor files spell them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from napari_mx2_defects.io.units import is_length_unit, length_to_angstrom, normalise_unit


@pytest.mark.parametrize(
    "unit, factor",
    [("nm", 10), ("n_m", 10), ("\u00b5m", 1e4), ("\u03bcm", 1e4), ("um", 1e4), ("pm", 0.01), ("\u00c5", 1), ("\u212b", 1), ("A", 1),
     ("angstrom", 1), ("m", 1e10), (b"nm", 10), (" nm ", 10), ("micron", 1e4),
     ("\\u00B5m", 1e4), ("\\u00C5", 1), ("\u00c2\u00b5m", 1e4)],  # Fiji's escapes; UTF-8 read as Latin-1
)
def test_known_units(unit, factor):
    assert length_to_angstrom(2.5, unit) == pytest.approx(2.5 * factor)


@pytest.mark.parametrize("unit", [None, "", "<undefined>", "s", "1/nm", "eV", "Undefined"])
def test_non_length_units_are_refused(unit):
    assert not is_length_unit(unit)
    with pytest.raises(ValueError):
        length_to_angstrom(1.0, unit)


@given(st.floats(min_value=1e-6, max_value=1e6), st.sampled_from(["nm", "um", "pm", "A"]))
def test_conversion_is_linear_and_invertible(value, unit):
    a = length_to_angstrom(value, unit)
    assert a == pytest.approx(value * length_to_angstrom(1.0, unit))
    assert normalise_unit(unit) is not None
