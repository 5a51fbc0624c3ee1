"""``mx2-defects info``: what the reader finds in microscope files (shape, calibration, optics)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_info_command", "describe_lines"]


def describe_lines(image) -> list[str]:
    """The optics part of ``mx2-defects info``, one aligned line per value the file records."""
    from ..io.optics import format_optics

    return [f"{label:<15}{value}" for label, value in format_optics(image.optics)]


def _cmd_info(args: argparse.Namespace) -> int:
    from ..io.formats import ReaderError, describe, load_images

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


def add_info_command(sub) -> None:
    info = sub.add_parser("info", help="print what the reader finds in a microscope file")
    info.add_argument("files", nargs="+", type=Path)
    info.add_argument("--json", action="store_true", help="one JSON object per image")
    info.set_defaults(func=_cmd_info)
