"""HAADF-STEM images of a periodic cell with abTEM: multislice or PRISM, optionally frozen phonons.

This is the reference physics of the project: the fast mode (:mod:`.render`) is calibrated
against it (:mod:`.calibration`), and ``--method multislice|prism`` twins are made by it.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms

from ..core.jobs import CancelFn, ProgressFn, check_cancelled, never, no_progress
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


def _sampling(microscope: Microscope, sampling_A: float | None) -> float:
    return min(microscope.potential_sampling_A(), sampling_A or MAX_POTENTIAL_SAMPLING_A)


def _commensurate_gpts(atoms: Atoms, sampling: float) -> tuple[int, int] | None:
    """The potential grid of an orthogonal supercell: every lattice translation a whole number of pixels, so
    symmetry-equivalent columns are sampled identically (see MAX_POTENTIAL_SAMPLING_A); None for other
    cells."""
    cells = atoms.info.get("orthogonal_cells")
    if not cells:
        return None
    lx, ly = atoms.cell[0, 0] / cells[0], atoms.cell[1, 1] / cells[1]
    # (an even count per cell also makes the centring translation (a/2, a√3/2) whole pixels)
    return int(cells[0] * _even_ceil(lx / sampling)), int(cells[1] * _even_ceil(ly / sampling))


def _scan_gpts(atoms: Atoms, microscope: Microscope, oversampling: float) -> tuple[int, int]:
    """Probe positions of the Nyquist scan (commensurate with an orthogonal supercell)."""
    cell = atoms.cell.lengths()[:2]
    nyq = microscope.nyquist_scan_sampling_A / oversampling
    cells = atoms.info.get("orthogonal_cells")
    if cells:  # commensurate scan: equivalent columns are scanned identically
        return tuple(int(c * _even_ceil(length / c / nyq)) for c, length in zip(cells, cell))
    return int(np.ceil(cell[0] / nyq)), int(np.ceil(cell[1] / nyq))


def _potential(atoms: Atoms, microscope: Microscope, phonons: FrozenPhononSettings, sampling_A: float | None):
    import abtem

    sampling = _sampling(microscope, sampling_A)
    gpts = _commensurate_gpts(atoms, sampling)
    grid: dict = {"sampling": sampling} if gpts is None else {"gpts": gpts}
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


#: Cost model of :func:`estimate_seconds` and of :func:`simulate_abtem`'s progress split, in seconds per unit
#: of work, fitted to runs measured on this project's machine (the runs, the fit and how well it holds on
#: runs not used for it are in :func:`estimate_seconds`).  ``F(gx, gy) = gx·gy·(Σ prime factors of gx + of
#: gy)`` is the operation count of one 2-D FFT: FFTW's time per transform on the grids here (commensurate
#: grids hold primes such as 31, 41, 71) is 0.41–1.03 ns per F (0.60–1.03 ns on grids with a prime above 7)
#: but 0.84–7.1 ns per N·log₂N (measured for 17 grids from 72×124 to 492×568, FFTW_MEASURE, one thread).
COST_FIXED_S = 1.97  # once per run: abTEM's first calls (FFTW planning, FFTW_MEASURE), the interpolation
COST_POTENTIAL_PIXEL_S = 1.36e-6  # projecting the potential: per pixel × slice × configuration
COST_BUILD_S = 0.55  # PRISM, per configuration: setting up and planning the scattering-matrix build
COST_PROPAGATE_S = 1.19e-9  # PRISM build: per plane wave × slice × F(potential grid)
COST_STRIP_S = 0.079  # PRISM, per reduction strip and configuration
COST_REDUCE_S = 1.21e-10  # PRISM reduction: per probe position × plane wave × downsampled pixel
COST_DETECT_S = 6.65e-10  # PRISM: per probe position × F(downsampled grid), the detector's FFT
COST_MULTISLICE_STRIP_S = 0.094  # multislice, per strip and configuration
COST_MULTISLICE_S = 9.69e-10  # multislice: per probe position × slice × F(potential grid)
#: Slices of this project's monolayer cells (7.1 Å of MoS2 with vacuum, at 1 Å per slice).
DEFAULT_SLICES = 8
#: Largest projected potential (all frozen-phonon configurations, float32) multislice computes up front.
_POTENTIAL_BYTES = 512e6
#: Longest a PRISM reduction strip should take (s): more strips than ``blocks`` where needed, since a cancel
#: takes effect between strips (the reduction of a strip is one eager abTEM call).
_STRIP_SECONDS = 5.0


def _prime_factor_sum(n: int) -> int:
    total, p = 0, 2
    while n > 1 and p * p <= n:
        while n % p == 0:
            total, n = total + p, n // p
        p += 1
    return total + (n if n > 1 else 0)


def _fft_ops(gpts: tuple[int, int] | None, pixels: float) -> float:
    """``F`` above; for a grid not known exactly (an extent only), 4·log₂(pixels) in place of the prime
    factors, their typical sum on this project's commensurate grids."""
    if gpts is None:
        return float(pixels * 4 * np.log2(max(pixels, 2.0)))
    return float(gpts[0] * gpts[1] * (_prime_factor_sum(gpts[0]) + _prime_factor_sum(gpts[1])))


