"""Dock widget "Dose response": how much dose a model needs, per class (as ``mx2-defects evaluate --classes``)."""

from __future__ import annotations

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton
from magicgui.widgets import SpinBox, Table

from ..core.parameters import RUNTIMES
from ._worker import JobWidget

__all__ = ["DoseResponseWidget", "enough_dose_table", "format_dose"]

_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def format_dose(dose: float) -> str:
    """A dose in e/Å² as a reader writes it, to 3 significant digits: ``3,400``, ``1.16 × 10⁴``, ``2 × 10⁶``."""
    if dose != dose:
        return "–"
    if abs(dose) < 1e4:
        return f"{float(f'{dose:.3g}'):,.0f}" if abs(dose) >= 100 else f"{dose:.3g}"
    mantissa, exponent = f"{dose:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    power = f"10{str(int(exponent)).translate(_SUPERSCRIPT)}"
    return power if mantissa == "1" else f"{mantissa} × {power}"


def enough_dose_table(response) -> dict[str, list]:
    """Per grouping and class: the plateau F1 and the dose where the fitted F1 reaches 0.9."""
    table: dict[str, list] = {"classes": [], "class": [], "F1 plateau": [], "dose for F1 0.9 (e/Å²)": []}
    for row in (response.enough_dose().itertuples() if response is not None else []):
        table["classes"].append(int(row.classes))
        table["class"].append(row.defect_class)
        table["F1 plateau"].append(f"{row.d0:.3f}")
        dose = row.dose_for_f1_0_9_e_per_A2
        table["dose for F1 0.9 (e/Å²)"].append("never (plateau below)" if dose != dose else format_dose(dose))
    return table


class DoseResponseWidget(JobWidget, Container):
    """Score a model on held-out twins across doses and class groupings; fit Fuhr et al.'s eqn. 1."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=True)
        self.viewer = viewer
        self.use_default = CheckBox(label="shipped default model", value=True)
        self.checkpoint = FileEdit(label="or checkpoint (.safetensors)", filter="*.safetensors", mode="r")
        self.materials = LineEdit(label="parents", value="MoSe2,WS2")
        self.doses = LineEdit(label="doses (e/Å²)", value="1e3,3e3,1e4,3e4,1e5,1e6")
        self.n_per = SpinBox(label="twins per parent and dose", value=2, min=1, max=50)
        self.classes = LineEdit(label="class groupings", value="1,3,all",
                                tooltip="1 binary, 3 by site (chalcogen, metal, off-lattice), all = every class")
        self.runtime = ComboBox(label="runtime", choices=list(RUNTIMES), value="auto")
        self.run_button = PushButton(text="Run dose response")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100)
        self.status = Label(value="")
        self.table = Table(value=enough_dose_table(None), label="enough dose")
        self.table.read_only = True
        self.export_button = PushButton(text="Export table and plot…", enabled=False)
        self.extend([self.use_default, self.checkpoint, self.materials, self.doses, self.n_per, self.classes,
                     self.runtime, self.run_button, self.cancel_button, self.progress, self.status, self.table,
                     self.export_button])
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(6, 3), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(260)
        self.native.layout().addWidget(self.canvas)
        self.response = None
        self._init_runner()
        self.export_button.changed.connect(lambda *_: self._export_to_folder(
            "dose response", lambda folder, overwrite: self.response.save(folder, overwrite=overwrite)))

    def run(self, *_):
        """Start the sweep in a thread worker (returns the worker, or None with a message)."""
        from ..core.validation import parse_class_groupings, parse_doses
        from ..learn.dose_response import dose_response
        from ..twin.parents import get_parent

        try:
            doses = parse_doses(self.doses.value, option="doses")
            classes = parse_class_groupings(self.classes.value, option="class groupings")
            materials = [m.strip() for m in self.materials.value.split(",") if m.strip()]
            for material in materials:
                get_parent(material)
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        if len(doses) < 3 or not materials:
            self.status.value = "⚠ give at least three doses and one parent (the fit needs three points)"
            return None
        model = "default" if self.use_default.value else str(self.checkpoint.value)
        n_per, runtime = int(self.n_per.value), self.runtime.value
        return self._start(lambda progress, cancelled: dose_response(
            model, materials=materials, doses=doses, n_per=n_per, classes=classes, runtime=runtime,
            progress=progress, cancelled=cancelled))

    def _on_done(self, response) -> None:
        from ..learn.dose_response import draw_dose_response

        self.response = response
        draw_dose_response(self.figure, response)
        self.canvas.draw_idle()
        self.table.value = enough_dose_table(response)
        twins = int(response.points.drop_duplicates("dose_e_per_A2").n_images.sum())
        self.status.value = f"{twins} held-out twins scored at {response.points.dose_e_per_A2.nunique()} doses"
        self.export_button.enabled = True
