"""Dock widget "Batch folder": what ``mx2-defects batch`` does, over a folder, without blocking the viewer."""

from __future__ import annotations

import os

import napari
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
    Table,
)

from ..batch import SHOWN_COLUMNS
from ..core.parameters import ANALYSIS_PARAMETERS, RUNTIMES
from ..twin.parents import list_parents
from ._worker import JobWidget
from .fields import field_values, make_fields

__all__ = ["BATCH_COLUMNS", "BatchWidget", "TABLE_ROWS", "summary_view"]

#: The dock's summary columns: ``batch``'s shown columns with the file's warnings (summary.csv's notes) after
#: its status, so a wrong lattice or a failed self-calibration is seen in the table, not only in the CSV.
BATCH_COLUMNS = (*SHOWN_COLUMNS[:2], "warnings", *SHOWN_COLUMNS[2:])
#: Rows the summary shows without scrolling.
TABLE_ROWS = 8
#: Row colours: a file with warnings (amber) and a failed file (red), light enough to read dark text on.
ROW_COLOURS = {"warning": "#fff0c2", "failed": "#ffd0d0"}


def summary_view(summary) -> tuple[dict[str, list], list[str]]:
    """The batch summary as the dock shows it: ``{column: values}`` of :data:`BATCH_COLUMNS` (numbers rounded
    for reading, the warnings as one line each) and each row's level: ``"failed"``, ``"warning"`` or ``""``."""
    import pandas as pd

    def cell(column, value):
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        if isinstance(value, float):
            return f"{value:.3g}" if column.endswith("per_cm2") else f"{value:.4g}"
        return value

    table = {c: [] for c in BATCH_COLUMNS}
    levels = []
    for _, row in summary.iterrows():
        notes = "" if "notes" not in row or pd.isna(row["notes"]) else str(row["notes"]).strip()
        for column in BATCH_COLUMNS:
            value = notes if column == "warnings" else row[column] if column in row else ""
            table[column].append(cell(column, value))
        failed = str(row.get("status", "")) == "failed"
        levels.append("failed" if failed else "warning" if notes else "")
    return table, levels


class BatchWidget(JobWidget, Container):
    """Segment and analyse every image of a folder (dask LocalCluster), resumable; the summary as a table."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=True)
        self.viewer = viewer
        self.inputs = FileEdit(label="folder of images", mode="d")
        self.out = FileEdit(label="output folder", mode="d")
        self.material = ComboBox(label="parent", choices=list_parents(), value="2H-MoS2")
        self.material.native.setEditable(True)
        fields = make_fields(ANALYSIS_PARAMETERS)  # as `batch`'s analysis options
        self.model = FileEdit(label="model (empty: the shipped one)", filter="*.safetensors", mode="r")
        self.runtime = ComboBox(label="runtime", choices=list(RUNTIMES), value="auto")
        self.workers = SpinBox(label="worker processes", min=1, max=max(1, os.cpu_count() or 1), value=1)
        self.overwrite = CheckBox(label="redo files already done", value=False)
        self.run_button = PushButton(text="Run batch")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100)
        self.status = Label(value="")
        self.table = Table(value={c: [] for c in BATCH_COLUMNS}, label="summary")
        self.table.read_only = True
        self.levels: list[str] = []
        self.extend(
            [
                self.inputs,
                self.out,
                self.material,
                *fields,
                self.model,
                self.runtime,
                self.workers,
                self.overwrite,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
                self.table,
            ]
        )
        self.result = None
        self._init_runner()
        from ._worker import _show_rows

        _show_rows(self.table, TABLE_ROWS)  # after fit_dock's default of a few rows

    def run(self, *_):
        """Start the batch in a thread worker (returns the worker, or None with a message)."""
        from ..batch import run_batch

        inputs, out = str(self.inputs.value or ""), str(self.out.value or "")
        if inputs in ("", ".") or not os.path.isdir(inputs):
            self.status.value = "⚠ choose the folder of images"
            return None
        if out in ("", "."):
            self.status.value = "⚠ choose an output folder"
            return None
        model = str(self.model.value) if str(self.model.value or "") not in ("", ".") else "default"
        try:
            values = field_values(self, ANALYSIS_PARAMETERS)
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        material, runtime = self.material.value, self.runtime.value
        workers, overwrite = int(self.workers.value), bool(self.overwrite.value)

        def job(progress, cancelled):
            return run_batch(
                [inputs],
                out,
                material=material,
                values=values,
                model=model,
                runtime=runtime,
                workers=workers,
                overwrite=overwrite,
                progress=progress,
                cancelled=cancelled,
            )

        return self._start(job, "starting the workers…")

    def _on_done(self, result) -> None:
        self.result = result
        self.show_summary(result.summary)
        warned = self.levels.count("warning")
        self.status.value = result.describe() + (
            f"; ⚠ {warned} file{'s' if warned > 1 else ''} with warnings (amber rows, see the warnings column)"
            if warned else "")
        self.progress.value = 100

    def show_summary(self, summary) -> None:
        """Fill the table from a batch summary; rows of files with warnings amber, failed files red (the
        reason in the row's tooltip)."""
        from qtpy.QtGui import QBrush, QColor

        data, self.levels = summary_view(summary)
        self.table.value = data
        view = self.table.native
        warn_column = BATCH_COLUMNS.index("warnings")
        for row, level in enumerate(self.levels):
            tip = data["warnings"][row] or data["error"][row]
            for column in range(view.columnCount()):
                item = view.item(row, column)
                if item is None:
                    continue
                if level:
                    item.setBackground(QBrush(QColor(ROW_COLOURS[level])))
                    item.setForeground(QBrush(QColor("#000000")))
                if tip:
                    item.setToolTip(tip)
        view.setColumnWidth(warn_column, 220)