def _downsampled(g: int) -> int:
    """abTEM's PRISM downsampling to the antialias cutoff: 2/3 of the grid, same parity."""
    d = int(2 * g / 3)
    return d + (d - g) % 2


def _plane_waves(area_A2: float, microscope: Microscope) -> float:
    """Number of PRISM plane waves: wave vectors on the cell's reciprocal grid inside the aperture (its soft
    edge adds about half a grid step to the radius, as in abTEM's ``SMatrix.wave_vectors``)."""
    k = microscope.semiangle_mrad * 1e-3 / microscope.wavelength_A
    return float(np.pi * (k * np.sqrt(area_A2) + 0.5) ** 2)


def _stage_seconds(gpts: tuple[int, int] | None, pixels: float, slices: int, plane_waves: float,
                   positions: float, strips: int) -> dict[str, float]:
    """Seconds of each stage of one configuration (``fixed`` once per run), from the cost model above.

    No stage is divided among cores: measured here, dask's two worker threads do not overlap abTEM's tasks
    (a 7-chunk scattering-matrix build of the 6×4 cell took 49 s on one worker, 59–64 s on two, with wall
    time = CPU time), and wall time stayed within 5 % of CPU time in every run of the table.
    """
    down = None if gpts is None else (_downsampled(gpts[0]), _downsampled(gpts[1]))
    down_pixels = pixels * 4 / 9 if down is None else float(down[0] * down[1])
    fft, fft_down = _fft_ops(gpts, pixels), _fft_ops(down, down_pixels)
    stages = {
        "fixed": COST_FIXED_S,
        "potential": COST_POTENTIAL_PIXEL_S * pixels * slices,
        "build": COST_BUILD_S + COST_PROPAGATE_S * plane_waves * slices * fft,
        "reduce": strips * COST_STRIP_S + COST_REDUCE_S * positions * plane_waves * down_pixels
        + COST_DETECT_S * positions * fft_down,
        "multislice": strips * COST_MULTISLICE_STRIP_S + COST_MULTISLICE_S * positions * slices * fft,
    }
    return {name: float(value) for name, value in stages.items()}


def _strips(stages: dict[str, float], method: str, blocks: int, columns: int) -> int:
    """Scan strips: ``blocks`` (PRISM: more where a strip's reduction would take over ``_STRIP_SECONDS``), at
    most one per scan column."""
    n = max(blocks, int(np.ceil(stages["reduce"] / _STRIP_SECONDS))) if method == "prism" else blocks
    return int(max(1, min(n, columns)))


def _total_seconds(stages: dict[str, float], method: str, configs: int) -> float:
    per_config = stages["build"] + stages["reduce"] if method == "prism" else stages["multislice"]
    return stages["fixed"] + max(1, configs) * (stages["potential"] + per_config)


