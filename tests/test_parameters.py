"""Parameters defined once (issue 13): the CLI's options and the dock's fields come from one declaration
and hand the science the same request."""

from __future__ import annotations

import math

import pytest

from napari_mx2_defects.cli import build_parser
from napari_mx2_defects.core.parameters import (
    DEFAULTS,
    REQUEST_PARAMETERS,
    Pair,
    Parameter,
    check_values,
    flatten,
    with_defaults,
)
from napari_mx2_defects.twin.api import TwinRequest, check_twin_values
from napari_mx2_defects.twin.microscope import Microscope


def _simulate_parser():
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices["simulate"]


def test_every_parameter_is_an_option_with_its_default_and_unit():
    actions = {a.dest: a for a in _simulate_parser()._actions}
    for p in REQUEST_PARAMETERS:
        action = actions[p.name]
        assert action.option_strings == [p.flag]
        if isinstance(p, Pair):
            assert action.nargs == 2 and action.default == p.default
        else:
            assert action.default == p.default
            if p.unit and p.unit not in ("", "counts"):
                assert p.unit in action.help, (p.name, action.help)


def test_defaults_are_typed_once():
    """The microscope's dataclass defaults are the declared ones, and an empty request is the default one."""
    m = Microscope()
    for name in ("energy_keV", "semiangle_mrad", "defocus_A", "Cs_A", "detector_inner_mrad", "detector_outer_mrad",
                 "source_size_A"):
        assert getattr(m, name) == DEFAULTS[name]
    assert TwinRequest.from_values({}).as_dict() == TwinRequest().as_dict()
    args = _simulate_parser().parse_args(["--out", "x"])
    from napari_mx2_defects.cli.twin import request_from_args

    assert request_from_args(args).as_dict() == TwinRequest().as_dict()


def test_cli_values_build_the_request_they_name():
    argv = ["--out", "x", "--material", "WSe2", "--defects", "V_X=3", "--fov", "30", "--pixel-size", "0.12",
            "--dose", "1e5", "--energy", "200", "--semiangle", "22", "--detector", "80", "250",
            "--drift", "0.01", "-0.02", "--grain-boundary", "12", "1.5", "--jitter", "0.05", "--source-size", "0.4",
            "--frozen-phonons", "2", "--seed", "7"]
    from napari_mx2_defects.cli.twin import request_from_args

    request = request_from_args(_simulate_parser().parse_args(argv))
    assert (request.material, request.defects, request.fov_A, request.pixel_size_A, request.seed) == \
        ("WSe2", "V_X=3", 30.0, 0.12, 7)
    m = request.microscope
    assert (m.energy_keV, m.semiangle_mrad, m.detector_inner_mrad, m.detector_outer_mrad, m.source_size_A) == \
        (200.0, 22.0, 80.0, 250.0, 0.4)
    assert request.imperfections.drift_A_per_line == (0.01, -0.02)
    assert request.imperfections.dose_e_per_A2 == 1e5 and request.imperfections.scan_jitter_A == 0.05
    assert (request.grain_boundary.rotation_deg, request.grain_boundary.separation_A) == (12.0, 1.5)
    assert request.frozen_phonons == 2


def test_checks_name_the_option_or_the_field():
    values = {p.name: p.default for p in REQUEST_PARAMETERS}
    values["detector_mrad"] = (200.0, 50.0)
    with pytest.raises(ValueError, match="--detector"):
        check_twin_values(values)
    with pytest.raises(ValueError, match="detector inner angle"):
        check_twin_values(values, option_of=lambda p: p.label)
    values["detector_mrad"] = (50.0, 200.0)
    values["fov_A"] = math.nan
    with pytest.raises(ValueError, match="field of view"):
        check_twin_values(values, option_of=lambda p: p.label)
    values["fov_A"] = 40.0
    values["n_holes"] = 40
    with pytest.raises(ValueError, match="--holes.*at most"):
        check_twin_values(values)
    values["n_holes"] = 0
    assert check_twin_values(values)["fov_A"] == 40.0


def test_declarations_are_consistent():
    names = [p.name for p in flatten(REQUEST_PARAMETERS)]
    assert len(names) == len(set(names)), "one meaning per name"
    for p in flatten(REQUEST_PARAMETERS):
        assert isinstance(p, Parameter)
        if p.kind is not str:
            assert p.bounds is not None, p.name
            if p.default is not None:
                p.check(p.default)  # every default lies in its bound
    with pytest.raises(KeyError):
        with_defaults(REQUEST_PARAMETERS, no_such_parameter=1)
    assert check_values(REQUEST_PARAMETERS[:1], {"material": "MoS2"}) == {"material": "MoS2"}


@pytest.mark.gui
def test_dock_fields_and_cli_options_give_the_same_request(make_napari_viewer):
    """The *Simulate* dock's fields are generated from the same declarations: same names, bounds and
    defaults, and the same values give the same request as the command line."""
    from napari_mx2_defects.cli.twin import request_from_args
    from napari_mx2_defects.widgets.simulate import DOCK_DEFAULTS, SimulateWidget

    widget = SimulateWidget(make_napari_viewer())
    for p in flatten(REQUEST_PARAMETERS):
        field = getattr(widget, p.name)
        if p.name == "material":
            continue
        expected = DOCK_DEFAULTS.get(p.name, p.default)
        assert field.value == (0.0 if expected is None else expected), p.name
        if p.kind is not str:
            b = p.bounds
            if b.max is not None:
                assert field.max <= b.max
            if b.min is not None and not p.optional:
                assert field.min >= b.min
    settings = {"fov_A": 30.0, "pixel_size_A": 0.12, "dose_e_per_A2": 1e5, "energy_keV": 200.0,
                "detector_inner_mrad": 80.0, "detector_outer_mrad": 250.0, "drift_x_A_per_line": 0.01,
                "gb_rotation_deg": 12.0, "gb_separation_A": 1.5, "source_size_A": 0.4, "seed": 7, "defects": "V_X=3"}
    for name, value in settings.items():
        getattr(widget, name).value = value
    widget.material.value = "2H-MoS2"
    argv = ["--out", "x", "--material", "2H-MoS2", "--defects", "V_X=3", "--fov", "30", "--pixel-size", "0.12",
            "--dose", "1e5", "--energy", "200", "--detector", "80", "250", "--drift", "0.01", "0",
            "--grain-boundary", "12", "1.5", "--source-size", "0.4", "--seed", "7"]
    cli = request_from_args(_simulate_parser().parse_args(argv))
    assert widget.request().as_dict() == cli.as_dict()
    widget.dose_e_per_A2.value = 0.0  # 0 = none: a noise-free twin, as no --dose
    assert widget.request().imperfections.dose_e_per_A2 is None


def test_public_api_names_resolve_to_what_the_front_ends_call():
    from napari_mx2_defects import api
    from napari_mx2_defects.analysis.api import analyze_image
    from napari_mx2_defects.learn.inference import segment_image

    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert api.analyze_image is analyze_image and api.segment_image is segment_image
    with pytest.raises(AttributeError):
        api.no_such_function  # noqa: B018
