"""Dock fields generated from the parameters' one declaration (:mod:`..core.parameters`).

Each :class:`~..core.parameters.Parameter` becomes one magicgui field named after it (so
``dock.fov_A`` is the field of view), labelled with its words and unit, bounded by its
:class:`~..core.validation.Bound`, with its default and its CLI help as tooltip; a
:class:`~..core.parameters.Pair` becomes its two fields.  :func:`field_values` reads them back into
the ``{name: value}`` mapping the CLI's :func:`~..cli.options.values_from_args` gives, so a dock and
a command hand the science the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, LineEdit, SpinBox, Widget

from ..core.parameters import Pair, Parameter, check_values, flatten

__all__ = ["field_option", "field_values", "make_fields"]

#: Spin-box limits where a bound is open or wider than a dock can sensibly offer.
_WIDEST = 1e9
_INT_WIDEST = 2**31 - 1


def _limits(p: Parameter, optional: bool = False) -> tuple[float, float]:
    b = p.bounds
    widest = _INT_WIDEST if p.kind is int else _WIDEST
    lo = max(-widest, b.min) if b is not None and b.min is not None else -widest
    hi = min(widest, b.max) if b is not None and b.max is not None else widest
    if p.optional or optional:  # 0 stands for "none" (e.g. no dose: a noise-free twin)
        lo = min(lo, 0.0)
    return lo, hi


def _field(p: Parameter, default, optional: bool = False) -> Widget:
    tooltip = p.help or p.label
    if p.kind is bool:
        return CheckBox(name=p.name, label=p.label, value=bool(default), tooltip=tooltip)
    if p.kind is str and p.choices:
        return ComboBox(name=p.name, label=p.label, choices=list(p.choices), value=default, tooltip=tooltip)
    if p.kind is str:
        return LineEdit(name=p.name, label=p.label, value=default, tooltip=tooltip)
    lo, hi = _limits(p, optional)
    if p.kind is int:
        return SpinBox(name=p.name, label=p.widget_label, value=int(default), min=int(lo), max=int(hi),
                       tooltip=tooltip)
    value = 0.0 if default is None else float(default)
    step = p.step or (10 ** (round(math.log10(abs(value))) - 1) if value else 0.1)
    return FloatSpinBox(name=p.name, label=p.widget_label, value=value, min=lo, max=hi, step=step, tooltip=tooltip)


def make_fields(parameters: Iterable[Parameter | Pair], overrides: Mapping[str, Widget] | None = None,
                defaults: Mapping[str, object] | None = None) -> list[Widget]:
    """One field per parameter (two per pair), in order.

    ``overrides`` replaces the generated field of a name by the caller's (a searchable parent list
    instead of a text field); ``defaults`` sets other starting values.
    """
    overrides, defaults = dict(overrides or {}), dict(defaults or {})
    fields = []
    for q in parameters:
        optional = isinstance(q, Pair) and q.optional  # an unset pair is shown as zeros
        for p in flatten([q]):
            fields.append(overrides[p.name] if p.name in overrides else
                          _field(p, defaults.get(p.name, p.default), optional))
    return fields


def field_values(container, parameters: Iterable[Parameter | Pair], check: bool = True) -> dict:
    """``{name: value}`` of the fields of ``parameters`` in ``container`` (a pair as a tuple).

    An optional number left at 0 is ``None`` (no dose: noise-free); an optional pair whose first
    field is 0 is ``None`` (no grain boundary). With ``check`` (the default) every value is checked against
    its parameter first, and a refused one raises a one-line ValueError that names the dock's field (its
    label), never the command's option: the science's own checks behind the dock would name ``--minutes``.
    """
    values = {}
    for p in parameters:
        if isinstance(p, Pair):
            a, b = (getattr(container, part.name).value for part in p.parts)
            values[p.name] = None if p.optional and not a else (a, b)
        else:
            value = getattr(container, p.name).value
            values[p.name] = None if p.optional and not value else value
    if check:
        check_values(parameters, values, field_option(container))
    return values


def field_option(container):
    """``option_of`` for :func:`~..core.parameters.check_values`: messages name the field's label."""
    def option_of(p: Parameter) -> str:
        widget = getattr(container, p.name, None)
        label = getattr(widget, "label", "") or p.label
        return label.split(" (")[0]

    return option_of