def estimate_seconds(n_atoms: int, extent_xy_A: tuple[float, float], microscope: Microscope, method: str,
                     phonon_configs: int = 0, *, atoms: Atoms | None = None,
                     potential_sampling_A: float | None = None, oversampling: float = 1.0,
                     slices: int = DEFAULT_SLICES, blocks: int = 8) -> float:
    """Wall time of :func:`simulate_abtem` (or of the fast mode) in seconds on this project's 2-core machine.

    Given ``atoms`` (the cell :func:`simulate_abtem` will image) the potential grid, slices and scan are the
    simulation's own; from an extent alone the grid is ``extent / sampling`` with a typical FFT cost
    (4·log₂ pixels in place of the sum of prime factors), ``slices`` of the monolayer, and the estimate of a
    grid with large prime factors (300 kV: 41, 71) comes out up to 2.4× low.  The model (constants above)::

        fixed + configs × (potential + PRISM: build + reduce | multislice)
        potential  = COST_POTENTIAL_PIXEL_S · pixels · slices
        build      = COST_BUILD_S + COST_PROPAGATE_S · plane waves · slices · F(grid)
        reduce     = strips · COST_STRIP_S + COST_REDUCE_S · positions · plane waves · pixels↓
                     + COST_DETECT_S · positions · F(grid↓)            (↓: PRISM's grid downsampled by 2/3)
        multislice = strips · COST_MULTISLICE_STRIP_S + COST_MULTISLICE_S · positions · slices · F(grid)

    Measured 2026-12-01 on the development machine (x86_64, 2 vCPUs "Intel Xeon Processor", 23 GiB; abTEM
    1.0.11, FFTW, float32), each run in a fresh process (so FFTW planning and abTEM's first calls count, as
    in a user's first simulation), periodic MoS2 cells from ``build_lattice(get_parent("MoS2"), cells=(nx,
    ny))``, default 0.045 Å-or-finer potential, Nyquist scan, 8 strips.  The machine was shared: a niced
    abTEM benchmark ran throughout and other engineers' test suites came and went (load average 4–11), so
    wall times are somewhat long; wall time stayed within 5 % of CPU time, and the constants were fitted
    (non-negative least squares on relative error) to the CPU time of each stage.  Fitted on 23 runs (PRISM
    1×1, 2×1, 2×2, 3×2 at 80kV-HAADF, 60kV-ADF and 300kV-ADF, 4×3 at 80 kV, 4×2 at 300 kV; multislice 1×1,
    2×1, 2×2 at the same three optics): measured/estimated 0.86–1.35.  On 12 runs not used for the fit::

        cells  extent (Å)   optics       method      configs  wall (s)  CPU (s)  estimated  measured/est.
        2×1    6.4×5.5      200kV-HAADF  prism          0        7.6      7.5       7.7       0.99
        2×2    6.4×11.0     200kV-HAADF  prism          0       22.7     21.7      20.1       1.13
        3×3    9.6×16.5     200kV-HAADF  prism          0      101.6     98.4      86.2       1.18
        5×3    15.9×16.5    80kV-HAADF   prism          0       40.4     39.2      35.1       1.15
        4×2    12.7×11.0    60kV-ADF     prism          0       12.2     11.3      13.4       0.91
        6×4    19.1×22.1    80kV-HAADF   prism          0       82.9     80.5      86.4       0.96
        2×1    6.4×5.5      200kV-HAADF  multislice     0       18.3     18.0      15.6       1.17
        3×2    9.6×11.0     80kV-HAADF   multislice     0       22.2     21.7      17.8       1.25
        3×1    9.6×5.5      60kV-ADF     multislice     0        9.6      9.1       6.5       1.48
        4×3    12.7×16.5    80kV-HAADF   multislice     0       96.5     92.2      64.2       1.50
        2×1    6.4×5.5      80kV-HAADF   prism          3        8.4      8.3       7.6       1.11
        1×1    3.2×5.5      80kV-HAADF   multislice     3        5.8      5.7       5.6       1.03

    (estimated with ``atoms``; from the extent alone 0.82–1.65).  Extrapolated: a 40 Å cell (13×7, 80 kV)
    takes ~16 min to build its PRISM scattering matrix and as long again to reduce it, multislice ~72 min.
    The fast mode renders ~10⁶ columns per second after its (cached) calibration.
    """
    if method == "fast":
        return 0.05 + n_atoms / 1e6
    sampling = _sampling(microscope, potential_sampling_A)
    if atoms is not None:
        extent_xy_A = tuple(float(v) for v in atoms.cell.lengths()[:2])
        gpts = _commensurate_gpts(atoms, sampling) or tuple(int(np.ceil(v / sampling)) for v in extent_xy_A)
        slices = int(np.ceil(atoms.cell[2, 2] / SLICE_THICKNESS_A))
        n_scan = _scan_gpts(atoms, microscope, oversampling)
        pixels = float(gpts[0] * gpts[1])
    else:
        gpts = None
        pixels = float(extent_xy_A[0]) * float(extent_xy_A[1]) / sampling**2
        n_scan = tuple(float(v) / (microscope.nyquist_scan_sampling_A / oversampling) for v in extent_xy_A)
    area, positions = float(extent_xy_A[0]) * float(extent_xy_A[1]), float(n_scan[0]) * float(n_scan[1])
    plane_waves = _plane_waves(area, microscope)
    stages = _stage_seconds(gpts, pixels, slices, plane_waves, positions, blocks)
    strips = _strips(stages, method, blocks, int(np.ceil(n_scan[0])))
    stages = _stage_seconds(gpts, pixels, slices, plane_waves, positions, strips)
    return _total_seconds(stages, method, phonon_configs)


#: dask task names that carry the work: plane waves through the potential (PRISM), the probe scan
#: (multislice).  Progress counts these where a graph has them, all tasks otherwise.
_HEAVY_TASKS = ("build_s_matrix", "calculate_array")


