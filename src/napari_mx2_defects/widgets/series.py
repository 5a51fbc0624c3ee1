"""Dock widget "Series": a frame stack through ``mx2-defects series`` — defects per frame, tracks, cross-sections.

The dock gathers the stack (an Image layer with frames on its first axis), the parent and the series
fields (generated from :data:`~..core.parameters.SERIES_PARAMETERS`, as the command's options), runs
:func:`~..series.analyze_series` in a thread worker with progress and Cancel, and shows the result:
the frames aligned on frame 0, the defects of every frame as a Points layer and the site histories as a
Tracks layer — all with the frame as their first axis, so napari's time slider steps through them — and
a plot of the counts against cumulative dose with the fits of the cross-sections (a marker follows the
slider), and the cross-section table.
"""

from __future__ import annotations

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, Table

from ..core.parameters import RUNTIMES, SERIES_PARAMETERS
from ..series.plots import draw_series
from ..twin.parents import list_parents
from ._worker import JobWidget, layer_picker
from .fields import field_option, field_values, make_fields

__all__ = ["SeriesWidget", "cross_section_view", "draw_series", "series_layers"]


def cross_section_view(result) -> dict[str, list]:
    """The cross-section table as the dock shows it (σ and its 95 % interval in barn, events / atoms at risk)."""
    table: dict[str, list] = {"process": [], "σ (barn)": [], "95 % interval (barn)": [], "events / at risk": []}
    for r in (result.cross_section.itertuples() if result is not None else []):
        table["process"].append(r.process)
        table["σ (barn)"].append("–" if not np.isfinite(r.sigma_barn) else f"{r.sigma_barn:.3g}")
        table["95 % interval (barn)"].append(f"{r.ci_low_barn:.3g} – {r.ci_high_barn:.3g}")
        table["events / at risk"].append(f"{r.n_events} / {r.n_at_risk}")
    return table


def series_layers(result, aligned: np.ndarray, layer, name: str | None = None) -> list:
    """napari LayerData of a series on top of the stack ``layer``: the aligned frames (Image), the defects of
    every frame (Points: frame, y, x) and the defect histories (Tracks: track, frame, y, x)."""
    from ..core.classes import CLASS_COLORS, CLASS_IDS, CLASS_NAMES
    from ..layers import image_frame

    base = name or layer.name
    frame = image_frame(layer, result.pixel_size_A)
    scale = [1.0, *frame["scale"]]
    translate = [float(layer.translate[0]), *frame["translate"]]
    units = ["pixel", *frame["units"]]
    points = result.points()
    coords = points[["frame", "y_A", "x_A"]].to_numpy(float) if len(points) else np.zeros((0, 3))
    features = points[["defect_class", "sublattice"]].reset_index(drop=True)
    point_kwargs = {
        "name": f"{base} defects per frame", "features": features, "size": 1.2, "face_color": "transparent",
        "border_color": "defect_class" if len(points) else "yellow", "border_width": 0.15,
        "border_width_is_relative": True, "scale": scale, "translate": translate, "units": units,
        "out_of_slice_display": False,
    }
    if len(points):
        point_kwargs["border_color_cycle"] = {CLASS_NAMES[c]: CLASS_COLORS[c][:3] + (1.0,) for c in CLASS_COLORS if c}
    layers = [
        (aligned, {"name": f"{base} aligned", "scale": list(map(float, layer.scale)),
                   "translate": list(map(float, layer.translate)), "units": units,
                   "metadata": {"drift_xy_A": result.drift_xy_A.tolist(), "pixel_size_A": result.pixel_size_A}},
         "image"),
        (coords, point_kwargs, "points"),
    ]
    tracks = result.tracks
    if len(tracks):
        data = tracks[["track_id", "frame", "y_A", "x_A"]].to_numpy(float)
        class_id = np.array([CLASS_IDS.get(c, 0) for c in tracks.defect_class], float)
        layers.append((data, {"name": f"{base} site histories", "scale": scale, "translate": translate,
                              "units": units, "properties": {"class_id": class_id, "frame": tracks.frame.to_numpy()},
                              "tail_length": int(result.frames.frame.max()) + 1, "tail_width": 3,
                              "metadata": {"tracks": tracks}}, "tracks"))
    return layers


