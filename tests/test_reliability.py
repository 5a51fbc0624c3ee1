"""Reliability (issue 15): one validation layer, atomic outputs, model-card schema, one-line CLI errors.

Every case the issue lists has a test here (or in ``test_reliability_sigint.py`` for SIGINT and
the ``--overwrite`` runs of real commands).  Argument refusals run ``main`` in-process: they must
fail before any work, so they take milliseconds.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_mx2_defects.cli import main
from napari_mx2_defects.core.validation import (
    BOUNDS,
    Bound,
    arg_type,
    check_allocation,
    check_holes,
    check_number,
    check_twin_size,
)
from napari_mx2_defects.io.atomic import (
    TEMP_MARKER,
    OutputLocationError,
    StagedOutput,
    atomic_path,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    clean_stale_temps,
    defer_sigint,
)


def _cli(capsys, *args) -> tuple[int, str, float]:
    """Run ``mx2-defects ARGS`` in-process: (exit status, stderr, seconds)."""
    t0 = time.perf_counter()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # argparse refusals
        rc = exc.code
    seconds = time.perf_counter() - t0
    return rc, capsys.readouterr().err, seconds


def _one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if TEMP_MARKER in p.name] if folder.exists() else []


@pytest.fixture
def image_file(tmp_path) -> Path:
    """A small calibrated TIFF (written by our writer, read by our reader)."""
    from napari_mx2_defects.io.writer import write_calibrated_tiff

    rng = np.random.default_rng(0)
    return write_calibrated_tiff(tmp_path / "img.tif", rng.random((64, 64)).astype(np.float32), 0.1)


@pytest.fixture
def fake_dataset(tmp_path) -> Path:
    """A complete dataset store of 4 random 64² samples (no simulation: for argument checks)."""
    import zarr

    out = tmp_path / "fake.zarr"
    root = zarr.open_group(str(out), mode="w")
    root.create_array("images", shape=(4, 64, 64), chunks=(1, 64, 64), dtype="float32")[:] = \
        np.random.default_rng(1).random((4, 64, 64), dtype=np.float32)
    labels = np.zeros((4, 64, 64), np.uint8)
    labels[:, 20:24, 20:24] = 1
    root.create_array("labels", shape=(4, 64, 64), chunks=(1, 64, 64), dtype="uint8")[:] = labels
    root.attrs["samples"] = [{"seed": i, "material": "MoS2", "preset": "80kV-25mrad", "pixel_size_A": 0.2}
                             for i in range(4)]
    return out


# --------------------------------------------------------------------------------------------
# the validation layer


def test_check_number_names_the_bound_and_the_unit():
    assert check_number("pixel size", 0.1, unit="Å", min=0.01, max=0.5) == 0.1
    for bad in (float("nan"), float("inf"), 1e-6, "abc", None, True):
        with pytest.raises(ValueError) as info:
            check_number("pixel size", bad, unit="Å", min=0.01, max=0.5, option="--pixel-size")
        message = str(info.value)
        assert "--pixel-size" in message and "0.01 Å" in message and "0.5 Å" in message and "\n" not in message
    assert check_number("n", 3.0, integer=True, min=1) == 3
    with pytest.raises(ValueError, match="whole number"):
        check_number("n", 2.5, integer=True, min=1)
    with pytest.raises(ValueError, match="> 0"):
        Bound("dose", "e/Å²", 0.0, 1e12, min_inclusive=False).check(0)


def test_every_bound_refuses_nan_and_inf_and_accepts_its_limits():
    for key, bound in BOUNDS.items():
        for bad in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValueError):
                bound.check(bad)
        if bound.min is not None and bound.min_inclusive:
            assert bound.check(bound.min) == bound.min, key
        if bound.max is not None and bound.max_inclusive:
            assert bound.check(bound.max) == bound.max, key


def test_argparse_type_from_a_bound():
    import argparse

    parse = arg_type(BOUNDS["crop_px"])
    assert parse("64") == 64 and parse("1e2") == 100
    for text in ("0", "nan", "12.5", "x", "1e400"):
        with pytest.raises(argparse.ArgumentTypeError, match="training crop"):
            parse(text)


def test_sizes_are_estimated_before_allocation():
    with pytest.raises(ValueError, match="pixels, more than the limit"):
        check_twin_size(1000.0, 0.01)
    with pytest.raises(ValueError, match="needs about .* of memory, more than the 1.0 GiB available"):
        check_allocation("an image", 1e8, 100, memory_bytes=1024**3)
    assert check_twin_size(40.0, 0.1) == 400**2
    with pytest.raises(ValueError, match="at most"):
        check_holes(20, 40.0, 3.19)
    assert check_holes(2, 40.0, 3.19) == 2


# --------------------------------------------------------------------------------------------
# CLI: every listed bad invocation is refused with one line, before any work

REFUSED = {
    "simulate --cs nan": (["simulate", "--cs", "nan"], "--cs"),
    "simulate --rotation nan": (["simulate", "--rotation", "nan"], "--rotation"),
    "simulate --pixel-size 1e-6": (["simulate", "--pixel-size", "1e-6"], "--pixel-size"),
    "simulate --fov 1000 --pixel-size 0.01": (["simulate", "--fov", "1000", "--pixel-size", "0.01"], "--pixel-size"),
    "simulate --drift nan nan": (["simulate", "--drift", "nan", "nan"], "--drift"),
    "simulate --holes 100000": (["simulate", "--holes", "100000"], "--holes"),
    "simulate --holes -1": (["simulate", "--holes", "-1"], "--holes"),
    "simulate --holes 40 (more than the field holds)": (["simulate", "--holes", "40", "--fov", "40"], "--holes"),
    "simulate --read-noise -1": (["simulate", "--read-noise", "-1"], "--read-noise"),
    "simulate --contamination -0.5": (["simulate", "--contamination", "-0.5"], "--contamination"),
    "simulate --energy 0": (["simulate", "--energy", "0"], "--energy"),
    "simulate --detector 200 50": (["simulate", "--detector", "200", "50"], "detector"),
    "simulate --dose -5": (["simulate", "--dose", "-5"], "--dose"),
    "simulate unknown class in --defects": (["simulate", "--defects", "FOO=3"], "FOO"),
    "segment --pixel-size inf": (["segment", "{image}", "--pixel-size", "inf"], "--pixel-size"),
    "segment --pixel-size 1e-9": (["segment", "{image}", "--pixel-size", "1e-9"], "--pixel-size"),
    "segment --pixel-size 0": (["segment", "{image}", "--pixel-size", "0"], "--pixel-size"),
    "analyze --energy 1e9": (["analyze", "{image}", "--energy", "1e9"], "--energy"),
    "analyze --energy 0": (["analyze", "{image}", "--energy", "0"], "--energy"),
    "analyze --pixel-size nan": (["analyze", "{image}", "--pixel-size", "nan"], "--pixel-size"),
    "analyze unknown class in --defects": (["analyze", "{image}", "--defects", "{bad_defects}"], "FOO"),
    "dataset --dose-min -1": (["dataset", "--n", "2", "--dose-min", "-1"], "--dose-min"),
    "dataset --dose-min above --dose-max": (["dataset", "--n", "2", "--dose-min", "1e6", "--dose-max", "1e5"],
                                           "--dose-min"),
    "dataset --workers 0": (["dataset", "--n", "2", "--workers", "0"], "--workers"),
    "dataset --n 0": (["dataset", "--n", "0"], "--n"),
    "dataset --size 0": (["dataset", "--n", "2", "--size", "0"], "--size"),
    "train --crop 0": (["train", "{dataset}", "--crop", "0"], "--crop"),
    "train --crop 50 (not a multiple of the encoder stride)": (["train", "{dataset}", "--crop", "50"], "--crop"),
    "train --model-pixel-size 0": (["train", "{dataset}", "--model-pixel-size", "0"], "--model-pixel-size"),
    "train --batch-size 0": (["train", "{dataset}", "--batch-size", "0"], "--batch-size"),
    "train --lr nan": (["train", "{dataset}", "--lr", "nan"], "--lr"),
    "train --epochs 0": (["train", "{dataset}", "--epochs", "0"], "--epochs"),
    "evaluate --doses nan": (["evaluate", "--doses", "nan"], "--doses"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_arguments_are_refused_with_one_line(case, capsys, tmp_path, image_file, fake_dataset):
    bad_defects = tmp_path / "bad_defects.csv"
    bad_defects.write_text("x_A,y_A,defect_class\n1.0,2.0,FOO\n")
    argv, needle = REFUSED[case]
    argv = [a.format(image=image_file, dataset=fake_dataset, bad_defects=bad_defects) for a in argv]
    out = tmp_path / "out"
    if argv[0] in ("simulate", "segment", "analyze", "dataset"):
        argv += ["--out", out]
    elif argv[0] == "train":
        argv += ["--out", tmp_path / "model.safetensors"]
    rc, err, seconds = _cli(capsys, *argv, "--quiet")
    line = _one_line_error(rc, err)
    assert needle in line, line
    assert seconds < 20, f"{case} was refused only after {seconds:.1f} s"
    assert not out.exists() and not (tmp_path / "model.safetensors").exists()


OUT_COMMANDS = {
    "simulate": ["simulate", "--fov", "20"],
    "segment": ["segment", "{image}"],
    "analyze": ["analyze", "{image}"],
    "dataset": ["dataset", "--n", "2", "--parents", "MoS2", "--presets", "80kV-25mrad"],
    "train": ["train", "{dataset}"],
}


@pytest.mark.parametrize("where", ["under a file", "unwritable", "is a file"])
@pytest.mark.parametrize("command", list(OUT_COMMANDS))
def test_unusable_out_is_refused_before_any_work(command, where, capsys, tmp_path, image_file, fake_dataset):
    """PermissionError / NotADirectoryError / SafetensorError tracebacks before: now one line, at once."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = {"under a file": blocker / "out", "unwritable": Path("/proc/mx2-defects-test/out"),
           "is a file": blocker}[where]
    if command == "train" and where == "under a file":
        out = blocker / "model.safetensors"
    elif command == "train" and where == "is a file":  # a file there is an existing checkpoint
        out = blocker.rename(tmp_path / "a_file.safetensors")
        blocker = out
    argv = [a.format(image=image_file, dataset=fake_dataset) for a in OUT_COMMANDS[command]]
    rc, err, seconds = _cli(capsys, *argv, "--out", out)  # not quiet: no progress line may come first
    line = _one_line_error(rc, err)
    assert "--out" in line or str(out) in line, line
    assert seconds < 20, f"refused only after {seconds:.1f} s"
    assert blocker.read_text() == "not a folder"


