"""``mx2-defects simulate``: one digital twin to a folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_twin_commands", "request_from_args"]


def _progress_printer(quiet: bool):
    def show(fraction: float, message: str) -> None:
        if not quiet:
            print(f"[{fraction * 100:5.1f} %] {message}", file=sys.stderr, flush=True)

    return show


def request_from_args(args: argparse.Namespace):
    """A :class:`~.twin.api.TwinRequest` from parsed ``simulate`` arguments."""
    from .twin.api import TwinRequest
    from .twin.imperfections import Imperfections
    from .twin.microscope import Microscope
    from .twin.structures import GrainBoundary

    microscope = Microscope(
        energy_keV=args.energy, semiangle_mrad=args.semiangle, defocus_A=args.defocus, Cs_A=args.cs,
        detector_inner_mrad=args.detector[0], detector_outer_mrad=args.detector[1], source_size_A=args.source_size,
    )
    imperfections = Imperfections(
        dose_e_per_A2=args.dose, read_noise=args.read_noise, scan_jitter_A=args.jitter,
        drift_A_per_line=tuple(args.drift), nonlinear_drift_A=args.nonlinear_drift,
        contamination=args.contamination, probe_current_variation=args.probe_current_variation,
    )
    gb = None
    if args.grain_boundary is not None:
        gb = GrainBoundary(rotation_deg=args.grain_boundary[0], separation_A=args.grain_boundary[1])
    return TwinRequest(
        material=args.material, defects=args.defects, fov_A=args.fov, pixel_size_A=args.pixel_size,
        method=args.method, seed=args.seed, structure_path=str(args.structure) if args.structure else None,
        rotation_deg=args.rotation, grain_boundary=gb, n_holes=args.holes, microscope=microscope,
        imperfections=imperfections,
    )


def _cmd_simulate(args: argparse.Namespace) -> int:
    from .twin.api import simulate_twin

    request = request_from_args(args)
    twin = simulate_twin(request, progress=_progress_printer(args.quiet))
    paths = twin.save(args.out, overwrite=args.overwrite)
    print(f"twin {twin.image.shape[1]}×{twin.image.shape[0]} px at {twin.pixel_size_A[1]:.4f} Å/px, "
          f"{len(twin.defects)} defects, {twin.settings['seconds']:.1f} s")
    for p in paths:
        print(f"  wrote {p}")
    return 0


def add_simulation_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``simulate`` and ``demo``."""
    p.add_argument("--material", default="MoS2", help="parent, e.g. MoS2, WSe2, 1T-TiS2 (default MoS2)")
    p.add_argument("--defects", default="", help="e.g. V_X=6,V_XX=2,TM_D(Re)=1%%,V_X:pairs=4")
    p.add_argument("--fov", type=float, default=40.0, help="field of view in Å (default 40)")
    p.add_argument("--pixel-size", type=float, default=0.1, help="pixel size in Å (default 0.1)")
    p.add_argument("--dose", type=float, default=None, help="electron dose in e/Å² (default: noise-free)")
    p.add_argument("--method", default="fast", choices=["fast", "prism", "multislice"])
    p.add_argument("--seed", type=int, default=0)


def add_twin_commands(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a digital twin (image, labels, truth)")
    add_simulation_options(p)
    p.add_argument("--structure", type=Path, help="a structure file ase reads (replaces --material/--defects)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    p.add_argument("--energy", type=float, default=80.0, help="beam energy in keV (default 80)")
    p.add_argument("--semiangle", type=float, default=25.0, help="convergence semi-angle in mrad (default 25)")
    p.add_argument("--defocus", type=float, default=40.0, help="defocus in Å (abTEM convention; default 40)")
    p.add_argument("--cs", type=float, default=4e5, help="spherical aberration Cs in Å (default 4e5)")
    p.add_argument("--detector", type=float, nargs=2, default=(50.0, 200.0), metavar=("INNER", "OUTER"),
                   help="HAADF detector angles in mrad (default 50 200)")
    p.add_argument("--source-size", type=float, default=0.0, help="Gaussian source size σ in Å")
    p.add_argument("--read-noise", type=float, default=0.0, help="Gaussian read noise σ (counts)")
    p.add_argument("--jitter", type=float, default=0.0, help="scan-line jitter σ in Å")
    p.add_argument("--drift", type=float, nargs=2, default=(0.0, 0.0), metavar=("VX", "VY"),
                   help="linear drift in Å per scan line")
    p.add_argument("--nonlinear-drift", type=float, default=0.0, help="non-linear drift amplitude in Å")
    p.add_argument("--contamination", type=float, default=0.0, help="background level relative to the mean")
    p.add_argument("--probe-current-variation", type=float, default=0.0, help="relative line-gain σ")
    p.add_argument("--rotation", type=float, default=0.0, help="lattice rotation in degrees (fast mode)")
    p.add_argument("--grain-boundary", type=float, nargs=2, metavar=("ANGLE", "SEPARATION"),
                   help="grain boundary: relative rotation (deg) and separation (−3…3 Å)")
    p.add_argument("--holes", type=int, default=0, help="number of beam-damage holes (5–30 atoms each)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_simulate)
