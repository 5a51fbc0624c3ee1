"""The public Python API: the functions the docks and the ``mx2-defects`` commands call, for scripts.

Everything here gives the same answer as the dock and the command of the same name, because they
are the same functions::

    from napari_mx2_defects import api

    image = api.load_images("scan.dm4")[0]
    plane, _ = api.image_plane(image.data)
    pixel = api.pixel_size_A(image.scale_A, image.calibrated)
    seg = api.segment_image(plane, pixel, material="MoS2")
    result = api.analyze_image(plane, pixel, material="MoS2", defects=seg.defects)
    print(result.concentrations)

Names are imported on first use (PEP 562), so ``import napari_mx2_defects.api`` does not load
torch or abTEM until a function that needs them is asked for.
"""

from __future__ import annotations

import importlib

#: Public name → the module that defines it.
_WHERE = {
    # files
    "CalibratedImage": "io.formats", "ReaderError": "io.formats", "load_images": "io.formats",
    "read_points_table": "io.tables", "write_calibrated_tiff": "io.writer",
    # what every front end hands the science
    "image_plane": "inputs", "pixel_size_A": "inputs",
    # vocabulary and parameters
    "CLASS_IDS": "core.classes", "CLASS_NAMES": "core.classes", "DEFECT_CLASSES": "core.classes",
    "Cancelled": "core.jobs", "DEFAULTS": "core.parameters", "REQUEST_PARAMETERS": "core.parameters",
    # digital twins
    "Microscope": "twin.microscope", "OPTICS_PRESETS": "twin.microscope", "Imperfections": "twin.imperfections",
    "Twin": "twin.api", "TwinRequest": "twin.api", "check_twin_values": "twin.api", "simulate_twin": "twin.api",
    "get_parent": "twin.parents", "list_parents": "twin.parents",
    # analysis
    "AnalysisResult": "analysis.api", "analyze_image": "analysis.api",
    "DefectObjects": "analysis.objects", "defect_objects": "analysis.objects",
    "DefectStructure": "analysis.structure", "defect_structure": "analysis.structure",
    "PhaseMap": "analysis.phases", "map_phases": "analysis.phases", "PHASES": "twin.stacking",
    # learning
    "Segmentation": "learn.inference", "load_model": "learn.inference", "segment_image": "learn.inference",
    "DatasetSpec": "learn.dataset", "generate_dataset": "learn.dataset",
    "TrainConfig": "learn.train", "train": "learn.train",
    "evaluate_model_on_twins": "learn.evaluate", "instance_scores": "learn.evaluate",
    "match_instances": "learn.evaluate", "DoseResponse": "learn.dose_response", "dose_response": "learn.dose_response",
    "Correction": "learn.finetune", "FinetuneConfig": "learn.finetune", "finetune": "learn.finetune",
    "read_corrections": "learn.finetune", "rank_uncertain_sites": "learn.uncertainty",
    "corrections_from_layers": "layers",
    # the end-to-end demo
    "run_demo": "demo",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__package__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
