"""Dock widget "Simulate digital twin"."""

from __future__ import annotations

from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton

from ..core.classes import CLASS_IDS
from ..core.parameters import REQUEST_PARAMETERS
from ..twin.parents import list_parents
from ._worker import JobWidget
from .fields import field_option, field_values, make_fields

if TYPE_CHECKING:
    import napari

__all__ = ["SimulateWidget"]

#: Where the dock starts when it differs from the CLI's defaults: a visible example.
DOCK_DEFAULTS = {"defects": "V_X=8,V_XX=3,V_M=2", "dose_e_per_A2": 1e6}


class SimulateWidget(JobWidget, Container):
    """Build a parent with defects, simulate its HAADF image, add image + truth layers.

    Its fields are generated from :data:`~..core.parameters.REQUEST_PARAMETERS` (as ``simulate``'s
    options are), checked by :func:`~..twin.api.check_twin_values` and assembled by
    :meth:`~..twin.api.TwinRequest.from_values`, the same three steps the CLI takes.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(scrollable=True)
        self.viewer = viewer
        material = ComboBox(name="material", label="parent", choices=list_parents(), value="2H-MoS2")
        material.native.setEditable(True)  # type to search
        fields = make_fields(REQUEST_PARAMETERS, overrides={"material": material}, defaults=DOCK_DEFAULTS)
        self.extend(fields)
        self.defects.tooltip = "ids: " + ", ".join(CLASS_IDS) + " — e.g. V_X=6, V_XX=2%, TM_D(Re)=3, V_X:pairs=4"
        self.estimate = Label(value="")
        self.run_button = PushButton(text="Simulate")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=100)
        self.status = Label(value="")
        self.extend([self.estimate, self.run_button, self.cancel_button, self.progress, self.status])
        self._init_runner()
        for name in ("method", "fov_A", "pixel_size_A", "energy_keV", "semiangle_mrad", "detector_outer_mrad",
                     "frozen_phonons"):
            getattr(self, name).changed.connect(self._update_estimate)
        self._update_estimate()

    def values(self) -> dict:
        """``{name: value}`` of every field (what ``simulate``'s options give the CLI)."""
        return field_values(self, REQUEST_PARAMETERS)

    def request(self):
        """The :class:`~..twin.api.TwinRequest` the current settings describe."""
        from ..twin.api import TwinRequest

        return TwinRequest.from_values(self.values())

    def validate(self) -> dict:
        """Check every field with the CLI's checks (:func:`~..twin.api.check_twin_values`).

        Raises a one-line ValueError naming the field; the twin's size is estimated before
        anything is allocated.
        """
        from ..twin.api import check_twin_values

        return check_twin_values(self.values(), field_option(self))

    def _update_estimate(self, *_):
        from ..twin.simulate import estimate_seconds

        try:
            request = self.request()
        except ValueError:
            self.estimate.value = ""
            return
        fov = request.fov_A
        n_atoms = int(3 * (fov / 3.18) ** 2 * 2 / 3**0.5)
        seconds = estimate_seconds(n_atoms, (fov, fov), request.microscope, request.method,
                                   phonon_configs=request.frozen_phonons)
        self.estimate.value = f"estimated time on 2 cores: ~{seconds:,.0f} s" + (
            " (+ a one-time abTEM calibration for new optics)" if request.method == "fast" else "")

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
        self.status.value = "\n".join([f"done: {len(twin.defects)} defects, {twin.settings['seconds']:.1f} s",
                                       *(f"⚠ {note}" for note in twin.settings.get("notes", []))])
