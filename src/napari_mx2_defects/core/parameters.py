"""Every user-facing parameter defined once: name (units in it), label, default, bounds, CLI option.

As cellfinder's ``input_container.py`` does for its widgets, each parameter of a twin, a microscope
and the imperfections is declared here once; the ``mx2-defects`` options (:mod:`..cli.options`) and
the dock widgets' fields (:mod:`..widgets.fields`) are generated from these declarations, and both
hand the science the same flat ``{name: value}`` mapping (:meth:`~..twin.api.TwinRequest.from_values`).
The microscope's defaults (:class:`~..twin.microscope.Microscope`) are taken from here too, so the
digital-twin paper's 80 keV / 25 mrad / 40 Å / 4e5 Å / 50–200 mrad are typed in one place.

A :class:`Parameter` is one number, word or choice; a :class:`Pair` is two numbers set together by
one option (``--detector INNER OUTER``) and shown as two fields.  Bounds come from
:data:`~.validation.BOUNDS` (the key is the parameter's name unless ``bound`` says otherwise).

This module imports only the standard library and :mod:`.validation`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .validation import BOUNDS, Bound, check_pair

__all__ = [
    "ANALYSIS_PARAMETERS",
    "DEFAULTS",
    "IMPERFECTION_PARAMETERS",
    "MICROSCOPE_PARAMETERS",
    "PIXEL_OVERRIDE",
    "REQUEST_PARAMETERS",
    "SEGMENT_PARAMETERS",
    "ADAPT_PARAMETERS",
    "DOPANT",
    "SIMULATE_PARAMETERS",
    "TWIN_PARAMETERS",
    "DOSE_PER_FRAME",
    "SERIES_PARAMETERS",
    "SERIES_TWIN_PARAMETERS",
    "Pair",
    "Parameter",
    "check_values",
    "flatten",
    "with_defaults",
]


@dataclass(frozen=True)
class Parameter:
    """One parameter as every front end shows it.

    Attributes
    ----------
    name : str
        The science name and API keyword, units in it (``"energy_keV"``); also the CLI's ``dest``
        and the widget's name.
    label : str
        What it is, in words, for the widget (the unit is added from the bound).
    default : Any
        The default value; ``None`` for an optional number (the widget shows 0 as "none").
    flag : str
        The CLI option (``"--energy"``).
    help : str
        One line of help for ``--help`` and the widget's tooltip.
    kind : type
        ``float``, ``int``, ``str`` or ``bool`` (a switch: ``--self-calibrate``, a check box).
    choices : tuple
        Allowed values of a ``str`` parameter (a drop-down in the widget).
    bound : str
        Key of :data:`~.validation.BOUNDS` (default: ``name``).
    step : float
        Step of the widget's spin box (default: a tenth of a unit-ish guess from the bound).
    """

    name: str
    label: str
    default: Any
    flag: str
    help: str = ""
    kind: type = float
    choices: tuple = ()
    bound: str = ""
    step: float | None = None
    none: str = "none"

    @property
    def bounds(self) -> Bound | None:
        """The parameter's bound (None for words, switches and choices)."""
        if self.kind in (str, bool):
            return None
        return BOUNDS.get(self.bound or self.name)

    @property
    def unit(self) -> str:
        b = self.bounds
        return b.unit if b is not None else ""

    @property
    def optional(self) -> bool:
        """Whether ``None`` is a value (an optional number, e.g. no dose = noise-free)."""
        return self.default is None

    @property
    def widget_label(self) -> str:
        unit = f" ({self.unit})" if self.unit else ""
        return f"{self.label}{unit}" + (f", 0 = {self.none}" if self.optional else "")

    def cli_help(self) -> str:
        text = self.help or self.label
        if self.unit and self.unit not in text:
            text += f" in {self.unit}"
        if self.default is not None and self.default != "" and self.kind is not bool:
            text += f" (default {self.default:g})" if isinstance(self.default, (int, float)) else \
                f" (default {self.default})"
        return text.replace("%", "%%")

    def check(self, value, option: str | None = None):
        """``value`` checked against the bound (a one-line ValueError naming ``option``)."""
        if self.kind is bool:
            return bool(value)
        if self.kind is str:
            if self.choices and value not in self.choices:
                raise ValueError(f"{option or self.flag} must be one of {', '.join(self.choices)}, got {value!r}")
            return value
        if value is None and self.optional:
            return None
        bound = self.bounds
        return bound.with_option(option or self.flag).check(value) if bound is not None else value


