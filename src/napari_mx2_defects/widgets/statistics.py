"""Dock widget "Defect statistics": sites, histogram, concentrations, export."""

from __future__ import annotations

from pathlib import Path
import napari.layers
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton, Table

from ..core.parameters import ANALYSIS_PARAMETERS
from ..twin.parents import list_parents
from ._worker import NO_LAYER, JobWidget, layer_picker
from .defect_editing import DefectEditingPanel
from .fields import field_option, field_values, make_fields

__all__ = ["StatisticsWidget", "composition_view", "displacement_table", "results_table"]

#: What each export button writes.
EXPORTS = {
    "csv": ["sites.csv", "concentrations.csv", "lattice.json"],
    "png": ["histogram.png", "concentrations.png", "statistics_panel.png"],
    "all": ["sites.csv", "concentrations.csv", "lattice.json", "histogram.png", "concentrations.png",
            "statistics_panel.png"],
}


def results_table(concentrations) -> dict[str, list]:
    """The concentrations as the dock shows them: class (and region), count, per cm², 95 % interval."""
    several = concentrations["region"].nunique() > 1 if len(concentrations) else False
    table: dict[str, list] = {"class": [], "count": [], "per cm²": [], "95 % interval": []}
    for row in concentrations.itertuples():
        table["class"].append(f"{row.defect_class} (region {row.region})" if several else row.defect_class)
        table["count"].append(int(row.count))
        table["per cm²"].append(f"{row.per_cm2:.3g}")
        table["95 % interval"].append(f"{row.ci_low_per_cm2:.3g} – {row.ci_high_per_cm2:.3g}")
    return table


def composition_view(composition) -> dict[str, list]:
    """The alloy composition as the dock shows it: element (and region), sublattice, fraction, 95 % interval."""
    table: dict[str, list] = {"element": [], "of": [], "fraction": [], "95 % interval": []}
    if composition is None or not len(composition):
        return table
    several = composition.region.nunique() > 1
    for row in composition.itertuples():
        table["element"].append(f"{row.element} (region {row.region})" if several else row.element)
        table["of"].append(f"{row.of_atoms} {'metal sites' if row.sublattice == 'M' else 'chalcogen atoms'}")
        table["fraction"].append(f"{row.fraction:.4f}")
        table["95 % interval"].append(f"{row.ci_low:.4f} – {row.ci_high:.4f}")
    return table


def displacement_table(displacements) -> dict[str, list]:
    """The neighbour displacements as the dock shows them: class, shell, defects, radial and tangential pm ± SE."""
    table: dict[str, list] = {"class": [], "shell": [], "defects": [], "radial (pm)": [], "tangential (pm)": []}
    for row in (displacements.itertuples() if displacements is not None else []):
        table["class"].append(row.defect_class)
        table["shell"].append(f"{row.shell} ({row.neighbour_sublattice})")
        table["defects"].append(int(row.n_defects))
        for part in ("radial", "tangential"):  # no bias twin for the class, or a single defect: "–"
            value, sem = getattr(row, f"{part}_pm"), getattr(row, f"{part}_sem_pm")
            table[f"{part} (pm)"].append("–" if not np.isfinite(value) else
                                         f"{value:+.2f} ± {sem:.2f}" if np.isfinite(sem) else f"{value:+.2f}")
    return table


