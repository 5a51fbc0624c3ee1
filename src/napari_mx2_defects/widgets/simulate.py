"""Dock widget "Simulate digital twin"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ..twin.defects import CLASS_IDS
from ..twin.parents import list_parents
from ._worker import JobWidget

if TYPE_CHECKING:
    import napari

__all__ = ["SimulateWidget"]


class SimulateWidget(JobWidget, Container):
    """Build a parent with defects, simulate its HAADF image, add image + truth layers."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=True)
        self.viewer = viewer
        self.material = ComboBox(label="parent", choices=list_parents(), value="2H-MoS2")
        self.material.native.setEditable(True)  # type to search
        self.defects = LineEdit(label="defects", value="V_X=8,V_XX=3,V_M=2")
        self.defects.tooltip = "ids: " + ", ".join(CLASS_IDS) + " — e.g. V_X=6, V_XX=2%, TM_D(Re)=3, V_X:pairs=4"
        self.fov = FloatSpinBox(label="field of view (Å)", value=40.0, min=5.0, max=1000.0, step=5.0)
        self.pixel = FloatSpinBox(label="pixel size (Å)", value=0.1, min=0.01, max=0.5, step=0.01)
        self.method = ComboBox(label="method", choices=["fast", "prism", "multislice"], value="fast")
        self.dose = FloatSpinBox(label="dose (e/Å², 0 = none)", value=1e6, min=0.0, max=1e9, step=1e5)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        self.rotation = FloatSpinBox(label="rotation (°)", value=0.0, min=-180, max=180)
        self.gb_angle = FloatSpinBox(label="grain boundary angle (°, 0 = none)", value=0.0, min=-60, max=60)
        self.gb_sep = FloatSpinBox(label="GB separation (Å)", value=0.0, min=-3.0, max=3.0, step=0.5)
        self.holes = SpinBox(label="beam-damage holes", value=0, min=0, max=50)
        self.energy = FloatSpinBox(label="energy (keV)", value=80.0, min=20.0, max=300.0)
        self.semiangle = FloatSpinBox(label="semi-angle (mrad)", value=25.0, min=5.0, max=50.0)
        self.defocus = FloatSpinBox(label="defocus (Å)", value=40.0, min=-500.0, max=500.0)
        self.cs = FloatSpinBox(label="Cs (Å)", value=4e5, min=-1e7, max=1e7, step=1e4)
        self.inner = FloatSpinBox(label="detector inner (mrad)", value=50.0, min=0.0, max=400.0)
        self.outer = FloatSpinBox(label="detector outer (mrad)", value=200.0, min=1.0, max=500.0)
        self.jitter = FloatSpinBox(label="scan jitter (Å)", value=0.0, min=0.0, max=2.0, step=0.02)
        self.contamination = FloatSpinBox(label="contamination", value=0.0, min=0.0, max=2.0, step=0.05)
        self.estimate = Label(value="")
        self.run_button = PushButton(text="Simulate")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100)
        self.status = Label(value="")
        self.extend([
            self.material, self.defects, self.fov, self.pixel, self.method, self.dose, self.seed,
            self.rotation, self.gb_angle, self.gb_sep, self.holes,
            self.energy, self.semiangle, self.defocus, self.cs, self.inner, self.outer,
            self.jitter, self.contamination, self.estimate, self.run_button, self.cancel_button, self.progress,
            self.status,
        ])
        self._init_runner()
        for w in (self.method, self.fov, self.pixel):
            w.changed.connect(self._update_estimate)
        self._update_estimate()

    def request(self):
        """The :class:`~..twin.api.TwinRequest` the current settings describe."""
        from ..twin.api import TwinRequest
        from ..twin.imperfections import Imperfections
        from ..twin.microscope import Microscope
        from ..twin.structures import GrainBoundary

        gb = GrainBoundary(self.gb_angle.value, self.gb_sep.value) if self.gb_angle.value else None
        return TwinRequest(
            material=self.material.value, defects=self.defects.value, fov_A=self.fov.value,
            pixel_size_A=self.pixel.value, method=self.method.value, seed=self.seed.value,
            rotation_deg=self.rotation.value, grain_boundary=gb, n_holes=self.holes.value,
            microscope=Microscope(self.energy.value, self.semiangle.value, self.defocus.value, self.cs.value,
                                  self.inner.value, self.outer.value),
            imperfections=Imperfections(dose_e_per_A2=self.dose.value or None, scan_jitter_A=self.jitter.value,
                                        contamination=self.contamination.value),
        )

    def validate(self) -> None:
        """Check every number with the shared bounds (:mod:`..core.validation`), as the CLI does.

        Raises a one-line ValueError naming the field; the twin's size is estimated before
        anything is allocated.
        """
        from ..core.validation import BOUNDS, check_holes, check_pair, check_twin_size
        from ..twin.parents import get_parent

        fields = {"fov_A": (self.fov, "field of view"), "pixel_size_A": (self.pixel, "pixel size"),
                  "seed": (self.seed, "seed"), "rotation_deg": (self.rotation, "rotation"),
                  "energy_keV": (self.energy, "energy"), "semiangle_mrad": (self.semiangle, "semi-angle"),
                  "defocus_A": (self.defocus, "defocus"), "Cs_A": (self.cs, "Cs"),
                  "scan_jitter_A": (self.jitter, "scan jitter"), "contamination": (self.contamination, "contamination")}
        for key, (widget, label) in fields.items():
            BOUNDS[key].with_option(label).check(widget.value)
        if self.dose.value:
            BOUNDS["dose_e_per_A2"].with_option("dose").check(self.dose.value)
        if self.gb_angle.value:
            BOUNDS["gb_rotation_deg"].with_option("grain boundary angle").check(self.gb_angle.value)
            BOUNDS["gb_separation_A"].with_option("GB separation").check(self.gb_sep.value)
        check_pair(BOUNDS["detector_inner_mrad"].with_option("detector inner"),
                   BOUNDS["detector_outer_mrad"].with_option("detector outer"), self.inner.value, self.outer.value,
                   strict=True)
        check_twin_size(self.fov.value, self.pixel.value, option_fov="field of view", option_pixel="pixel size")
        check_holes(self.holes.value, self.fov.value, get_parent(self.material.value).a_A,
                    option="beam-damage holes")

    def _update_estimate(self, *_):
        from ..twin.microscope import Microscope
        from ..twin.simulate import estimate_seconds

        n_atoms = int(3 * (self.fov.value / 3.18) ** 2 * 2 / 3**0.5)
        seconds = estimate_seconds(n_atoms, (self.fov.value, self.fov.value), Microscope(), self.method.value)
        self.estimate.value = f"estimated time on 2 cores: ~{seconds:,.0f} s" + (
            " (+~20 s abTEM calibration the first time)" if self.method.value == "fast" else "")

    def run(self, *_):
        """Start the simulation in a thread worker (returns the worker)."""
        try:
            self.validate()
            request = self.request()
            request.defect_requests()  # validate before starting
        except ValueError as exc:
            self.status.value = f"⚠ {exc}"
            return None
        from ..twin.api import simulate_twin

        return self._start(lambda progress, cancelled: simulate_twin(request, progress, cancelled))

    def _on_done(self, twin) -> None:
        from ..layers import twin_layers

        base = f"{twin.settings['parent']['formula']} twin seed {twin.settings['request']['seed']}"
        for data, kwargs, kind in twin_layers(twin, name=base):
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self.status.value = f"done: {len(twin.defects)} defects, {twin.settings['seconds']:.1f} s"
