"""Inference runtimes: one network, run by PyTorch, ONNX Runtime or OpenVINO, chosen per device.

A runner maps a batch of normalised tiles ``(n, 1, tile, tile)`` float32 to class probabilities
``(n, n_classes, tile, tile)`` float32 (the softmax is part of what it runs). The tiling, blending
and instance extraction in :mod:`.inference` are the same whichever runner is used.

Runtimes
--------
``torch``
    Eager PyTorch on the chosen device; on a CUDA GPU the tiles run in bfloat16 (fp16 where the GPU
    has no bf16) under autocast, softmax in fp32.
``onnx``
    ONNX Runtime on the CPU, fp32: the network exported from the same safetensors weights with
    ``torch.onnx.export`` when first asked for; its outputs agree with PyTorch to ~1e-5.
``onnx-int8``
    The same graph statically quantised to int8 (QDQ, per-channel weights; the softmax left in fp32)
    with ONNX Runtime's quantiser, its activation ranges calibrated on fast digital twins of several parents at the
    model's pixel size (:func:`calibration_tiles`, fixed seeds), so the quantised model never
    depends on the user's image. Held-out F1 against the PyTorch path is in benchmarks/RESULTS.md.
``openvino``
    The fp32 graph compiled by OpenVINO for this CPU, run at bfloat16 on CPUs with bf16 units (AVX-512
    BF16, AMX) and at fp32 elsewhere (the runner's name says which). On the
    development machine's AMX cores it runs ~3× faster than ONNX Runtime int8 (benchmarks/RESULTS.md).
``openvino-int8``
    The same int8 graph as ``onnx-int8`` (quantised once by ONNX Runtime's quantiser), compiled by
    OpenVINO: int8 convolutions on VNNI/AMX units.
``auto``
    ``torch`` on a GPU (CUDA or MPS); on the CPU ``openvino`` when OpenVINO is installed, else
    ``onnx-int8`` when onnxruntime is, else ``torch``.

Exported graphs are built in a separate process (:func:`build_graphs`) and cached in ``<cache>/onnx/``
(``$MX2_DEFECTS_ONNX_DIR``, else ``$MX2_DEFECTS_CACHE`` or the user cache folder)
under the SHA-256 of the weights file and the torch/onnxruntime versions, written atomically; a
cached graph is only ever one this code wrote for those exact weights. ONNX files are protocol
buffers (no code runs when one is loaded).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core.parameters import RUNTIMES

__all__ = [
    "RUNTIMES",
    "OnnxRunner",
    "OpenVinoRunner",
    "TorchRunner",
    "build_graphs",
    "calibration_tiles",
    "make_runner",
    "onnx_available",
    "openvino_available",
    "resolve_runtime",
]

#: Bumped when the export or the quantisation changes, so older cached graphs are not reused.
EXPORT_VERSION = 2
#: Doses (e/Å²), contamination and seeds of the int8 calibration twins: MoS2 with the demo's vacancies
#: at the default optics, so the fast mode's abTEM calibration is the demo's (one per machine, cached).
#: The inputs are normalised per image, so their range hardly depends on the parent.
CALIBRATION_TWINS = ((1e4, 0.0), (1e5, 0.2), (1e6, 0.0), (1e6, 0.3), (1e7, 0.1), (1e8, 0.0))

log = logging.getLogger(__name__)


def onnx_available() -> bool:
    """Whether onnxruntime (and the onnx exporter's dependency) can be imported here."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def openvino_available() -> bool:
    """Whether OpenVINO can be imported here (its graphs come from the ONNX export, so onnx is needed too)."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return onnx_available()


def resolve_runtime(runtime: str, device) -> str:
    """The runtime ``auto`` stands for on ``device``; a named runtime that cannot run there is refused."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {str(runtime)[:40]!r}; use {', '.join(RUNTIMES)}")
    if runtime == "auto":
        if device.type != "cpu":
            return "torch"
        return "openvino" if openvino_available() else "onnx-int8" if onnx_available() else "torch"
    if runtime.startswith(("onnx", "openvino")) and device.type != "cpu":
        raise ValueError(f"runtime {runtime} runs on the CPU; use --device cpu, or --runtime torch on {device.type}")
    if runtime.startswith("openvino") and not openvino_available():
        raise ValueError(
            f"runtime {runtime} needs openvino, onnxruntime and onnx (pip install openvino onnxruntime onnx); "
            f"or use --runtime onnx-int8 or torch"
        )
    if runtime.startswith("onnx"):
        if not onnx_available():
            raise ValueError(
                f"runtime {runtime} needs onnxruntime and onnx (pip install onnxruntime onnx); "
                f"or use --runtime torch"
            )
    return runtime