@functools.cache
def _job_callback_class():
    from dask.callbacks import Callback
    from dask.utils import key_split

    class JobCallback(Callback):
        """Finished tasks become ``progress`` from ``start`` to ``stop``; :class:`Cancelled` is raised between
        tasks.  ``cancelled()`` is asked before each task starts and after each one finishes; tasks already
        running when it turns true finish in dask's worker threads and their results are dropped."""

        def __init__(self, progress: ProgressFn, cancelled: CancelFn, start: float, stop: float,
                     message: str):
            super().__init__()
            self.report, self.cancelled, self.message = progress, cancelled, message
            self.start, self.stop = float(start), float(stop)
            self.heavy: set | None = None
            self.total = self.done = 0

        def check(self) -> None:
            check_cancelled(self.cancelled, "simulation")

        def _start_state(self, dsk, state) -> None:
            keys = [key for name in ("ready", "waiting", "running") for key in state[name]]
            heavy = {key for key in keys if any(name in key_split(key) for name in _HEAVY_TASKS)}
            self.heavy = heavy or None
            self.total = max(1, len(heavy or keys))
            self.check()

        def _pretask(self, key, dsk, state) -> None:
            self.check()

        def _posttask(self, key, result, dsk, state, worker_id) -> None:
            if self.heavy is None or key in self.heavy:
                self.done += 1
                fraction = self.start + (self.stop - self.start) * min(1.0, self.done / self.total)
                self.report(fraction, self.message)
            self.check()

    return JobCallback


