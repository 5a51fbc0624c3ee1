"""One validation layer for every numeric parameter of the CLI, the widgets and the APIs.

A :class:`Bound` describes one parameter (name, unit, range, whether it must be an integer);
:func:`check_number` raises a :class:`ValueError` that names the parameter, the bound with its
unit and the value received, so every front end shows the same one-line message.
:func:`arg_type` turns a bound into an ``argparse`` ``type=`` callable.

Sizes are estimated before anything is allocated: :func:`check_allocation` refuses an image of
more than :data:`MAX_IMAGE_PIXELS` pixels or a memory estimate above the memory available.

This module imports only the standard library, so widgets and the CLI can use it at no cost.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

__all__ = [
    "parse_class_groupings",
    "parse_doses",
    "BOUNDS",
    "MAX_IMAGE_PIXELS",
    "SQUARE_PIXEL_TOLERANCE",
    "Bound",
    "arg_type",
    "available_memory_bytes",
    "check_allocation",
    "check_number",
    "check_optional",
    "check_holes",
    "check_pair",
    "check_twin_size",
    "format_bytes",
]

#: Largest image (pixels) any command allocates: 32768² (a 4 GiB float32 image).
MAX_IMAGE_PIXELS = 32768 * 32768


def _fmt(value: float) -> str:
    return f"{value:g}"


#: Largest relative difference of the y and x pixel sizes still taken as square pixels (their mean
#: is then the pixel size). A twin's or a scan's grid rounding gives up to half a pixel over the
#: field (≤ 1 % from 50 px up); a genuinely rectangular pixel (a scan with a different line spacing)
#: differs by far more.
SQUARE_PIXEL_TOLERANCE = 0.01


@dataclass(frozen=True)
class Bound:
    """The admissible values of one numeric parameter.

    Attributes
    ----------
    name : str
        What the parameter is, in words (``"pixel size"``).
    unit : str
        Its unit as printed (``"Å"``, ``"keV"``; ``""`` for none).
    min, max : float or None
        Limits (None: unbounded on that side).
    min_inclusive, max_inclusive : bool
        Whether the limit itself is allowed.
    integer : bool
        Whether the value must be a whole number.
    option : str
        The CLI option or widget field that sets it (``"--pixel-size"``), named in messages.
    """

    name: str
    unit: str = ""
    min: float | None = None
    max: float | None = None
    min_inclusive: bool = True
    max_inclusive: bool = True
    integer: bool = False
    option: str = ""

    def with_option(self, option: str) -> Bound:
        """The same bound, named after another option."""
        return replace(self, option=option)

    def describe(self) -> str:
        """The admissible range in words, e.g. ``"between 0.01 Å and 0.5 Å"``."""
        u = f" {self.unit}" if self.unit else ""
        kind = "a whole number" if self.integer else "a finite number"
        if self.min is not None and self.max is not None:
            if self.min_inclusive and self.max_inclusive:
                return f"{kind} between {_fmt(self.min)}{u} and {_fmt(self.max)}{u}"
            lo = "≥" if self.min_inclusive else ">"
            hi = "≤" if self.max_inclusive else "<"
            return f"{kind} {lo} {_fmt(self.min)}{u} and {hi} {_fmt(self.max)}{u}"
        if self.min is not None:
            if self.min == 0 and not self.min_inclusive:
                return f"a positive {'whole ' if self.integer else 'finite '}number{' of ' + self.unit if u else ''}"
            return f"{kind} {'≥' if self.min_inclusive else '>'} {_fmt(self.min)}{u}"
        if self.max is not None:
            return f"{kind} {'≤' if self.max_inclusive else '<'} {_fmt(self.max)}{u}"
        return kind

    def check(self, value) -> float | int:
        """``value`` as a number if it lies within the bound; a one-line ValueError otherwise."""
        # a command's option says what it sets (``--minutes (training time limit)``); a dock's field label
        # already is the words
        label = (f"{self.option} ({self.name})" if self.option.startswith("-") else self.option) if self.option \
            else self.name
        u = f" {self.unit}" if self.unit else ""
        if isinstance(value, bool):
            raise ValueError(f"{label} must be {self.describe()}, got {value!r}")
        if self.integer and isinstance(value, int):
            number = value  # exact, however large
        else:
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"{label} must be {self.describe()}, got {str(value)[:40]!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{label} must be {self.describe()}, got {number}")
        if self.integer:
            if number != int(number):
                raise ValueError(f"{label} must be {self.describe()}, got {_fmt(number)}")
            number = int(number)
        too_low = self.min is not None and (number < self.min or (number == self.min and not self.min_inclusive))
        too_high = self.max is not None and (number > self.max or (number == self.max and not self.max_inclusive))
        if too_low or too_high:
            raise ValueError(f"{label} must be {self.describe()}, got {_fmt(number)}{u}")
        return number


def check_number(name: str, value, *, unit: str = "", min: float | None = None, max: float | None = None,
                 min_inclusive: bool = True, max_inclusive: bool = True, integer: bool = False,
                 option: str = "") -> float | int:
    """Check one number against an ad-hoc bound (see :class:`Bound`); returns it as float or int.

    Examples
    --------
    >>> check_number("pixel size", 0.1, unit="Å", min=0.01, max=0.5)
    0.1
    """
    return Bound(name, unit, min, max, min_inclusive, max_inclusive, integer, option).check(value)


def check_optional(bound: Bound, value):
    """``None`` stays ``None``; anything else is checked against ``bound``."""
    return None if value is None else bound.check(value)


def check_pair(low_bound: Bound, high_bound: Bound, low, high, *, strict: bool = False) -> tuple:
    """Two values that must each lie in their bound and be ordered (``low ≤ high``, or ``<`` if strict)."""
    lo, hi = low_bound.check(low), high_bound.check(high)
    if (lo >= hi) if strict else (lo > hi):
        a = low_bound.option or low_bound.name
        b = high_bound.option or high_bound.name
        raise ValueError(f"{a} ({_fmt(lo)}) must be {'below' if strict else 'at most'} {b} ({_fmt(hi)})")
    return lo, hi


def arg_type(bound: Bound):
    """An ``argparse`` ``type=`` callable: parses a number and checks it against ``bound``.

    The message argparse shows (``argument --cs: …``) already names the option, so the bound's
    own option is left out of it.
    """
    import argparse

    plain = replace(bound, option="")

    def parse(text: str):
        try:
            value = float(text) if not bound.integer else _parse_int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{bound.name} must be {bound.describe()}, got {text[:40]!r}") from None
        try:
            return plain.check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = bound.name.replace(" ", "_")
    return parse


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        number = float(text)  # accepts "1e3"; a fraction is refused by the bound
        if not math.isfinite(number) or number != int(number):
            raise
        return int(number)


def parse_doses(text: str, option: str = "--doses") -> list[float]:
    """A comma-separated list of doses in e/Å², each checked against the dose bound."""
    doses = []
    bound = BOUNDS["dose_e_per_A2"].with_option(option)
    for item in str(text).split(","):
        try:
            doses.append(bound.check(float(item)))
        except ValueError:
            raise ValueError(f"{option} must list doses in e/Å² ({bound.describe()}), got {item[:40]!r}") from None
    return doses


def parse_class_groupings(text: str, option: str = "--classes") -> list[int]:
    """A comma-separated list of class groupings (1, 3 or ``all``: :func:`~.classes.class_grouping`)."""
    from .classes import EVERY_CLASS, class_grouping

    out = []
    for item in str(text).split(","):
        item = item.strip().lower()
        try:
            n = EVERY_CLASS if item == "all" else int(item)
            class_grouping(n)
        except ValueError:
            raise ValueError(f"{option} lists class groupings: 1 (binary), 3 (by site) or all (every class), "
                             f"got {item[:40]!r}") from None
        out.append(n)
    return out


def available_memory_bytes() -> int:
    """Memory this process may still use: MemAvailable, capped by a cgroup limit if one is set."""
    available = None
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil is optional here
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 8 * 1024**3
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
            if text.isdigit():
                available = min(available, int(text))
        except OSError:
            continue
    return int(available)


def format_bytes(n: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_allocation(what: str, n_pixels: float, bytes_per_pixel: float, *, hint: str = "",
                     max_pixels: float = MAX_IMAGE_PIXELS, memory_bytes: int | None = None) -> None:
    """Refuse, before anything is allocated, an image too large to make or to hold in memory.

    Parameters
    ----------
    what : str
        What would be allocated (``"the twin image"``), for the message.
    n_pixels : float
        Its number of pixels.
    bytes_per_pixel : float
        Peak memory per pixel of the work that follows (all temporaries included).
    hint : str
        What to change, appended to the message (``"use a larger --pixel-size or a smaller --fov"``).
    """
    suffix = f"; {hint}" if hint else ""
    if not math.isfinite(n_pixels) or n_pixels > max_pixels:
        raise ValueError(f"{what} would have {n_pixels:.3g} pixels, more than the limit of {max_pixels:.3g}{suffix}")
    need = n_pixels * bytes_per_pixel
    have = available_memory_bytes() if memory_bytes is None else memory_bytes
    if need > have:
        raise ValueError(f"{what} ({n_pixels:.3g} pixels) needs about {format_bytes(need)} of memory, more than "
                         f"the {format_bytes(have)} available{suffix}")


#: Peak bytes per pixel of a fast-mode twin (image, clean image, distortion maps and resampling
#: coordinates in float64, labels), measured with tracemalloc on 400² … 1600² twins: ≈ 90.
TWIN_BYTES_PER_PIXEL = 120


def check_twin_size(fov_A: float, pixel_size_A: float, *, option_fov: str = "--fov",
                    option_pixel: str = "--pixel-size") -> int:
    """Refuse a twin whose image is too large before it is built; returns its pixel count."""
    n_side = max(8, round(fov_A / pixel_size_A))
    n = float(n_side) ** 2
    check_allocation(f"a {_fmt(fov_A)} Å twin at {_fmt(pixel_size_A)} Å/px ({n_side}×{n_side})", n,
                     TWIN_BYTES_PER_PIXEL, hint=f"use a larger {option_pixel} or a smaller {option_fov}")
    return int(n)


def check_holes(n_holes: int, fov_A: float, a_A: float, *, option: str = "--holes") -> int:
    """Refuse more beam-damage holes than a field can hold (each removes up to 30 atoms).

    At most half of the ~3 atoms per unit cell (area a²·√3/2) may go; the field must span at
    least 5 lattice constants.  Returns the number of holes.
    """
    n_holes = BOUNDS["n_holes"].with_option(option).check(n_holes)
    if n_holes == 0:
        return 0
    n_atoms = 3 * fov_A**2 / (a_A**2 * math.sqrt(3) / 2)
    most = int(n_atoms / 2 / 30)
    if fov_A < 5 * a_A:
        raise ValueError(f"{option}: a {_fmt(fov_A)} Å field is too small for beam-damage holes; use a field of "
                         f"view of at least {5 * a_A:.0f} Å")
    if n_holes > most:
        raise ValueError(f"{option}: {n_holes} holes would remove up to {30 * n_holes} of the ~{n_atoms:.0f} atoms "
                         f"of a {_fmt(fov_A)} Å field; use at most {most} (or a larger field of view)")
    return n_holes


def _b(name, unit="", lo=None, hi=None, lo_inc=True, hi_inc=True, integer=False, option=""):
    return Bound(name, unit, lo, hi, lo_inc, hi_inc, integer, option)


#: Every numeric parameter the package takes, with its physical bounds.  Keys are the API
#: argument names (units in the name); the CLI attaches its own option names.
BOUNDS: dict[str, Bound] = {
    # twins
    "fov_A": _b("field of view", "Å", 5.0, 5000.0, option="--fov"),
    "pixel_size_A": _b("pixel size", "Å", 0.01, 0.5, option="--pixel-size"),
    "seed": _b("seed", "", 0, 2**32 - 1, integer=True, option="--seed"),
    "dose_e_per_A2": _b("electron dose", "e/Å²", 0.0, 1e12, lo_inc=False, option="--dose"),
    "energy_keV": _b("beam energy", "keV", 10.0, 1000.0, option="--energy"),
    "semiangle_mrad": _b("convergence semi-angle", "mrad", 1.0, 200.0, option="--semiangle"),
    "defocus_A": _b("defocus", "Å", -1e5, 1e5, option="--defocus"),
    "Cs_A": _b("spherical aberration Cs", "Å", -1e8, 1e8, option="--cs"),
    "detector_inner_mrad": _b("detector inner angle", "mrad", 0.0, 1000.0, option="--detector"),
    "detector_outer_mrad": _b("detector outer angle", "mrad", 1.0, 1000.0, option="--detector"),
    "source_size_A": _b("source size", "Å", 0.0, 5.0, option="--source-size"),
    "read_noise": _b("read noise σ", "counts", 0.0, 1e6, option="--read-noise"),
    "scan_jitter_A": _b("scan jitter σ", "Å", 0.0, 5.0, option="--jitter"),
    "drift_A_per_line": _b("linear drift", "Å per scan line", -0.5, 0.5, option="--drift"),
    "nonlinear_drift_A": _b("non-linear drift amplitude", "Å", 0.0, 50.0, option="--nonlinear-drift"),
    "contamination": _b("contamination level (relative to the mean)", "", 0.0, 10.0, option="--contamination"),
    "probe_current_variation": _b("probe-current variation σ (relative)", "", 0.0, 1.0,
                                  option="--probe-current-variation"),
    "rotation_deg": _b("lattice rotation", "°", -360.0, 360.0, option="--rotation"),
    "gb_rotation_deg": _b("grain-boundary rotation", "°", -180.0, 180.0, option="--grain-boundary"),
    "gb_separation_A": _b("grain-boundary separation", "Å", -3.0, 3.0, option="--grain-boundary"),
    "n_holes": _b("number of beam-damage holes", "", 0, 1000, integer=True, option="--holes"),
    "frozen_phonons": _b("frozen-phonon configurations", "", 0, 256, integer=True, option="--frozen-phonons"),
    "phonon_sigma_A": _b("thermal displacement σ", "Å", 0.0, 0.5, lo_inc=False, option="--phonon-sigma"),
    # images given to the analysis and the models
    "image_pixel_size_A": _b("image pixel size", "Å", 0.005, 2.0, option="--pixel-size"),
    # datasets
    "n_samples": _b("number of images", "", 1, 1_000_000, integer=True, option="--n"),
    "size_px": _b("image size", "px", 32, 4096, integer=True, option="--size"),
    "workers": _b("number of local worker processes", "", 1, 256, integer=True, option="--workers"),
    "dose_min": _b("lowest dose", "e/Å²", 0.0, 1e12, lo_inc=False, option="--dose-min"),
    "dose_max": _b("highest dose", "e/Å²", 0.0, 1e12, lo_inc=False, option="--dose-max"),
    # training
    "model_pixel_size_A": _b("model pixel size", "Å", 0.02, 1.0, option="--model-pixel-size"),
    "crop_px": _b("training crop", "px", 32, 2048, integer=True, option="--crop"),
    "batch_size": _b("batch size", "", 1, 4096, integer=True, option="--batch-size"),
    "epochs": _b("number of epochs", "", 1, 100_000, integer=True, option="--epochs"),
    "steps_per_epoch": _b("steps per epoch", "", 1, 10_000_000, integer=True, option="--steps"),
    "learning_rate": _b("learning rate", "", 0.0, 10.0, lo_inc=False, option="--lr"),
    "patience": _b("early-stopping patience", "epochs", 1, 100_000, integer=True, option="--patience"),
    "minutes": _b("training time limit", "min", 0.0, 1440.0, lo_inc=False, option="--minutes"),
    "twins": _b("twins mixed in", "", 0, 1000, integer=True, option="--twins"),
    "validation_fraction": _b("validation fraction", "", 0.0, 1.0, lo_inc=False, hi_inc=False),
    "threads": _b("torch threads", "", 0, 1024, integer=True),
    # evaluation
    "top": _b("number of sites", "", 1, 10_000_000, integer=True, option="--top"),
    "n_per": _b("images per material and dose", "", 1, 10_000, integer=True, option="--n"),
}
