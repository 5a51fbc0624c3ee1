"""Segmentation: models (segmentation-models-pytorch), datasets, training, inference, evaluation."""

import sys

# In a process that has loaded napari or Qt, importing triton's bundled LLVM after Mesa's llvmpipe
# has created an OpenGL context crashes the whole viewer with a segmentation fault (seen here under
# Xvfb + Mesa: torchvision.ops → torch._dynamo → triton). This package never uses torch.compile,
# the only user of triton, so in GUI processes triton is kept out. Set MX2_DEFECTS_ALLOW_TRITON=1
# to opt out.
if (
    "triton" not in sys.modules
    and any(gui in sys.modules for gui in ("napari", "PyQt6", "PyQt5", "PySide6", "PySide2"))
    and __import__("os").environ.get("MX2_DEFECTS_ALLOW_TRITON") != "1"
):
    sys.modules["triton"] = None  # `import triton` now raises ImportError; torch treats it as absent
