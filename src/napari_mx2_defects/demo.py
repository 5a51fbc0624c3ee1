"""``mx2-defects demo``: the main job, end to end in a scripted napari viewer.

twin (fast mode, calibrated against abTEM) → written as a calibrated TIFF →
opened through this plugin's reader as a user would → segmentation with the
shipped model → site analysis → screenshot, plots, CSVs
and the layer metadata in ``--out``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .core.parameters import TWIN_PARAMETERS, with_defaults

__all__ = ["DEMO_PARAMETERS", "DEMO_PIXEL_SIZE_A", "run_demo"]

#: The demo's twin: the parameters of ``simulate`` it exposes, with a larger field and a dose.
DEMO_PARAMETERS = with_defaults(tuple(p for p in TWIN_PARAMETERS if p.name in ("material", "defects", "fov_A",
                                                                                "dose_e_per_A2", "seed")),
                                defects="V_X=40,V_XX=10,V_M=6", fov_A=80.0, dose_e_per_A2=1e6)
#: Pixel size of the demo's twin (Å): the shipped model's 0.2 Å is reached by resampling.
DEMO_PIXEL_SIZE_A = 0.1


def _log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


_DEFAULT = {p.name: p.default for p in DEMO_PARAMETERS}


def run_demo(out_dir: str | Path, material: str = _DEFAULT["material"], defects: str = _DEFAULT["defects"],
             fov_A: float = _DEFAULT["fov_A"], dose: float = _DEFAULT["dose_e_per_A2"],
             seed: int = _DEFAULT["seed"]) -> dict:
    """Run the demo and return a summary (also written to ``summary.json``).

    Raises
    ------
    FileExistsError
        If ``out_dir`` already holds demo results (nothing is overwritten).
    """
    import napari

    from .io.atomic import check_output_dir

    out = check_output_dir(out_dir)  # before any work
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --out folder (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    twin = _simulate(out / "twin", material, defects, fov_A, dose, seed)
    # the window must be shown for OpenGL to render the screenshot (under Xvfb nobody sees it)
    viewer = napari.Viewer(show=True, title="napari-mx2-defects demo")
    image_layer = _open_as_a_user_would(viewer, out / "twin", twin)
    inputs = _inputs(image_layer)
    predictions, scores = _segment(viewer, image_layer, inputs, material, twin, out)
    result = _analyse(viewer, inputs, material, predictions, out)
    screenshot = _screenshot_and_layers(viewer, image_layer, out)
    truth_counts = twin.defects.defect_class.value_counts().to_dict()
    measured = result.concentrations.set_index("defect_class")["count"].to_dict()
    summary = {
        "material": material,
        "defects_requested": defects,
        "truth_counts_full_field": truth_counts,
        "measured_counts_analysed_area": measured,
        "lattice": result.lattice,
        "segmentation": None if scores is None else scores.to_dict("records"),
        "seconds": time.perf_counter() - t0,
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
    }
    from .io.atomic import atomic_write_text

    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    _log(f"screenshot {screenshot}; CSVs in {out / 'analysis'}; {summary['seconds']:.1f} s")
    _log(f"truth {truth_counts}; measured {measured}")
    viewer.close()
    return summary


def _simulate(twin_dir: Path, material: str, defects: str, fov_A: float, dose: float, seed: int):
    """The twin (fast mode), written to ``twin_dir`` complete or not at all."""
    from .io.atomic import StagedOutput
    from .twin.api import TwinRequest, simulate_twin

    _log(f"simulating a {fov_A:g} Å {material} twin with {defects} at {dose:g} e/Å² (fast mode)")
    request = TwinRequest.from_values({"material": material, "defects": defects, "fov_A": fov_A,
                                       "pixel_size_A": DEMO_PIXEL_SIZE_A, "dose_e_per_A2": dose, "seed": seed})
    twin = simulate_twin(request, progress=lambda f, m: _log(f"  {100 * f:5.1f} % {m}"))
    with StagedOutput(twin_dir, []) as staging:
        twin.save(staging)
    _log(f"twin written to {twin_dir}")
    return twin


def _open_as_a_user_would(viewer, twin_dir: Path, twin):
    """The twin's TIFF through the plugin's reader, with the ground truth beside it; the image layer."""
    from .layers import add_layers, twin_layers

    image_layer = viewer.open(twin_dir / "image.tif", plugin="napari-mx2-defects")[0]
    _log(f"opened through the plugin reader: scale {' × '.join(f'{v:.5f}' for v in image_layer.scale)} Å, "
         f"calibrated={image_layer.metadata['calibrated']}")
    add_layers(viewer, twin_layers(twin, name="truth")[1:])  # truth labels and points
    return image_layer


def _inputs(image_layer):
    """(plane, pixel size, beam energy) by the front ends' one policy (:mod:`.inputs`)."""
    from .inputs import image_plane, pixel_size_A

    plane, _ = image_plane(image_layer.data, image_layer.name)
    pixel = pixel_size_A(image_layer.scale, image_layer.metadata["calibrated"], name=image_layer.name)
    return plane, pixel, image_layer.metadata.get("beam_energy_keV")