def _compute(obj, progress: ProgressFn, cancelled: CancelFn, start: float, stop: float, message: str):
    """``obj.compute()`` of a lazy abTEM object with progress per task and a cancel between tasks (the
    callback is passed to this computation only, so other threads' dask computations are not counted)."""
    if not getattr(obj, "is_lazy", False):
        return obj
    job = _job_callback_class()(progress, cancelled, start, stop, message)
    return obj.compute(progress_bar=False, callbacks=[job._callback])


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

    The scan runs at Nyquist sampling in ``blocks`` strips (PRISM: more where a strip's reduction would take
    over ~5 s).  The projected potential is computed once (per frozen-phonon configuration for PRISM).  PRISM
    builds its scattering matrix once per configuration, as a dask graph of plane-wave chunks computed task by
    task (``progress`` follows the chunks, "building the PRISM scattering matrix"), and reduces it strip by
    strip; multislice computes each strip task by task (probe-position chunks) and averages the
    configurations inside it.  A cancel (``cancelled()`` turning true) takes effect between dask tasks and
    between strips; progress is monotone, its shares of the run come from the cost model of
    :func:`estimate_seconds`.  ``potential_sampling_A`` lowers the potential's sampling below the default
    0.045 Å.  The image is the one abTEM's eager ``SMatrix.build(lazy=False)`` path gives, bit for bit.
    """
    import abtem

    if method not in ("prism", "multislice"):
        raise ValueError(f"abTEM method must be 'prism' or 'multislice', not {method!r}")
    phonons = phonons or FrozenPhononSettings()
    abtem.config.set({"device": "cpu"})
    check_cancelled(cancelled, "simulation")
    cell = atoms.cell.lengths()[:2]
    potential = _potential(atoms, microscope, phonons, potential_sampling_A)
    detector = microscope.abtem_detector()
    n_scan = _scan_gpts(atoms, microscope, oversampling)
    step = (cell[0] / n_scan[0], cell[1] / n_scan[1])
    configs = max(1, phonons.num_configs)
    gpts = (int(potential.gpts[0]), int(potential.gpts[1]))
    energy = microscope.energy_keV * 1e3
    if method == "prism":
        source = abtem.SMatrix(potential=potential, energy=energy, semiangle_cutoff=microscope.semiangle_mrad,
                               interpolation=1)
    plane_waves = len(source) if method == "prism" else 0
    sizes = (gpts, gpts[0] * gpts[1], len(potential), plane_waves, np.prod(n_scan))
    n_strips = _strips(_stage_seconds(*sizes, blocks), method, blocks, n_scan[0])
    stages = _stage_seconds(*sizes, n_strips)
    per_config = stages["build"] + stages["reduce"] if method == "prism" else stages["multislice"]
    edges = np.linspace(0, n_scan[0], n_strips + 1).astype(int)
    scans = [abtem.GridScan(start=(a * step[0], 0.0), end=(b * step[0], cell[1]), gpts=(b - a, n_scan[1]),
                            endpoint=False) for a, b in zip(edges[:-1], edges[1:])]
    # progress: each stage's share of 0.99 (the rest is the interpolation), from the cost model
    run = _Run(progress, cancelled, stages, unit=0.99 / float(configs * (stages["potential"] + per_config)))
    if method == "prism":
        array = _prism_image(run, microscope, source, potential, phonons, scans, detector)
    else:
        array = _multislice_image(run, microscope, potential, configs, gpts, phonons, scans, detector)
    images = abtem.Images(array, sampling=step)
    fine = images.interpolate(gpts=(shape[1], shape[0]))
    progress(1.0, "done")
    return np.asarray(fine.array).T.copy()


class _Run:
    """The progress account of one abTEM run: how far it is (``done``, a fraction), each stage's share
    (``unit`` × the cost model's seconds), and the cancel check."""

    def __init__(self, progress: ProgressFn, cancelled: CancelFn, stages: dict[str, float], unit: float):
        self.progress, self.cancelled, self.stages, self.unit = progress, cancelled, stages, unit
        self.done = 0.0

    def check(self) -> None:
        check_cancelled(self.cancelled, "simulation")

    def compute(self, lazy, share: float, message: str):
        """Compute a lazy abTEM object task by task, its progress spread over ``share``."""
        self.progress(self.done, message)
        array = _compute(lazy, self.progress, self.cancelled, self.done, self.done + share, message)
        self.done += share
        return array

    def project(self, potential, suffix: str = "", count: int = 1):
        """The projected potential, computed once (abTEM would project it again for every plane-wave chunk
        or probe-position task); the same numbers as projecting it on the fly."""
        return self.compute(potential.build(lazy=True), self.unit * count * self.stages["potential"],
                            "projecting the potential" + suffix)


def _prism_image(run: _Run, microscope: Microscope, source, potential, phonons: FrozenPhononSettings, scans,
                 detector) -> np.ndarray:
    """PRISM: one scattering matrix per frozen-phonon configuration, reduced strip by strip; (x, y)."""
    import abtem

    energy = microscope.energy_keV * 1e3
    ctf = abtem.CTF(energy=energy, semiangle_cutoff=microscope.semiangle_mrad, defocus=microscope.defocus_A,
                    Cs=microscope.Cs_A)
    # one scattering matrix per configuration (the static lattice is one configuration)
    pots = [block.item().potential for _, _, block in source.generate_blocks(1)] if phonons.enabled \
        else [potential]
    image = None
    for c, pot in enumerate(pots):
        run.check()
        suffix = f" (configuration {c + 1}/{len(pots)})" if phonons.enabled else ""
        s_matrix = abtem.SMatrix(potential=run.project(pot, suffix), energy=energy,
                                 semiangle_cutoff=microscope.semiangle_mrad, interpolation=1)
        built = run.compute(s_matrix.build(lazy=True), run.unit * run.stages["build"],
                            "building the PRISM scattering matrix" + suffix)
        strips = []
        for k, scan in enumerate(scans):
            run.check()
            strips.append(_strip_array(built.reduce(scan=scan, detectors=detector, ctf=ctf)))
            run.done += run.unit * run.stages["reduce"] / len(scans)
            run.progress(run.done, f"prism: strip {k + 1}/{len(scans)}" + suffix)
        del built
        config_image = np.concatenate(strips, axis=0)
        image = config_image if image is None else image + config_image
    return image / len(pots) if len(pots) > 1 else image


def _multislice_image(run: _Run, microscope: Microscope, potential, configs: int, gpts: tuple[int, int],
                      phonons: FrozenPhononSettings, scans, detector) -> np.ndarray:
    """Multislice: each strip task by task (probe-position chunks), configurations averaged inside; (x, y)."""
    probe = microscope.abtem_probe()
    if configs * len(potential) * gpts[0] * gpts[1] * 4 <= _POTENTIAL_BYTES:
        potential = run.project(potential, " (all configurations)" if phonons.enabled else "", configs)
    else:  # projected inside each probe-position task instead
        run.done += run.unit * configs * run.stages["potential"]
    strips = []
    share = run.unit * configs * run.stages["multislice"] / len(scans)
    for k, scan in enumerate(scans):
        run.check()
        message = f"multislice: strip {k + 1}/{len(scans)}"
        strips.append(_strip_array(run.compute(probe.scan(potential, scan=scan, detectors=detector), share,
                                               message)))
        run.progress(run.done, message)
    return np.concatenate(strips, axis=0)  # abTEM order: (x, y)


def _strip_array(result) -> np.ndarray:
    array = np.asarray(result.array)
    while array.ndim > 2:  # an ensemble axis kept by abTEM: average it
        array = array.mean(axis=0)
    return array
