"""``mx2-defects analyze``: sites, intensity histogram and concentrations of one image.

Numbers are checked as they are parsed (:mod:`.core.validation`), the output folder and the
image size before any work; the files appear together when complete (:mod:`.io.atomic`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.parameters import ANALYSIS_PARAMETERS
from ..core.validation import check_allocation
from .options import add_parameters, progress_printer, values_from_args

__all__ = ["ANALYSIS_BYTES_PER_PIXEL", "add_analysis_commands"]

#: The columns of the displacement table the command prints.
DISPLACEMENT_SUMMARY = ["defect_class", "shell", "neighbour_sublattice", "n_defects", "radial_pm", "radial_sem_pm",
                        "tangential_pm", "apparent_radial_pm"]
#: Peak bytes per image pixel of the site analysis (float64 copies, filters, FFT), with margin.
ANALYSIS_BYTES_PER_PIXEL = 96


def _cmd_analyze(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..analysis.api import ANALYSIS_FILES, OPTIONAL_FILES, analyze_image, optional_files
    from ..inputs import analysis_settings, image_plane
    from ..io.atomic import StagedOutput
    from ..io.formats import load_images
    from ..twin.parents import get_parent

    from ..analysis.structure import STRUCTURE_FILES

    names = ANALYSIS_FILES + (STRUCTURE_FILES if args.structure else []) + optional_files(
        args.exclude_contamination, args.alloy_species, args.map_phases)
    # before any work; a new result without --structure (or another option) removes an older result's files of it
    stage = StagedOutput(args.out, names, overwrite=args.overwrite, replaces=[*STRUCTURE_FILES, *OPTIONAL_FILES])
    get_parent(args.material)
    defects = _read_defects(args.defects) if args.defects else None
    images = load_images(args.image)
    image = images[0]
    data = image.data
    ny, nx = data.shape[-2:]
    check_allocation(f"the analysis of {args.image.name}", float(ny) * nx, ANALYSIS_BYTES_PER_PIXEL,
                     hint="crop or bin the image first")
    data, note = image_plane(data, args.image.name)
    if note:
        print(f"note: {note}", file=sys.stderr)
    values = values_from_args(args, ANALYSIS_PARAMETERS)
    pixel, energy, optics = analysis_settings(image.scale_A, image.calibrated, image.beam_energy_keV, values,
                                              args.image.name, recorded_optics=image.optics)
    result = analyze_image(
        data, pixel, material=args.material, defects=defects,
        beam_energy_keV=energy, dopant=values["dopant"] or None, optics=optics,
        exclude_contamination=bool(values["exclude_contamination"]), alloy_species=values["alloy_species"] or None,
        map_phases=bool(values["map_phases"]), progress=progress_printer(args.quiet),
    )
    structure = None
    if args.structure:
        from ..analysis.structure import defect_structure

        structure = defect_structure(data, result, progress=progress_printer(args.quiet))
    with stage as staging:
        result.save(staging)
        if structure is not None:
            structure.write(staging)

    paths = [Path(args.out) / n for n in names]
    lat = result.lattice
    print(f"a = {lat['a_A']:.4f} Å (parent {lat['parent_a_A']} Å), pixel {lat['pixel_size_A']:.5f} Å"
          f"{' (self-calibrated)' if lat['self_calibrated'] else ''}, "
          f"{lat['n_M_sites']} M and {lat['n_X_sites']} X sites in {lat['analysed_area_nm2']:.1f} nm²")
    print(result.optics_summary())
    for note in result.notes:
        print(f"note: {note}")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(result.concentrations.drop(columns=["site_density_per_cm2"]).to_string(index=False))
        if result.composition is not None:
            print("composition (fraction of the metal sites / of the chalcogen atoms, 95 % interval): "
                  + "; ".join(f"region {r}: {f}" for r, f in result.lattice["alloy"]["formula"].items()))
            print(result.composition.to_string(index=False, float_format="%.4f"))
        if result.phases is not None:
            print("phases (area counted as metal sites × cell; only the parent's monolayer is counted):")
            print(result.phase_table().to_string(index=False, float_format="%.4g"))
        if structure is not None:
            print("neighbour displacements (pm; radial > 0 = away from the defect; less the imaging's own):")
            print(structure.displacements[DISPLACEMENT_SUMMARY].to_string(index=False, float_format="%.2f"))
            for note in structure.notes:
                print(f"note: {note}")
    for p in paths:
        print(f"  wrote {p}")
    return 0


def _read_defects(path: Path):
    """``defects.csv`` from ``segment``: x_A, y_A (finite, Å) and defect_class (a known class)."""
    from ..core.classes import CLASS_IDS
    from ..io.tables import read_points_table

    return read_points_table(path, option="--defects", columns=("x_A", "y_A", "defect_class"), classes=CLASS_IDS,
                             what="a defects table from 'segment' lists x_A, y_A, defect_class")


def add_analysis_commands(sub) -> None:
    p = sub.add_parser("analyze", help="atom sites, intensity histogram and defect concentrations per cm²")
    p.add_argument("image", type=Path)
    p.add_argument("--material", default="MoS2")
    p.add_argument("--defects", type=Path, help="defects.csv from 'segment' (x_A,y_A,defect_class)")
    add_parameters(p, ANALYSIS_PARAMETERS)
    p.add_argument("--structure", action="store_true",
                   help="also class-average each defect class, measure its neighbours' displacements (pm) and map the "
                        "strain: class_averages.tif/.png, displacements.csv, strain.tif")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_analyze)