@dataclass(frozen=True)
class Pair:
    """Two numbers set by one option (``--detector INNER OUTER``) and shown as two fields.

    ``value`` in a values mapping is the tuple of the two parts' values (or None when ``optional``
    and unset); ``ordered`` asks for ``first < second``.
    """

    name: str
    flag: str
    metavar: tuple[str, str]
    parts: tuple[Parameter, Parameter]
    help: str = ""
    optional: bool = False
    ordered: bool = False

    @property
    def default(self):
        return None if self.optional else tuple(p.default for p in self.parts)

    def cli_help(self) -> str:
        text = self.help
        if self.default is not None:
            text += f" (default {' '.join(f'{v:g}' for v in self.default)})"
        return text.replace("%", "%%")

    def check(self, value, options: tuple[str, str] | None = None):
        if value is None:
            if self.optional:
                return None
            raise ValueError(f"{self.flag} needs two values: {' '.join(self.metavar)}")
        a, b = value
        names = options or (self.flag, self.flag)
        first, second = (p.bounds.with_option(n) for p, n in zip(self.parts, names))
        if self.ordered:
            return check_pair(first, second, a, b, strict=True)
        return first.check(a), second.check(b)


def _p(name: str, label: str, default, flag: str, help: str = "", **kw) -> Parameter:
    return Parameter(name, label, default, flag, help, **kw)


#: The digital twin and its size.
TWIN_PARAMETERS: tuple[Parameter | Pair, ...] = (
    _p("material", "parent", "MoS2", "--material", "parent, e.g. MoS2, WSe2, 1T-TiS2", kind=str),
    _p("defects", "defects", "", "--defects", "e.g. V_X=6,V_XX=2,TM_D(Re)=1%,V_X:pairs=4", kind=str),
    _p("alloy", "alloy", "", "--alloy", "species replacing the parent's: e.g. W=30%,Se=40% (random alloy) or "
       "Se=top (Janus layer)", kind=str),
    _p("fov_A", "field of view", 40.0, "--fov", "field of view in Å", step=5.0),
    _p("pixel_size_A", "pixel size", 0.1, "--pixel-size", "pixel size in Å", step=0.01),
    _p("dose_e_per_A2", "electron dose", None, "--dose", "electron dose in e/Å² (default: noise-free)", step=1e5),
    _p("method", "method", "fast", "--method", "fast (calibrated against abTEM), prism or multislice (abTEM)",
       kind=str, choices=("fast", "prism", "multislice")),
    _p("seed", "seed", 0, "--seed", "random seed", kind=int),
)

#: Probe and detector (defaults: the digital-twin paper's microscope, as the design brief states it).
MICROSCOPE_PARAMETERS: tuple[Parameter | Pair, ...] = (
    _p("energy_keV", "beam energy", 80.0, "--energy", "beam energy in keV", step=10.0),
    _p("semiangle_mrad", "convergence semi-angle", 25.0, "--semiangle", "convergence semi-angle in mrad"),
    _p("defocus_A", "defocus", 40.0, "--defocus", "defocus in Å (abTEM convention: positive is underfocus)"),
    _p("Cs_A", "spherical aberration Cs", 4e5, "--cs", "spherical aberration Cs in Å", step=1e4),
    Pair("detector_mrad", "--detector", ("INNER", "OUTER"),
         (_p("detector_inner_mrad", "detector inner angle", 50.0, "--detector"),
          _p("detector_outer_mrad", "detector outer angle", 200.0, "--detector")),
         help="annular detector angles in mrad (ADF from ~30, HAADF from ~50)", ordered=True),
    _p("source_size_A", "source size σ", 0.0, "--source-size", "Gaussian source size σ in Å", step=0.05),
)

