"""What every front end hands to the science: one image plane and one pixel size, by one policy.

The CLI (``segment``, ``analyze``, ``finetune``) and the widgets (*Find defects*, *Defect
statistics*) all call these two functions, so the same file gives the same plane and the same
pixel size whichever way it is run:

* a stack of frames (a series, a multi-detector file read as frames) is used as the **sum of its
  frames**, and the front end says so;
* a colour (RGB/RGBA) image is refused: HAADF intensities are one channel;
* the pixel size is a typed-in value if one is given, else the file's calibration — which must have
  square pixels (y and x within 1 %, :data:`~.core.validation.SQUARE_PIXEL_TOLERANCE`), else the image must be resampled or a value given; an
  uncalibrated image has none (the analysis can then self-calibrate from the parent's lattice);
* a pixel size that cannot resolve the atomic columns (above :data:`RESOLVABLE_PIXEL_A`) is refused
  with the reason, instead of "finding" defects in a survey image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .core.multiscale import full_resolution
from .core.parameters import ANALYSIS_PARAMETERS
from .core.validation import BOUNDS, SQUARE_PIXEL_TOLERANCE

__all__ = ["RESOLVABLE_PIXEL_A", "SQUARE_PIXEL_TOLERANCE", "analysis_settings", "image_plane", "pixel_size_A"]

#: Coarsest pixel (Å) at which MX2 columns are resolved: the metal–chalcogen distance in projection,
#: a/√3, is 1.82 Å for MoS2 (a = 3.16 Å) to 2.07 Å for MoTe2 (3.55 Å); three pixels across it.
RESOLVABLE_PIXEL_A = 0.6


def image_plane(data, name: str = "the image") -> tuple[np.ndarray, str | None]:
    """The 2-D plane to work on (of a multiscale layer's data, its full-resolution level), and a note for
    the user when it is not the data as given.

    Raises
    ------
    ValueError
        For colour images and for data with fewer than two dimensions.
    """
    data = full_resolution(data)
    shape = tuple(int(n) for n in np.shape(data))
    if len(shape) < 2:
        raise ValueError(f"{name} has {len(shape)} dimension(s); an image needs two (y, x)")
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4:
        raise ValueError(f"{name} is a colour ({'RGB' if shape[-1] == 3 else 'RGBA'}) image; HAADF intensities are "
                         f"one channel: open the raw single-channel image, or convert it to greyscale first")
    if len(shape) == 2:
        return np.asarray(data), None
    frames = int(np.prod(shape[:-2]))
    plane = np.zeros(shape[-2:], float)
    for frame in np.asarray(data).reshape(frames, *shape[-2:]):
        plane += frame
    return plane, f"{name} is a stack of {frames} frames; using their sum"


def pixel_size_A(scale_yx: Sequence[float] | None, calibrated: bool, override: float | None = None,
                 name: str = "the image", option: str = "--pixel-size") -> float | None:
    """The pixel size (Å) to use: ``override`` if given, else the calibration's (square pixels only).

    ``scale_yx`` are the (y, x) pixel sizes of the file or layer (the last two are used); returns
    None for an uncalibrated image without an override.
    """
    if override is not None:
        return BOUNDS["image_pixel_size_A"].with_option(option).check(_resolvable(override, name))
    if not calibrated or scale_yx is None:
        return None
    sy, sx = (float(v) for v in list(scale_yx)[-2:])
    if abs(sy - sx) > SQUARE_PIXEL_TOLERANCE * max(abs(sy), abs(sx)):
        raise ValueError(f"{name} has non-square pixels ({sy:g} Å × {sx:g} Å): resample it to square pixels "
                         f"first, or give the pixel size ({option})")
    return BOUNDS["image_pixel_size_A"].with_option(f"the pixel size of {name}").check(_resolvable(0.5 * (sy + sx),
                                                                                                 name))


def _resolvable(pixel_A, name: str):
    """``pixel_A`` unless it is a number too coarse to resolve columns (other nonsense is the bounds' to refuse)."""
    if isinstance(pixel_A, (int, float)) and np.isfinite(pixel_A) and pixel_A > RESOLVABLE_PIXEL_A:
        raise ValueError(f"{name}: a pixel of {pixel_A:.3g} Å cannot resolve MX2 atomic columns (they are 1.8–2.1 Å "
                         f"apart in projection; at most {RESOLVABLE_PIXEL_A} Å per pixel is needed); open an "
                         f"atomic-resolution image, or correct the pixel size if it is wrong")
    return pixel_A


def analysis_settings(scale_yx, calibrated: bool, recorded_energy_keV: float | None, values: dict,
                      name: str = "the image", option_of=lambda p: p.flag,
                      recorded_optics: dict | None = None) -> tuple[float | None, float | None, dict]:
    """(pixel size, beam energy, optics) of an analysis from the values of
    :data:`~.core.parameters.ANALYSIS_PARAMETERS`, by one rule for ``analyze`` and the statistics dock.

    The pixel size as :func:`pixel_size_A` gives it; an uncalibrated image without one is refused
    unless ``self_calibrate`` is on (then None: the analysis takes it from the parent's lattice).
    The beam energy is the typed-in one, else the file's (None: the analysis' default); the optics
    are the file's with typed-in detector angles over them.  ``option_of(parameter)`` names the
    option or the field in messages.
    """
    p = {q.name: q for q in ANALYSIS_PARAMETERS}
    detector = p["detector_mrad"]
    values = {**values, "detector_mrad": detector.check(values.get("detector_mrad"),
                                                         tuple(option_of(part) for part in detector.parts))}
    pixel = pixel_size_A(scale_yx, calibrated, values.get("image_pixel_size_A"), name,
                         option=option_of(p["image_pixel_size_A"]))
    if pixel is None and not values.get("self_calibrate"):
        raise ValueError(f"{name} has no calibration: give {option_of(p['image_pixel_size_A'])} in Å, or "
                         f"{option_of(p['self_calibrate'])} to take it from the parent's lattice constant")
    typed = values.get("beam_energy_keV")
    energy = typed or recorded_energy_keV
    if energy is not None:
        where = option_of(p["beam_energy_keV"]) if typed else f"the beam energy recorded in {name}"
        energy = BOUNDS["energy_keV"].with_option(where).check(energy)
    optics = dict(recorded_optics or {})
    if values.get("detector_mrad") is not None:
        optics["detector_inner_mrad"], optics["detector_outer_mrad"] = values["detector_mrad"]
    return pixel, energy, optics
