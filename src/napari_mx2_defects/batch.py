"""Batch: reader → segmentation → site analysis for every file of a folder, on dask.distributed.

Each input file gets one output folder, named after its path relative to the folder given (``a/b.dm4``
→ ``a__b.dm4``), holding what ``segment`` and ``analyze`` write for it (``labels.tif``, ``defects.csv``,
the analysis files) and ``result.json`` (its row of the summary and the identity of the input file).
A folder is staged under a temporary name and appears with one rename when complete
(:class:`~.io.atomic.StagedOutput`), so a crash, a Ctrl-C or a killed worker never leaves a
half-written folder; the temporaries of dead runs are removed when the next run starts.

A file whose folder exists with a ``result.json`` for the same input (size and modification time)
is skipped, so a batch resumes where it stopped; a file changed since its folder was written is
reported, and redone only with ``overwrite`` (its results are not replaced without asking).
``summary.csv`` (one row per file: pixel size, lattice, counts and concentrations per cm² with
their 95 % intervals, notes, status and error) is rebuilt from the ``result.json`` files at the end
of every run, so it always matches the per-file outputs. A file that fails (unreadable, no
calibration, no lattice) is a ``failed`` row with its one-line reason and is retried by the next
run.

The per-file work is the same functions the ``segment`` and ``analyze`` commands and the docks call
(:func:`~.learn.inference.segment_image`, :func:`~.analysis.api.analyze_image`, by the front ends'
rules in :mod:`.inputs`), so a batch gives the answer those give file by file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .core.jobs import Cancelled

__all__ = [
    "BATCH_FILES",
    "INPUT_SUFFIXES",
    "BatchResult",
    "find_inputs",
    "output_folder_name",
    "process_file",
    "process_file_or_reason",
    "run_batch",
    "summary_table",
]

#: Suffixes a folder is searched for (``.emi`` files are read through their ``.ser``).
INPUT_SUFFIXES = (".dm3", ".dm4", ".emd", ".ser", ".mrc", ".tif", ".tiff", ".npy")
#: What each file's folder holds.
BATCH_FILES = ["labels.tif", "defects.csv", "analysis", "result.json"]
#: Columns of the summary before the per-class ones.
SUMMARY_COLUMNS = [
    "file",
    "folder",
    "status",
    "pixel_size_A",
    "self_calibrated",
    "a_A",
    "n_M_sites",
    "n_X_sites",
    "analysed_area_nm2",
    "n_model_defects",
    "runtime",
    "seconds",
    "notes",
    "error",
]
#: Per-class columns of the summary (``V_X_count``, ``V_X_per_cm2``, …), from concentrations.csv.
CLASS_FIELDS = ("count", "per_cm2", "ci_low_per_cm2", "ci_high_per_cm2")


#: The summary columns the ``batch`` command prints and the *Batch folder* dock shows (all are in
#: summary.csv).
SHOWN_COLUMNS = ("file", "status", "pixel_size_A", "a_A", "n_X_sites", "V_X_count", "V_X_per_cm2", "error")


def find_inputs(paths: Iterable[str | Path], exclude: str | Path | None = None) -> list[tuple[Path, str]]:
    """(file, output folder name) for every image file given or found in a given folder (recursively,
    hidden entries and anything under ``exclude`` left out), in sorted order.

    Raises
    ------
    ValueError
        For a path that does not exist and when nothing is found.
    """
    skip = Path(exclude).resolve() if exclude is not None else None
    found: dict[str, Path] = {}
    for given in paths:
        given = Path(given)
        if not given.exists():
            raise ValueError(f"{given}: no such file or folder")
        if given.is_file():
            found.setdefault(output_folder_name(given.name), given)
            continue
        for path in sorted(given.rglob("*")):
            rel = path.relative_to(given)
            if any(part.startswith(".") for part in rel.parts) or not path.is_file():
                continue
            if path.suffix.lower() not in INPUT_SUFFIXES:
                continue
            if skip is not None and (path.resolve() == skip or skip in path.resolve().parents):
                continue
            found.setdefault(output_folder_name(rel.as_posix()), path)
    if not found:
        raise ValueError(f"no image files ({', '.join(INPUT_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return sorted(((p, name) for name, p in found.items()), key=lambda item: item[1])


def output_folder_name(relative: str) -> str:
    """The output folder of a file at ``relative`` (a path below the folder given): its parts joined
    by ``__``."""
    return "__".join(part for part in Path(relative).as_posix().split("/") if part not in ("", ".", ".."))


def _identity(path: Path) -> dict:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _state(folder: Path, path: Path) -> str:
    """``new`` (no results yet), ``done`` (results of this very input) or ``stale`` (results of an earlier
    version of the file, or an unreadable record)."""
    record = folder / "result.json"
    if not folder.exists():
        return "new"
    try:
        return "done" if json.loads(record.read_text()).get("source") == _identity(path) else "stale"
    except (OSError, ValueError):
        return "stale"


def _row(name: str, folder: str, seconds: float, segmentation, result) -> dict:
    from .core.messages import one_line as _one_line  # the commands' one-line text

    lat = result.lattice
    row = {
        "file": name,
        "folder": folder,
        "status": "done",
        "pixel_size_A": lat["pixel_size_A"],
        "self_calibrated": bool(lat["self_calibrated"]),
        "a_A": lat["a_A"],
        "n_M_sites": lat["n_M_sites"],
        "n_X_sites": lat["n_X_sites"],
        "analysed_area_nm2": lat["analysed_area_nm2"],
        "n_model_defects": len(segmentation.defects),
        "runtime": segmentation.runtime,
        "seconds": round(seconds, 2),
        "notes": " | ".join(_one_line(n) for n in result.notes),
        "error": "",
    }
    for rec in result.concentrations.itertuples():
        for key in CLASS_FIELDS:
            row[f"{rec.defect_class}_{key}"] = getattr(rec, key)
    if result.composition is not None:  # alloy species named: each element's fraction of the whole image
        for rec in result.composition[result.composition.region == 0].itertuples():
            row[f"{rec.element}_fraction"] = rec.fraction
            row[f"{rec.element}_fraction_ci"] = f"{rec.ci_low:.4f}-{rec.ci_high:.4f}"
    if result.phases is not None:  # phases mapped: each phase's fraction of the analysed sites
        for rec in result.phase_table().itertuples():
            row[f"phase_{rec.phase or 'unassigned'}_fraction"] = rec.fraction
    return row


def process_file(
    path: str | Path,
    folder: str | Path,
    material: str,
    values: dict,
    model: str = "default",
    runtime: str = "auto",
    threads: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Read, segment and analyse one file into ``folder`` (staged, appearing whole); its summary row.

    ``values`` are the analysis parameters (:data:`~.core.parameters.ANALYSIS_PARAMETERS`, as the
    ``analyze`` command and the statistics dock give them). An uncalibrated file with
    ``self_calibrate`` is first analysed without defects to measure its pixel size from the
    parent's lattice, then segmented at that pixel size.
    """
    from .analysis.api import analyze_image
    from .inputs import analysis_settings, image_plane
    from .io.atomic import StagedOutput
    from .io.formats import load_images
    from .io.writer import LABELS_TITLE, write_calibrated_tiff
    from .learn.inference import DEFECTS_COLUMNS, segment_image

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    t0 = time.perf_counter()
    path, folder = Path(path), Path(folder)
    source = _identity(path)
    stage = StagedOutput(folder, BATCH_FILES, overwrite=overwrite)
    image = load_images(path)[0]
    plane, note = image_plane(image.data, path.name)
    pixel, energy, optics = analysis_settings(
        image.scale_A,
        image.calibrated,
        image.beam_energy_keV,
        values,
        path.name,
        recorded_optics=image.optics,
    )
    dopant = values.get("dopant") or None
    seg_pixel = pixel
    if seg_pixel is None:  # self-calibrated: the lattice gives the pixel size the model needs
        first = analyze_image(
            plane, None, material=material, beam_energy_keV=energy, dopant=dopant, optics=optics
        )
        seg_pixel = first.lattice["pixel_size_A"]
    seg = segment_image(
        plane, seg_pixel, model=model, runtime=runtime, material=material, beam_energy_keV=energy, optics=optics
    )
    result = analyze_image(
        plane,
        pixel,
        material=material,
        defects=seg.defects,
        beam_energy_keV=energy,
        dopant=dopant,
        optics=optics,
        exclude_contamination=bool(values.get("exclude_contamination")),
        alloy_species=values.get("alloy_species") or None,
        map_phases=bool(values.get("map_phases")),
    )
    if note:
        result.notes.insert(0, note)
    row = _row(path.name, folder.name, time.perf_counter() - t0, seg, result)
    with stage as staging:
        write_calibrated_tiff(staging / "labels.tif", seg.labels, seg_pixel, title=LABELS_TITLE)
        seg.defects[DEFECTS_COLUMNS[:4]].to_csv(staging / "defects.csv", index=False)
        result.save(staging / "analysis")
        (staging / "result.json").write_text(
            json.dumps(
                {"row": row, "source": source, "material": material, "model": str(model), "values": values},
                indent=2,
                default=str,
            )
        )
    return row


