"""``mx2-defects simulate``: one digital twin to a folder.

The options are generated from the parameters' one declaration (:mod:`..core.parameters`); every
number is checked as it is parsed, the whole request (detector order, image size in memory, defect
list, holes) by :func:`~..twin.api.check_twin_values` before any work — the check the *Simulate*
dock makes too — and the request is assembled by :meth:`~..twin.api.TwinRequest.from_values`.  The
twin's files appear in ``--out`` together when complete (:class:`~..io.atomic.StagedOutput`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.parameters import REQUEST_PARAMETERS, SERIES_TWIN_PARAMETERS
from .options import add_parameters, progress_printer, values_from_args

__all__ = ["add_twin_commands", "check_request_args", "request_from_args"]


def check_request_args(args: argparse.Namespace) -> dict:
    """The checked ``{name: value}`` of parsed ``simulate`` options, before any work (one-line ValueErrors)."""
    from ..twin.api import check_twin_values

    values = values_from_args(args, REQUEST_PARAMETERS)
    return check_twin_values(values, structure=args.structure is not None)


def request_from_args(args: argparse.Namespace):
    """The :class:`~..twin.api.TwinRequest` of parsed ``simulate`` options."""
    from ..twin.api import TwinRequest

    return TwinRequest.from_values({**values_from_args(args, REQUEST_PARAMETERS), "structure_path": args.structure})


def _cmd_simulate(args: argparse.Namespace) -> int:
    from ..io.atomic import StagedOutput
    from ..twin.api import PHASE_TRUTH_FILE, TWIN_FILES, simulate_twin

    check_request_args(args)
    series = values_from_args(args, SERIES_TWIN_PARAMETERS)
    if series["n_frames"] > 1 or series["damage"] or any(series["frame_drift_A"]):
        return _simulate_series(args, series)
    request = request_from_args(args)
    names = TWIN_FILES + ((PHASE_TRUTH_FILE,) if request.stacking else ())
    stage = StagedOutput(args.out, names, overwrite=args.overwrite, replaces=(PHASE_TRUTH_FILE,))  # before the work
    twin = simulate_twin(request, progress=progress_printer(args.quiet))
    with stage as staging:
        twin.save(staging)
    paths = [Path(args.out) / n for n in twin.files if (Path(args.out) / n).exists()]
    print(f"twin {twin.image.shape[1]}×{twin.image.shape[0]} px at {twin.pixel_size_A[1]:.4f} Å/px, "
          f"{len(twin.defects)} defects, {twin.settings['seconds']:.1f} s")
    for note in twin.settings.get("notes", []):
        print(f"note: {note}")
    for p in paths:
        print(f"  wrote {p}")
    return 0


def _simulate_series(args: argparse.Namespace, series: dict) -> int:
    """``simulate --frames N [--damage X_loss=12] [--frame-drift DX DY]``: a frame series with truth per frame
    (:mod:`..series.twin`)."""
    from ..core.parameters import check_values
    from ..io.atomic import StagedOutput
    from ..series.twin import SERIES_TWIN_FILES, SeriesTwinRequest, simulate_series

    series = check_values(SERIES_TWIN_PARAMETERS, series)
    if series["n_frames"] < 2:
        raise ValueError("--damage and --frame-drift make a frame series: give --frames 2 or more")
    request = SeriesTwinRequest.from_values({**values_from_args(args, REQUEST_PARAMETERS), **series})
    stage = StagedOutput(args.out, SERIES_TWIN_FILES, overwrite=args.overwrite)  # before the work
    twin = simulate_series(request, progress=progress_printer(args.quiet))
    with stage as staging:
        twin.save(staging)
    n, ny, nx = twin.frames.shape
    print(f"series twin: {n} frames of {nx}×{ny} px at {twin.pixel_size_A[1]:.4f} Å/px, "
          f"{request.dose_per_frame_e_per_A2 or 0:g} e/Å² per frame, {twin.settings['seconds']:.1f} s")
    print(twin.truth_cross_section[["process", "sigma_barn_given", "realised_sigma_barn", "n_events",
                                    "n_at_risk"]].to_string(index=False, float_format="%.4g"))
    for name in SERIES_TWIN_FILES:
        print(f"  wrote {Path(args.out) / name}")
    return 0


def add_twin_commands(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a digital twin (image, labels, truth)")
    add_parameters(p, REQUEST_PARAMETERS)
    add_parameters(p, SERIES_TWIN_PARAMETERS)  # --frames N: a series (--dose is each frame's)
    p.add_argument("--structure", type=Path, help="a structure file ase reads (replaces --material/--defects)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_simulate)
