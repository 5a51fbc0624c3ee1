"""Dock widget "Defect statistics": sites, histogram, concentrations, export."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, ProgressBar, PushButton

from ..twin.parents import list_parents
from ._worker import JobWidget

if TYPE_CHECKING:
    import napari

__all__ = ["StatisticsWidget"]

_NONE = "(none)"


class StatisticsWidget(JobWidget, Container):
    """Measure every site of an image layer and count defects per cm², with plots."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=False)
        self.viewer = viewer
        self.image_layer = ComboBox(label="image", choices=self._layer_names("Image"))
        self.defects_layer = ComboBox(label="model defects (Points)", choices=[_NONE])
        self.regions_layer = ComboBox(label="regions (Shapes)", choices=[_NONE])
        self.material = ComboBox(label="parent", choices=list_parents(), value="2H-MoS2")
        self.material.native.setEditable(True)
        self.dopant = LineEdit(label="dopant (optional)", value="")
        self.run_button = PushButton(text="Analyse")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.export_csv_button = PushButton(text="Export CSV…", enabled=False)
        self.export_png_button = PushButton(text="Export PNG…", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100)
        self.status = Label(value="")
        self.extend([self.image_layer, self.defects_layer, self.regions_layer, self.material, self.dopant,
                     self.run_button, self.cancel_button, self.progress, self.status, self.export_csv_button,
                     self.export_png_button])
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 5), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(380)
        self.native.layout().addWidget(self.canvas)
        self.result = None
        self._init_runner()
        self.export_csv_button.changed.connect(lambda *_: self._ask_and_export("csv"))
        self.export_png_button.changed.connect(lambda *_: self._ask_and_export("png"))
        self._track_layers(self._refresh_choices)
        self._refresh_choices()

    def _layer_names(self, kind: str) -> list[str]:
        return [layer.name for layer in self.viewer.layers if type(layer).__name__ == kind]

    def _refresh_choices(self, *_):
        self.image_layer.choices = self._layer_names("Image")
        self.defects_layer.choices = [_NONE] + self._layer_names("Points")
        self.regions_layer.choices = [_NONE] + self._layer_names("Shapes")

    def run(self, *_):
        """Start the analysis of the chosen layer in a thread worker (returns the worker)."""
        import pandas as pd

        from ..analysis.api import analyze_image

        selected = self._selected_image()
        if selected is None:
            return None
        layer, data, meta = selected
        calibrated = bool(meta.get("calibrated", False))
        from ..inputs import pixel_size_A

        try:
            pixel = pixel_size_A(layer.scale, calibrated, name=layer.name)
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        defects = None
        if self.defects_layer.value not in (None, _NONE):
            points = self._layer(self.defects_layer.value, "model defects")
            if points is None:
                return None
            world = np.asarray(points.data) * points.scale + points.translate
            feats = points.features
            if "defect_class" not in feats:
                self.status.value = "⚠ the Points layer has no 'defect_class' feature"
                return None
            defects = pd.DataFrame({"x_A": world[:, -1], "y_A": world[:, -2],
                                    "defect_class": feats["defect_class"].astype(str).to_numpy()})
        regions = None
        if self.regions_layer.value not in (None, _NONE):
            shapes = self._layer(self.regions_layer.value, "regions")
            if shapes is None:
                return None
            regions = [np.asarray(s)[:, -2:] * shapes.scale[-2:] + shapes.translate[-2:] for s in shapes.data]
        material, dopant = self.material.value, (self.dopant.value or None)
        energy = meta.get("beam_energy_keV")
        from ..core.validation import BOUNDS

        try:
            if energy:
                BOUNDS["energy_keV"].with_option("the layer's beam energy").check(energy)
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        message = "running…" if calibrated else "no calibration: self-calibrating from the parent"

        def job(progress, cancelled):
            return analyze_image(data, pixel, material=material, defects=defects, regions=regions,
                                 beam_energy_keV=energy, dopant=dopant, progress=progress, cancelled=cancelled)

        self._source_name = layer.name
        return self._start(job, message)

    def _on_done(self, result) -> None:
        from ..analysis.plots import draw_concentrations, draw_histogram
        from ..layers import sites_layer

        self.result = result
        self.figure.clear()
        draw_histogram(self.figure.add_subplot(211), result)
        draw_concentrations(self.figure.add_subplot(212), result)
        self.canvas.draw_idle()
        data, kwargs, _ = sites_layer(result, name=f"{self._source_name} sites")
        self.viewer.add_points(data, **kwargs)
        lat = result.lattice
        summary = (f"a = {lat['a_A']:.3f} Å{' (self-calibrated)' if lat['self_calibrated'] else ''}; "
                   f"{lat['n_M_sites']} M / {lat['n_X_sites']} X sites; {lat['analysed_area_nm2']:.1f} nm²")
        # every note the CLI prints is shown here too: in the dock and as a notification
        self.status.value = "\n".join([summary, *(f"⚠ {note}" for note in result.notes)])
        if result.notes:
            from napari.utils.notifications import show_warning

            for note in result.notes:
                show_warning(note)
        self.export_csv_button.enabled = True
        self.export_png_button.enabled = True

    def export(self, folder: str | Path, overwrite: bool = False) -> list[Path]:
        """Write sites.csv, concentrations.csv, lattice.json and the figures into ``folder``."""
        if self.result is None:
            raise RuntimeError("run the analysis first")
        paths = self.result.save(folder, overwrite=overwrite)
        from ..io.atomic import atomic_path

        with atomic_path(Path(folder) / "statistics_panel.png") as tmp:
            self.figure.savefig(tmp, dpi=120)
        return paths + [Path(folder) / "statistics_panel.png"]

    def _ask_and_export(self, kind: str) -> None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(self.native, f"Folder for the {kind.upper()} export")
        if folder:
            try:
                self.export(folder)
                self.status.value = f"exported to {folder}"
            except (OSError, ValueError) as exc:  # FileExistsError is an OSError
                self.status.value = f"⚠ {exc}"