def test_unwritable_out_names_the_permission_problem(capsys, tmp_path, monkeypatch):
    """As root the file system lets everything through, so the refusal of the probe file is simulated."""
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if TEMP_MARKER in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    rc, err, _ = _cli(capsys, "simulate", "--fov", "20", "--out", tmp_path / "twin", "--quiet")
    line = _one_line_error(rc, err)
    assert "permission denied" in line and "choose a folder you can write to" in line


def test_unreachable_scheduler_fails_fast(capsys, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, err, seconds = _cli(capsys, "dataset", "--n", "2", "--parents", "MoS2", "--presets", "80kV-25mrad",
                            "--scheduler", f"tcp://127.0.0.1:{port}", "--out", tmp_path / "ds", "--quiet")
    line = _one_line_error(rc, err)
    assert "--scheduler" in line and "leave --scheduler out" in line
    assert seconds < 10
    rc, err, _ = _cli(capsys, "dataset", "--n", "2", "--scheduler", "not an address", "--out", tmp_path / "ds")
    assert "--scheduler" in _one_line_error(rc, err)


def test_tracebacks_only_with_debug(capsys, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    rc, err, _ = _cli(capsys, "simulate", "--fov", "20", "--out", blocker / "x")
    _one_line_error(rc, err)
    with pytest.raises(OutputLocationError):
        main(["--debug", "simulate", "--fov", "20", "--out", str(blocker / "x")])
    with pytest.raises(OutputLocationError):
        main(["simulate", "--fov", "20", "--out", str(blocker / "x"), "--debug"])


def test_unexpected_errors_are_one_line_too(capsys, monkeypatch, tmp_path):
    import napari_mx2_defects.cli.twin as cli_twin

    def boom(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli_twin, "check_request_args", boom)
    rc, err, _ = _cli(capsys, "simulate", "--out", tmp_path / "x")
    line = _one_line_error(rc, err)
    assert "RuntimeError: something broke" in line and "--debug" in line


def test_keyboard_interrupt_is_one_line_and_130(capsys, monkeypatch, tmp_path):
    import napari_mx2_defects.cli.twin as cli_twin

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_twin, "check_request_args", interrupted)
    rc, err, _ = _cli(capsys, "simulate", "--out", tmp_path / "x")
    assert rc == 130 and err.strip() == "interrupted"


def test_train_out_that_is_a_folder_is_refused(capsys, tmp_path, fake_dataset):
    folder = tmp_path / "runs.safetensors"
    folder.mkdir()
    rc, err, _ = _cli(capsys, "train", fake_dataset, "--out", folder, "--quiet")
    assert "is a folder" in _one_line_error(rc, err)


@pytest.mark.parametrize("existing", [".safetensors", ".json"])
def test_train_refuses_to_overwrite_without_the_flag(existing, capsys, tmp_path, fake_dataset):
    target = tmp_path / f"model{existing}"
    target.write_text("precious")
    rc, err, _ = _cli(capsys, "train", fake_dataset, "--out", tmp_path / "model.safetensors", "--epochs", "1",
                      "--steps", "1", "--batch-size", "2", "--crop", "32", "--device", "cpu", "--quiet")
    line = _one_line_error(rc, err)
    assert "--overwrite" in line and target.name in line
    assert target.read_text() == "precious"


def test_train_with_overwrite_replaces_only_its_pair(capsys, tmp_path, fake_dataset):
    (tmp_path / "model.safetensors").write_text("old")
    (tmp_path / "model.json").write_text("old")
    (tmp_path / "notes.txt").write_text("mine")
    rc, err, _ = _cli(capsys, "train", fake_dataset, "--out", tmp_path / "model.safetensors", "--epochs", "1",
                      "--steps", "1", "--batch-size", "2", "--crop", "32", "--device", "cpu", "--quiet",
                      "--overwrite")
    assert rc == 0, err
    from napari_mx2_defects.learn.checkpoint import load_checkpoint

    _, card = load_checkpoint(tmp_path / "model.safetensors")
    assert card.architecture == "light"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "fake.zarr") == \
        ["model.json", "model.safetensors", "notes.txt"]


