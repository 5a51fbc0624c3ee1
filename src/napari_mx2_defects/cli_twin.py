"""``mx2-defects simulate``: one digital twin to a folder.

Every number is checked by :mod:`.core.validation` as it is parsed, the request (defect list,
size of the image, holes) and the output folder before any work; the twin's files appear in
``--out`` together when complete (:class:`~.io.atomic.StagedOutput`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .core.validation import BOUNDS, Bound, arg_type, check_holes, check_twin_size

__all__ = ["TWIN_FILES", "add_twin_commands", "check_request_args", "request_from_args"]

from .twin.api import TWIN_FILES  # what ``simulate`` writes (Twin.save): the only names --overwrite replaces


def _t(key: str):
    """argparse type of the parameter ``key`` of :data:`~.core.validation.BOUNDS`."""
    return arg_type(BOUNDS[key])


#: ``--detector INNER OUTER``: each an angle; their order is checked in :func:`check_request_args`.
_detector_angle = arg_type(Bound("detector angle", "mrad", 0.0, 1000.0))
#: ``--grain-boundary ANGLE SEPARATION``: finite here, each bound in :func:`check_request_args`.
_finite_pair = arg_type(Bound("grain-boundary value"))


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
        imperfections=imperfections, frozen_phonons=args.frozen_phonons, phonon_sigma_A=args.phonon_sigma,
    )


def check_request_args(args: argparse.Namespace) -> None:
    """Checks that need several options together, before any work (one-line ValueErrors)."""
    from .core.validation import check_pair

    inner, outer = args.detector
    check_pair(BOUNDS["detector_inner_mrad"], BOUNDS["detector_outer_mrad"], inner, outer, strict=True)
    if args.grain_boundary is not None:
        BOUNDS["gb_rotation_deg"].check(args.grain_boundary[0])
        BOUNDS["gb_separation_A"].check(args.grain_boundary[1])
    if args.structure is None:
        check_twin_size(args.fov, args.pixel_size)
        from .twin.defects import parse_defects
        from .twin.parents import get_parent

        parent = get_parent(args.material)
        parse_defects(args.defects)
        check_holes(args.holes, args.fov, parent.a_A)

def _cmd_simulate(args: argparse.Namespace) -> int:
    from .io.atomic import StagedOutput
    from .twin.api import simulate_twin

    check_request_args(args)
    request = request_from_args(args)
    stage = StagedOutput(args.out, TWIN_FILES, overwrite=args.overwrite)  # before the work
    twin = simulate_twin(request, progress=_progress_printer(args.quiet))
    with stage as staging:
        twin.save(staging)
    paths = [Path(args.out) / n for n in TWIN_FILES if (Path(args.out) / n).exists()]
    print(f"twin {twin.image.shape[1]}×{twin.image.shape[0]} px at {twin.pixel_size_A[1]:.4f} Å/px, "
          f"{len(twin.defects)} defects, {twin.settings['seconds']:.1f} s")
    for p in paths:
        print(f"  wrote {p}")
    return 0


def add_simulation_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``simulate`` and ``demo``."""
    p.add_argument("--material", default="MoS2", help="parent, e.g. MoS2, WSe2, 1T-TiS2 (default MoS2)")
    p.add_argument("--defects", default="", help="e.g. V_X=6,V_XX=2,TM_D(Re)=1%%,V_X:pairs=4")
    p.add_argument("--fov", type=_t("fov_A"), default=40.0, help="field of view in Å (default 40)")
    p.add_argument("--pixel-size", type=_t("pixel_size_A"), default=0.1, help="pixel size in Å (default 0.1)")
    p.add_argument("--dose", type=_t("dose_e_per_A2"), default=None,
                   help="electron dose in e/Å² (default: noise-free)")
    p.add_argument("--method", default="fast", choices=["fast", "prism", "multislice"])
    p.add_argument("--seed", type=_t("seed"), default=0)


def add_twin_commands(sub) -> None:
    p = sub.add_parser("simulate", help="simulate a digital twin (image, labels, truth)")
    add_simulation_options(p)
    p.add_argument("--structure", type=Path, help="a structure file ase reads (replaces --material/--defects)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace files already in --out")
    p.add_argument("--energy", type=_t("energy_keV"), default=80.0, help="beam energy in keV (default 80)")
    p.add_argument("--semiangle", type=_t("semiangle_mrad"), default=25.0, help="convergence semi-angle in mrad (default 25)")
    p.add_argument("--defocus", type=_t("defocus_A"), default=40.0, help="defocus in Å (abTEM convention; default 40)")
    p.add_argument("--cs", type=_t("Cs_A"), default=4e5, help="spherical aberration Cs in Å (default 4e5)")
    p.add_argument("--detector", type=_detector_angle, nargs=2, default=(50.0, 200.0), metavar=("INNER", "OUTER"),
                   help="HAADF detector angles in mrad (default 50 200)")
    p.add_argument("--source-size", type=_t("source_size_A"), default=0.0, help="Gaussian source size σ in Å")
    p.add_argument("--read-noise", type=_t("read_noise"), default=0.0, help="Gaussian read noise σ (counts)")
    p.add_argument("--jitter", type=_t("scan_jitter_A"), default=0.0, help="scan-line jitter σ in Å")
    p.add_argument("--drift", type=_t("drift_A_per_line"), nargs=2, default=(0.0, 0.0), metavar=("VX", "VY"),
                   help="linear drift in Å per scan line")
    p.add_argument("--nonlinear-drift", type=_t("nonlinear_drift_A"), default=0.0, help="non-linear drift amplitude in Å")
    p.add_argument("--contamination", type=_t("contamination"), default=0.0, help="background level relative to the mean")
    p.add_argument("--probe-current-variation", type=_t("probe_current_variation"), default=0.0, help="relative line-gain σ")
    p.add_argument("--rotation", type=_t("rotation_deg"), default=0.0, help="lattice rotation in degrees (fast mode)")
    p.add_argument("--grain-boundary", type=_finite_pair, nargs=2, metavar=("ANGLE", "SEPARATION"),
                   help="grain boundary: relative rotation (deg) and separation (−3…3 Å)")
    p.add_argument("--holes", type=_t("n_holes"), default=0, help="number of beam-damage holes (5–30 atoms each)")
    p.add_argument("--frozen-phonons", type=_t("frozen_phonons"), default=0,
                   help="abTEM frozen-phonon configurations (multislice/PRISM image, or the fast mode's "
                        "calibration); 0 = static lattice (default)")
    p.add_argument("--phonon-sigma", type=_t("phonon_sigma_A"), default=0.1,
                   help="thermal displacement σ per direction in Å (default 0.1, as in abTEM's walkthrough)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_simulate)