#: What a real scan adds to the ideal image.
IMPERFECTION_PARAMETERS: tuple[Parameter | Pair, ...] = (
    _p("read_noise", "read noise σ", 0.0, "--read-noise", "Gaussian read noise σ (counts)"),
    _p("scan_jitter_A", "scan jitter σ", 0.0, "--jitter", "scan-line jitter σ in Å", step=0.02),
    Pair("drift_A_per_line", "--drift", ("VX", "VY"),
         (_p("drift_x_A_per_line", "drift x", 0.0, "--drift", bound="drift_A_per_line", step=0.001),
          _p("drift_y_A_per_line", "drift y", 0.0, "--drift", bound="drift_A_per_line", step=0.001)),
         help="linear drift in Å per scan line"),
    _p("nonlinear_drift_A", "non-linear drift", 0.0, "--nonlinear-drift", "non-linear drift amplitude in Å",
       step=0.1),
    _p("contamination", "contamination", 0.0, "--contamination", "background level relative to the mean",
       step=0.05),
    _p("probe_current_variation", "probe-current variation σ", 0.0, "--probe-current-variation",
       "relative line-gain σ", step=0.01),
)

#: Messy conditions and the abTEM options of ``simulate``.
SIMULATE_PARAMETERS: tuple[Parameter | Pair, ...] = (
    _p("rotation_deg", "lattice rotation", 0.0, "--rotation", "lattice rotation in degrees (fast mode)"),
    Pair("grain_boundary", "--grain-boundary", ("ANGLE", "SEPARATION"),
         (_p("gb_rotation_deg", "grain boundary angle", 0.0, "--grain-boundary"),
          _p("gb_separation_A", "grain boundary separation", 0.0, "--grain-boundary", step=0.5)),
         help="grain boundary: relative rotation (deg) and separation (−3…3 Å)", optional=True),
    _p("n_holes", "beam-damage holes", 0, "--holes", "number of beam-damage holes (5–30 atoms each)", kind=int),
    _p("stacking", "stacking regions", "", "--stacking", "phases of equal vertical stripes, left to right: 1L, "
       "2L-2H, 2L-3R, 3L-2H, 3L-3R, 1T (1L-1T) for a 2H parent; 1L, 2L-1T, 3L-1T for a 1T parent", kind=str),
    _p("frozen_phonons", "frozen-phonon configurations", 0, "--frozen-phonons",
       "abTEM frozen-phonon configurations (multislice/PRISM image, or the fast mode's calibration); "
       "0 = static lattice", kind=int),
    _p("phonon_sigma_A", "thermal displacement σ", 0.1, "--phonon-sigma",
       "thermal displacement σ per direction in Å (as in abTEM's walkthrough)", step=0.01),
)


#: The pixel size a user types in: ``segment``/``analyze``/``finetune --pixel-size`` and both docks' field.
PIXEL_OVERRIDE = _p("image_pixel_size_A", "pixel size", None, "--pixel-size",
                    "pixel size in Å; overrides the file's calibration (an uncalibrated image needs it)",
                    step=0.005, none="the file's")

#: What may run the network (:mod:`..learn.runtime`): ``segment --runtime`` and the docks' runtime field.
RUNTIMES = ("auto", "torch", "onnx", "onnx-int8", "openvino", "openvino-int8")

#: The dopant a user names: ``segment``/``analyze --dopant`` and the *Find defects* and *Defect statistics* docks.
DOPANT = _p("dopant", "dopant", "", "--dopant", "dopant element on metal sites, lighter or heavier than the host "
            "(e.g. Ti, W): named TM_D with dopant=…; adaptation to the image looks for it", kind=str)