class TorchRunner:
    """Eager PyTorch; reduced precision under autocast on CUDA."""

    def __init__(self, net, device):
        import torch

        self.net, self.device = net, device
        self.dtype = None
        if device.type == "cuda":
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.name = "torch" + ("" if self.dtype is None else f"-{str(self.dtype).split('.')[-1]}")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(batch).to(self.device)
            if self.dtype is None:
                return self.net(x).softmax(1).cpu().numpy()
            with torch.autocast(self.device.type, dtype=self.dtype):
                logits = self.net(x)
            return logits.float().softmax(1).cpu().numpy()


class OnnxRunner:
    """An ONNX Runtime session on the CPU."""

    def __init__(self, graph: Path, name: str):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        import torch

        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.name = name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(batch, np.float32)})[0]


class OpenVinoRunner:
    """An OpenVINO compiled model on the CPU (dynamic batch and tile size; the CPU plugin prepares each new
    shape on its first call). Safe to share between threads (the segment dock and a batch may run at once)."""

    def __init__(self, graph: Path, name: str):
        import openvino as ov
        import torch

        core = ov.Core()
        # fp32 graphs run at bf16 where the CPU has bf16 units, else at fp32 (stated, not left to the plugin:
        # on ARM its default is fp16, which was never measured here); int8 graphs keep their own precision
        bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        config = {"INFERENCE_NUM_THREADS": max(1, torch.get_num_threads()), "PERFORMANCE_HINT": "LATENCY"}
        if name == "openvino":
            config["INFERENCE_PRECISION_HINT"] = "bf16" if bf16 else "f32"
            name = "openvino-bf16" if bf16 else "openvino-fp32"
        self.compiled = core.compile_model(core.read_model(str(graph)), "CPU", config)
        # an infer request serves one call at a time: a free one is taken from the pool, or a new one made.
        # (Not one per thread in a threading.local: a request freed while Qt tears down a pooled thread's
        # Python state crashed napari.)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self.name = name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        try:
            request = self._free.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            return request.infer({0: np.ascontiguousarray(batch, np.float32)})[0]  # outputs are copies
        finally:
            self._free.put(request)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:24]


def _graph_path(weights: Path, precision: str) -> Path:
    import onnxruntime as ort
    import torch

    from ..twin.calibration import cache_dir

    key = f"{_file_digest(weights)}-t{torch.__version__}-ort{ort.__version__}-v{EXPORT_VERSION}-{precision}"
    folder = Path(os.environ.get("MX2_DEFECTS_ONNX_DIR") or cache_dir() / "onnx")
    return folder / f"{key.replace('+', '_')}.onnx"


def _export_fp32(net, path: Path) -> None:
    """The network plus softmax as an ONNX graph with dynamic batch and tile size (TorchScript exporter:
    it needs no extra packages and handles smp's U-Net exactly)."""
    import torch

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x).softmax(1)

    # the exporter restores the wrapper's training flag afterwards, recursively: a wrapper left in training
    # mode would put the shared (cached) network in training mode too (batch-norm on batch statistics)
    wrapper = WithSoftmax(net.to("cpu")).eval()
    try:
        _export(wrapper, path)
    finally:
        net.eval()


def _export(wrapper, path: Path) -> None:
    import warnings

    import torch

    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            torch.zeros(1, 1, 256, 256),
            str(tmp),
            input_names=["tiles"],
            output_names=["probabilities"],
            opset_version=17,
            dynamo=False,
            dynamic_axes={"tiles": {0: "n", 2: "h", 3: "w"}, "probabilities": {0: "n", 2: "h", 3: "w"}},
        )


def calibration_tiles(pixel_size_A: float, tile: int = 256) -> list[np.ndarray]:
    """Normalised ``(1, 1, tile, tile)`` tiles of fast twins (:data:`CALIBRATION_TWINS`) at the model's
    pixel size: the activation ranges int8 quantisation is calibrated on."""
    from ..twin.api import TwinRequest, simulate_twin
    from ..twin.imperfections import Imperfections
    from .preprocess import normalisation_stats, normalise

    tiles = []
    for k, (dose, contamination) in enumerate(CALIBRATION_TWINS):
        twin = simulate_twin(
            TwinRequest(
                material="MoS2",
                defects="V_X=3%,V_XX=1%,V_M=1%",
                fov_A=tile * pixel_size_A,
                pixel_size_A=pixel_size_A,
                seed=90_000 + k,
                imperfections=Imperfections(dose_e_per_A2=dose, contamination=contamination),
            )
        )
        image = twin.image[:tile, :tile].astype(np.float32)
        tiles.append(normalise(image, normalisation_stats(image))[None, None].astype(np.float32))
    return tiles


