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
    import numpy as np

    from .analysis.api import analyze_image
    from .layers import sites_layer, twin_layers
    from .twin.api import TwinRequest, simulate_twin

    from .io.atomic import StagedOutput, atomic_path, atomic_write_text, check_output_dir

    out = check_output_dir(out_dir)  # before any work
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose a new --out folder (nothing was overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _log(f"simulating a {fov_A:g} Å {material} twin with {defects} at {dose:g} e/Å² (fast mode)")
    request = TwinRequest.from_values({"material": material, "defects": defects, "fov_A": fov_A,
                                       "pixel_size_A": DEMO_PIXEL_SIZE_A, "dose_e_per_A2": dose, "seed": seed})
    twin = simulate_twin(request, progress=lambda f, m: _log(f"  {100 * f:5.1f} % {m}"))
    twin_dir = out / "twin"
    with StagedOutput(twin_dir, []) as staging:  # the twin folder appears complete or not at all
        twin.save(staging)
    _log(f"twin written to {twin_dir}")

    # the window must be shown for OpenGL to render the screenshot (under Xvfb nobody sees it)
    viewer = napari.Viewer(show=True, title="napari-mx2-defects demo")
    layers = viewer.open(twin_dir / "image.tif", plugin="napari-mx2-defects")
    image_layer = layers[0]
    _log(f"opened through the plugin reader: scale {' × '.join(f'{v:.5f}' for v in image_layer.scale)} Å, "
         f"calibrated={image_layer.metadata['calibrated']}")
    _, truth_labels, truth_points = twin_layers(twin, name="truth")
    viewer.add_labels(truth_labels[0], **truth_labels[1])
    viewer.add_points(truth_points[0], **truth_points[1])

    from .layers import label_colormap_layer, label_features
    from .learn.checkpoint import default_model_path
    from .learn.evaluate import instance_scores, match_instances
    from .learn.inference import segment_image

    predictions = None
    segmentation_scores = None
    if default_model_path().exists():
        _log("segmenting with the shipped default model")
        seg = segment_image(np.asarray(image_layer.data), image_layer.metadata["pixel_size_A"], material=material,
                            beam_energy_keV=image_layer.metadata.get("beam_energy_keV"))
        predictions = seg.defects
        viewer.add_labels(seg.labels, name="model labels", scale=image_layer.scale, units=image_layer.units,
                          opacity=0.7, colormap=label_colormap_layer(), features=label_features())
        viewer.add_points(seg.defects[["y_A", "x_A"]].to_numpy(), name="model defects", size=1.6,
                          features=seg.defects.drop(columns=["x_A", "y_A"]), face_color="transparent",
                          border_color="red", units=image_layer.units)
        with atomic_path(out / "defects.csv") as tmp:
            seg.defects.to_csv(tmp, index=False)
        segmentation_scores = instance_scores(match_instances(seg.defects, twin.truth_table()))
        with atomic_path(out / "segmentation_scores.csv") as tmp:
            segmentation_scores.to_csv(tmp, index=False)
        _log("model vs truth: " + ", ".join(f"{r.defect_class} F1 {r.f1:.2f}"
                                             for r in segmentation_scores.itertuples()))
    else:
        _log("no default model is installed: the analysis classifies sites by intensity alone")

    _log("analysing sites and concentrations")
    result = analyze_image(np.asarray(image_layer.data), image_layer.metadata["pixel_size_A"], material=material,
                           defects=predictions, beam_energy_keV=image_layer.metadata.get("beam_energy_keV"))
    result.save(out / "analysis")
    data, kwargs, _ = sites_layer(result)
    viewer.add_points(data, **kwargs, visible=False)
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
    truth_counts = twin.defects.defect_class.value_counts().to_dict()
    measured = result.concentrations.set_index("defect_class")["count"].to_dict()
    summary = {
        "material": material,
        "defects_requested": defects,
        "truth_counts_full_field": truth_counts,
        "measured_counts_analysed_area": measured,
        "lattice": result.lattice,
        "segmentation": None if segmentation_scores is None else segmentation_scores.to_dict("records"),
        "seconds": time.perf_counter() - t0,
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    _log(f"screenshot {screenshot}; CSVs in {out / 'analysis'}; {summary['seconds']:.1f} s")
    _log(f"truth {truth_counts}; measured {measured}")
    viewer.close()
    return summary
