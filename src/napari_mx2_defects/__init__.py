"""napari-mx2-defects: point defects in HAADF-STEM images of monolayer MX2.

Layers: :mod:`.io` (reader, writer) → :mod:`.twin` (digital twins) →
:mod:`.learn` (segmentation) → :mod:`.analysis` (columns, lattice,
statistics); :mod:`.widgets` and :mod:`.cli` are thin fronts over them.
"""

__version__ = "0.1.0"

from .io.formats import CalibratedImage, ReaderError, load_images

__all__ = ["CalibratedImage", "ReaderError", "__version__", "load_images"]
