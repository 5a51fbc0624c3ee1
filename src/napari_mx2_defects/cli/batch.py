"""``mx2-defects batch``: segment and analyse every file of a folder on dask.distributed (:mod:`..batch`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.parameters import ANALYSIS_PARAMETERS
from .options import add_parameters, add_runtime_option, bound_type, progress_printer, values_from_args

__all__ = ["add_batch_command"]


def _cmd_batch(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..batch import SHOWN_COLUMNS, run_batch

    result = run_batch(
        args.inputs,
        args.out,
        material=args.material,
        values=values_from_args(args, ANALYSIS_PARAMETERS),
        model=args.model,
        runtime=args.runtime,
        scheduler=args.scheduler,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=progress_printer(args.quiet),
    )
    shown = [c for c in SHOWN_COLUMNS if c in result.summary]
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 60):
        print(result.summary[shown].to_string(index=False))
    print(result.describe())
    return 1 if result.failed else 0


def add_batch_command(sub) -> None:
    p = sub.add_parser("batch", help="segment and analyse every image of a folder (dask; resumable)")
    p.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        metavar="FILES_OR_FOLDER",
        help="image files and/or folders (searched recursively for .dm3 .dm4 .emd .ser .mrc .tif .npy)",
    )
    p.add_argument("--material", default="MoS2")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: one folder per file and summary.csv; files done already are skipped",
    )
    p.add_argument("--model", default="default", help="'default' or a .safetensors checkpoint with its card")
    add_runtime_option(p)
    add_parameters(p, ANALYSIS_PARAMETERS)
    p.add_argument("--scheduler", help="address of a running dask scheduler (default: a local cluster)")
    p.add_argument(
        "--workers",
        type=bound_type("workers"),
        default=1,
        help="worker processes of the local cluster (the cores are shared among them)",
    )
    p.add_argument("--overwrite", action="store_true", help="redo files already done")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_batch)