def _quantise(fp32: Path, path: Path, pixel_size_A: float) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from ..io.atomic import atomic_path

    tiles = calibration_tiles(pixel_size_A)

    class Tiles(CalibrationDataReader):
        def __init__(self):
            self.left = iter(tiles)

        def get_next(self):
            x = next(self.left, None)
            return None if x is None else {"tiles": x}

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the quantiser warns about every shape tensor it leaves in fp32
    pre = path.with_suffix(".pre.onnx")
    try:
        with atomic_path(pre) as tmp:
            quant_pre_process(str(fp32), str(tmp))
        # the softmax stays in fp32 (on the dequantised logits), so probabilities still sum to one
        softmax = [node.name for node in onnx.load(str(pre)).graph.node if node.op_type == "Softmax"]
        with atomic_path(path) as tmp:
            quantize_static(
                str(pre),
                str(tmp),
                Tiles(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_exclude=softmax,
            )
    finally:
        quiet.setLevel(level)
        pre.unlink(missing_ok=True)


def build_graphs(weights: str | Path, precision: str, pixel_size_A: float) -> Path:
    """Export (and, for ``int8``, quantise) the checkpoint at ``weights`` into the cache; the graph's path.

    Run by :func:`_onnx_graph` in a fresh Python process: the exporter imports torch's compiler stack,
    which crashed (SIGSEGV) when imported into a process that already holds napari's Qt/OpenGL context.
    """
    from .checkpoint import load_checkpoint

    weights = Path(weights)
    fp32 = _graph_path(weights, "fp32")
    if not fp32.is_file():
        net, _ = load_checkpoint(weights, "cpu")
        _export_fp32(net, fp32)
    if precision == "fp32":
        return fp32
    int8 = _graph_path(weights, precision)
    if not int8.is_file():
        _quantise(fp32, int8, pixel_size_A)
    return int8


def _onnx_graph(
    weights: Path, precision: str, pixel_size_A: float, progress: Callable[[float, str], None]
) -> Path:
    """The cached graph, built first in a separate process when missing (:func:`build_graphs`)."""
    import subprocess
    import sys

    graph = _graph_path(weights, precision)
    if graph.is_file():
        return graph
    progress(0.0, f"exporting the model for the CPU runtime ({precision}; once per model, about 10 s)")
    code = ("import sys; from napari_mx2_defects.learn.runtime import build_graphs; "
            "build_graphs(*sys.argv[1:3], float(sys.argv[3]))")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(weights), precision, repr(float(pixel_size_A))],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0 or not graph.is_file():
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise RuntimeError(
            f"exporting the model to ONNX failed ({lines[-1] if lines else proc.returncode}); "
            f"use --runtime torch (the runtime field: torch)"
        )
    return graph


_RUNNERS: dict = {}
_RUNNERS_LOCK = threading.RLock()  # two docks may ask for the same runner at once: compile it once


def make_runner(
    net,
    weights: Path,
    pixel_size_A: float,
    device,
    runtime: str,
    progress: Callable[[float, str], None] = lambda f, m: None,
):
    """A runner for ``net`` (loaded from ``weights``) under ``runtime`` (see the module docstring);
    ONNX Runtime sessions and OpenVINO models are cached per graph, runtime and thread count. Under
    ``auto``, an OpenVINO that imports but cannot compile the graph here falls back to ``onnx-int8``."""
    import torch

    name = resolve_runtime(runtime, device)
    if name == "torch":
        return TorchRunner(net, device)
    graph = _onnx_graph(Path(weights), "int8" if name.endswith("-int8") else "fp32", pixel_size_A, progress)
    key = (str(graph), name, torch.get_num_threads())
    fallback = (str(graph), "auto", torch.get_num_threads())  # what auto ran after OpenVINO failed here
    with _RUNNERS_LOCK:
        if runtime == "auto" and fallback in _RUNNERS:
            return _RUNNERS[fallback]
        if key not in _RUNNERS:
            try:
                _RUNNERS[key] = (OpenVinoRunner if name.startswith("openvino") else OnnxRunner)(graph, name)
            except Exception as exc:  # noqa: BLE001 - any failure of OpenVINO here: ONNX Runtime instead
                if runtime != "auto" or not name.startswith("openvino"):
                    raise
                log.warning("OpenVINO could not run the model here (%s); using ONNX Runtime int8", exc)
                _RUNNERS[fallback] = make_runner(net, weights, pixel_size_A, device, "onnx-int8", progress)
                return _RUNNERS[fallback]
        return _RUNNERS[key]
