"""Calibration of the fast mode against abTEM: one kernel per column occupancy, for any optics.

For a parent, a microscope (energy, convergence, defocus, Cs, detector angles) and a set of column
signatures (host columns, dopants, substitutions, adatoms over a column), abTEM images a
*calibration cell*: the parent lattice with one column of every signature planted far apart, plus
an empty metal site and an empty chalcogen column.  The fast mode's kernel weights (:mod:`.render`:
per signature, non-negative weights over a Gaussian basis times the probe's transfer function) are
fitted to that image pixel by pixel with non-negative least squares, so the model reproduces the
shape of every column, the tails that reach the neighbours and the empty sites — not just one
integral per column.  The fit is checked on the same image with disc integrals at two radii.

Calibrations are cached on disk (``MX2_DEFECTS_CACHE`` or the user cache folder), keyed by parent,
optics (the source size is a blur applied afterwards and is not part of the key), method, frozen
phonons and signatures.  Only a calibration of exactly the requested signatures serves: kernels fitted
in a cell with other columns planted differ by a few per cent on the rarely planted ones (a single S
column by 8 % measured at 60 kV), so serving whichever superset happened to be cached first made a twin
depend on what had been simulated before it.  :meth:`Calibration.extended` is how a twin with extra
columns keeps the standard kernels of its parent and optics (:func:`.api.simulate_twin`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ase import Atoms
from scipy.optimize import nnls

from .abtem_runner import FrozenPhononSettings, estimate_seconds, simulate_abtem
from .columns import column_intensities, integration_radius_A, projected_columns, signature
from ..core.jobs import CancelFn, ProgressFn, never, no_progress
from .microscope import Microscope
from .render import BASIS_SIGMAS_A, render_columns, render_kernel_images

__all__ = ["Calibration", "calibrate_column_weights", "calibration_cell", "check_radii_A"]

CACHE_VERSION = 4
#: Sampling (Å) of the abTEM image the fit and its check are made on.
COMPARE_SAMPLING_A = 0.05
#: Sampling (Å) of the pixels the least-squares fit uses (the image is band-limited: nothing is lost).
FIT_SAMPLING_A = 0.1
#: Most planted columns (signatures + empty sites) a 6×4 calibration cell takes; more take 8×6.
CELLS_6x4_MAX_PLANTED = 16


def check_radii_A(a_A: float) -> tuple[float, float]:
    """Disc radii on which a calibration is checked: 0.7 Å and half the projected M–X distance."""
    return (0.7, float(integration_radius_A(a_A)))


@dataclass
class Calibration:
    """Fast-mode kernels per column signature and how well they reproduce abTEM.

    Attributes
    ----------
    kernels_A2 : dict
        Signature → weights (Å²) over ``basis_sigmas_A``; their sum is the column's scattering
        cross-section onto the detector.
    errors : dict
        ``column_max_rel`` (largest relative error of a column's disc integral, at both check radii),
        ``empty_max_rel_to_metal`` (largest error at an empty site, relative to the host-metal column),
        ``per_signature`` (largest relative error per signature).
    """

    kernels_A2: dict[str, list[float]]
    basis_sigmas_A: tuple[float, ...]
    errors: dict
    method: str
    seconds: float
    context: dict = field(default_factory=dict)

    @property
    def weights_A2(self) -> dict[str, float]:
        """Integrated cross-section (Å²) per signature."""
        return {sig: float(np.sum(w)) for sig, w in self.kernels_A2.items()}

    @property
    def max_rel_error(self) -> float:
        return float(max(self.errors.get("column_max_rel", 0.0), self.errors.get("empty_max_rel_to_metal", 0.0)))

    def column_weights(self, signatures: Sequence[str]) -> np.ndarray:
        """(n_columns, n_basis) kernel weights for columns of these signatures."""
        signatures = np.asarray(signatures, dtype=object)
        known = list(self.kernels_A2)
        index = {sig: k for k, sig in enumerate(known)}
        missing = sorted(set(signatures) - set(index))
        if missing:
            raise KeyError(f"no calibration for column(s) {', '.join(missing)}; calibrate with them included")
        table = np.array([self.kernels_A2[s] for s in known], dtype=float)
        return table[[index[s] for s in signatures]] if len(signatures) else np.zeros((0, len(self.basis_sigmas_A)))

    def extended(self, other: Calibration) -> Calibration:
        """These kernels, plus ``other``'s for the signatures these lack (same basis; errors: the worse)."""
        if tuple(other.basis_sigmas_A) != tuple(self.basis_sigmas_A):
            raise ValueError("calibrations on different kernel bases cannot be combined")
        kernels = dict(self.kernels_A2)
        for sig, weights in other.kernels_A2.items():
            kernels.setdefault(sig, weights)
        per_signature = {**other.errors.get("per_signature", {}), **self.errors.get("per_signature", {})}
        errors = {**self.errors, "per_signature": {s: per_signature[s] for s in kernels if s in per_signature}}
        for key in ("column_max_rel", "empty_max_rel_to_metal"):
            errors[key] = max(self.errors.get(key, 0.0), other.errors.get(key, 0.0))
        return Calibration(kernels, self.basis_sigmas_A, errors, self.method, self.seconds + other.seconds,
                           {**self.context, "extended_by": other.context.get("fit")})

    def to_json(self) -> dict:
        return {"kernels_A2": self.kernels_A2, "basis_sigmas_A": list(self.basis_sigmas_A), "errors": self.errors,
                "weights_A2": self.weights_A2, "max_rel_error": self.max_rel_error, "method": self.method,
                "seconds": self.seconds, "context": self.context, "version": CACHE_VERSION}

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        if data.get("version") != CACHE_VERSION:
            raise ValueError("calibration cache of another version")
        return cls({k: [float(v) for v in w] for k, w in data["kernels_A2"].items()},
                   tuple(float(s) for s in data["basis_sigmas_A"]), dict(data["errors"]), str(data["method"]),
                   float(data["seconds"]), dict(data.get("context", {})))


def cache_dir() -> Path:
    """Where calibrations are cached: ``$MX2_DEFECTS_CACHE`` or the user cache folder."""
    env = os.environ.get("MX2_DEFECTS_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-mx2-defects"))


