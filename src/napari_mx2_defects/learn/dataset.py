"""Training datasets of digital twins, generated in parallel with dask and stored in chunked zarr.

Each sample draws a parent, a defect list, messy conditions, a dose, imaging imperfections, a
pixel size and a microscope.  Microscopes come from presets spanning the instruments users
have (60–300 kV, 18–35 mrad, as the project brief lists); every preset/parent pair is
calibrated against abTEM once (cached) before the workers start.

The store is written under a temporary name beside (or inside) ``out`` and moved into place only
when every sample is in (:class:`~..io.atomic.StagedOutput`): a failed or interrupted run leaves
no skeleton, and its leftover temporary is removed on the next run.  ``overwrite`` replaces only
the store's own entries (``zarr.json``, ``images``, ``labels``, …), never other files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.validation import BOUNDS, check_allocation, check_pair, format_bytes
from ..twin.microscope import Microscope

__all__ = ["MICROSCOPE_PRESETS", "REAL_DOPANTS", "REAL_OPTICS_BANK", "STORE_ENTRIES", "DatasetSpec", "acquire",
           "connect_scheduler", "generate_dataset", "load_dataset", "sample_request"]

#: Top-level entries of a dataset store (zarr v3 and v2 metadata, the two arrays): what
#: ``dataset --overwrite`` may replace.
STORE_ENTRIES = ["zarr.json", ".zgroup", ".zattrs", ".zmetadata", "images", "labels"]

#: Instruments spanning the project brief's range (60–300 kV, 18–35 mrad); the 80 kV preset is
#: the digital-twin paper's setting.  Detector ranges follow each preset's convergence angle.
#: The ``…-ADF``/``…-HAADF`` entries are the *real-optics bank* (:data:`REAL_OPTICS_BANK`): the corners of
#: the ranges real instruments span (issue 9: 60–300 kV, 15–35 mrad, detector inner 30–120 and outer
#: 150–250 mrad, defocus ±50 Å), each a microscope the fast mode is calibrated for against abTEM.  Apart
#: from the default microscope (80kV-HAADF) none is one of :data:`~..twin.microscope.OPTICS_PRESETS`: those
#: are held out for evaluation (``benchmarks/held_out_optics.py``).
MICROSCOPE_PRESETS: dict[str, Microscope] = {
    "80kV-25mrad": Microscope(80.0, 25.0, 40.0, 4e5, 50.0, 200.0),
    "60kV-30mrad": Microscope(60.0, 30.0, 20.0, 1e4, 60.0, 200.0),
    "200kV-22mrad": Microscope(200.0, 22.0, 30.0, 1e4, 45.0, 180.0),
    "300kV-18mrad": Microscope(300.0, 18.0, 50.0, 5e4, 40.0, 160.0),
    "100kV-35mrad": Microscope(100.0, 35.0, 0.0, 0.0, 70.0, 220.0),
    "60kV-35mrad-ADF": Microscope(60.0, 35.0, -40.0, 0.0, 30.0, 150.0),
    "120kV-20mrad-HAADF": Microscope(120.0, 20.0, 30.0, 1e4, 110.0, 240.0),
    "200kV-16mrad-HAADF": Microscope(200.0, 16.0, -20.0, 1e4, 60.0, 190.0),
    "300kV-15mrad-ADF": Microscope(300.0, 15.0, 50.0, 2e4, 35.0, 160.0),
}

#: The real-optics bank: the default microscope and four corners of real instruments' optics.
REAL_OPTICS_BANK = ("80kV-25mrad", "60kV-35mrad-ADF", "120kV-20mrad-HAADF", "200kV-16mrad-HAADF",
                    "300kV-15mrad-ADF")

#: Metal-site dopants lighter and heavier than the usual hosts (issue 9: Ti, V, Cr, Nb, Re, Mo↔W).
REAL_DOPANTS = ("Ti", "V", "Cr", "Nb", "Re", "Mo", "W")


@dataclass
class DatasetSpec:
    """What a dataset samples from."""

    parents: list[str] = field(default_factory=lambda: ["MoS2", "WSe2", "MoTe2", "WS2"])
    presets: list[str] = field(default_factory=lambda: list(MICROSCOPE_PRESETS))
    size_px: int = 256
    pixel_size_range_A: tuple[float, float] = (0.16, 0.24)
    dose_range_e_per_A2: tuple[float, float] = (1e4, 1e8)
    defect_density: tuple[float, float] = (0.005, 0.04)  # fraction of sites, per vacancy class
    other_defects: bool = True
    messy_probability: float = 0.3
    #: Gaussian source size σ drawn per sample (Å); a blur applied after the calibrated rendering.
    source_size_range_A: tuple[float, float] = (0.0, 0.4)
    #: Metal-site dopants a TM_D may be (drawn per twin; the host metal is skipped); every one is
    #: calibrated with the parent's standard columns, so one calibration per parent and preset serves.
    #: Empty: the parent's default dopant.
    dopants: tuple[str, ...] = ()
    #: Real acquisitions besides the twin's own imperfections: scan flyback, stronger row jitter and
    #: drift, and inputs denoised as users do (Gaussian filter or truncated SVD); see :func:`acquire`.
    real_acquisition: bool = False
    #: Messy samples may hold a grain boundary.  Its overlapping columns are signatures no standard
    #: calibration holds, so each such twin costs an abTEM calibration of its own (1–2 min on 2 cores).
    grain_boundaries: bool = True

    def __post_init__(self) -> None:
        unknown = [p for p in self.presets if p not in MICROSCOPE_PRESETS]
        if unknown:
            raise ValueError(f"unknown microscope presets {unknown}; known: {', '.join(MICROSCOPE_PRESETS)}")
        if not self.parents or not all(isinstance(p, str) and p.strip() for p in self.parents):
            raise ValueError("--parents must name at least one parent, e.g. MoS2,WSe2")
        if not self.presets:
            raise ValueError(f"--presets must name at least one preset: {', '.join(MICROSCOPE_PRESETS)}")
        from ..twin.parents import get_parent

        for parent in self.parents:
            get_parent(parent)  # a clear ValueError for an unknown parent, before any work
        self.size_px = BOUNDS["size_px"].check(self.size_px)
        self.dose_range_e_per_A2 = check_pair(BOUNDS["dose_min"], BOUNDS["dose_max"], *self.dose_range_e_per_A2)
        self.pixel_size_range_A = check_pair(BOUNDS["pixel_size_A"].with_option("pixel size range"),
                                       BOUNDS["pixel_size_A"].with_option("pixel size range"), *self.pixel_size_range_A)
        self.source_size_range_A = check_pair(BOUNDS["source_size_A"], BOUNDS["source_size_A"],
                                              *self.source_size_range_A)
        from ase.data import atomic_numbers

        self.dopants = tuple(self.dopants)
        unknown = [el for el in self.dopants if el not in atomic_numbers]
        if unknown:
            raise ValueError(f"--dopants must be chemical elements, e.g. Ti,V,Re; not {', '.join(map(str, unknown))}")
        lo, hi = self.defect_density
        if not (0 <= lo <= hi <= 0.5):
            raise ValueError(f"defect density range must satisfy 0 ≤ low ≤ high ≤ 0.5, got {self.defect_density}")
        if not 0 <= self.messy_probability <= 1:
            raise ValueError(f"messy probability must be between 0 and 1, got {self.messy_probability}")


def sample_request(spec: DatasetSpec, seed: int):
    """The :class:`~..twin.api.TwinRequest` of sample ``seed`` (deterministic)."""
    from ..twin.api import TwinRequest
    from ..twin.parents import get_parent

    rng = np.random.default_rng(seed)
    material = spec.parents[int(rng.integers(len(spec.parents)))]
    parent = get_parent(material)
    preset = spec.presets[int(rng.integers(len(spec.presets)))]
    pixel = float(rng.uniform(*spec.pixel_size_range_A))
    fov = spec.size_px * pixel
    lo, hi = spec.defect_density
    pieces = [f"V_X={100 * rng.uniform(lo, hi):.3f}%", f"V_M={100 * rng.uniform(lo, hi) / 2:.3f}%"]
    if parent.phase == "2H":
        pieces.append(f"V_XX={100 * rng.uniform(lo, hi) / 2:.3f}%")
    if spec.other_defects:
        for name in ("M_X", "X_M", "S_X", "TM_D"):
            if rng.random() < 0.3:
                pieces.append(f"{name}={int(rng.integers(1, 3))}")
    dopants = [el for el in spec.dopants if el != parent.metal]
    if dopants and rng.random() < 0.5:  # a doped layer: a few per cent of the metal sites
        pieces.append(f"TM_D({dopants[int(rng.integers(len(dopants)))]})={rng.uniform(0.5, 4):.3f}%")
    if rng.random() < 0.2:
        pieces.append("V_X:pairs=2")
    messy = rng.random() < spec.messy_probability
    rotation = float(rng.uniform(0, 60)) if messy and rng.random() < 0.7 else 0.0
    gb = (float(rng.uniform(8, 30)), float(rng.uniform(-3, 3))) if messy and rng.random() < 0.3 else None
    if not spec.grain_boundaries:
        gb = None
    holes = int(rng.integers(1, 3)) if messy and rng.random() < 0.3 else 0
    dose = float(10 ** rng.uniform(np.log10(spec.dose_range_e_per_A2[0]), np.log10(spec.dose_range_e_per_A2[1])))
    base = MICROSCOPE_PRESETS[preset]
    strong = spec.real_acquisition and rng.random() < 0.5  # a poorly behaved scan
    values = {  # the names of core.parameters, as the CLI and the Simulate dock give them
        "material": material, "defects": ",".join(pieces), "fov_A": fov, "pixel_size_A": pixel, "method": "fast",
        "seed": seed, "rotation_deg": rotation, "grain_boundary": gb, "n_holes": holes,
        "dose_e_per_A2": dose,
        "read_noise": float(rng.uniform(0, 0.5)),
        "scan_jitter_A": float(rng.uniform(0, 0.15 if strong else 0.08)),
        "drift_A_per_line": (float(rng.normal(0, 0.006 if strong else 0.002)),
                             float(rng.normal(0, 0.006 if strong else 0.002))),
        "nonlinear_drift_A": float(rng.uniform(0, 0.6)),
        "contamination": float(rng.uniform(0, 0.3)),
        "probe_current_variation": float(rng.uniform(0, 0.05)),
        "energy_keV": base.energy_keV, "semiangle_mrad": base.semiangle_mrad, "defocus_A": base.defocus_A,
        "Cs_A": base.Cs_A, "detector_mrad": (base.detector_inner_mrad, base.detector_outer_mrad),
        "source_size_A": float(rng.uniform(*spec.source_size_range_A)),
        "calibration_dopants": spec.dopants,
    }
    request = TwinRequest.from_values(values)
    if spec.real_acquisition and rng.random() < 0.5:
        request.imperfections.flyback_A = float(rng.uniform(0.1, 0.8))
    return request, preset


def acquire(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """What a user may have done to an image before segmenting it: nothing (half the time), a Gaussian
    filter (σ 0.5–1.5 px) or a truncated SVD (the image matrix kept to its 32–96 strongest components,
    the PCA denoising microscopists apply to lattice images).  Labels are unchanged.

    Detector gain and offset are not drawn: the model's input normalisation (median and percentile
    range per image) removes any affine change of the intensities.
    """
    from scipy.ndimage import gaussian_filter

    u = rng.random()
    if u < 0.5:
        return image, ""
    if u < 0.75:
        sigma = float(rng.uniform(0.5, 1.5))
        return gaussian_filter(image, sigma).astype(np.float32), f"gaussian {sigma:.2f} px"
    rank = int(rng.integers(32, 97))
    left, values, right = np.linalg.svd(image.astype(np.float64), full_matrices=False)
    return ((left[:, :rank] * values[:rank]) @ right[:rank]).astype(np.float32), f"svd rank {rank}"


def _one_sample(spec: DatasetSpec, seed: int) -> dict:
    from ..twin.api import simulate_twin

    request, preset = sample_request(spec, seed)
    # calibrations are keyed without the source size (a blur applied afterwards): presets cover them
    twin = simulate_twin(request)
    n = spec.size_px
    image = np.zeros((n, n), np.float32)
    labels = np.zeros((n, n), np.uint8)
    h, w = min(n, twin.image.shape[0]), min(n, twin.image.shape[1])
    image[:h, :w] = twin.image[:h, :w]
    labels[:h, :w] = twin.labels[:h, :w]
    denoised = ""
    if spec.real_acquisition:
        image, denoised = acquire(image, np.random.default_rng([seed, 1]))
    meta = {"seed": seed, "material": request.material, "preset": preset, "pixel_size_A": twin.pixel_size_A[1],
            "source_size_A": request.microscope.source_size_A, "denoised": denoised,
            "flyback_A": request.imperfections.flyback_A,
            "dose_e_per_A2": request.imperfections.dose_e_per_A2, "defects": request.defects,
            "rotation_deg": request.rotation_deg, "n_holes": request.n_holes,
            "grain_boundary": request.grain_boundary is not None}
    return {"image": image, "labels": labels, "meta": meta}


def _calibrate_all(spec: DatasetSpec, progress: Callable[[float, str], None]) -> None:
    """Run every parent × preset calibration once (cached), so workers only read the cache."""
    from ..twin.api import TwinRequest, simulate_twin

    pairs = [(p, k) for p in spec.parents for k in spec.presets]
    for i, (parent, preset) in enumerate(pairs):
        progress(0.3 * i / len(pairs), f"calibrating {parent} at {preset} against abTEM")
        simulate_twin(TwinRequest(material=parent, defects="V_X=1,V_M=1", fov_A=20.0,
                                  microscope=MICROSCOPE_PRESETS[preset], calibration_dopants=spec.dopants))


def connect_scheduler(address: str, timeout_s: float = 5.0):
    """A dask Client of the scheduler at ``address``; a one-line ValueError within ~``timeout_s`` otherwise.

    Accepts ``tcp://host:port``, ``tls://host:port`` and ``host:port`` (checked with a plain TCP
    connection first); other transports are left to dask.
    """
    import socket

    from dask.distributed import Client

    text = str(address).strip()
    hint = "start one there or leave --scheduler out to use a local cluster"
    if not text:
        raise ValueError("--scheduler is empty; give an address like tcp://host:8786 or leave it out")
    scheme, _, rest = text.rpartition("://")
    if scheme in ("", "tcp", "tls"):
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--scheduler {text!r} is not an address like tcp://host:8786")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                pass
        except OSError as exc:
            reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
            raise ValueError(f"--scheduler {text}: no dask scheduler reachable ({reason}); {hint}") from None
    try:
        return Client(text, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - whatever answered there is not a dask scheduler
        reason = "timed out" if isinstance(exc, TimeoutError) else f"the reply is not dask's ({type(exc).__name__})"
        raise ValueError(f"--scheduler {text}: no dask scheduler answered ({reason}); {hint}") from None


def generate_dataset(out: str | Path, n: int, spec: DatasetSpec | None = None, seed: int = 0,
                     scheduler: str | None = None, workers: int = 2,
                     progress: Callable[[float, str], None] = lambda f, m: None, overwrite: bool = False) -> Path:
    """Write ``n`` twins to a zarr group at ``out`` (arrays ``images``, ``labels``; per-sample JSON).

    The output location, the parameters, the disk space and the scheduler are all checked before
    any work; the store appears at ``out`` only when complete.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing dask.distributed scheduler (``tcp://host:8786``); by default a
        local cluster of ``workers`` processes is started.
    overwrite : bool
        Replace the store entries already at ``out`` (other files there are kept).
    """
    import shutil

    from ..io.atomic import StagedOutput

    spec = spec or DatasetSpec()
    n = BOUNDS["n_samples"].check(n)
    workers = BOUNDS["workers"].check(workers)
    seed = BOUNDS["seed"].check(seed)
    out = Path(out)
    stage = StagedOutput(out, STORE_ENTRIES, overwrite=overwrite)
    size = spec.size_px
    check_allocation(f"a dataset sample of {size}×{size} px", float(size) ** 2, 200,
                     hint="use a smaller --size")
    need = n * size * size * 5
    anchor = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    free = shutil.disk_usage(anchor).free
    if need > free:
        raise ValueError(f"{n} samples of {size}×{size} px need up to {format_bytes(need)} on disk, more than the "
                         f"{format_bytes(free)} free at {anchor}; use a smaller --n or --size")
    client = connect_scheduler(scheduler) if scheduler else None  # fails fast, before any work
    try:
        t0 = time.perf_counter()
        _calibrate_all(spec, progress)
        with stage as staging:
            _write_samples(staging, n, spec, seed, client, workers, progress, t0)
    finally:
        if client is not None:
            client.close()
    return out


def _write_samples(staging: Path, n: int, spec: DatasetSpec, seed: int, client, workers: int,
                   progress: Callable[[float, str], None], t0: float) -> None:
    """Fill the zarr store at ``staging`` with ``n`` samples (a local cluster unless ``client`` is given)."""
    import zarr
    from dask.distributed import Client, LocalCluster, as_completed

    size = spec.size_px
    root = zarr.open_group(str(staging), mode="w")
    images = root.create_array("images", shape=(n, size, size), chunks=(1, size, size), dtype="float32")
    labels = root.create_array("labels", shape=(n, size, size), chunks=(1, size, size), dtype="uint8")
    metas: list[dict | None] = [None] * n
    cluster = None
    own_client = client is None
    if own_client:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = {client.submit(_one_sample, spec, seed + i, pure=False): i for i in range(n)}
        for done, future in enumerate(as_completed(futures), start=1):
            i = futures[future]
            sample = future.result()
            images[i] = sample["image"]
            labels[i] = sample["labels"]
            metas[i] = sample["meta"]
            progress(0.3 + 0.7 * done / n, f"sample {done}/{n}")
    finally:
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()
    root.attrs["samples"] = metas
    root.attrs["spec"] = json.loads(json.dumps(asdict(spec)))
    root.attrs["seed"] = seed
    root.attrs["seconds"] = time.perf_counter() - t0
    from ..core.classes import CLASS_NAMES

    root.attrs["classes"] = {str(k): v for k, v in CLASS_NAMES.items()}


def load_dataset(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Images, labels and per-sample metadata of a dataset written by :func:`generate_dataset`."""
    root = open_dataset(path)
    return np.asarray(root["images"][:]), np.asarray(root["labels"][:]), list(root.attrs["samples"])


def open_dataset(path: str | Path):
    """The zarr group of a complete dataset, checked (one-line ValueError/FileNotFoundError otherwise)."""
    import zarr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset; make one with 'mx2-defects dataset'")
    if not path.is_dir():
        raise ValueError(f"{path} is a file, not a dataset folder (.zarr) from 'mx2-defects dataset'")
    remake = "make it again with 'mx2-defects dataset'"
    try:
        root = zarr.open_group(str(path), mode="r")
        images, labels = root["images"], root["labels"]
        samples = root.attrs.get("samples")
    except (KeyError, ValueError, OSError, TypeError) as exc:
        raise ValueError(f"{path} is not a complete dataset ({type(exc).__name__}: {str(exc)[:80]}); {remake}") \
            from None
    except Exception as exc:  # zarr raises its own errors for a folder that is no store
        raise ValueError(f"{path} is not a dataset store ({type(exc).__name__}); {remake}") from None
    if not isinstance(samples, list) or len(samples) != images.shape[0] or labels.shape != images.shape:
        raise ValueError(f"{path} is an incomplete dataset (no per-sample metadata); {remake}")
    if images.ndim != 3 or any(not isinstance(m, dict) or "pixel_size_A" not in m for m in samples):
        raise ValueError(f"{path} is not a dataset of 2-D samples with their metadata; {remake}")
    return root