def _segment(viewer, image_layer, inputs, material: str, twin, out: Path):
    """The shipped model's defects (layers, ``defects.csv``) and its F1 against the truth; (None, None)
    without a model."""
    from .io.atomic import atomic_path
    from .layers import add_layers, segmentation_layers
    from .learn.checkpoint import default_model_path
    from .learn.evaluate import instance_scores, match_instances
    from .learn.inference import segment_image

    if not default_model_path().exists():
        _log("no default model is installed: the analysis classifies sites by intensity alone")
        return None, None
    _log("segmenting with the shipped default model")
    plane, pixel, energy = inputs
    seg = segment_image(plane, pixel, material=material, beam_energy_keV=energy)
    add_layers(viewer, segmentation_layers(seg, image_layer, pixel, name="model"))
    with atomic_path(out / "defects.csv") as tmp:
        seg.defects.to_csv(tmp, index=False)
    scores = instance_scores(match_instances(seg.defects, twin.truth_table()))
    with atomic_path(out / "segmentation_scores.csv") as tmp:
        scores.to_csv(tmp, index=False)
    _log("model vs truth: " + ", ".join(f"{r.defect_class} F1 {r.f1:.2f}" for r in scores.itertuples()))
    return seg.defects, scores


def _analyse(viewer, inputs, material: str, predictions, out: Path):
    """Sites and concentrations (``analysis/``), the sites as a hidden Points layer."""
    from .analysis.api import analyze_image
    from .layers import add_layers, sites_layer

    _log("analysing sites and concentrations")
    plane, pixel, energy = inputs
    result = analyze_image(plane, pixel, material=material, defects=predictions, beam_energy_keV=energy)
    result.save(out / "analysis")
    data, kwargs, kind = sites_layer(result)
    add_layers(viewer, [(data, {**kwargs, "visible": False}, kind)])
    return result


def _screenshot_and_layers(viewer, image_layer, out: Path) -> Path:
    """``screenshot.png`` of the canvas and ``layers.json`` (every layer's scale and metadata)."""
    import numpy as np

    from .io.atomic import atomic_path, atomic_write_text

    viewer.layers.selection.active = image_layer
    viewer.reset_view()
    screenshot = out / "screenshot.png"
    with atomic_path(screenshot) as tmp:
        viewer.screenshot(str(tmp), canvas_only=True, flash=False)
    metadata = {
        layer.name: {
            "type": type(layer).__name__,
            "shape": list(np.shape(layer.data)),
            "scale_A": [float(s) for s in layer.scale],
            "metadata": {k: v for k, v in layer.metadata.items() if k not in ("original_metadata", "twin_settings")},
        }
        for layer in viewer.layers
    }
    atomic_write_text(out / "layers.json", json.dumps(metadata, indent=2, default=str))
    return screenshot