def _planted(parent, examples) -> list[str]:
    host = {signature([parent.metal]), signature([parent.chalcogen] * 2)}
    return [s for s in examples if s not in host]


def default_cells(parent, examples, empty_sites: bool = True) -> tuple[int, int]:
    """Orthogonal cells of the calibration cell: 6×4 (about 19 × 22 Å for MoS2), or 8×6 when more than
    sixteen columns are planted.

    abTEM discretises the aperture and the detector in reciprocal steps of 1/cell: measured here at
    60 kV with a 40–200 mrad detector, kernels fitted on a 4×3 cell (12.7 × 16.5 Å) missed a 6×4
    multislice reference by up to 5 % (3.4 % relative to Mo), kernels fitted on 6×4 by ≤ 1.6 %.
    """
    n_planted = len(_planted(parent, examples)) + (2 if empty_sites else 0)
    return (6, 4) if n_planted <= CELLS_6x4_MAX_PLANTED else (8, 6)


def calibration_cell(parent, examples: dict[str, list[tuple[str, float]]], cells: tuple[int, int] | None = None,
                     empty_sites: bool = True) -> Atoms:
    """Parent cell with one column of every signature in ``examples`` planted far apart.

    ``examples`` maps a signature to its atoms as (symbol, z_A) pairs.  With ``empty_sites`` one
    metal site and one chalcogen column are emptied too, so the fit sees what an empty site looks
    like between its neighbours.  The cell size is :func:`default_cells` unless ``cells`` is given.
    """
    from .structures import build_lattice

    wanted = _planted(parent, examples)
    host = {signature([parent.metal]), signature([parent.chalcogen] * 2), signature([parent.chalcogen])}
    cells = cells or default_cells(parent, examples, empty_sites)
    lattice = build_lattice(parent, cells=cells)
    atoms = lattice.atoms
    cols = projected_columns(atoms, periodic=True)
    cols = cols[cols.signature.isin(host)].reset_index(drop=True)
    is_metal = (cols.signature == signature([parent.metal])).to_numpy()
    box = np.array([atoms.cell[0, 0], atoms.cell[1, 1]])
    xy = cols[["x_A", "y_A"]].to_numpy()
    planted: list[int] = []

    def farthest(candidates: np.ndarray) -> int:
        if not planted:
            return int(np.flatnonzero(candidates)[0])
        d = xy[:, None, :] - xy[planted][None, :, :]
        d -= box * np.round(d / box)
        score = np.hypot(d[..., 0], d[..., 1]).min(axis=1)
        score[~candidates] = -1
        score[planted] = -1
        return int(np.argmax(score))

    remove, add = [], []
    for sig in wanted:
        # a column with an atom in the metal plane sits on a metal site, any other on a chalcogen site
        on_metal_site = any(abs(z - lattice.z_metal_A) < 0.5 for _, z in examples[sig])
        site = farthest(is_metal if on_metal_site else ~is_metal)
        planted.append(site)
        remove.extend(cols.atoms[site])
        for symbol, z in examples[sig]:
            add.append((symbol, (xy[site, 0], xy[site, 1], z)))
    if empty_sites:
        for candidates in (is_metal, ~is_metal):
            site = farthest(candidates)
            planted.append(site)
            remove.extend(cols.atoms[site])
    keep = np.ones(len(atoms), bool)
    keep[np.asarray(remove, int)] = False
    out = atoms[keep]
    for symbol, pos in add:
        out += Atoms(symbol, positions=[pos])
    out.cell = atoms.cell
    out.info.update(atoms.info)
    out.info["empty_sites_xy_A"] = [tuple(map(float, xy[s])) for s in planted[len(wanted):]]
    out.pbc = True
    return out


