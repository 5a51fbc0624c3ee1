"""napari sample data: a MoS2 digital twin with vacancies, generated on the fly."""

from __future__ import annotations

from .layers import LayerData, twin_layers

__all__ = ["make_mos2_twin"]


def make_mos2_twin() -> list[LayerData]:
    """40 Å MoS2 twin with V_X, V_XX and V_M at 1e6 e/Å² (fast mode, seed 0).

    The first call per machine calibrates the fast mode against abTEM (~20 s);
    later calls take well under a second.
    """
    from .twin.api import TwinRequest, simulate_twin
    from .twin.imperfections import Imperfections

    twin = simulate_twin(TwinRequest(material="MoS2", defects="V_X=8,V_XX=3,V_M=2", fov_A=40.0, pixel_size_A=0.1,
                                     imperfections=Imperfections(dose_e_per_A2=1e6), seed=0))
    return twin_layers(twin, name="MoS2 twin")
