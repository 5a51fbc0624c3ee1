"""``mx2-defects analyze``: sites, intensity histogram and concentrations of one image."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_analysis_commands"]


def _cmd_analyze(args: argparse.Namespace) -> int:
    import pandas as pd

    from .analysis.api import analyze_image
    from .io.formats import load_images

    images = load_images(args.image)
    image = images[0]
    data = image.data
    if data.ndim > 2:
        print(f"note: {args.image} is a stack of {data.shape[0]} frames; analysing their sum", file=sys.stderr)
        data = data.reshape(-1, *data.shape[-2:]).sum(axis=0)
    pixel = args.pixel_size if args.pixel_size is not None else image.pixel_size_A
    if pixel is None and not args.self_calibrate:
        raise ValueError(
            f"{args.image} has no calibration: pass --pixel-size in Å, or --self-calibrate to take it from the "
            f"parent's lattice constant"
        )
    if image.calibrated and not image.is_square_pixel and args.pixel_size is None:
        raise ValueError(f"{args.image} has non-square pixels {image.scale_A[-2:]}; resample it first")
    defects = None
    if args.defects:
        defects = pd.read_csv(args.defects)
        missing = {"x_A", "y_A", "defect_class"} - set(defects.columns)
        if missing:
            raise ValueError(f"{args.defects} lacks the columns {sorted(missing)}")
    result = analyze_image(
        data, pixel, material=args.material, defects=defects,
        beam_energy_keV=args.energy or image.beam_energy_keV, dopant=args.dopant,
        progress=lambda f, m: None if args.quiet else print(f"[{f * 100:5.1f} %] {m}", file=sys.stderr),
    )
    paths = result.save(args.out, overwrite=args.overwrite)
    lat = result.lattice
    print(f"a = {lat['a_A']:.4f} Å (parent {lat['parent_a_A']} Å), pixel {lat['pixel_size_A']:.5f} Å"
          f"{' (self-calibrated)' if lat['self_calibrated'] else ''}, "
          f"{lat['n_M_sites']} M and {lat['n_X_sites']} X sites in {lat['analysed_area_nm2']:.1f} nm²")
    for note in result.notes:
        print(f"note: {note}")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(result.concentrations.drop(columns=["site_density_per_cm2"]).to_string(index=False))
    for p in paths:
        print(f"  wrote {p}")
    return 0


def add_analysis_commands(sub) -> None:
    p = sub.add_parser("analyze", help="atom sites, intensity histogram and defect concentrations per cm²")
    p.add_argument("image", type=Path)
    p.add_argument("--material", default="MoS2")
    p.add_argument("--defects", type=Path, help="defects.csv from 'segment' (x_A,y_A,defect_class)")
    p.add_argument("--pixel-size", type=float, help="override the file's calibration (Å)")
    p.add_argument("--self-calibrate", action="store_true",
                   help="for an uncalibrated image, take the pixel size from the parent's lattice constant")
    p.add_argument("--energy", type=float, help="beam energy in keV (default: from the file, else 80)")
    p.add_argument("--dopant", help="dopant element on metal sites to look for (TM_D)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_analyze)