def _context(parent, microscope: Microscope, method: str, phonons: FrozenPhononSettings,
             cells: tuple[int, int]) -> dict:
    return {"cells": list(cells), "parent": [parent.formula, parent.phase, float(parent.a_A), float(parent.thickness_A)],
            "microscope": replace(microscope, source_size_A=0.0).key(), "method": method,
            "phonons": phonons.key(), "basis": list(BASIS_SIGMAS_A), "v": CACHE_VERSION}


_MEMO: dict[str, Calibration] = {}  # (cache folder, _key(context, signatures)) -> calibration


def _cached(context: dict, signatures: set[str]) -> Calibration | None:
    """The cached calibration of exactly ``signatures`` for this context (this process's memory first,
    then the cache folder)."""
    memo_key = f"{cache_dir()}:{_key(context, signatures)}"
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    found = _cached_on_disk(context, signatures)
    if found is not None:
        _MEMO[memo_key] = found
    return found


def _cached_on_disk(context: dict, signatures: set[str]) -> Calibration | None:
    folder = cache_dir()
    if not folder.is_dir():
        return None
    path = folder / f"calibration-{_key(context, signatures)}.json"
    try:
        if not path.is_file() or path.stat().st_size > 1_000_000:
            return None
        data = json.loads(path.read_text())
        if data.get("context", {}).get("fit") == context and signatures == set(data.get("kernels_A2", {})):
            return Calibration.from_json(data)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _reference(parent, microscope, examples, method, phonons, cells, context, progress, cancelled):
    """The calibration cell and its abTEM image, from the cache when this exact run was made before
    (so a change of the kernel basis refits without abTEM)."""
    physics = {k: v for k, v in context.items() if k not in ("basis", "v")}
    path = cache_dir() / f"reference-{_key(physics, set(examples))}-{_key(physics, {json.dumps(examples)})}.npz"
    cell_atoms = calibration_cell(parent, examples, cells=cells)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                if np.array_equal(data["numbers"], cell_atoms.numbers) and np.allclose(data["positions"],
                                                                                       cell_atoms.positions):
                    return cell_atoms, np.asarray(data["image"], float)
        except (OSError, ValueError, KeyError):
            pass
    extent = (float(cell_atoms.cell[0, 0]), float(cell_atoms.cell[1, 1]))
    guess = estimate_seconds(len(cell_atoms), extent, microscope, method, phonons.num_configs)
    progress(0.0, f"calibrating {parent.formula} at {microscope.energy_keV:g} kV, "
                  f"{microscope.detector_inner_mrad:g}–{microscope.detector_outer_mrad:g} mrad against abTEM "
                  f"{method} (once; about {guess:.0f} s)")
    shape = (int(round(extent[1] / COMPARE_SAMPLING_A)), int(round(extent[0] / COMPARE_SAMPLING_A)))
    reference = simulate_abtem(cell_atoms, microscope, method, shape, progress=lambda f, m: progress(0.9 * f, m),
                               cancelled=cancelled, phonons=phonons)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, image=reference.astype(np.float32), numbers=cell_atoms.numbers,
                            positions=cell_atoms.positions)
        os.replace(tmp, path)
    except OSError:
        pass
    return cell_atoms, reference