def test_train_on_an_incomplete_dataset_is_one_line(capsys, tmp_path):
    """A zarr skeleton left by an interrupted run made ``train`` fail with ``KeyError: 'samples'``."""
    import zarr

    skeleton = tmp_path / "half.zarr"
    root = zarr.open_group(str(skeleton), mode="w")
    root.create_array("images", shape=(3, 32, 32), chunks=(1, 32, 32), dtype="float32")
    root.create_array("labels", shape=(3, 32, 32), chunks=(1, 32, 32), dtype="uint8")
    rc, err, _ = _cli(capsys, "train", skeleton, "--out", tmp_path / "m.safetensors", "--quiet")
    line = _one_line_error(rc, err)
    assert "incomplete dataset" in line and "mx2-defects dataset" in line
    not_a_store = tmp_path / "plain"
    not_a_store.mkdir()
    rc, err, _ = _cli(capsys, "train", not_a_store, "--out", tmp_path / "m.safetensors", "--quiet")
    assert "dataset" in _one_line_error(rc, err)


# --------------------------------------------------------------------------------------------
# atomic outputs


def test_atomic_write_replaces_or_keeps(tmp_path):
    target = tmp_path / "settings.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and _temps(tmp_path) == []
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and _temps(tmp_path) == []
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _temps(tmp_path) == []


