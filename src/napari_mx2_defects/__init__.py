"""napari-mx2-defects: point defects in HAADF-STEM images of monolayer MX2.

Layers, each importing only those before it (``tests/test_architecture.py``): :mod:`.core` (defect
classes, the job protocol, bounds, every parameter declared once) → :mod:`.io` (reader, writers,
atomic outputs, points tables) → :mod:`.twin` (digital twins) → :mod:`.analysis` (lattice, columns,
site classes, statistics) → :mod:`.learn` (segmentation, training, fine-tuning); the front ends —
:mod:`.inputs` and :mod:`.layers` (the one adapter between files or napari layers and the science),
:mod:`.api` (the public Python API), :mod:`.cli` (one module per science package), :mod:`.widgets`,
:mod:`.demo` — hold no science.  ``docs/architecture.md`` draws it.
"""

__version__ = "0.1.0"

from .io.formats import CalibratedImage, ReaderError, load_images

__all__ = ["CalibratedImage", "ReaderError", "__version__", "load_images"]