#: What ``segment`` and the *Find defects* dock (and ``finetune``, ``uncertain`` and their docks) ask for besides
#: the image and the model.
SEGMENT_PARAMETERS: tuple[Parameter | Pair, ...] = (PIXEL_OVERRIDE,)

#: What ``segment`` and the *Find defects* dock ask for to adapt the model to the image (:mod:`..learn.adapt`).
ADAPT_PARAMETERS: tuple[Parameter | Pair, ...] = (
    DOPANT,
    _p("adapt", "adapt the model to this image (uses the parent)", False, "--adapt",
       "fine-tune the model on this image where the calibrated site physics is sure of a site (posterior ≥ 0.99), "
       "with twins at the file's optics; the adapted model is kept for this image only and reused", kind=bool),
)

#: What ``analyze`` and the *Defect statistics* dock ask for besides the image, the parent and the defects.
ANALYSIS_PARAMETERS: tuple[Parameter | Pair, ...] = (
    PIXEL_OVERRIDE,
    _p("self_calibrate", "self-calibrate an uncalibrated image from the parent's lattice", False, "--self-calibrate",
       "for an uncalibrated image, take the pixel size from the parent's lattice constant", kind=bool),
    _p("beam_energy_keV", "beam energy", None, "--energy",
       "beam energy in keV for the forward model (default: the file's, else 80)", bound="energy_keV", step=10.0,
       none="the file's"),
    Pair("detector_mrad", "--detector", ("INNER", "OUTER"),
         (_p("detector_inner_mrad", "detector inner angle", 0.0, "--detector"),
          _p("detector_outer_mrad", "detector outer angle", 0.0, "--detector")),
         help="annular detector angles in mrad for the forward model (default: the file's, else 50 200)",
         optional=True, ordered=True),
    DOPANT,
    _p("exclude_contamination", "exclude contamination (amorphous carbon)", False, "--exclude-contamination",
       "map amorphous contamination on the layer and count defects per cm² over the clean area only", kind=bool),
    _p("map_phases", "map phases and stacking (1L/2L/3L, 2H/3R, 1T)", False, "--phases",
       "map mono-, bi- and trilayer 2H/3R stacks and 1T regions and count defects on the parent's monolayer "
       "only", kind=bool),
    _p("alloy_species", "alloy species (metals:chalcogens)", "", "--alloy", "species of an alloy or Janus layer on "
       "the parent's lattice, metals:chalcogens, e.g. Mo,W:S,Se: each column is named by its species and the "
       "composition is given per region", kind=str),
)

#: What ``finetune`` and the *Fine-tune* dock ask for besides the images, their corrections and the parent.
FINETUNE_PARAMETERS: tuple[Parameter | Pair, ...] = (
    _p("minutes", "time limit", 10.0, "--minutes", "time limit for training in minutes", step=1.0),
    _p("epochs", "epochs", 12, "--epochs", "most epochs of training", kind=int),
    _p("twins", "twins mixed in", 8, "--twins", "twins of the parent (same optics) mixed in so the model "
       "does not forget", kind=int),
    _p("keep_worse", "keep a model worse on the held-out part", False, "--keep-worse",
       "save the fine-tuned model even when it scores worse on the held-out part than the one it started from "
       "(without it such a model is not saved)", kind=bool),
)

#: Everything ``simulate`` and the *Simulate digital twin* dock ask for, in the order they show it.
REQUEST_PARAMETERS = TWIN_PARAMETERS + SIMULATE_PARAMETERS + MICROSCOPE_PARAMETERS + IMPERFECTION_PARAMETERS


def flatten(parameters: Iterable[Parameter | Pair]) -> Iterator[Parameter]:
    """Every single :class:`Parameter`, the parts of each pair in order."""
    for p in parameters:
        yield from (p.parts if isinstance(p, Pair) else (p,))