class SeriesWidget(JobWidget, Container):
    """A frame stack: drift, defects on one lattice in every frame, site tracks and damage cross-sections."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=True)
        self.viewer = viewer
        self.image_layer = layer_picker(viewer, napari.layers.Image, "frame stack")
        self.material = ComboBox(label="parent", choices=list_parents(), value="2H-MoS2")
        self.material.native.setEditable(True)
        fields = make_fields(SERIES_PARAMETERS)  # as `series`'s options
        self.model = FileEdit(label="model (empty: the shipped one)", filter="*.safetensors", mode="r")
        self.runtime = ComboBox(label="runtime", choices=list(RUNTIMES), value="auto")
        self.run_button = PushButton(text="Run series")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100)
        self.status = Label(value="")
        self.table = Table(value=cross_section_view(None), label="cross-sections")
        self.table.read_only = True
        self.export_button = PushButton(text="Export frames, tracks, cross-sections…", enabled=False)
        self.extend([self.image_layer, self.material, *fields, self.model, self.runtime, self.run_button,
                     self.cancel_button, self.progress, self.status, self.table, self.export_button])
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(5, 3), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self.native.layout().addWidget(self.canvas)
        self.result = None
        self.added: list = []
        self._init_runner()
        self._track_layers()
        self.export_button.changed.connect(lambda *_: self._export_to_folder(
            "series result", lambda folder, overwrite: self.result.save(folder, overwrite=overwrite)))
        viewer.dims.events.current_step.connect(self._follow_slider)

    def run(self, *_):
        """Start the series in a thread worker (returns the worker, or None with a message)."""
        from ..core.multiscale import full_resolution
        from ..series import analyze_series, frame_stack
        from ..series.align import align_frames
        from ..twin.parents import get_parent

        if not self.image_layer.value:
            self.status.value = "⚠ open a frame stack first"
            return None
        layer = self._layer(self.image_layer.value, "frame stack")
        if layer is None:
            return None
        meta = layer.metadata or {}
        try:
            material = get_parent(self.material.value).key
            values = field_values(self, SERIES_PARAMETERS)
            stack = frame_stack(np.asarray(full_resolution(layer.data)), layer.scale[-2:], bool(meta.get("calibrated")),
                                meta.get("beam_energy_keV"), meta.get("optics"), values, layer.name,
                                option_of=field_option(self))
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        model = str(self.model.value) if str(self.model.value or "") not in ("", ".") else "default"
        runtime = self.runtime.value
        self._source = layer

        def job(progress, cancelled):
            result = analyze_series(stack, material, values, model=model, runtime=runtime, progress=progress,
                                    cancelled=cancelled)
            return result, align_frames(stack.frames, result.drift_xy_A, stack.pixel_size_A)

        return self._start(job, "starting the series…")

    def _on_done(self, output) -> None:
        from ..layers import add_layers

        result, aligned = output
        self.result = result
        self.added = add_layers(self.viewer, series_layers(result, aligned, self._source))
        self.viewer.dims.set_current_step(0, 0)
        draw_series(self.figure, result, 0)
        self.canvas.draw_idle()
        self.table.value = cross_section_view(result)
        s = result.settings
        events = s["events"]
        self.status.value = (f"{s['n_frames']} frames, {s['n_tracked_sites']} sites tracked; "
                             f"{events.get('appeared', 0)} appeared, {events.get('changed', 0)} changed class, "
                             f"{events.get('hopped', 0)} hopped, {events.get('disappeared', 0)} disappeared"
                             + "".join(f"; note: {n}" for n in result.notes[:2]))
        self.progress.value = 100
        self.export_button.enabled = True

    def _follow_slider(self, *_):
        if self.result is None:
            return
        step = self.viewer.dims.current_step
        if not step:
            return
        draw_series(self.figure, self.result, int(step[0]))
        self.canvas.draw_idle()
