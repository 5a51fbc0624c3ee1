"""Dock widget "Find defects": run a segmentation model on an image layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
)

from ..twin.parents import list_parents
from ._worker import JobWidget
from .defect_editing import DefectEditingPanel

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentWidget"]


class SegmentWidget(JobWidget, Container):
    """Labels (class per pixel) and Points (one per defect) from the shipped or a user's model."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.image_layer = ComboBox(label="image", choices=self._images())
        self.use_default = CheckBox(label="shipped default model", value=True)
        self.checkpoint = FileEdit(label="or checkpoint (.safetensors)", filter="*.safetensors", mode="r")
        self.pixel = FloatSpinBox(label="pixel size if uncalibrated (Å)", value=0.0, min=0.0, max=2.0, step=0.005)
        self.material = ComboBox(label="parent (checks sublattices)", choices=["(none)"] + list_parents(),
                                 value="(none)")
        self.material.native.setEditable(True)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"], value="auto")
        self.probabilities = CheckBox(label="add probability image", value=False)
        self.run_button = PushButton(text="Find defects")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100)
        self.status = Label(value="")
        self.editing = DefectEditingPanel(viewer)  # class legend, class for new points, undo / redo
        self.extend([self.image_layer, self.use_default, self.checkpoint, self.pixel, self.material, self.device,
                     self.probabilities,
                     self.run_button, self.cancel_button, self.progress, self.status])
        self.native.layout().addWidget(self.editing.native)  # full width, under the job controls
        self._init_runner()
        self._track_layers(self._refresh_choices)

    def _refresh_choices(self) -> None:
        self.image_layer.choices = self._images()

    def _images(self) -> list[str]:
        return [layer.name for layer in self.viewer.layers if type(layer).__name__ == "Image"]

    def run(self, *_):
        """Start segmentation in a thread worker (returns the worker, or None with a message)."""
        from ..learn.inference import segment_image

        selected = self._selected_image()
        if selected is None:
            return None
        layer, data, meta = selected
        from ..inputs import pixel_size_A

        calibrated = bool(meta.get("calibrated"))
        try:
            pixel = pixel_size_A(layer.scale, calibrated, None if calibrated else (self.pixel.value or None),
                                 name=layer.name, option="the pixel size field")
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        if pixel is None:
            self.status.value = "⚠ this image has no calibration: enter its pixel size in Å"
            return None
        model = "default" if self.use_default.value else str(self.checkpoint.value)
        device, want_probs = self.device.value, self.probabilities.value
        material = self.material.value if self.material.value != "(none)" else meta.get("material")
        energy = meta.get("beam_energy_keV")
        self._context = (layer, pixel)
        return self._start(lambda progress, cancelled: segment_image(
            data, pixel, model=model, device=device, return_probabilities=want_probs, material=material,
            beam_energy_keV=energy, progress=progress, cancelled=cancelled))

    def _on_done(self, seg) -> None:
        from ..layers import image_frame, label_colormap_layer, label_features

        layer, pixel = self._context
        scale = tuple(float(v) for v in layer.scale[-2:])  # the labels overlay the image pixel for pixel
        translate = tuple(float(v) for v in layer.translate[-2:])
        self.viewer.add_labels(seg.labels, name=f"{layer.name} defects", scale=scale, translate=translate,
                               opacity=0.6,
                               colormap=label_colormap_layer(), units=("angstrom", "angstrom"),
                               features=label_features(),
                               metadata={"pixel_size_A": pixel, "calibrated": True, "model": seg.card.architecture,
                                         "class_names": seg.card.classes})
        table = seg.defects
        frame = image_frame(layer, pixel)
        points = self.viewer.add_points(table[["y_A", "x_A"]].to_numpy(), name=f"{layer.name} defect points",
                                        features=table.drop(columns=["x_A", "y_A"]).reset_index(drop=True),
                                        size=1.2, face_color="transparent",  # Å, data units
                                        units=("angstrom", "angstrom"), **frame)
        self.editing.attach(points)  # hand edits with an explicit class, undo; borders in the legend's colours
        if seg.probabilities is not None:
            self.viewer.add_image(seg.probabilities, name=f"{layer.name} probabilities", scale=(1.0, *scale),
                                  translate=(0.0, *translate),
                                  units=("pixel", "angstrom", "angstrom"), axis_labels=("class", "y", "x"),
                                  visible=False)
        self.status.value = f"{len(table)} defects found on {seg.device}"
