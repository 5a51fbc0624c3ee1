"""Microscope settings of a HAADF-STEM simulation and the quantities derived from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.parameters import DEFAULTS

__all__ = ["OPTICS_PRESETS", "Microscope", "wavelength_A"]


def wavelength_A(energy_keV: float) -> float:
    """Relativistic electron wavelength in Å (abTEM's own formula)."""
    from abtem.core.energy import energy2wavelength

    return float(energy2wavelength(energy_keV * 1e3))


@dataclass(frozen=True)
class Microscope:
    """Probe and detector.

    Defaults (:data:`~..core.parameters.DEFAULTS`) are the digital-twin paper's settings as this project's design
    brief states them (80 keV, 25 mrad convergence semi-angle, defocus 40 Å,
    Cs 4e5 Å, HAADF detector 50–200 mrad).  ``defocus_A`` and ``Cs_A`` are
    passed to abTEM unchanged (abTEM's sign convention: positive defocus is
    underfocus).  ``source_size_A`` is the standard deviation of the Gaussian
    partial spatial coherence envelope (0 = a point source).
    """

    energy_keV: float = DEFAULTS["energy_keV"]
    semiangle_mrad: float = DEFAULTS["semiangle_mrad"]
    defocus_A: float = DEFAULTS["defocus_A"]
    Cs_A: float = DEFAULTS["Cs_A"]
    detector_inner_mrad: float = DEFAULTS["detector_inner_mrad"]
    detector_outer_mrad: float = DEFAULTS["detector_outer_mrad"]
    source_size_A: float = DEFAULTS["source_size_A"]

    def __post_init__(self) -> None:
        from ..core.validation import BOUNDS

        for name in ("energy_keV", "semiangle_mrad", "defocus_A", "Cs_A", "detector_inner_mrad",
                     "detector_outer_mrad", "source_size_A"):
            try:
                BOUNDS[name].check(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"microscope settings: {exc}") from None
        checks = [
            (self.energy_keV > 0, "beam energy must be positive"),
            (self.semiangle_mrad > 0, "convergence semi-angle must be positive"),
            (0 <= self.detector_inner_mrad < self.detector_outer_mrad, "detector inner angle must be below the outer"),
            (self.source_size_A >= 0, "source size must be non-negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"microscope settings: {message}")

    @property
    def wavelength_A(self) -> float:
        return wavelength_A(self.energy_keV)

    @property
    def nyquist_scan_sampling_A(self) -> float:
        """Scan step that samples the probe's band limit: λ / (4 α)."""
        return self.wavelength_A / (4 * self.semiangle_mrad * 1e-3)

    def potential_sampling_A(self) -> float:
        """Potential sampling whose antialiased scattering range reaches past the detector.

        abTEM keeps spatial frequencies up to 2/3 of the Nyquist frequency
        (antialiasing), i.e. angles up to (2/3)·λ/(2·Δx).  A HAADF detector
        whose outer angle lies beyond that silently loses signal, so Δx is
        chosen with a 10 % margin below the limit.
        """
        outer = self.detector_outer_mrad * 1e-3
        return 0.9 * (2.0 / 3.0) * self.wavelength_A / (2 * outer)

    def as_dict(self) -> dict:
        return asdict(self)

    def recorded_optics(self) -> dict:
        """These optics under the keys a reader records them (:mod:`..io.optics`; layer metadata
        ``"optics"``, the ``optics`` argument of the analysis and the segmentation)."""
        return {"beam_energy_keV": self.energy_keV, "convergence_semiangle_mrad": self.semiangle_mrad,
                "detector_inner_mrad": self.detector_inner_mrad, "detector_outer_mrad": self.detector_outer_mrad}

    def key(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in sorted(self.as_dict().items()))

    def abtem_probe(self, **grid) -> abtem.Probe:  # noqa: F821
        """An abTEM probe with these settings (grid keywords forwarded)."""
        import abtem

        return abtem.Probe(
            energy=self.energy_keV * 1e3,
            semiangle_cutoff=self.semiangle_mrad,
            defocus=self.defocus_A,
            Cs=self.Cs_A,
            **grid,
        )

    def abtem_detector(self) -> abtem.AnnularDetector:  # noqa: F821
        import abtem

        return abtem.AnnularDetector(inner=self.detector_inner_mrad, outer=self.detector_outer_mrad)

    def probe_radial_profile(
        self, blur_sigma_A: float = 0.0, sampling_A: float = 0.02, window_A: float = 24.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Radially averaged probe intensity from abTEM, normalised to unit total.

        ``blur_sigma_A`` convolves the probe intensity with a Gaussian first
        (the fast mode's effective width of a column's scattering object).

        Returns
        -------
        r_A, intensity_per_A2
            Radii and the intensity density (per Å²) at those radii.
        """
        return _probe_profile_cached(self, float(blur_sigma_A), float(sampling_A), float(window_A))


_PROFILE_CACHE: dict = {}


def _probe_intensity(m: Microscope, sampling: float, extent: float) -> np.ndarray:
    key = (m.energy_keV, m.semiangle_mrad, m.defocus_A, m.Cs_A, sampling, extent)
    if key not in _PROFILE_CACHE:
        probe = m.abtem_probe(extent=extent, sampling=sampling)
        waves = probe.build(scan=(extent / 2, extent / 2))
        _PROFILE_CACHE[key] = np.asarray(waves.intensity().compute(progress_bar=False).array, dtype=float)
    return _PROFILE_CACHE[key]


def _probe_profile_cached(m: Microscope, blur: float, sampling: float, extent: float) -> tuple[np.ndarray, np.ndarray]:
    key = (m.energy_keV, m.semiangle_mrad, m.defocus_A, m.Cs_A, blur, sampling, extent)
    if key in _PROFILE_CACHE:
        return _PROFILE_CACHE[key]
    intensity = _probe_intensity(m, sampling, extent)
    if blur > 0:
        from scipy.ndimage import gaussian_filter

        intensity = gaussian_filter(intensity, blur / sampling, mode="constant")
    intensity = intensity / (intensity.sum() * sampling**2)  # density per Å²
    n = intensity.shape[0]
    coords = np.arange(n) * sampling - extent / 2
    rr = np.hypot(*np.meshgrid(coords, coords, indexing="ij")).ravel()
    edges = np.arange(0, extent / 2, sampling / 2)
    which = np.digitize(rr, edges) - 1
    valid = (which >= 0) & (which < len(edges) - 1)
    sums = np.bincount(which[valid], weights=intensity.ravel()[valid], minlength=len(edges) - 1)
    counts = np.bincount(which[valid], minlength=len(edges) - 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    ok = counts > 0
    profile = (centres[ok], sums[ok] / counts[ok])
    _PROFILE_CACHE[key] = profile
    return profile


#: Optics of the fast-vs-abTEM accuracy table (benchmarks/fast_vs_abtem.py): the four instrument
#: settings the twin-engine issue asks for (beam energy, convergence semi-angle, detector range from
#: ADF to HAADF); defocus and Cs stay at the defaults above.
OPTICS_PRESETS: dict[str, Microscope] = {
    "60kV-ADF": Microscope(energy_keV=60, semiangle_mrad=30, detector_inner_mrad=40, detector_outer_mrad=200),
    "80kV-HAADF": Microscope(energy_keV=80, semiangle_mrad=25, detector_inner_mrad=50, detector_outer_mrad=200),
    "200kV-HAADF": Microscope(energy_keV=200, semiangle_mrad=22, detector_inner_mrad=80, detector_outer_mrad=250),
    "300kV-ADF": Microscope(energy_keV=300, semiangle_mrad=18, detector_inner_mrad=30, detector_outer_mrad=150),
}
