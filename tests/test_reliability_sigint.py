"""SIGINT and ``--overwrite`` on real commands (issue 15): nothing lost, nothing half-written.

Each command is started as a user would (a subprocess), interrupted with SIGINT at several
points (while working, just after it reports 100 %, while it writes), and the output folder must
then hold the complete previous result, the complete new one, or nothing — never a mix, never a
half-written file, never a leftover temporary — and the files a command did not write survive
``--overwrite``.  Kept small: 20 Å twins, 64-px datasets, 1-step training epochs.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from napari_mx2_defects.io.atomic import TEMP_MARKER

pytestmark = pytest.mark.slow  # real commands in subprocesses, interrupted at several points

CLI = [sys.executable, "-m", "napari_mx2_defects.cli"]
TWIN_FILES = ["image.tif", "labels.tif", "truth.csv", "atoms.csv", "sites.csv", "settings.json"]
SEGMENT_FILES = ["labels.tif", "defects.csv"]
ANALYSIS_FILES = ["sites.csv", "concentrations.csv", "lattice.json", "histogram.png", "concentrations.png"]
THESIS = "my_thesis.txt"


def _run(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _interrupt(args, when: str, delay: float = 0.0, timeout: float = 300) -> tuple[int, str, bool]:
    """Start the CLI, wait for a stderr line matching ``when``, wait ``delay`` s, send SIGINT.

    Returns (exit status, stderr, whether the signal was sent while the command still ran).
    """
    proc = subprocess.Popen([*CLI, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    seen: list[str] = []

    def pump():
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if re.search(when, line):
            break
    time.sleep(delay)
    sent = proc.poll() is None
    if sent:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:  # pragma: no cover - a hang is the failure we look for
        proc.kill()
        pytest.fail(f"{args[0]} did not stop within 120 s of SIGINT")
    while True:
        try:
            line = lines.get(timeout=5)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
    return proc.returncode, "".join(seen), sent


def _check_exit(rc: int, err: str, sent: bool) -> None:
    assert "Traceback" not in err, err
    assert rc in (0, 130), err
    if rc == 130:
        assert err.strip().splitlines()[-1] == "interrupted", err


def _no_temporaries(*folders: Path) -> None:
    for folder in folders:
        if folder.exists():
            left = [p.name for p in folder.rglob("*") if TEMP_MARKER in p.name]
            assert left == [], f"temporaries left in {folder}: {left}"


def _differ(now: dict[str, bytes] | None, old: dict[str, bytes] | None) -> list[str]:
    """The names whose bytes differ between two snapshots (short, where ``==`` would print every byte)."""
    if now is None or old is None:
        return [] if now is old else ["(one side has no files)"]
    return sorted(n for n in set(now) | set(old) if now.get(n) != old.get(n))


def _snapshot(folder: Path, names: list[str]) -> dict[str, bytes] | None:
    """The named files' bytes if all are there, None if none is; a mix fails the test."""
    present = [n for n in names if (folder / n).exists()]
    if not present:
        return None
    assert sorted(present) == sorted(names), f"a mix of old and missing files in {folder}: {present}"
    return {n: (folder / n).read_bytes() for n in names}


# --------------------------------------------------------------------------------------------
# simulate


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> dict[int, Path]:
    """Complete 20 Å twins for seeds 0 and 1 (the previous and the new result)."""
    root = tmp_path_factory.mktemp("twins")
    out = {}
    for seed in (0, 1):
        out[seed] = root / f"seed{seed}"
        _run("simulate", "--fov", "20", "--defects", "V_X=2", "--dose", "1e6", "--seed", seed, "--out", out[seed],
             "--quiet")
    return out


def _twin_state(folder: Path, twins: dict[int, Path]) -> str:
    snap = _snapshot(folder, TWIN_FILES)
    if snap is None:
        return "nothing"
    seed = json.loads(snap["settings.json"])["request"]["seed"]
    reference = twins[seed]
    for name in ("truth.csv", "atoms.csv", "sites.csv", "labels.tif"):  # the seed's structure, exactly
        same = snap[name] == (reference / name).read_bytes()
        assert same, f"{name} is not the complete seed-{seed} file ({len(snap[name])} vs {(reference / name).stat().st_size} bytes)"
    _assert_complete_image(folder / "image.tif", reference / "image.tif", seed)
    return f"seed {seed}"