def test_tiff_writer_failure_leaves_no_file(tmp_path, monkeypatch):
    """``segment`` crashed in the TIFF writer and left an 8-byte labels.tif."""
    import rsciio.tiff

    from napari_mx2_defects.io.writer import write_calibrated_tiff

    def crashing_writer(filename, signal, **kwargs):
        Path(filename).write_bytes(b"II*\x00\x08\x00\x00\x00")
        raise ValueError("writer crashed")

    target = tmp_path / "labels.tif"
    monkeypatch.setattr(rsciio.tiff, "file_writer", crashing_writer)
    with pytest.raises(ValueError, match="writer crashed"):
        write_calibrated_tiff(target, np.zeros((16, 16), np.uint8), 0.1)
    assert not target.exists() and _temps(tmp_path) == []
    monkeypatch.undo()
    write_calibrated_tiff(target, np.ones((16, 16), np.uint8), 0.1)
    monkeypatch.setattr(rsciio.tiff, "file_writer", crashing_writer)
    with pytest.raises(ValueError):
        write_calibrated_tiff(target, np.zeros((16, 16), np.uint8), 0.1)
    from napari_mx2_defects.io.formats import load_images

    assert load_images(target)[0].data.min() == 1  # the previous file, intact
    with pytest.raises(ValueError, match="pixel size"):
        write_calibrated_tiff(tmp_path / "x.tif", np.zeros((16, 16)), float("nan"))


