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

__all__ = ["BatchWidget"]


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
        self.table = Table(value={c: [] for c in SHOWN_COLUMNS}, label="summary")
        self.table.read_only = True
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
        values = field_values(self, ANALYSIS_PARAMETERS)
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
        import pandas as pd

        summary = result.summary
        self.table.value = {
            c: ["" if pd.isna(v) else v for v in summary[c]] if c in summary else [""] * len(summary)
            for c in SHOWN_COLUMNS
        }
        self.status.value = result.describe()
        self.progress.value = 100