#: Every default, by name (the parts of a pair too).
DEFAULTS: dict[str, Any] = {p.name: p.default for p in flatten(REQUEST_PARAMETERS)}


def with_defaults(parameters: Iterable[Parameter | Pair], **defaults) -> tuple[Parameter | Pair, ...]:
    """The same parameters with other defaults (the demo's larger twin), by name."""
    unknown = set(defaults) - {p.name for p in parameters}
    if unknown:
        raise KeyError(f"no parameters {sorted(unknown)}")
    return tuple(replace(p, default=defaults[p.name]) if p.name in defaults else p for p in parameters)


def check_values(parameters: Iterable[Parameter | Pair], values: Mapping[str, Any],
                 option_of=lambda p: p.flag) -> dict[str, Any]:
    """Every value checked against its parameter; one-line ValueErrors naming ``option_of(parameter)``.

    ``values`` holds one entry per parameter (a pair's entry is its tuple); the checked values
    are returned (numbers as float or int).
    """
    checked = {}
    for p in parameters:
        if isinstance(p, Pair):
            checked[p.name] = p.check(values.get(p.name), tuple(option_of(part) for part in p.parts))
        else:
            checked[p.name] = p.check(values.get(p.name, p.default), option_of(p))
    return checked


# --- frame series (``mx2-defects series``, ``simulate --frames``, the *Series* dock) ---------------------------
# Their bounds are registered here beside the declarations (``setdefault``: an entry in validation.BOUNDS wins).
for _key, _bound in {
    "n_frames": Bound("number of frames", "", 1, 10_000, integer=True, option="--frames"),
    "drift_A_per_frame": Bound("drift per frame", "Å per frame", -20.0, 20.0, option="--frame-drift"),
}.items():
    BOUNDS.setdefault(_key, _bound)

#: The dose each frame of a series delivers: ``series --dose-per-frame`` and the *Series* dock (None: the file's
#: beam current × dwell time per pixel area).
DOSE_PER_FRAME = _p("dose_per_frame_e_per_A2", "dose per frame", None, "--dose-per-frame",
                    "electron dose of each frame in e/Å² (default: the file's beam current × dwell time per pixel "
                    "area, where it records both)", bound="dose_e_per_A2", step=1e4, none="the file's")

#: What ``series`` and the *Series* dock ask for besides the stack, the parent and the model: the dose per frame
#: and the analysis' calibration options (as ``analyze`` takes them).
SERIES_PARAMETERS: tuple[Parameter | Pair, ...] = (
    DOSE_PER_FRAME,
    *(p for p in ANALYSIS_PARAMETERS if p.name in ("image_pixel_size_A", "beam_energy_keV", "detector_mrad",
                                                    "dopant")),
)

#: What ``simulate --frames`` and a series twin add to a twin request: frames, damage and drift between frames.
SERIES_TWIN_PARAMETERS: tuple[Parameter | Pair, ...] = (
    _p("n_frames", "frames", 1, "--frames", "number of frames of a series (1: one image); each frame is imaged "
       "at --dose and damaged by it", kind=int),
    _p("damage", "beam damage (barn)", "", "--damage", "cross-sections in barn of the processes each frame's dose "
       "drives: X_loss (each chalcogen atom), M_loss (each metal atom), V_X->V_XX (the last atom of a V_X column; "
       "default X_loss's), e.g. X_loss=12,M_loss=0.5", kind=str),
    Pair("frame_drift_A", "--frame-drift", ("DX", "DY"),
         (_p("frame_drift_x_A", "drift x per frame", 0.0, "--frame-drift", bound="drift_A_per_frame", step=0.1),
          _p("frame_drift_y_A", "drift y per frame", 0.0, "--frame-drift", bound="drift_A_per_frame", step=0.1)),
         help="how far the specimen moves in the image from one frame to the next, in Å (x, y)"),
)
