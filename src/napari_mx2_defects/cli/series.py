"""``mx2-defects series``: a frame stack → counts per frame, site tracks and beam-damage cross-sections.

The stack is read by the package's reader (frames on the first axis), checked (a single frame, no dose
anywhere) and the output folder refused if it holds a result, all before any work; the files appear
together when complete (:class:`~..io.atomic.StagedOutput`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.parameters import SERIES_PARAMETERS
from .options import add_parameters, add_runtime_option, progress_printer, values_from_args

__all__ = ["add_series_command"]


def _cmd_series(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..io.atomic import StagedOutput
    from ..series import SERIES_FILES, analyze_series, load_series
    from ..twin.parents import get_parent

    stage = StagedOutput(args.out, SERIES_FILES, overwrite=args.overwrite)  # before the work
    get_parent(args.material)
    values = values_from_args(args, SERIES_PARAMETERS)
    stack = load_series(args.file, values)
    for note in stack.notes:
        print(f"note: {note}")
    result = analyze_series(stack, args.material, values, model=args.model, runtime=args.runtime,
                            progress=progress_printer(args.quiet))
    with stage as staging:
        result.write(staging)
    s = result.settings
    print(f"{s['n_frames']} frames at {result.pixel_size_A:.4f} Å/px, {stack.dose_e_per_A2[0]:.3g} e/Å² per frame "
          f"({stack.dose_source}); {s['n_tracked_X_columns']} X2 columns and {s['n_tracked_M_sites']} metal sites "
          f"tracked through every frame; drift {result.drift_xy_A[-1, 0]:+.2f}, {result.drift_xy_A[-1, 1]:+.2f} Å "
          f"by the last frame")
    for note in result.notes:
        print(f"note: {note}")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(result.frames.to_string(index=False, float_format="%.4g"))
    print(result.summary())
    for name in SERIES_FILES:
        print(f"  wrote {Path(args.out) / name}")
    return 0


def add_series_command(sub) -> None:
    p = sub.add_parser("series", help="a frame stack: defects per frame, site tracks, beam-damage cross-sections")
    p.add_argument("file", type=Path, help="a frame stack any reader format holds (frames on the first axis)")
    p.add_argument("--material", default="MoS2")
    add_parameters(p, SERIES_PARAMETERS)
    p.add_argument("--model", default="default", help="segmentation model: default or a .safetensors checkpoint")
    add_runtime_option(p)
    p.add_argument("--out", type=Path, required=True, help="output folder (frames.csv, tracks.csv, cross_section.csv)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_series)
