"""``mx2-defects demo``: the end-to-end main job (:func:`..demo.run_demo`) from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..demo import DEMO_PARAMETERS
from .options import add_parameters, values_from_args

__all__ = ["add_demo_command"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..io.atomic import check_output_dir
    from ..twin.defects import parse_defects
    from ..twin.parents import get_parent

    check_output_dir(args.out)
    v = values_from_args(args, DEMO_PARAMETERS)
    get_parent(v["material"])
    parse_defects(v["defects"])
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
        print("error: no display. Run under a virtual display: xvfb-run -a mx2-defects demo ... "
              "(scripts/demo.sh does this for you)", file=sys.stderr)
        return 2
    from ..demo import run_demo

    run_demo(args.out, material=v["material"], defects=v["defects"], fov_A=v["fov_A"], dose=v["dose_e_per_A2"],
             seed=v["seed"])
    return 0


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end demo in a scripted napari viewer (screenshot + CSVs)")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (must be new or empty)")
    add_parameters(p, DEMO_PARAMETERS)
    p.set_defaults(func=_cmd_demo)