def _assert_complete_image(path: Path, reference: Path, seed: int) -> None:
    """The image decodes whole, with the reference's shape and calibration, and is the same twin.

    Compared as data, not bytes: the structure files above already pin the run, and a fast-mode image
    rebuilt in another process may differ from the reference in the last bits of its kernels (and
    then in its Poisson draws) without being any less complete."""
    import numpy as np

    from napari_mx2_defects.io.formats import load_images

    (image,), (ref,) = load_images(path), load_images(reference)
    assert image.data.shape == ref.data.shape and np.all(np.isfinite(image.data)), f"image.tif of seed {seed} is not whole"
    assert image.pixel_size_A == pytest.approx(ref.pixel_size_A), f"image.tif of seed {seed}: another calibration"
    if path.read_bytes() != reference.read_bytes():
        level, ref_level = float(np.mean(image.data)), float(np.mean(ref.data))
        assert abs(level - ref_level) <= 0.01 * ref_level, f"image.tif is not the seed-{seed} twin ({level:.4g} vs {ref_level:.4g})"


SIMULATE_POINTS = [("first progress line", r"\[\s*\d", 0.0), ("working", r"\[\s*\d", 1.0),
                   ("reported 100 %", r"100\.0 %", 0.0), ("writing", r"100\.0 %", 0.1)]


def test_simulate_sigint_leaves_previous_or_nothing(twins, tmp_path):
    for label, when, delay in SIMULATE_POINTS:
        # into a new folder: nothing or the complete twin
        fresh = tmp_path / f"fresh-{label.replace(' ', '_')}"
        rc, err, sent = _interrupt(["simulate", "--fov", "20", "--defects", "V_X=2", "--dose", "1e6", "--seed", "1",
                                    "--out", fresh], when, delay)
        _check_exit(rc, err, sent)
        assert _twin_state(fresh, twins) in ("nothing", "seed 1"), label
        _no_temporaries(fresh, tmp_path)
        # over a previous result with --overwrite: the previous or the new one, and foreign files kept
        out = tmp_path / f"over-{label.replace(' ', '_')}"
        shutil.copytree(twins[0], out)
        (out / THESIS).write_text("years of work")
        rc, err, sent = _interrupt(["simulate", "--fov", "20", "--defects", "V_X=2", "--dose", "1e6", "--seed", "1",
                                    "--out", out, "--overwrite"], when, delay)
        _check_exit(rc, err, sent)
        state = _twin_state(out, twins)
        assert state in ("seed 0", "seed 1"), f"{label}: {state}"
        if rc == 130:
            assert state == "seed 0" or label in ("reported 100 %", "writing"), label
        assert (out / THESIS).read_text() == "years of work"
        _no_temporaries(out, tmp_path)


