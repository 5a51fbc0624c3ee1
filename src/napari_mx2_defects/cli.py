"""``mx2-defects`` command line: the same code the widgets call.

Subcommands: ``info`` (what the reader finds in a file), ``simulate``
(a digital twin), ``analyze`` (atom sites and concentrations) and ``demo``
(the end-to-end main job in a scripted napari viewer).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__

__all__ = ["build_parser", "main"]


def _cmd_info(args: argparse.Namespace) -> int:
    from .io.formats import ReaderError, describe, describe_lines, load_images

    status = 0
    for path in args.files:
        try:
            images = load_images(path)
        except ReaderError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 2
            continue
        for image in images:
            summary = describe(image)
            if args.json:
                print(json.dumps({"file": str(path), **summary}))
                continue
            print(f"{path}: {summary['name']}")
            print(f"  shape          {tuple(summary['shape'])} ({', '.join(summary['axes'])})")
            print(f"  dtype          {summary['dtype']}")
            if image.calibrated:
                sy, sx = summary["pixel_size_A"]
                print(f"  pixel size     y {sy:g} Å, x {sx:g} Å")
            else:
                print("  pixel size     unknown (uncalibrated; pass --pixel-size to the analysis)")
            print(f"  calibrated     {'yes' if image.calibrated else 'no'}")
            energy = summary["beam_energy_keV"]
            print(f"  beam energy    {f'{energy:g} keV' if energy else 'not recorded'}")
            for line in describe_lines(image):  # optics the file records (io/optics.py)
                print(f"  {line}")
            for message in image.warnings:
                print(f"  warning: {message}")
    return status


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    parser = argparse.ArgumentParser(
        prog="mx2-defects",
        description="Point defects in HAADF-STEM images of monolayer MX2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="print what the reader finds in a microscope file")
    info.add_argument("files", nargs="+", type=Path)
    info.add_argument("--json", action="store_true", help="one JSON object per image")
    info.set_defaults(func=_cmd_info)

    from .cli_analysis import add_analysis_commands
    from .cli_learn import add_learn_commands
    from .cli_twin import add_twin_commands
    from .demo import add_demo_command

    add_twin_commands(sub)
    add_learn_commands(sub)
    add_analysis_commands(sub)
    add_demo_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mx2-defects``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