class StatisticsWidget(JobWidget, Container):
    """Measure every site of an image layer and count defects per cm², with plots."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=True)
        self.viewer = viewer
        self.image_layer = layer_picker(viewer, napari.layers.Image, "image")
        self.defects_layer = layer_picker(viewer, napari.layers.Points, "model defects (Points)", optional=True)
        self.regions_layer = layer_picker(viewer, napari.layers.Shapes, "regions (Shapes)", optional=True)
        self.material = ComboBox(label="parent", choices=list_parents(), value="2H-MoS2")
        self.material.native.setEditable(True)
        fields = make_fields(ANALYSIS_PARAMETERS)  # as `analyze`'s options: pixel size, self-calibrate, energy, dopant
        self.run_button = PushButton(text="Analyse")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.table = Table(value={"class": [], "count": [], "per cm²": [], "95 % interval": []}, label="results")
        self.table.read_only = True
        self.composition_table = Table(value=composition_view(None), label="alloy composition")
        self.composition_table.read_only = True
        self.export_csv_button = PushButton(text="Export CSV…", enabled=False)
        self.export_png_button = PushButton(text="Export PNG…", enabled=False)
        self.structure_button = PushButton(text="Class averages, displacements, strain", enabled=False,
                                           tooltip="align and average each defect class, measure how far its "
                                                   "neighbours moved (pm) and map the strain")
        self.displacement_table = Table(value=displacement_table(None), label="displacements")
        self.displacement_table.read_only = True
        self.export_structure_button = PushButton(text="Export averages and strain…", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100)
        self.status = Label(value="")
        self.phase_legend = Label(value="", label="phases")  # the phase map's colours and shares, when mapped
        self.editing = DefectEditingPanel(viewer, picker=self.defects_layer)  # legend, hand edits, undo
        self.extend([self.image_layer, self.defects_layer, self.regions_layer, self.material, *fields,
                     self.run_button, self.cancel_button, self.progress, self.status, self.phase_legend, self.table,
                     self.composition_table,
                     self.export_csv_button, self.export_png_button, self.structure_button,
                     self.displacement_table, self.export_structure_button])
        self.native.layout().addWidget(self.editing.native)  # full width, above the plots
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 5), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(380)
        self.native.layout().addWidget(self.canvas)
        self.gallery = Figure(figsize=(4, 2.4), tight_layout=True)  # class averages
        self.gallery_canvas = FigureCanvasQTAgg(self.gallery)
        self.gallery_canvas.setMinimumHeight(200)
        self.native.layout().addWidget(self.gallery_canvas)
        self.result = self.structure = None
        self._analysed, self._source_name = None, None
        self._init_runner()
        self.structure_button.changed.connect(self.run_structure)
        self.export_structure_button.changed.connect(lambda *_: self._export_to_folder(
            "class averages and strain", lambda folder, overwrite: self.structure.save(folder, overwrite=overwrite)))
        self.export_csv_button.changed.connect(lambda *_: self._ask_and_export("csv"))
        self.export_png_button.changed.connect(lambda *_: self._ask_and_export("png"))
        self._track_layers()

    def run(self, *_):
        """Start the analysis of the chosen layer in a thread worker (returns the worker)."""
        from ..analysis.api import analyze_image

        selected = self._selected_image()
        if selected is None:
            return None
        layer, data, meta = selected
        calibrated = bool(meta.get("calibrated", False))
        from ..inputs import analysis_settings
        from ..layers import points_table

        values = field_values(self, ANALYSIS_PARAMETERS)
        try:
            pixel, energy, optics = analysis_settings(layer.scale, calibrated, meta.get("beam_energy_keV"), values,
                                                      layer.name, field_option(self), meta.get("optics"))
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        defects = None
        if self.defects_layer.value not in (None, NO_LAYER):
            points = self._layer(self.defects_layer.value, "model defects")
            if points is None:
                return None
            if "defect_class" not in points.features:
                self.status.value = "⚠ the Points layer has no 'defect_class' feature"
                return None
            table = points_table(points, layer, pixel)  # Å from the image's origin, as the analysis measures sites
            defects = table[["x_A", "y_A"]].assign(defect_class=table.defect_class.astype(str))
        regions = None
        if self.regions_layer.value not in (None, NO_LAYER):
            shapes = self._layer(self.regions_layer.value, "regions")
            if shapes is None:
                return None
            regions = [np.asarray(s)[:, -2:] * shapes.scale[-2:] + shapes.translate[-2:] for s in shapes.data]
            if pixel is not None:
                from ..layers import science_positions

                regions = [science_positions(r, layer, pixel) for r in regions]
        material, dopant = self.material.value, (values["dopant"] or None)
        exclude = bool(values["exclude_contamination"])
        alloy = values["alloy_species"] or None
        phases = bool(values["map_phases"])
        message = "running…" if pixel is not None else "no calibration: self-calibrating from the parent"

        name = layer.name

        def job(progress, cancelled):  # each job says what it was, so its answer goes to the right place
            return "analysis", (analyze_image(data, pixel, material=material, defects=defects, regions=regions,
                                              beam_energy_keV=energy, dopant=dopant, optics=optics,
                                              exclude_contamination=exclude, alloy_species=alloy,
                                              map_phases=phases, progress=progress,
                                              cancelled=cancelled), data, name)

        self.structure_button.enabled = False
        return self._start(job, message)

    def run_structure(self, *_):
        """Class averages, neighbour displacements and strain of the analysed image, in a thread worker."""
        from ..analysis.structure import defect_structure

        if self.runner.running:
            self.status.value = "⚠ a job is running: wait for it or cancel it"
            return None
        if self.result is None:
            self.status.value = "⚠ analyse an image first"
            return None
        data, result = self._analysed, self.result
        self.structure_button.enabled = False
        return self._start(lambda progress, cancelled: ("structure", defect_structure(
            data, result, progress=progress, cancelled=cancelled)))

    def _on_finished(self) -> None:
        super()._on_finished()
        self.structure_button.enabled = self.result is not None

    def _on_done(self, tagged) -> None:
        kind, answer = tagged
        if kind == "analysis":
            result, self._analysed, self._source_name = answer
            self._analysed_done(result)
        else:
            self._structured(answer)

    def _structured(self, structure) -> None:
        from ..analysis.plots import draw_class_averages
        from ..layers import add_layers, strain_layers

        self.structure = structure
        draw_class_averages(self.gallery, structure)
        self.gallery_canvas.draw_idle()
        self.displacement_table.value = displacement_table(structure.displacements)
        source = self.viewer.layers[self._source_name] if self._source_name in self.viewer.layers else None
        if source is not None:
            add_layers(self.viewer, strain_layers(structure.strain, source, self.result.lattice["pixel_size_A"]))
        n = sum(a.n for a in structure.averages if not a.defect_class.startswith("intact"))
        self.status.value = "\n".join([f"{n} defects averaged in {len(structure.averages)} classes (with intact "
                                        f"references); strain on a {structure.strain.step_A:.2f} Å grid",
                                        *(f"⚠ {note}" for note in structure.notes)])
        self.export_structure_button.enabled = True

    def _analysed_done(self, result) -> None:
        from ..analysis.plots import draw_concentrations, draw_histogram
        from ..layers import image_frame, sites_layer

        self.result = result
        self.figure.clear()
        draw_histogram(self.figure.add_subplot(211), result)
        draw_concentrations(self.figure.add_subplot(212), result)
        self.canvas.draw_idle()
        self.table.value = results_table(result.concentrations)
        self.composition_table.value = composition_view(result.composition)
        data, kwargs, _ = sites_layer(result, name=f"{self._source_name} sites")
        source = self.viewer.layers[self._source_name] if self._source_name in self.viewer.layers else None
        if source is not None:  # on top of the image, whatever its scale and origin
            kwargs.update(image_frame(source, result.lattice["pixel_size_A"]))
        self.viewer.add_points(data, **kwargs)
        if result.contamination is not None and source is not None:
            from ..layers import add_layers, contamination_layer

            add_layers(self.viewer, [contamination_layer(result, source)])
        from ..layers import phase_legend

        self.phase_legend.value = phase_legend(result)
        if result.phases is not None and source is not None:
            from ..layers import add_layers, phase_layer

            add_layers(self.viewer, [phase_layer(result, source)])
        lat = result.lattice
        summary = (f"a = {lat['a_A']:.3f} Å{' (self-calibrated)' if lat['self_calibrated'] else ''}; "
                   f"{lat['n_M_sites']} M / {lat['n_X_sites']} X sites; {lat['analysed_area_nm2']:.1f} nm²"
                   + (f" (contamination: {lat['contamination']['area_nm2']:.1f} nm² left out)"
                      if "contamination" in lat else "")
                   + (f"; composition {', '.join(lat['alloy']['formula'].values())}" if "alloy" in lat else "")
                   + ("; phases " + ", ".join(f"{p or 'unassigned'} {100 * f:.0f} %" for p, f in
                                              zip(result.phase_table().phase, result.phase_table().fraction))
                      if result.phases is not None else ""))
        # every note the CLI prints is shown here too: all in the dock, each distinct one once as a notification
        self.status.value = "\n".join([summary, result.optics_summary(), *(f"⚠ {note}" for note in result.notes)])
        self._toast_once(result.notes)
        self.export_csv_button.enabled = True
        self.export_png_button.enabled = True
        self.structure = None
        self.export_structure_button.enabled = False

    def export(self, folder: str | Path, overwrite: bool = False, kind: str = "all") -> list[Path]:
        """Write the results into ``folder``: ``csv`` the tables (sites.csv, concentrations.csv,
        lattice.json), ``png`` the figures (histogram.png, concentrations.png, statistics_panel.png),
        ``all`` both.  Existing files are kept unless ``overwrite``."""
        if self.result is None:
            raise RuntimeError("run the analysis first")
        if kind not in EXPORTS:
            raise ValueError(f"export kind must be one of {', '.join(EXPORTS)}, got {kind!r}")
        from ..io.atomic import atomic_path, check_output_file

        names = EXPORTS[kind]
        panel = Path(folder) / "statistics_panel.png"
        if "statistics_panel.png" in names:
            check_output_file(panel, overwrite=overwrite, option="export folder")
        files = [n for n in names if n != panel.name]
        if kind in ("csv", "all"):  # the contamination and phase maps and the composition, as the command writes them
            files += self.result.optional_files
        paths = self.result.save(folder, overwrite=overwrite, files=files)
        if "statistics_panel.png" in names:
            with atomic_path(panel) as tmp:
                self.figure.savefig(tmp, dpi=120)
            paths.append(panel)
        return paths

    def _ask_and_export(self, kind: str) -> None:
        self._export_to_folder(f"{kind.upper()} export", lambda folder, overwrite: self.export(folder, overwrite, kind))