def test_points_csv_is_written_atomically(tmp_path, monkeypatch):
    import pandas as pd

    from napari_mx2_defects.io.writer import write_points

    target = tmp_path / "p.csv"
    write_points(str(target), np.array([[1.0, 2.0]]), {"scale": (0.1, 0.1)})
    before = target.read_text()

    def crash(self, path, **kwargs):
        Path(path).write_text("x_A,y_A\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash)
    with pytest.raises(OSError):
        write_points(str(target), np.array([[3.0, 4.0]]), {"scale": (0.1, 0.1)})
    assert target.read_text() == before and _temps(tmp_path) == []


def test_staged_output_all_or_nothing_and_foreign_files_survive(tmp_path):
    out = tmp_path / "out"
    with StagedOutput(out, ["a.csv", "b.csv"]) as stage:
        assert not out.exists()
        (stage / "a.csv").write_text("1")
        (stage / "b.csv").write_text("1")
    assert sorted(p.name for p in out.iterdir()) == ["a.csv", "b.csv"]
    (out / "my_thesis.txt").write_text("years of work")
    with pytest.raises(FileExistsError, match="--overwrite"):
        StagedOutput(out, ["a.csv", "b.csv"])
    with pytest.raises(RuntimeError), StagedOutput(out, ["a.csv", "b.csv"], overwrite=True) as stage:
        (stage / "a.csv").write_text("2")
        raise RuntimeError("failed half-way")
    assert (out / "a.csv").read_text() == "1" and (out / "b.csv").read_text() == "1"
    with StagedOutput(out, ["a.csv", "b.csv"], overwrite=True) as stage:
        (stage / "a.csv").write_text("2")
        (stage / "b.csv").write_text("2")
    assert (out / "a.csv").read_text() == "2" and (out / "b.csv").read_text() == "2"
    assert (out / "my_thesis.txt").read_text() == "years of work"
    assert _temps(tmp_path) == []


def test_staged_folders_replace_only_their_own_entries(tmp_path):
    store = tmp_path / "ds.zarr"
    store.mkdir()
    (store / "my_thesis.txt").write_text("keep")
    (store / "images").mkdir()
    (store / "images" / "old_chunk").write_text("old")
    (store / ".zgroup").write_text("{}")  # an older format's metadata: one of the command's own names
    with StagedOutput(store, ["zarr.json", ".zgroup", "images"], overwrite=True) as stage:
        (stage / "images").mkdir()
        (stage / "images" / "c0").write_text("new")
        (stage / "zarr.json").write_text("{}")
    assert sorted(p.name for p in store.iterdir()) == ["images", "my_thesis.txt", "zarr.json"]
    assert [p.name for p in (store / "images").iterdir()] == ["c0"]


def test_leftover_temporaries_of_dead_runs_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".ds.zarr{TEMP_MARKER}{dead}-deadbeef"
    (stale / "images").mkdir(parents=True)
    mine = tmp_path / f".x{TEMP_MARKER}{os.getpid()}-cafe"
    mine.write_text("in use")
    foreign = tmp_path / "notes.mx2tmp.txt"
    foreign.write_text("not ours")
    assert clean_stale_temps(tmp_path) == [stale]
    assert mine.exists() and foreign.exists()
    StagedOutput(tmp_path / "ds.zarr", ["zarr.json"])  # a rerun cleans as it checks
    assert not stale.exists()


def test_sigint_is_held_back_while_committing():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with defer_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            done.append(True)
    assert done == [True]


def test_output_checks():
    with pytest.raises(OutputLocationError, match="is a file"):
        check_output_dir(Path(__file__))
    with pytest.raises(OutputLocationError, match="cannot be created"):
        check_output_dir(Path(__file__) / "sub")
    with pytest.raises(FileExistsError):
        check_output_file(Path(__file__))
    assert check_output_file(Path(__file__), overwrite=True) == Path(__file__)


# --------------------------------------------------------------------------------------------
# model cards


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    from napari_mx2_defects.learn.checkpoint import ModelCard, save_checkpoint
    from napari_mx2_defects.learn.models import ARCHITECTURES, build_model
    from napari_mx2_defects.twin.defects import CLASS_NAMES

    card = ModelCard(architecture="light", spec=ARCHITECTURES["light"].as_dict(),
                     classes={str(k): v for k, v in CLASS_NAMES.items()}, pixel_size_A=0.2, normalisation="test",
                     training_data={}, command="pytest", metrics={})
    return save_checkpoint(build_model("light", len(CLASS_NAMES)), card, tmp_path / "m.safetensors")


def _edit_card(path: Path, **changes) -> None:
    card_file = path.with_suffix(".json")
    data = json.loads(card_file.read_text())
    for key, value in changes.items():
        if key.startswith("spec_"):
            data["spec"][key[5:]] = value
        else:
            data[key] = value
    card_file.write_text(json.dumps(data))


BAD_CARDS = {
    "smp_class names an arbitrary attribute": ({"spec_smp_class": "create_model"}, "smp_class"),
    "smp_class dunder": ({"spec_smp_class": "__class__"}, "smp_class"),
    "architecture not validated": ({"architecture": "evil"}, "architecture"),
    "unknown encoder": ({"spec_encoder_name": "timm-efficientnet-b8"}, "encoder"),
    "decoder_channels [1e6, …]": ({"spec_decoder_channels": [1e6, 32, 16]}, "decoder channel"),
    "decoder_channels huge integer": ({"spec_decoder_channels": [10**6, 32, 16]}, "decoder channel"),
    "decoder_channels wrong length": ({"spec_decoder_channels": [64, 32]}, "decoder_channels"),
    "encoder depth 50": ({"spec_encoder_depth": 50}, "encoder_depth"),
    "attention type not known": ({"spec_decoder_attention_type": "eval"}, "attention"),
    "pixel_size_A NaN": ({"pixel_size_A": float("nan")}, "pixel_size_A"),
    "pixel_size_A infinite": ({"pixel_size_A": float("inf")}, "pixel_size_A"),
    "pixel_size_A negative": ({"pixel_size_A": -0.2}, "pixel_size_A"),
    "pixel_size_A 1e-9": ({"pixel_size_A": 1e-9}, "pixel_size_A"),
    "pixel_size_A text": ({"pixel_size_A": "0.2"}, "pixel_size_A"),
    "one class": ({"classes": {"0": "lattice"}}, "classes"),
    "class ids not 0…n-1": ({"classes": {"0": "lattice", "7": "V_X"}}, "class ids"),
    "unknown field": ({"run_this": "os.system"}, "unknown fields"),
}


@pytest.mark.parametrize("case", list(BAD_CARDS))
def test_model_cards_are_validated_against_a_schema(case, checkpoint):
    from napari_mx2_defects.learn.checkpoint import CheckpointError, load_checkpoint

    changes, needle = BAD_CARDS[case]
    _edit_card(checkpoint, **changes)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(checkpoint)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert time.perf_counter() - t0 < 5


def test_nan_pixel_card_is_refused_by_segment_cli(checkpoint, image_file, capsys, tmp_path):
    """``pixel_size_A: NaN`` was accepted and gave 526 false defects on a defect-free twin."""
    _edit_card(checkpoint, pixel_size_A=float("nan"))
    rc, err, _ = _cli(capsys, "segment", image_file, "--model", checkpoint, "--out", tmp_path / "seg", "--quiet")
    assert "pixel_size_A" in _one_line_error(rc, err)
    assert not (tmp_path / "seg").exists()


def test_card_must_be_a_small_regular_file(checkpoint):
    from napari_mx2_defects.learn.checkpoint import CheckpointError, load_checkpoint

    card_file = checkpoint.with_suffix(".json")
    good = card_file.read_text()
    card_file.unlink()
    card_file.symlink_to("/dev/zero")
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(checkpoint)
    assert time.perf_counter() - t0 < 2
    card_file.unlink()
    card_file.write_text(good[:-1] + " " * (2 * 1024**2) + "}")
    with pytest.raises(CheckpointError, match="MiB"):
        load_checkpoint(checkpoint)
    card_file.write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="not a valid model card"):
        load_checkpoint(checkpoint)
    card_file.write_bytes(b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="not a valid model card"):
        load_checkpoint(checkpoint)
    weights = checkpoint.read_bytes()
    checkpoint.unlink()
    checkpoint.symlink_to("/dev/zero")
    card_file.write_text(good)
    with pytest.raises(CheckpointError, match="not a regular file"):
        load_checkpoint(checkpoint)
    checkpoint.unlink()
    checkpoint.write_bytes(weights)
    load_checkpoint(checkpoint)


