"""``mx2-defects batch`` (issue 12): a folder of files on a dask LocalCluster, resumable, never half-written.

Kept small: four 40 Å MoS2 twins at 0.2 Å/px and one corrupt file; one worker process.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from napari_mx2_defects.batch import BATCH_FILES, find_inputs, output_folder_name, run_batch
from napari_mx2_defects.core.jobs import Cancelled
from napari_mx2_defects.io.atomic import TEMP_MARKER

CLI = [sys.executable, "-m", "napari_mx2_defects.cli"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from napari_mx2_defects.io.writer import write_calibrated_tiff
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections

    root = tmp_path_factory.mktemp("batch_inputs")
    (root / "day2").mkdir()
    for k, where in enumerate(["a.tif", "b.tif", "day2/a.tif", "day2/c.tif"]):
        twin = simulate_twin(
            TwinRequest(
                material="MoS2",
                defects="V_X=3%,V_XX=1%,V_M=1%",
                fov_A=40.0,
                pixel_size_A=0.2,
                seed=500 + k,
                imperfections=Imperfections(dose_e_per_A2=1e6),
            )
        )
        write_calibrated_tiff(root / where, twin.image, 0.2)
    (root / "broken.dm4").write_bytes(b"not a DM4 file at all" * 10)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.tif").write_bytes(b"")
    return root


def _complete_folders(out: Path) -> list[str]:
    """Every visible folder in ``out``, each checked to be complete."""
    names = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    for name in names:
        assert sorted(p.name for p in (out / name).iterdir()) == sorted(BATCH_FILES), name
    return names


def test_inputs_are_found_and_named_by_their_path(folder, tmp_path):
    found = find_inputs([folder], exclude=tmp_path)
    assert [name for _, name in found] == ["a.tif", "b.tif", "broken.dm4", "day2__a.tif", "day2__c.tif"]
    assert output_folder_name("x/y/z.dm4") == "x__y__z.dm4"
    with pytest.raises(ValueError, match="no image files"):
        find_inputs([tmp_path])
    with pytest.raises(ValueError, match="no such file"):
        find_inputs([folder / "nope"])


@pytest.mark.slow
def test_batch_summary_matches_the_per_file_outputs_and_a_rerun_skips_them(folder, tmp_path):
    out = tmp_path / "out"
    messages = []
    result = run_batch([folder], out, material="MoS2", workers=1, progress=lambda f, m: messages.append(m))
    assert sorted(result.done) == ["a.tif", "b.tif", "day2__a.tif", "day2__c.tif"]
    assert list(result.failed) == ["broken.dm4"] and "broken.dm4" in result.failed["broken.dm4"]
    assert _complete_folders(out) == sorted(result.done)
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.file) == ["a.tif", "b.tif", "broken.dm4", "a.tif", "c.tif"]
    assert list(summary.status) == ["done", "done", "failed", "done", "done"]
    for row in summary[summary.status == "done"].itertuples():
        per_file = out / row.folder
        lattice = json.loads((per_file / "analysis" / "lattice.json").read_text())
        conc = pd.read_csv(per_file / "analysis" / "concentrations.csv").set_index("defect_class")
        assert row.pixel_size_A == pytest.approx(lattice["pixel_size_A"])
        assert row.n_X_sites == lattice["n_X_sites"] and row.a_A == pytest.approx(lattice["a_A"])
        assert row.n_model_defects == len(pd.read_csv(per_file / "defects.csv"))
        for cls in conc.index:
            assert getattr(row, f"{cls}_count") == conc.loc[cls, "count"]
            assert getattr(row, f"{cls}_per_cm2") == pytest.approx(conc.loc[cls, "per_cm2"])
            assert getattr(row, f"{cls}_ci_high_per_cm2") == pytest.approx(conc.loc[cls, "ci_high_per_cm2"])
        assert row.V_X_count > 0
    assert any("5/5" in m for m in messages)
    # the same batch again: the done files are skipped, the failed one is tried again
    before = {n: (out / n / "result.json").read_bytes() for n in result.done}
    again = run_batch([folder], out, material="MoS2", workers=1)
    assert (
        sorted(again.skipped) == sorted(result.done)
        and again.done == []
        and list(again.failed) == ["broken.dm4"]
    )
    assert {n: (out / n / "result.json").read_bytes() for n in result.done} == before
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), summary)
    # a changed input file: its old results are kept and it is reported, until --overwrite redoes it
    (folder / "b.tif").touch()
    third = run_batch([folder], out, material="MoS2", workers=1)
    assert third.done == [] and "pass --overwrite to redo it" in third.failed["b.tif"]
    assert (out / "b.tif" / "result.json").read_bytes() == before["b.tif"]
    fourth = run_batch([folder / "b.tif"], out, material="MoS2", workers=1, overwrite=True)
    assert fourth.done == ["b.tif"] and _complete_folders(out) == sorted(result.done)


@pytest.mark.slow
def test_a_cancelled_batch_leaves_whole_folders_and_resumes(folder, tmp_path):
    out = tmp_path / "out"
    seen = []

    def cancelled() -> bool:
        return any(": done" in m for m in seen)

    with pytest.raises(Cancelled, match="run it again to resume"):
        run_batch(
            [folder],
            out,
            material="MoS2",
            workers=1,
            progress=lambda f, m: seen.append(m),
            cancelled=cancelled,
        )
    first = _complete_folders(out)
    assert 1 <= len(first) < 4
    rest = run_batch([folder], out, material="MoS2", workers=1)
    assert sorted(rest.skipped) == first
    assert sorted(rest.done + rest.skipped) == ["a.tif", "b.tif", "day2__a.tif", "day2__c.tif"]
    assert _complete_folders(out) == ["a.tif", "b.tif", "day2__a.tif", "day2__c.tif"]
    assert not [p for p in out.rglob("*") if TEMP_MARKER in p.name]


@pytest.mark.slow
def test_batch_command_ctrl_c_then_resume(folder, tmp_path):
    """As a user would: Ctrl-C once a file is done, then the same command again finishes the rest."""
    out = tmp_path / "out"
    args = [*CLI, "batch", str(folder), "--material", "MoS2", "--out", str(out), "--workers", "1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if ": done" in line:
            break
    time.sleep(0.5)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    rc = proc.wait(timeout=120)
    err = "".join(lines) + rest
    assert "Traceback" not in err, err
    assert rc in (130, 1), err  # interrupted, or finished with the broken file failed
    if rc == 130:
        assert err.strip().splitlines()[-1] == "interrupted"
    done_before = _complete_folders(out)
    assert done_before
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1, again.stderr  # broken.dm4 fails: status 1, one line per file in the table
    assert "4 processed" not in again.stdout or not done_before
    assert f"{len(done_before)} already done" in again.stdout
    assert _complete_folders(out) == ["a.tif", "b.tif", "day2__a.tif", "day2__c.tif"]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.status) == ["done", "done", "failed", "done", "done"]
    assert not [p for p in out.rglob("*") if TEMP_MARKER in p.name]


@pytest.mark.slow
@pytest.mark.gui
def test_batch_dock_runs_a_folder_without_blocking_and_cancel_keeps_whole_folders(
    make_napari_viewer, qtbot, folder, tmp_path
):
    from napari_mx2_defects.widgets.batch import BatchWidget

    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.run() is None and "folder of images" in widget.status.value
    widget.inputs.value = folder
    out = tmp_path / "out"
    widget.out.value = out

    # Cancel as soon as the first file is done: the folders there are whole, the rest is left to a rerun
    def cancel_after_one(fraction, message):
        if ": done" in message and widget.cancel_button.enabled:
            widget.cancel_button.native.click()

    widget.runner._bridge.progressed.connect(cancel_after_one)
    assert widget.run() is not None
    ticks = []
    qtbot.waitUntil(lambda: ticks.append(1) or widget.runner.worker is None, timeout=300_000)
    assert len(ticks) > 3  # the GUI thread ran while the batch did
    assert widget.status.value.startswith("cancelled"), widget.status.value
    first = _complete_folders(out)
    assert 1 <= len(first) < 4
    widget.runner._bridge.progressed.disconnect(cancel_after_one)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=300_000)
    assert widget.result is not None and sorted(widget.result.skipped) == first
    assert widget.table.data.to_list()[0][:2] == ["a.tif", "done"]
    assert [row[1] for row in widget.table.data.to_list()] == ["done", "done", "failed", "done", "done"]
    assert f"{len(first)} already done" in widget.status.value
    shown = pd.read_csv(io.StringIO(widget.result.summary.to_csv(index=False)))
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), shown)