def process_file_or_reason(*args, **kwargs) -> dict:
    """:func:`process_file`, a failure as its summary row (``status`` failed, ``error`` one line)
    instead of an exception, so a worker reports it without dask's traceback. Ctrl-C and the like are
    not caught."""
    try:
        return process_file(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure of one file is a row of the summary
        from .core.messages import error_message

        reason = error_message(exc)  # the commands' one-line message for the same error
        return {"file": Path(args[0]).name, "folder": Path(args[1]).name, "status": "failed", "error": reason}


def summary_table(rows: Sequence[dict]) -> pd.DataFrame:
    """The summary: :data:`SUMMARY_COLUMNS`, then the per-class columns in the order classes appear."""
    table = pd.DataFrame(list(rows))
    for column in SUMMARY_COLUMNS:
        if column not in table:
            table[column] = pd.NA
    extra = [c for c in table.columns if c not in SUMMARY_COLUMNS]
    return table[SUMMARY_COLUMNS + extra]


@dataclass
class BatchResult:
    """What a batch did: the summary (one row per input file) and where it is."""

    summary: pd.DataFrame
    summary_path: Path
    done: list[str] = field(default_factory=list)  # processed by this run
    skipped: list[str] = field(default_factory=list)  # already done by an earlier run
    failed: dict[str, str] = field(default_factory=dict)  # file → reason

    def describe(self) -> str:
        return (
            f"{len(self.done)} processed, {len(self.skipped)} already done, {len(self.failed)} failed; "
            f"summary {self.summary_path}"
        )


@contextlib.contextmanager
def _quiet_dask():
    """dask's own log lines (a worker closing, a task cancelled at Ctrl-C) kept to errors, in this process
    and in the worker processes a LocalCluster starts (they read ``DASK_LOGGING__DISTRIBUTED`` at start)."""
    logger = logging.getLogger("distributed")
    level, env = logger.level, os.environ.get("DASK_LOGGING__DISTRIBUTED")
    logger.setLevel(logging.ERROR)
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"
    try:
        yield
    finally:
        logger.setLevel(level)
        if env is None:
            os.environ.pop("DASK_LOGGING__DISTRIBUTED", None)
        else:
            os.environ["DASK_LOGGING__DISTRIBUTED"] = env


def _client(scheduler: str | None, workers: int):
    """(client, cluster): the scheduler at ``scheduler``, or a new LocalCluster of ``workers`` processes."""
    from dask.distributed import Client, LocalCluster

    from .learn.dataset import connect_scheduler

    if scheduler:
        return connect_scheduler(scheduler), None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster


def run_batch(
    inputs: Iterable[str | Path],
    out: str | Path,
    material: str = "MoS2",
    values: dict | None = None,
    model: str = "default",
    runtime: str = "auto",
    scheduler: str | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: Callable[[float, str], None] = lambda f, m: None,
    cancelled: Callable[[], bool] = lambda: False,
) -> BatchResult:
    """Process every file of ``inputs`` (files or folders) into ``out`` (see the module docstring).

    Parameters
    ----------
    values : dict, optional
        Analysis parameters (:data:`~.core.parameters.ANALYSIS_PARAMETERS`); defaults otherwise.
    scheduler : str, optional
        Address of a running dask.distributed scheduler; by default a LocalCluster of ``workers``
        processes (each with the machine's cores shared among them) runs for this batch.
    overwrite : bool
        Redo files already done (their folders' entries are replaced).
    """
    from .core.parameters import ANALYSIS_PARAMETERS
    from .core.validation import BOUNDS
    from .io.atomic import atomic_path, check_output_dir, clean_stale_temps
    from .learn.runtime import RUNTIMES
    from .twin.parents import get_parent

    get_parent(material)  # an unknown parent is refused before any work
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {str(runtime)[:40]!r}; use {', '.join(RUNTIMES)}")
    workers = BOUNDS["workers"].check(workers)
    values = {**{p.name: p.default for p in ANALYSIS_PARAMETERS}, **(values or {})}
    out = check_output_dir(out)
    files = find_inputs(inputs, exclude=out)
    out.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    result = BatchResult(summary=pd.DataFrame(), summary_path=out / "summary.csv")
    pending = []
    for path, name in files:
        state = "new" if overwrite else _state(out / name, path)
        if state == "done":
            result.skipped.append(name)
        elif state == "stale":
            result.failed[name] = (
                f"{path.name} changed since its results in {out / name} were made (or they are "
                f"incomplete): pass --overwrite to redo it"
            )
        else:
            pending.append((path, name))
    progress(0.0, f"{len(files)} files: {len(result.skipped)} already done, {len(pending)} to do")
    if pending:
        task = {
            "material": material,
            "values": values,
            "model": str(model),
            "runtime": runtime,
            "threads": max(1, (os.cpu_count() or 1) // workers) if not scheduler else None,
            "overwrite": overwrite,
        }
        _run_pending(pending, out, task, scheduler, workers, result, len(files), progress, cancelled)
    rows = []
    for path, name in files:
        if name in result.failed:
            rows.append({"file": path.name, "folder": name, "status": "failed", "error": result.failed[name]})
            continue
        try:
            rows.append(json.loads((out / name / "result.json").read_text())["row"])
        except (OSError, ValueError, KeyError):
            rows.append({"file": path.name, "folder": name, "status": "missing", "error": "no result.json"})
    result.summary = summary_table(rows)
    with atomic_path(result.summary_path) as tmp:
        result.summary.to_csv(tmp, index=False)
    progress(1.0, result.describe())
    return result


def _run_pending(
    pending,
    out: Path,
    task: dict,
    scheduler,
    workers: int,
    result: BatchResult,
    total: int,
    progress,
    cancelled,
) -> None:
    """Submit the pending files to dask (``task``: the keyword arguments of :func:`process_file` they share)
    and collect them as they finish; Cancel (or Ctrl-C) stops the local cluster, whose half-done
    folders are staged temporaries removed by the next run."""
    from dask.distributed import as_completed

    with _quiet_dask():
        client, cluster = _client(scheduler, workers)
        try:
            futures = {
                client.submit(
                    process_file_or_reason,
                    str(path),
                    str(out / name),
                    **task,
                    pure=False,
                    key=f"mx2-batch-{name}-{time.time_ns()}",
                ): name
                for path, name in pending
            }
            finishing = as_completed(futures)
            while not finishing.is_empty():
                if cancelled():
                    left = len(futures) - len(result.done) - len(result.failed)
                    raise Cancelled(f"batch cancelled: {left} files left undone (run it again to resume)")
                finished = finishing.next_batch(block=False)
                if not finished:
                    time.sleep(0.2)
                for future in finished:
                    name, row = futures[future], future.result()
                    if row["status"] == "failed":
                        result.failed[name] = row["error"]
                        message = f"{name}: failed ({row['error']})"
                    else:
                        result.done.append(name)
                        message = f"{name}: done"
                    n = len(result.done) + len(result.failed) + len(result.skipped)
                    progress(n / total, f"{n}/{total} {message}")
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
