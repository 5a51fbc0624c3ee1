"""HAADF-STEM images of a periodic cell with abTEM: multislice or PRISM, optionally frozen phonons.

This is the reference physics of the project: the fast mode (:mod:`.render`) is calibrated
against it (:mod:`.calibration`), and ``--method multislice|prism`` twins are made by it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms

from .jobs import CancelFn, Cancelled, ProgressFn, never, no_progress
from .microscope import Microscope

__all__ = ["FrozenPhononSettings", "estimate_seconds", "simulate_abtem"]

#: Slice thickness of the abTEM potential (Å).
SLICE_THICKNESS_A = 1.0
#: Coarsest potential sampling (Å).  Measured here on a 2×1 MoS2 cell: with abTEM's
#: "infinite" projection at 0.063 Å, symmetry-equivalent columns differed by 2.9 % (Mo) and
#: 1.7 % (S2) depending on where they sat on the grid; "finite" projection at 0.045 Å
#: brought that to 0.5 % and 0.1 %.
MAX_POTENTIAL_SAMPLING_A = 0.045
#: Default r.m.s. thermal displacement per direction (Å) for frozen phonons: the value abTEM's own
#: walkthrough ("Effect of temperature with frozen phonons", abtem.readthedocs.io) gives every species.
DEFAULT_PHONON_SIGMA_A = 0.1


@dataclass(frozen=True)
class FrozenPhononSettings:
    """abTEM frozen phonons: ``num_configs`` snapshots (0 = static lattice), Gaussian displacements of
    standard deviation ``sigma_A`` per Cartesian direction, drawn with ``seed``."""

    num_configs: int = 0
    sigma_A: float = DEFAULT_PHONON_SIGMA_A
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.num_configs, (int, np.integer)) and 0 <= self.num_configs <= 256):
            raise ValueError(f"frozen phonons: number of configurations must be 0–256, got {self.num_configs}")
        if not (np.isfinite(self.sigma_A) and 0 < self.sigma_A <= 0.5):
            raise ValueError(f"frozen phonons: displacement σ must be in (0, 0.5] Å, got {self.sigma_A}")

    @property
    def enabled(self) -> bool:
        return self.num_configs > 0

    def as_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        return "static" if not self.enabled else f"fp{self.num_configs}-s{self.sigma_A:g}-seed{self.seed}"


def _even_ceil(value: float) -> int:
    return int(2 * np.ceil(value / 2))


def _potential(atoms: Atoms, microscope: Microscope, phonons: FrozenPhononSettings, sampling_A: float | None):
    import abtem

    sampling = min(microscope.potential_sampling_A(), sampling_A or MAX_POTENTIAL_SAMPLING_A)
    grid: dict = {"sampling": sampling}
    cells = atoms.info.get("orthogonal_cells")
    if cells:
        # commensurate grid: every lattice translation is a whole number of pixels, so
        # symmetry-equivalent columns are sampled identically (see MAX_POTENTIAL_SAMPLING_A)
        lx, ly = atoms.cell[0, 0] / cells[0], atoms.cell[1, 1] / cells[1]
        # (an even count per cell also makes the centring translation (a/2, a√3/2) whole pixels)
        grid = {"gpts": (int(cells[0] * _even_ceil(lx / sampling)), int(cells[1] * _even_ceil(ly / sampling)))}
    source = atoms
    if phonons.enabled:
        source = abtem.FrozenPhonons(atoms, num_configs=int(phonons.num_configs), sigmas=float(phonons.sigma_A),
                                     seed=int(phonons.seed))
    potential = abtem.Potential(source, slice_thickness=SLICE_THICKNESS_A, projection="finite", **grid)
    probe = microscope.abtem_probe()
    probe.grid.match(potential)
    reach = min(probe.cutoff_angles)
    if reach < microscope.detector_outer_mrad:
        raise ValueError(
            f"the potential sampling reaches {reach:.0f} mrad, inside the detector's outer angle "
            f"{microscope.detector_outer_mrad:g} mrad: HAADF signal would be lost. Lower the outer angle."
        )
    return potential


def estimate_seconds(n_atoms: int, extent_A: tuple[float, float], microscope: Microscope, method: str,
                     phonon_configs: int = 0) -> float:
    """Rough wall time on 2 CPU cores, from measurements on this project's machine.

    Multislice on a 6×4 MoS2 cell (19.1 × 22.1 Å, 46×53 probe positions, 0.04 Å potential) took
    169 s and PRISM 79 s at 80 kV (benchmarks/RESULTS.md); both grow with the number of probe
    positions (∝ 1/λ²α² at Nyquist) and of potential pixels (∝ 1/sampling²).  The fast mode
    renders ~10⁶ columns per second after its (cached) calibration.
    """
    if method == "fast":
        return 0.05 + n_atoms / 1e6
    scan = microscope.nyquist_scan_sampling_A
    positions = (extent_A[0] / scan) * (extent_A[1] / scan)
    ref_sampling = 0.04
    pixels = extent_A[0] * extent_A[1] / min(microscope.potential_sampling_A(), MAX_POTENTIAL_SAMPLING_A) ** 2
    ref_pixels = 19.1 * 22.1 / ref_sampling**2
    configs = max(1, phonon_configs)
    if method == "prism":
        return 79.0 * (pixels / ref_pixels) ** 1.5 * configs
    return 169.0 * (positions / (46 * 53)) * (pixels / ref_pixels) * configs


def simulate_abtem(
    atoms: Atoms,
    microscope: Microscope,
    method: str,
    shape: tuple[int, int],
    progress: ProgressFn = no_progress,
    cancelled: CancelFn = never,
    blocks: int = 8,
    oversampling: float = 1.0,
    phonons: FrozenPhononSettings | None = None,
    potential_sampling_A: float | None = None,
) -> np.ndarray:
    """HAADF image of a periodic cell with abTEM, Fourier-interpolated to ``shape`` (y, x).

    The scan runs at Nyquist sampling in ``blocks`` strips so that progress can be reported and a
    cancel takes effect between strips.  PRISM builds its scattering matrix per frozen-phonon
    configuration inside the first strips; multislice averages the configurations per strip.
    ``potential_sampling_A`` lowers the potential's sampling below the default 0.045 Å.
    """
    import abtem

    if method not in ("prism", "multislice"):
        raise ValueError(f"abTEM method must be 'prism' or 'multislice', not {method!r}")
    phonons = phonons or FrozenPhononSettings()
    abtem.config.set({"device": "cpu"})
    cell = atoms.cell.lengths()[:2]
    potential = _potential(atoms, microscope, phonons, potential_sampling_A)
    detector = microscope.abtem_detector()
    nyq = microscope.nyquist_scan_sampling_A / oversampling
    n_scan = (int(np.ceil(cell[0] / nyq)), int(np.ceil(cell[1] / nyq)))
    cells = atoms.info.get("orthogonal_cells")
    if cells:  # commensurate scan: equivalent columns are scanned identically
        n_scan = tuple(int(c * _even_ceil(length / c / nyq)) for c, length in zip(cells, cell))
    step = (cell[0] / n_scan[0], cell[1] / n_scan[1])
    if method == "prism":
        source = abtem.SMatrix(
            potential=potential,
            energy=microscope.energy_keV * 1e3,
            semiangle_cutoff=microscope.semiangle_mrad,
            interpolation=1,
        )
        ctf = abtem.CTF(
            energy=microscope.energy_keV * 1e3,
            semiangle_cutoff=microscope.semiangle_mrad,
            defocus=microscope.defocus_A,
            Cs=microscope.Cs_A,
        )
        if phonons.enabled:  # one scattering matrix per configuration: built lazily, per strip
            s_matrix = source
        else:
            progress(0.05, "building the PRISM scattering matrix")
            if cancelled():
                raise Cancelled("simulation cancelled")
            s_matrix = source.build(lazy=False)

        def run(scan):
            return s_matrix.reduce(scan=scan, detectors=detector, ctf=ctf)
    else:
        probe = microscope.abtem_probe()

        def run(scan):
            return probe.scan(potential, scan=scan, detectors=detector)

    strips = []
    edges = np.linspace(0, n_scan[0], min(blocks, n_scan[0]) + 1).astype(int)
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        if cancelled():
            raise Cancelled("simulation cancelled")
        scan = abtem.GridScan(start=(a * step[0], 0.0), end=(b * step[0], cell[1]), gpts=(b - a, n_scan[1]),
                              endpoint=False)
        result = run(scan)
        result = result.compute(progress_bar=False) if hasattr(result, "compute") else result
        array = np.asarray(result.array)
        while array.ndim > 2:  # an ensemble axis kept by abTEM: average it
            array = array.mean(axis=0)
        strips.append(array)
        progress(0.1 + 0.85 * (k + 1) / (len(edges) - 1), f"{method}: strip {k + 1}/{len(edges) - 1}")
    array = np.concatenate(strips, axis=0)  # abTEM order: (x, y)
    images = abtem.Images(array, sampling=step)
    fine = images.interpolate(gpts=(shape[1], shape[0]))
    progress(1.0, "done")
    return np.asarray(fine.array).T.copy()