def test_simulate_overwrite_keeps_foreign_files(twins, tmp_path):
    out = tmp_path / "twin"
    shutil.copytree(twins[0], out)
    (out / THESIS).write_text("years of work")
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("mine")
    proc = _run("simulate", "--fov", "20", "--defects", "V_X=2", "--dose", "1e6", "--seed", "1", "--out", out,
                "--quiet", check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr
    assert _twin_state(out, twins) == "seed 0"
    _run("simulate", "--fov", "20", "--defects", "V_X=2", "--dose", "1e6", "--seed", "1", "--out", out, "--quiet",
         "--overwrite")
    assert _twin_state(out, twins) == "seed 1"
    assert (out / THESIS).read_text() == "years of work" and (out / "notes" / "a.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == sorted([*TWIN_FILES, THESIS, "notes"])


# --------------------------------------------------------------------------------------------
# segment and analyze (on the seed-0 twin)


def test_segment_sigint_leaves_previous_or_nothing(twins, tmp_path):
    image = twins[0] / "image.tif"
    previous = tmp_path / "previous"
    _run("segment", image, "--out", previous, "--device", "cpu")
    old = _snapshot(previous, SEGMENT_FILES)
    for k, (when, delay) in enumerate([(r"tile", 0.0), (r"tile", 0.3), (r"tile", 1.0)]):
        out = tmp_path / f"seg{k}"
        shutil.copytree(previous, out)
        (out / THESIS).write_text("years of work")
        rc, err, sent = _interrupt(["segment", image, "--out", out, "--device", "cpu", "--overwrite"], when, delay)
        _check_exit(rc, err, sent)
        assert _differ(_snapshot(out, SEGMENT_FILES), old) == []  # the previous files or the same complete new ones
        assert (out / THESIS).read_text() == "years of work"
        _no_temporaries(out, tmp_path)
    fresh = tmp_path / "fresh"
    rc, err, sent = _interrupt(["segment", image, "--out", fresh, "--device", "cpu"], r"tile", 0.0)
    _check_exit(rc, err, sent)
    now = _snapshot(fresh, SEGMENT_FILES)
    assert now is None or _differ(now, old) == []
    _no_temporaries(fresh, tmp_path)


def test_analyze_sigint_leaves_previous_or_nothing(twins, tmp_path):
    image = twins[0] / "image.tif"
    analyze = ["analyze", image, "--pixel-size", "0.1"]
    previous = tmp_path / "previous"
    _run(*analyze, "--out", previous, "--quiet")
    old = _snapshot(previous, ANALYSIS_FILES)
    same = ("sites.csv", "concentrations.csv")
    for k, (when, delay) in enumerate([(r"finding columns", 0.0), (r"100\.0 %", 0.0), (r"100\.0 %", 0.4)]):
        out = tmp_path / f"ana{k}"
        shutil.copytree(previous, out)
        (out / THESIS).write_text("years of work")
        rc, err, sent = _interrupt([*analyze, "--out", out, "--overwrite"], when, delay)
        _check_exit(rc, err, sent)
        now = _snapshot(out, ANALYSIS_FILES)
        if rc == 130 and k == 0:
            assert _differ(now, old) == []
        assert _differ({n: now[n] for n in same}, {n: old[n] for n in same}) == []  # complete either way
        assert (out / THESIS).read_text() == "years of work"
        _no_temporaries(out, tmp_path)
    fresh = tmp_path / "fresh"
    rc, err, sent = _interrupt([*analyze, "--out", fresh], r"100\.0 %", 0.0)
    _check_exit(rc, err, sent)
    now = _snapshot(fresh, ANALYSIS_FILES)
    assert now is None or _differ({n: now[n] for n in same}, {n: old[n] for n in same}) == []
    _no_temporaries(fresh, tmp_path)


# --------------------------------------------------------------------------------------------
# dataset and train

DATASET = ["dataset", "--n", "3", "--size", "64", "--parents", "MoS2", "--presets", "80kV-25mrad", "--workers", "1"]


def _dataset_state(store: Path) -> str:
    import zarr

    if not store.exists() or not any((store / n).exists() for n in ("zarr.json", "images", "labels")):
        return "nothing"
    root = zarr.open_group(str(store), mode="r")
    assert root["images"].shape == (3, 64, 64) and len(root.attrs["samples"]) == 3
    assert all(m is not None for m in root.attrs["samples"])
    return f"seed {root.attrs['seed']}"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("ds") / "tiny.zarr"
    _run(*DATASET, "--seed", "0", "--out", store, "--quiet")
    return store


def test_dataset_sigint_leaves_no_skeleton_and_overwrite_keeps_foreign_files(dataset, tmp_path):
    """Before: --overwrite deleted my_thesis.txt; an interrupted run left a skeleton that blocked a rerun."""
    fresh = tmp_path / "fresh.zarr"
    rc, err, sent = _interrupt([*DATASET, "--seed", "5", "--out", fresh], r"sample 1/", 0.0)
    _check_exit(rc, err, sent)
    assert _dataset_state(fresh) in ("nothing", "seed 5")
    if rc == 130:
        assert not fresh.exists()
    _no_temporaries(tmp_path)

    store = tmp_path / "ds.zarr"
    shutil.copytree(dataset, store)
    (store / THESIS).write_text("years of work")
    rc, err, sent = _interrupt([*DATASET, "--seed", "5", "--out", store, "--overwrite"], r"sample 2/", 0.0)
    _check_exit(rc, err, sent)
    assert _dataset_state(store) in ("seed 0", "seed 5")
    assert (store / THESIS).read_text() == "years of work"
    _no_temporaries(store, tmp_path)

    # a temporary left by a run that was killed outright (SIGKILL) is cleaned, not in the way
    killed = subprocess.Popen([*CLI, *DATASET, "--seed", "6", "--out", fresh], stderr=subprocess.PIPE, text=True)
    for line in killed.stderr:
        if "sample" in line:
            break
    killed.kill()
    killed.wait()
    _run(*DATASET, "--seed", "6", "--out", fresh, "--quiet")
    assert _dataset_state(fresh) == "seed 6"
    _run(*DATASET, "--seed", "7", "--out", store, "--overwrite", "--quiet")
    assert _dataset_state(store) == "seed 7"
    assert (store / THESIS).read_text() == "years of work"
    assert sorted(p.name for p in store.iterdir()) == sorted(["zarr.json", "images", "labels", THESIS])
    _no_temporaries(store, fresh, tmp_path)


TRAIN = ["--steps", "1", "--batch-size", "2", "--crop", "32", "--device", "cpu", "--patience", "100"]


def test_train_sigint_keeps_the_previous_checkpoint_pair(dataset, tmp_path):
    from napari_mx2_defects.learn.checkpoint import load_checkpoint

    model = tmp_path / "model.safetensors"
    _run("train", dataset, "--out", model, "--epochs", "1", *TRAIN, "--quiet")
    old = {p.name: p.read_bytes() for p in (model, model.with_suffix(".json"))}
    (tmp_path / THESIS).write_text("years of work")
    for when, delay, epochs in [(r"epoch 1:", 0.0, 200), (r"100\.0 %", 0.0, 2), (r"100\.0 %", 0.05, 2)]:
        rc, err, sent = _interrupt(["train", dataset, "--out", model, "--epochs", epochs, *TRAIN, "--overwrite"],
                                   when, delay)
        _check_exit(rc, err, sent)
        now = {p.name: p.read_bytes() for p in (model, model.with_suffix(".json"))}
        if epochs == 200:
            assert rc == 130 and _differ(now, old) == [], when
        load_checkpoint(model)  # a complete pair either way
        card = json.loads(now["model.json"])
        assert card["metrics"]["epochs_run"] in (1, 2)
        _no_temporaries(tmp_path)
    fresh = tmp_path / "fresh.safetensors"
    rc, err, sent = _interrupt(["train", dataset, "--out", fresh, "--epochs", "200", *TRAIN], r"epoch 1:", 0.0)
    _check_exit(rc, err, sent)
    assert rc == 130 and not fresh.exists() and not fresh.with_suffix(".json").exists()
    assert (tmp_path / THESIS).read_text() == "years of work"
    _no_temporaries(tmp_path)


# --------------------------------------------------------------------------------------------
# finetune

FINETUNE_FILES = ["model.safetensors", "model.json"]


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory) -> Path:
    """A 40 Å twin whose truth table stands for a user's corrections."""
    folder = tmp_path_factory.mktemp("reviewed") / "twin"
    _run("simulate", "--fov", "40", "--defects", "V_X=4,V_M=1", "--dose", "1e6", "--seed", 3, "--out", folder,
         "--quiet")
    return folder


def _finetune_args(reviewed: Path, out: Path, minutes: str, epochs: str) -> list:
    return ["finetune", reviewed / "image.tif", "--labels", reviewed / "truth.csv", "--material", "MoS2",
            "--twins", "1", "--epochs", epochs, "--minutes", minutes, "--out", out,
            "--keep-worse"]  # a few seconds of training: kept whatever it scores, so each stage is reached


def test_finetune_sigint_keeps_the_previous_model_pair(reviewed, tmp_path):
    from napari_mx2_defects.learn.checkpoint import load_checkpoint

    out = tmp_path / "tuned"
    _run(*_finetune_args(reviewed, out, "0.05", "1"), "--quiet")
    old = _snapshot(out, FINETUNE_FILES)
    assert old is not None
    (out / THESIS).write_text("years of work")
    for when, delay, minutes, epochs in [(r"fine-tuning", 0.5, "10", "200"), (r"100\.0 %", 0.0, "0.05", "1"),
                                         (r"saving", 0.0, "0.05", "1")]:
        rc, err, sent = _interrupt([*_finetune_args(reviewed, out, minutes, epochs), "--overwrite"], when, delay)
        _check_exit(rc, err, sent)
        now = _snapshot(out, FINETUNE_FILES)
        if epochs == "200":
            assert rc == 130 and _differ(now, old) == [], when
        load_checkpoint(out / "model.safetensors")  # a complete pair either way
        assert (out / THESIS).read_text() == "years of work"
        _no_temporaries(tmp_path)
    fresh = tmp_path / "fresh"
    rc, err, sent = _interrupt(_finetune_args(reviewed, fresh, "10", "200"), r"fine-tuning", 0.5)
    _check_exit(rc, err, sent)
    assert rc == 130 and _snapshot(fresh, FINETUNE_FILES) is None
    _no_temporaries(tmp_path)


def test_finetune_refuses_to_replace_a_model_without_overwrite(reviewed, tmp_path):
    out = tmp_path / "tuned"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"someone else's model")
    proc = _run(*_finetune_args(reviewed, out, "0.05", "1"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--overwrite" in proc.stderr
    assert (out / "model.safetensors").read_bytes() == b"someone else's model"
