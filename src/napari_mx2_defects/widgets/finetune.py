"""Dock widget "Fine-tune": review the sites the model is least sure of, correct, fine-tune, re-count.

Review: *Rank uncertain sites* runs the model on the eight orientations of the image
(:func:`~..learn.uncertainty.rank_uncertain_sites`) and adds the candidates as a Points layer; *Next
uncertain site* centres the view on each in turn, most uncertain first, and makes the corrections
layer active so a class key (shown in the legend) or a click fixes it there.  A rectangle in a Shapes
layer marks what was reviewed.  Fine-tune: the same :func:`~..learn.finetune.finetune` as
``mx2-defects finetune`` on the corrections (:func:`~..layers.corrections_from_layers`), with a live
loss curve, then the image re-segmented with the new model and its defects re-counted.  Cancel
stops at the next step and leaves any earlier model in the folder as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import napari.layers
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton
from qtpy.QtCore import QObject, Signal

from ..core.parameters import FINETUNE_PARAMETERS, RUNTIMES, SEGMENT_PARAMETERS
from ..twin.parents import list_parents
from ._worker import NO_LAYER, JobWidget, layer_picker
from .defect_editing import DefectEditingPanel
from .fields import field_values, make_fields

__all__ = ["FinetuneWidget"]

#: Zoom (screen pixels per Å) the view is brought to, at least, on each uncertain site: about 40 Å across.
REVIEW_ZOOM = 20.0


class _LossBridge(QObject):
    """Carries each training step's loss from the worker thread to the dock's curve."""

    stepped = Signal(int, float)


class FinetuneWidget(JobWidget, Container):
    """Rank uncertain sites, fine-tune the model on the corrected defects, re-segment and re-count."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=True)
        self.viewer = viewer
        self.image_layer = layer_picker(viewer, napari.layers.Image, "image")
        (pixel,) = make_fields(SEGMENT_PARAMETERS)  # as `finetune --pixel-size`
        self.use_default = CheckBox(label="start from the shipped model", value=True)
        self.checkpoint = FileEdit(label="or checkpoint (.safetensors)", filter="*.safetensors", mode="r")
        self.runtime = ComboBox(label="runtime (ranking, re-count)", choices=list(RUNTIMES), value="auto")
        self.rank_button = PushButton(text="Rank uncertain sites")
        self.next_button = PushButton(text="Next uncertain site", enabled=False)
        self.review_status = Label(value="")
        self.corrections_layer = layer_picker(viewer, napari.layers.Points, "corrected defects (Points)")
        self.region_layer = layer_picker(
            viewer, napari.layers.Shapes, "reviewed region (Shapes)", optional=True
        )
        self.material = ComboBox(label="parent (twins mixed in)", choices=list_parents(), value="2H-MoS2")
        self.material.native.setEditable(True)
        self.dopant = LineEdit(label="dopant (twins carry it as TM_D)", value="")
        fields = make_fields(FINETUNE_PARAMETERS)  # as `finetune --minutes --epochs --twins`
        self.out = FileEdit(label="save the model in folder", mode="d")
        self.replace = CheckBox(label="replace a model already in that folder", value=False)
        self.run_button = PushButton(text="Fine-tune and re-count")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100)
        self.status = Label(value="")
        self.extend(
            [
                self.image_layer,
                pixel,
                self.use_default,
                self.checkpoint,
                self.runtime,
                Label(value="<b>Review</b>"),
                self.rank_button,
                self.next_button,
                self.review_status,
                Label(value="<b>Fine-tune</b>"),
                self.corrections_layer,
                self.region_layer,
                self.material,
                self.dopant,
                *fields,
                self.out,
                self.replace,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )
        for label in (self.review_status, self.status):  # long messages wrap instead of widening the dock
            label.native.setWordWrap(True)
        self.editing = DefectEditingPanel(viewer, picker=self.corrections_layer)  # class keys, undo
        self.native.layout().addWidget(self.editing.native)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.native.layout().addWidget(self.canvas)
        self.losses: list[tuple[int, float]] = []
        self._bridge = _LossBridge()
        self._bridge.stepped.connect(self._on_step)
        self._draw_losses()
        self.uncertain_name: str | None = None
        self._next_index = 0
        self._job = ""
        self.result: dict | None = None
        self._init_runner()
        self.rank_button.changed.connect(self.rank)
        self.next_button.changed.connect(self.next_site)
        self._track_layers()

    # ---- shared inputs ------------------------------------------------------------------------------
    def _model(self) -> str:
        return "default" if self.use_default.value else str(self.checkpoint.value)

    def _start_job(self, kind: str, job):
        self._job = kind
        self.rank_button.enabled = False
        return self._start(job)

    def _on_finished(self) -> None:
        super()._on_finished()
        self.rank_button.enabled = True

    def _on_done(self, result) -> None:
        (self._ranked if self._job == "rank" else self._tuned)(result)

    # ---- review -------------------------------------------------------------------------------------
    def rank(self, *_):
        """Rank the image's sites by the model's uncertainty in a thread worker (returns the worker)."""
        from ..learn.uncertainty import rank_uncertain_sites

        chosen = self._selected_image_and_pixel()
        if chosen is None:
            return None
        layer, data, _, pixel = chosen
        model, runtime = self._model(), self.runtime.value
        self._context = (layer, pixel)
        return self._start_job(
            "rank",
            lambda progress, cancelled: rank_uncertain_sites(
                data, pixel, model=model, runtime=runtime, progress=progress, cancelled=cancelled
            ),
        )

    def _ranked(self, table) -> None:
        from ..layers import add_layers, uncertain_layer

        layer, pixel = self._context
        name = f"{layer.name} uncertain sites"
        if name in self.viewer.layers:  # our own layer from an earlier ranking of this image: replaced
            self.viewer.layers.remove(name)
        (points,) = add_layers(self.viewer, [uncertain_layer(table, layer, pixel, name=name)])
        self.uncertain_name, self._next_index = points.name, 0
        self.next_button.enabled = len(table) > 0
        self.status.value = f"{len(table)} candidate sites ranked by uncertainty"
        self.review_status.value = (
            "press Next uncertain site to visit them, most uncertain first"
            if len(table)
            else "the model is sure of every site"
        )
        self.progress.value = 100

    def next_site(self, *_) -> int | None:
        """Centre the view on the next most uncertain site; returns its rank (None when there is none)."""
        if self.uncertain_name not in self.viewer.layers:
            self.review_status.value = "⚠ the uncertain-sites layer is gone: rank again"
            self.next_button.enabled = False
            return None
        points = self.viewer.layers[self.uncertain_name]
        if len(points.data) == 0:
            return None
        i = self._next_index % len(points.data)
        self._next_index = i + 1
        world = points.data_to_world(points.data[i])
        self.viewer.camera.center = tuple(float(v) for v in world[-2:])
        self.viewer.camera.zoom = max(float(self.viewer.camera.zoom), REVIEW_ZOOM)
        row = points.features.iloc[i]
        self.review_status.value = (
            f"site {int(row['rank'])}/{len(points.data)}: uncertainty {row.uncertainty:.2f}, "
            f"most likely {row.likely_class} (P(defect) {row.p_defect:.2f}, "
            f"{row.agreement:.0%} of orientations agree)"
        )
        corrections = self.corrections_layer.value
        if corrections in self.viewer.layers:  # a class key or a click now corrects the defects layer
            self.viewer.layers.selection.active = self.viewer.layers[corrections]
        return int(row["rank"])

    # ---- fine-tune ----------------------------------------------------------------------------------
    def run(self, *_):
        """Fine-tune on the corrections, then re-segment the image, in a thread worker (the worker)."""
        from ..layers import corrections_from_layers
        from ..learn.finetune import Correction, FinetuneConfig, check_corrections, finetune
        from ..learn.inference import segment_image

        chosen = self._selected_image_and_pixel()
        if chosen is None:
            return None
        layer, data, meta, pixel = chosen
        if not self.corrections_layer.value:
            self.status.value = "⚠ choose the Points layer of corrected defects"
            return None
        points = self._layer(self.corrections_layer.value, "corrected defects")
        shapes = None
        if self.region_layer.value not in (None, NO_LAYER):
            shapes = self._layer(self.region_layer.value, "reviewed region")
            if shapes is None:
                return None
        out = str(self.out.value) if self.out.value is not None else ""
        if points is None:
            return None
        if out in ("", "."):
            self.status.value = "⚠ choose a folder to save the fine-tuned model in"
            return None
        try:
            table, regions = corrections_from_layers(points, layer, pixel, shapes)
            table = check_corrections(table, points.name)
            config = FinetuneConfig(**field_values(self, FINETUNE_PARAMETERS))
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        sha = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
        corrections = [
            Correction(
                np.asarray(data, float),
                float(pixel),
                table,
                region,
                name=layer.name,
                sha256=sha,
                labels_name=points.name,
            )
            for region in regions
        ]
        material, dopant = self.material.value, self.dopant.value.strip() or None
        model, runtime, overwrite = self._model(), self.runtime.value, bool(self.replace.value)
        from ..analysis.sites import microscope_for
        from ..core.parameters import DEFAULTS

        energy, optics = meta.get("beam_energy_keV"), dict(meta.get("optics") or {})
        # the optics the file records, as Find defects and Defect statistics take them (ADF stays ADF)
        microscope = microscope_for(float(energy) if energy else DEFAULTS["energy_keV"], optics)
        self._context = (layer, pixel)
        self.losses = []
        self._draw_losses()
        command = (
            f"Fine-tune dock: image {layer.name!r}, corrections {points.name!r}, regions {regions}, "
            f"parent {material}, model {model}"
        )

        def job(progress, cancelled):
            path, report = finetune(
                corrections,
                material,
                out,
                base_model=model,
                dopant=dopant,
                config=config,
                microscope=microscope,
                optics=optics,
                command=command,
                overwrite=overwrite,
                progress=lambda f, m: progress(0.9 * f, m),
                log=lambda m: None,
                cancelled=cancelled,
                on_step=self._bridge.stepped.emit,
            )
            if path is None:  # worse on the held-out part than the model it started from: nothing saved
                return {"path": None, "report": report, "segmentation": None}
            seg = segment_image(
                data,
                pixel,
                model=path,
                runtime=runtime,
                material=material,
                beam_energy_keV=energy,
                optics=optics,
                progress=lambda f, m: progress(0.9 + 0.1 * f, f"re-count: {m}"),
                cancelled=cancelled,
            )
            return {"path": path, "report": report, "segmentation": seg}

        return self._start_job("finetune", job)

    def _tuned(self, result: dict) -> None:
        from ..layers import add_layers, segmentation_layers

        layer, pixel = self._context
        seg = result["segmentation"]
        if seg is None:
            self.result = result
            self._draw_losses()
            self.status.value = f"⚠ the fine-tuned model was {result['report']['why']}"
            self.progress.value = 100
            return
        name = f"{layer.name} fine-tuned"
        _, points, *_ = add_layers(self.viewer, segmentation_layers(seg, layer, pixel, name=name))
        self.editing.attach(points)
        self.result = result
        self._draw_losses()
        f1 = result["report"]["mean_f1"]
        counts = seg.defects.defect_class.value_counts()
        self.status.value = (
            f"held-out F1 {f1['before']:.2f} → {f1['after']:.2f}; re-counted: "
            + (", ".join(f"{k} {v}" for k, v in counts.items()) or "no defects")
            + f"; model saved as {Path(result['path']).name} in {Path(result['path']).parent}"
        )
        self.progress.value = 100

    # ---- the loss curve -----------------------------------------------------------------------------
    def _on_step(self, step: int, loss: float) -> None:
        self.losses.append((int(step), float(loss)))
        if len(self.losses) % 5 == 1:  # redraw every few steps: a step takes a second or more on a CPU
            self._draw_losses()

    def _on_error(self, exc: BaseException) -> None:
        super()._on_error(exc)
        from ..core.jobs import Cancelled

        if isinstance(exc, Cancelled) and self._job == "finetune":
            self.status.value = (
                "cancelled; no model was written and any earlier one in the folder is as it was"
            )
        self._draw_losses()

    def _draw_losses(self) -> None:
        self.figure.clear()
        ax = self.figure.add_subplot(111)
        if self.losses:
            steps, values = zip(*self.losses)
            ax.plot(steps, values, color="#1f77b4", lw=1)
        ax.set_xlabel("training step")
        ax.set_ylabel("loss (CE + Dice)")
        ax.set_title("fine-tuning loss", fontsize=9)
        self.canvas.draw_idle()