def test_build_model_validates_the_name_first():
    from napari_mx2_defects.learn.models import ModelSpec, build_model

    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("no-such-net", 12)
    with pytest.raises(ValueError, match="smp_class"):
        build_model(ModelSpec("FPN", "resnet18"), 12)
    with pytest.raises(ValueError, match="number of classes"):
        build_model("light", 10**6)


def test_shipped_default_card_still_loads():
    from napari_mx2_defects.learn.checkpoint import card_path, default_model_path, load_checkpoint, read_card

    card = read_card(card_path(default_model_path()))
    assert card.architecture == "light" and card.pixel_size_A == pytest.approx(0.2)
    _, loaded = load_checkpoint(default_model_path())
    assert loaded.classes == card.classes


def test_checkpoint_pair_is_written_together_or_not_at_all(tmp_path, monkeypatch):
    import safetensors.torch

    from napari_mx2_defects.learn.checkpoint import ModelCard, save_checkpoint
    from napari_mx2_defects.learn.models import ARCHITECTURES, build_model

    card = ModelCard(architecture="light", spec=ARCHITECTURES["light"].as_dict(),
                     classes={str(i): f"c{i}" for i in range(3)}, pixel_size_A=0.2, normalisation="",
                     training_data={}, command="", metrics={})

    def crash(state, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 8)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(build_model("light", 3), card, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_checkpoint(build_model("light", 3), card, tmp_path / "m.safetensors")
    with pytest.raises(FileExistsError):
        save_checkpoint(build_model("light", 3), card, tmp_path / "m.safetensors", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


def test_a_ctrl_c_swallowed_by_a_c_callback_still_stops_the_command():
    """A SIGINT landing inside a ctypes callback (numba's llvmlite cache hook during rendering) was printed
    as "Exception ignored … KeyboardInterrupt" and the command went on (seen in CI); the CLI now keeps the
    message off stderr and raises the interrupt at the command's next progress report."""
    import subprocess
    import sys

    script = (
        "import ctypes, os, signal\n"
        "from napari_mx2_defects.cli.main import _redeliver_swallowed_interrupts\n"
        "from napari_mx2_defects.cli.options import progress_printer\n"
        "_redeliver_swallowed_interrupts()\n"
        "callback = ctypes.CFUNCTYPE(None)(lambda: (os.kill(os.getpid(), signal.SIGINT), sum(range(10**5))))\n"
        "try:\n"
        "    callback()\n"
        "    progress_printer(True)(0.5, 'next step')\n"
        "    print('went on')\n"
        "except KeyboardInterrupt:\n"
        "    print('stopped')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "stopped", done.stdout + done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
