"""CPU (or GPU) throughput and peak memory of tiled inference for 1k, 4k and 8k images.

Each size runs in a fresh subprocess so that its peak resident memory (ru_maxrss) is its own:
it holds only the libraries, the model and the image (loaded from a .npy the parent wrote), and
reports its resident memory before inference and its peak. The image is a MoS2 twin tiled to size
at 0.2 Å/pixel (the model's pixel size: no resampling) unless ``--pixel-size-A`` says otherwise.
Run:

    python benchmarks/inference_throughput.py [--sizes 1024 4096 8192] [--device auto] [--pixel-size-A 0.2]
        [--runtime auto torch onnx onnx-int8 openvino openvino-int8] [--tile 384] [--overlap 32]

Each runtime's ONNX graph is exported (and quantised) before the clock starts; that is a
once-per-machine cost, cached on disk (``learn.runtime``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np
from napari_mx2_defects.learn.inference import segment_image, load_model, model_path
from napari_mx2_defects.learn.runtime import make_runner

path, device, pixel_size_A, runtime = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
tile, overlap = int(sys.argv[5]), int(sys.argv[6])
image = np.load(path)  # the user's image: in memory before inference, counted in the peak
model, card = load_model("default", device)
make_runner(model, model_path("default"), card.pixel_size_A, next(model.parameters()).device, runtime)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
seg = segment_image(image, pixel_size_A, device=device, runtime=runtime, tile=tile, overlap=overlap)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {"size": image.shape[0], "seconds": seconds, "mpix_per_s": image.size / 1e6 / seconds,
       "peak_rss_GB": peak / 1024**2, "rss_before_GB": base / 1024**2, "device": seg.device,
       "runtime": seg.runtime,
       "model_mpix_per_s": image.size * (pixel_size_A / card.pixel_size_A) ** 2 / 1e6 / seconds,
       "defects": int(len(seg.defects))}
if seg.device.startswith("cuda"):
    import torch
    out["gpu_peak_GB"] = torch.cuda.max_memory_allocated() / 1024**3
print(json.dumps(out))
"""


def _test_image(size: int, folder: str, pixel_size_A: float) -> str:
    """A MoS2 twin (V_X 2 %, V_M 1 %, 1e6 e/Å²), 512 pixels wide, tiled to ``size``², saved as .npy."""
    from napari_mx2_defects.twin.api import TwinRequest, simulate_twin
    from napari_mx2_defects.twin.imperfections import Imperfections

    twin = simulate_twin(TwinRequest(material="MoS2", defects="V_X=2%,V_M=1%", fov_A=512 * pixel_size_A,
                                     pixel_size_A=pixel_size_A,
                                     imperfections=Imperfections(dose_e_per_A2=1e6), seed=1))
    reps = int(np.ceil(size / twin.image.shape[0]))
    path = os.path.join(folder, f"mos2_{size}.npy")
    np.save(path, np.tile(twin.image.astype(np.float32), (reps, reps))[:size, :size])
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pixel-size-A", type=float, default=0.2,
                        help="pixel size of the test image (the default model's is 0.2 Å: no resampling)")
    parser.add_argument("--runtime", nargs="+", default=["auto"], help="runtimes to compare (learn.runtime)")
    parser.add_argument("--tile", type=int, default=384, help="tile size in model pixels")
    parser.add_argument("--overlap", type=int, default=32, help="tile overlap in model pixels")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"image pixel size {args.pixel_size_A} Å; tiles {args.tile} px, overlap {args.overlap} px")
    print(f"{'size':>6} {'runtime':>10} {'seconds':>8} {'MPix/s':>7} {'model MPix/s':>12} "
          f"{'RSS before GB':>13} {'peak RSS GB':>11} {'device':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            path = _test_image(size, folder, args.pixel_size_A)
            for runtime in args.runtime:
                command = [sys.executable, "-c", CHILD, path, args.device, str(args.pixel_size_A), runtime,
                           str(args.tile), str(args.overlap)]
                proc = subprocess.run(command, capture_output=True, text=True)
                if proc.returncode != 0:
                    print(f"{size:>6} {runtime:>10} failed: {proc.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                gpu = f"  (GPU peak {r['gpu_peak_GB']:.2f} GB)" if "gpu_peak_GB" in r else ""
                print(f"{r['size']:>6} {r['runtime']:>10} {r['seconds']:>8.1f} {r['mpix_per_s']:>7.3f} "
                      f"{r['model_mpix_per_s']:>12.3f} {r['rss_before_GB']:>13.2f} {r['peak_rss_GB']:>11.2f} "
                      f"{r['device']:>7}{gpu}", flush=True)
            os.remove(path)


if __name__ == "__main__":
    main()
