"""abTEM runs as jobs: PRISM's scattering matrix is built task by task (progress, cancel between plane-wave
chunks), the images are the ones the direct eager build gives, and the time estimate is honest.

Tiny cells only (1×1 and 2×1 orthogonal MoS2 cells); abTEM's dask chunk size is lowered where a test needs a
graph of several tasks, which changes how the plane waves are batched, not what is computed.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest

abtem = pytest.importorskip("abtem")

from napari_mx2_defects.core.jobs import Cancelled  # noqa: E402
from napari_mx2_defects.twin.abtem_runner import (  # noqa: E402
    FrozenPhononSettings,
    _potential,
    estimate_seconds,
    simulate_abtem,
)
from napari_mx2_defects.twin.microscope import OPTICS_PRESETS, Microscope  # noqa: E402
from napari_mx2_defects.twin.parents import get_parent  # noqa: E402
from napari_mx2_defects.twin.structures import build_lattice  # noqa: E402

BUILD = "building the PRISM scattering matrix"
#: abTEM dask chunk size that splits a 1×1 cell's 31 plane waves (72×124 pixels) into ~10 tasks
SMALL_CHUNKS = {"dask.chunk-size": "256 kB"}


def _cell(nx: int, ny: int):
    return build_lattice(get_parent("MoS2"), cells=(nx, ny)).atoms


def _shape(atoms, sampling: float = 0.1) -> tuple[int, int]:
    return int(round(atoms.cell[1, 1] / sampling)), int(round(atoms.cell[0, 0] / sampling))


@pytest.fixture
def count_builds(monkeypatch):
    """Count the plane-wave chunks abTEM propagates through the potential (SMatrix._build_s_matrix calls)."""
    from abtem.prism.s_matrix import SMatrix

    calls = {"started": 0, "finished": 0}
    original = SMatrix._build_s_matrix

    @functools.wraps(original)
    def _build_s_matrix(*args, **kwargs):
        calls["started"] += 1
        result = original(*args, **kwargs)
        calls["finished"] += 1
        return result

    monkeypatch.setattr(SMatrix, "_build_s_matrix", staticmethod(_build_s_matrix))
    return calls


def _direct_prism(atoms, m: Microscope, shape, blocks: int = 8, phonons=None) -> np.ndarray:
    """The path simulate_abtem took before it was a job: ``SMatrix.build(lazy=False)`` (or, with frozen
    phonons, abTEM's lazy ``SMatrix.reduce`` strip by strip), reduced over the same commensurate Nyquist
    strips."""
    phonons = phonons or FrozenPhononSettings()
    potential = _potential(atoms, m, phonons, None)
    source = abtem.SMatrix(potential=potential, energy=m.energy_keV * 1e3, semiangle_cutoff=m.semiangle_mrad,
                           interpolation=1)
    ctf = abtem.CTF(energy=m.energy_keV * 1e3, semiangle_cutoff=m.semiangle_mrad, defocus=m.defocus_A,
                    Cs=m.Cs_A)
    cell = atoms.cell.lengths()[:2]
    nyq = m.nyquist_scan_sampling_A
    cells = atoms.info["orthogonal_cells"]
    n_scan = tuple(int(c * 2 * np.ceil(length / c / nyq / 2)) for c, length in zip(cells, cell))
    step = (cell[0] / n_scan[0], cell[1] / n_scan[1])
    s_matrix = source if phonons.enabled else source.build(lazy=False)
    strips = []
    edges = np.linspace(0, n_scan[0], min(blocks, n_scan[0]) + 1).astype(int)
    for a, b in zip(edges[:-1], edges[1:]):
        scan = abtem.GridScan(start=(a * step[0], 0.0), end=(b * step[0], cell[1]), gpts=(b - a, n_scan[1]),
                              endpoint=False)
        result = s_matrix.reduce(scan=scan, detectors=m.abtem_detector(), ctf=ctf)
        result = result.compute(progress_bar=False) if hasattr(result, "compute") else result
        array = np.asarray(result.array)
        while array.ndim > 2:
            array = array.mean(axis=0)
        strips.append(array)
    images = abtem.Images(np.concatenate(strips, axis=0), sampling=step)
    return np.asarray(images.interpolate(gpts=(shape[1], shape[0])).array).T.copy()


@pytest.fixture(scope="module")
def prism_run():
    """One static PRISM job on a 1×1 cell in ~10 plane-wave tasks: its image, its progress calls, the direct
    eager image."""
    atoms, m = _cell(1, 1), Microscope()
    shape = _shape(atoms)
    calls = []
    with abtem.config.set(SMALL_CHUNKS):
        image = simulate_abtem(atoms, m, "prism", shape, progress=lambda f, s: calls.append((f, s)))
        direct = _direct_prism(atoms, m, shape)
    return image, calls, direct


@pytest.mark.slow
def test_prism_job_gives_the_direct_builds_image(prism_run):
    image, _, direct = prism_run
    assert image.shape == direct.shape and np.isfinite(image).all() and image.max() > 0
    np.testing.assert_array_equal(image, direct)


def test_prism_progress_is_monotone_and_follows_the_build(prism_run):
    _, calls, _ = prism_run
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[0] >= 0 and fractions[-1] == 1.0
    build = [f for f, s in calls if s == BUILD]
    # the build reports per plane-wave task, not once: several distinct fractions before the first strip
    assert len(set(build)) >= 5, calls
    first_strip = next(i for i, (_, s) in enumerate(calls) if s.startswith("prism: strip"))
    assert {s for _, s in calls[:first_strip]} == {"projecting the potential", BUILD}
    assert sum(s.startswith("prism: strip") for _, s in calls) == 8


def test_cancel_during_the_scattering_matrix_build(count_builds):
    """Cancel as soon as the first plane-wave task has reported: the job stops with most chunks not built."""
    atoms, m = _cell(1, 1), Microscope()
    calls = []

    def cancelled():  # the first BUILD call announces the build, the second one reports a finished task
        return sum(s == BUILD for _, s in calls) >= 2

    with abtem.config.set(SMALL_CHUNKS):
        potential = _potential(atoms, m, FrozenPhononSettings(), None)
        source = abtem.SMatrix(potential=potential, energy=m.energy_keV * 1e3,
                               semiangle_cutoff=m.semiangle_mrad)
        n_chunks = len(source._wave_vector_chunks("auto")[0])
        t0 = time.perf_counter()
        with pytest.raises(Cancelled):
            simulate_abtem(atoms, m, "prism", _shape(atoms), progress=lambda f, s: calls.append((f, s)),
                           cancelled=cancelled)
        seconds = time.perf_counter() - t0
    assert n_chunks >= 8
    # one finished task triggered the cancel; the two dask worker threads may have started one more each
    assert count_builds["started"] <= 4 < n_chunks, (count_builds, n_chunks)
    assert not any(s.startswith("prism: strip") for _, s in calls)
    assert seconds < 20


def test_cancel_inside_a_multislice_strip():
    """Multislice: a cancel takes effect between the probe-position tasks of a strip, not after it."""
    atoms, m = _cell(1, 1), Microscope()
    calls = []
    with pytest.raises(Cancelled):
        simulate_abtem(atoms, m, "multislice", _shape(atoms), progress=lambda f, s: calls.append((f, s)),
                       cancelled=lambda: any(s.startswith("multislice") for _, s in calls), blocks=1)
    strip = [f for f, s in calls if s == "multislice: strip 1/1"]
    # one task of the strip reported, then the cancel: the strip (the only one) never completed
    assert len(strip) == 1 and strip[0] < 0.99, calls


def test_cancel_before_start_raises_at_once():
    with pytest.raises(Cancelled):
        simulate_abtem(_cell(1, 1), Microscope(), "prism", (10, 10), cancelled=lambda: True)


def test_frozen_phonon_prism_builds_each_configuration_once(count_builds):
    """With frozen phonons each configuration's scattering matrix is built once (not once per strip, as
    abTEM's lazy ``SMatrix.reduce`` per strip did), and the image is that path's."""
    atoms, m = _cell(1, 1), Microscope()
    phonons = FrozenPhononSettings(num_configs=2, seed=5)
    shape = _shape(atoms)
    image = simulate_abtem(atoms, m, "prism", shape, phonons=phonons, blocks=2)
    builds = count_builds["finished"]
    potential = _potential(atoms, m, FrozenPhononSettings(), None)
    n_chunks = len(abtem.SMatrix(potential=potential, energy=m.energy_keV * 1e3,
                                 semiangle_cutoff=m.semiangle_mrad)._wave_vector_chunks("auto")[0])
    assert builds == 2 * n_chunks
    direct = _direct_prism(atoms, m, shape, blocks=2, phonons=phonons)
    np.testing.assert_allclose(image, direct, rtol=1e-5, atol=1e-7 * np.abs(direct).max())
    static = simulate_abtem(atoms, m, "prism", shape, blocks=2)
    assert not np.allclose(image, static, rtol=1e-3)


def test_estimate_keeps_its_signature_and_scales():
    m = Microscope()
    small = estimate_seconds(100, (20.0, 20.0), m, "prism")
    assert estimate_seconds(100, (20.0, 20.0), m, "prism", 0) == small
    per_config = small - estimate_seconds(1, (1.0, 1.0), m, "prism")
    assert estimate_seconds(100, (20.0, 20.0), m, "prism", 4) > 3 * per_config
    # PRISM: plane waves × slices × F(grid) (∝ area² log) to build, positions × plane waves × pixels (∝ area³)
    # to reduce
    big = estimate_seconds(100, (40.0, 40.0), m, "prism")
    assert 10 < big / small < 64
    multislice = [estimate_seconds(100, (e, e), m, "multislice") for e in (20.0, 40.0)]
    assert 10 < multislice[1] / multislice[0] < 30  # positions × slices × F(grid): ∝ area² log
    assert estimate_seconds(10**6, (40.0, 40.0), m, "fast") < 2
    # finer potential sampling (a higher outer angle) costs more
    assert estimate_seconds(100, (20.0, 20.0), Microscope(detector_outer_mrad=300), "prism") > small
    # with the cell, the simulation's own grid: a 300 kV grid with large prime factors costs more than the
    # extent alone suggests
    atoms, hv = _cell(2, 2), OPTICS_PRESETS["300kV-ADF"]
    extent = (float(atoms.cell[0, 0]), float(atoms.cell[1, 1]))
    assert estimate_seconds(len(atoms), extent, hv, "prism", atoms=atoms) > estimate_seconds(
        len(atoms), extent, hv, "prism")

# Wall-time accuracy of the estimate is a benchmark, not a test (it depends on the machine's load and
# cores): benchmarks/RESULTS.md, 'abTEM run time', has the measured/estimated table.
