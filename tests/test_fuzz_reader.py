"""Seeded mutation fuzzing of the reader (issue 15): 0 escaping exceptions, 0 hangs, 0 blow-ups.

Every format's real seed files (``../shared/data``) are mutated (byte flips, zeroed runs,
truncation, splices, header dimension edits to 0/-1/2³¹-1/50000/2⁶⁴-1, ``.npy`` header edits and
sidecar garbage); each mutated file is opened through ``load_images`` in a driver subprocess
with an address-space cap (``resource.setrlimit``) and a per-case time limit. The long run
(≥ 10,000 files) is ``scripts/fuzz_reader.py``; its result is in ``benchmarks/RESULTS.md``.

``MX2_FUZZ_CASES`` sets the mutations per format (default 250; about a minute on 2 cores).
"""

from __future__ import annotations

import os

import pytest

from napari_mx2_defects.io import fuzz

CASES_PER_FORMAT = int(os.environ.get("MX2_FUZZ_CASES", "250"))
SEED = 20261122


def test_every_seed_opens_through_the_driver(shared_data, tmp_path):
    """The harness itself: unmutated seeds must open (a broken reader would make every case an 'error')."""
    harness = fuzz.Harness(case_timeout_s=60, reader_timeout_s=20)
    try:
        for index, (label, rel, companions, _) in enumerate(fuzz.SEEDS):
            src = shared_data / rel
            folder = tmp_path / f"seed{index}"
            folder.mkdir()
            for name in (src.name, *companions):
                (folder / name).write_bytes((src.parent / name).read_bytes())
            case = harness.run(fuzz.Case(index, label, rel, "none", folder / src.name))
            assert case.outcome == "ok", (rel, case.detail)
    finally:
        harness.stop()


def test_mutations_are_reproducible(shared_data, tmp_path):
    a = fuzz.make_case(7, fuzz.case_rng(SEED, 7), shared_data, tmp_path / "a", fmt="velox")
    b = fuzz.make_case(7, fuzz.case_rng(SEED, 7), shared_data, tmp_path / "b", fmt="velox")
    assert a.mutation == b.mutation and a.path.read_bytes() == b.path.read_bytes()


@pytest.mark.slow
def test_fuzz_reader_no_escapes_hangs_or_blowups(shared_data, tmp_path):
    summary = fuzz.run_fuzz(
        shared_data, tmp_path / "cases", cases_per_format=CASES_PER_FORMAT, seed=SEED,
        harness_options={"case_timeout_s": 20.0, "reader_timeout_s": 3.0, "memory_cap_bytes": 4 * 2**30,
                         "blowup_bytes": 2**30},
        keep_failures=tmp_path / "failures",
    )
    report = summary.as_dict()
    assert report["cases"] == CASES_PER_FORMAT * len(fuzz.FORMATS)
    for outcome in ("escape", "hang", "blowup", "crash"):
        assert summary.counts[outcome] == 0, (outcome, report["failures"][:5])
    # the mutations must exercise both paths in every format, or the test proves nothing
    for fmt, counts in summary.per_format.items():
        assert counts["ok"] > 0.05 * CASES_PER_FORMAT, (fmt, dict(counts))
        assert counts["reader_error"] > 0.05 * CASES_PER_FORMAT, (fmt, dict(counts))


@pytest.mark.parametrize("fmt", fuzz.FORMATS)
def test_each_format_has_seeds_in_the_shared_data(shared_data, fmt):
    seeds = [rel for label, rel, *_ in fuzz.SEEDS if label == fmt]
    assert seeds and all((shared_data / rel).is_file() for rel in seeds)