def _key(context: dict, signatures: set[str]) -> str:
    text = json.dumps({"context": context, "signatures": sorted(signatures)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _write_cache(path: Path, calibration: Calibration) -> None:
    """Atomically (temporary file + rename), so a parallel reader never sees half a file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(calibration.to_json(), indent=1))
        os.replace(tmp, path)
    except OSError:
        pass


def fit_kernels(reference: np.ndarray, extent_xy_A: tuple[float, float], columns, microscope: Microscope,
                basis_sigmas_A: tuple[float, ...] = BASIS_SIGMAS_A) -> dict[str, np.ndarray]:
    """Non-negative least-squares kernel weights per signature reproducing ``reference`` pixel by pixel.

    Rows are the pixels of a 0.1 Å sub-grid, weighted by 1/√(intensity + 10 % of the mean) so dim
    regions (empty sites, the tails between columns) count about as much as the bright cores.
    """
    ny, nx = reference.shape
    stride = max(1, int(round(FIT_SAMPLING_A / (extent_xy_A[0] / nx))))
    sigs = sorted(set(columns.signature))
    blocks = []
    for sig in sigs:
        sel = (columns.signature == sig).to_numpy()
        images = render_kernel_images(columns.x_A[sel], columns.y_A[sel], (ny, nx), extent_xy_A, microscope,
                                      basis_sigmas_A)
        blocks.append(images[:, ::stride, ::stride].reshape(len(basis_sigmas_A), -1))
    design = np.concatenate(blocks, axis=0).T
    target = reference[::stride, ::stride].ravel()
    row_weight = 1.0 / np.sqrt(np.clip(target, 0, None) + 0.1 * target.mean())
    solution, _ = nnls(design * row_weight[:, None], target * row_weight, maxiter=50 * design.shape[1])
    solution = solution.reshape(len(sigs), len(basis_sigmas_A))
    return {sig: solution[k] for k, sig in enumerate(sigs)}


def check_kernels(reference: np.ndarray, model: np.ndarray, extent_xy_A: tuple[float, float], columns,
                  empty_xy_A, metal_signature: str, a_A: float) -> dict:
    """Disc-integral errors of ``model`` against ``reference`` at :func:`check_radii_A`."""
    per_signature: dict[str, float] = {}
    column_max = empty_max = 0.0
    for radius in check_radii_A(a_A):
        ref = column_intensities(reference, extent_xy_A, columns.x_A, columns.y_A, radius)
        fast = column_intensities(model, extent_xy_A, columns.x_A, columns.y_A, radius)
        rel = np.abs(fast - ref) / ref
        column_max = max(column_max, float(rel.max()))
        for sig, err in zip(columns.signature, rel):
            per_signature[sig] = max(per_signature.get(sig, 0.0), float(err))
        metal = columns.signature == metal_signature
        metal_level = float(np.median(ref[metal.to_numpy()])) if metal.any() else float(np.median(ref))
        if len(empty_xy_A):
            ex, ey = np.asarray(empty_xy_A, float).T
            e_ref = column_intensities(reference, extent_xy_A, ex, ey, radius)
            e_fast = column_intensities(model, extent_xy_A, ex, ey, radius)
            empty_max = max(empty_max, float(np.abs(e_fast - e_ref).max() / metal_level))
    return {"column_max_rel": column_max, "empty_max_rel_to_metal": empty_max, "per_signature": per_signature,
            "radii_A": list(check_radii_A(a_A))}


def calibrate_column_weights(
    parent,
    microscope: Microscope,
    examples: dict[str, list[tuple[str, float]]],
    method: str = "prism",
    progress: ProgressFn = no_progress,
    cancelled: CancelFn = never,
    use_cache: bool = True,
    phonons: FrozenPhononSettings | None = None,
    cells: tuple[int, int] | None = None,
) -> Calibration:
    """Fast-mode kernels for every signature in ``examples`` at these optics (cached after the first time).

    Parameters
    ----------
    parent : Parent
    microscope : Microscope
    examples : dict
        Signature → its atoms as (symbol, z in Å), e.g. from :func:`.columns.column_examples`.
    method : str
        abTEM method of the reference, ``prism`` (default; equal to multislice here) or ``multislice``.
    phonons : FrozenPhononSettings, optional
        Calibrate against a frozen-phonon average.
    """
    phonons = phonons or FrozenPhononSettings()
    cells = tuple(cells or default_cells(parent, examples))
    context = _context(parent, microscope, method, phonons, cells)
    wanted = set(examples)
    if use_cache:
        found = _cached(context, wanted)
        if found is not None:
            return found
    t0 = time.perf_counter()
    cell_atoms, reference = _reference(parent, microscope, examples, method, phonons, cells, context, progress,
                                       cancelled)
    extent = (float(cell_atoms.cell[0, 0]), float(cell_atoms.cell[1, 1]))
    shape = reference.shape
    progress(0.92, "fitting the column kernels")
    cols = projected_columns(cell_atoms, periodic=True)
    kernels = fit_kernels(reference, extent, cols, microscope)
    weights = np.array([kernels[s] for s in cols.signature])
    model = render_columns(cols.x_A, cols.y_A, weights, shape, extent, microscope, periodic=True, source_size_A=0.0)
    errors = check_kernels(reference, model, extent, cols, cell_atoms.info.get("empty_sites_xy_A", []),
                           signature([parent.metal]), parent.a_A)
    result = Calibration(
        kernels_A2={s: [float(v) for v in w] for s, w in kernels.items()},
        basis_sigmas_A=tuple(BASIS_SIGMAS_A),
        errors=errors,
        method=method,
        seconds=time.perf_counter() - t0,
        context={"fit": context, "cell_atoms": len(cell_atoms), "cell_A": list(extent),
                 "microscope": microscope.as_dict(), "phonons": phonons.as_dict()},
    )
    _write_cache(cache_dir() / f"calibration-{_key(context, set(result.kernels_A2))}.json", result)
    progress(1.0, f"calibrated in {result.seconds:.0f} s (largest column error {100 * result.max_rel_error:.1f} %)")
    return result
