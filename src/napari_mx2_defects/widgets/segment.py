"""Dock widget "Find defects": run a segmentation model on an image layer."""

from __future__ import annotations

import napari.layers
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
)

from ..core.parameters import ADAPT_PARAMETERS, RUNTIMES, SEGMENT_PARAMETERS
from ..twin.parents import list_parents
from ._worker import JobWidget, layer_picker
from .defect_editing import DefectEditingPanel
from .fields import field_values, make_fields

__all__ = ["SegmentWidget"]


class SegmentWidget(JobWidget, Container):
    """Labels (class per pixel) and Points (one per defect) from the shipped or a user's model."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.image_layer = layer_picker(viewer, napari.layers.Image, "image")
        self.use_default = CheckBox(label="shipped default model", value=True)
        self.checkpoint = FileEdit(label="or checkpoint (.safetensors)", filter="*.safetensors", mode="r")
        (pixel,) = make_fields(SEGMENT_PARAMETERS)  # as `segment --pixel-size`: overrides the file's calibration
        dopant, adapt = make_fields(ADAPT_PARAMETERS)  # as `segment --dopant --adapt` (learn.adapt)
        self.material = ComboBox(label="parent (checks sublattices)", choices=["(none)"] + list_parents(),
                                 value="(none)")
        self.material.native.setEditable(True)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.runtime = ComboBox(label="runtime", choices=list(RUNTIMES), value="auto",
                                tooltip="auto: OpenVINO on the CPU, PyTorch on a GPU")
        self.probabilities = CheckBox(label="add probability image", value=False)
        self.objects = CheckBox(label="add contours and boxes (Shapes)", value=False,
                                tooltip="each defect and each cluster of adjacent defects as an object")
        self.run_button = PushButton(text="Find defects")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100)
        self.status = Label(value="")
        self.export_objects_button = PushButton(text="Export objects (CSV, GeoJSON)…", enabled=False)
        self.editing = DefectEditingPanel(viewer)  # class legend, class for new points, undo / redo
        self.extend([self.image_layer, self.use_default, self.checkpoint, pixel, self.material, dopant, adapt,
                     self.device, self.runtime, self.probabilities, self.objects,
                     self.run_button, self.cancel_button, self.progress, self.status, self.export_objects_button])
        self.defect_objects = None
        self.adaptation = None  # learn.adapt.AdaptResult of the last run with "adapt the model to this image"
        self.export_objects_button.changed.connect(lambda *_: self._export_to_folder(
            "defect objects", lambda folder, overwrite: self.defect_objects.save(folder, overwrite=overwrite)))
        self.native.layout().addWidget(self.editing.native)  # full width, under the job controls
        self._init_runner()
        self._track_layers()

    def run(self, *_):
        """Start segmentation in a thread worker (returns the worker, or None with a message)."""
        from ..learn.inference import segment_image

        chosen = self._selected_image_and_pixel()
        if chosen is None:
            return None
        layer, data, meta, pixel = chosen
        model = "default" if self.use_default.value else str(self.checkpoint.value)
        device, runtime, want_probs = self.device.value, self.runtime.value, self.probabilities.value
        material = self.material.value if self.material.value != "(none)" else meta.get("material")
        energy, optics = meta.get("beam_energy_keV"), meta.get("optics")
        want_objects = self.objects.value
        values = field_values(self, ADAPT_PARAMETERS)
        dopant, adapt = (values["dopant"] or "").strip() or None, bool(values["adapt"])
        if adapt and not material:
            self.status.value = "⚠ choose the parent: adapting the model needs the site physics of its lattice"
            return None
        self._context = (layer, pixel)
        self.adaptation = None

        def job(progress, cancelled):
            from ..analysis.objects import defect_objects

            adapted = None
            if adapt:
                from ..learn.adapt import adapt_to_image

                adapted = adapt_to_image(data, pixel, material, dopant=dopant, beam_energy_keV=energy, optics=optics,
                                         base_model=model, runtime=runtime, device=device, name=layer.name,
                                         progress=lambda f, m: progress(0.9 * f, m), cancelled=cancelled)
                model_now = adapted.model
            else:
                model_now = model
            seg = segment_image(data, pixel, model=model_now, device=device, return_probabilities=want_probs,
                                material=material, beam_energy_keV=energy, optics=optics, runtime=runtime,
                                progress=(lambda f, m: progress(0.9 + 0.1 * f, m)) if adapt else progress,
                                cancelled=cancelled) if (want_probs or not adapt) else adapted.segmentation
            return seg, (defect_objects(seg.labels, pixel) if want_objects else None), adapted

        return self._start(job)

    def _on_done(self, result) -> None:
        from ..layers import add_layers, object_layers, segmentation_layers

        seg, objects, adapted = result
        layer, pixel = self._context
        labels, points, *probabilities = add_layers(self.viewer, segmentation_layers(seg, layer, pixel))
        self.editing.attach(points)  # hand edits with an explicit class, undo; borders in the legend's colours
        self.status.value = f"{len(seg.defects)} defects found on {seg.device} ({seg.runtime})"
        self.adaptation = adapted
        if adapted is not None:
            self.status.value += "; " + adapted.summary()
        self.defect_objects = objects
        self.export_objects_button.enabled = objects is not None
        if objects is not None:
            add_layers(self.viewer, object_layers(objects, layer, pixel))
            self.viewer.layers.selection.active = points  # editing stays on the defect points
            self.status.value += "; " + ", ".join(f"{v} {k}" for k, v in objects.counts().items())
