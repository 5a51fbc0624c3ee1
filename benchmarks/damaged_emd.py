"""How long a damaged Velox/Berkeley EMD (HDF5) takes to be refused (issue 29: ≤ 3 s).

Every ``.emd`` in ``../shared/data/formats`` is damaged the ways a copy or a crash damages a file —
truncated at 10 … 95 % of its length, a 4 kB block zeroed or filled with random bytes at eight
places, 40 bytes flipped in the first 64 kB (superblock, object headers, B-trees) — and read with
:func:`napari_mx2_defects.io.formats.load_images`, the reader napari calls, in this process after one
warm-up read (as in a running napari).  Each read either refuses the file with one ``ReaderError`` or
returns images; the longest time of each kind is what a user waits on napari's main thread.

    python benchmarks/damaged_emd.py [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def shared_formats() -> Path:
    root = Path(os.environ.get("MX2_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return root / "formats"


def damaged_copies(data: bytes, rng: np.random.Generator):
    """(name, bytes) of every damaged copy of one file."""
    n = len(data)
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9, 0.95):
        yield f"truncated at {fraction:.0%}", data[: int(n * fraction)]
    for k, start in enumerate(np.linspace(0, n - 4096, 8).astype(int)):
        block = bytearray(data)
        block[start:start + 4096] = bytes(4096)
        yield f"4 kB zeroed at {start}", bytes(block)
        block[start:start + 4096] = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
        yield f"4 kB random at {start}", bytes(block)
    for trial in range(4):
        flipped = bytearray(data)
        for i in rng.integers(0, min(n, 65536), 40):
            flipped[i] ^= 0xFF
        yield f"40 bytes flipped in the head ({trial})", bytes(flipped)


def main() -> int:
    from napari_mx2_defects.io.formats import ReaderError, load_images

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    files = sorted(shared_formats().rglob("*.emd"))
    load_images(files[0])  # warm: imports and the reader's worker, as in a running napari
    worst = {"refused": (0.0, ""), "read": (0.0, "")}
    counts = {"refused": 0, "read": 0, "other error": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for source in files:
            data = source.read_bytes()
            for k, (name, damaged) in enumerate(damaged_copies(data, rng)):
                path = Path(tmp) / f"{source.stem}-damaged-{k}.emd"
                path.write_bytes(damaged)
                t0 = time.perf_counter()
                try:
                    load_images(path)
                    kind = "read"
                except ReaderError:
                    kind = "refused"
                except Exception as exc:  # noqa: BLE001 - counted: the reader's contract is one ReaderError
                    kind = "other error"
                    print(f"  {source.name}, {name}: {type(exc).__name__}: {exc}")
                seconds = time.perf_counter() - t0
                counts[kind] += 1
                if kind in worst and seconds > worst[kind][0]:
                    worst[kind] = (seconds, f"{source.name}, {name}")
    print(f"{sum(counts.values())} damaged copies of {len(files)} EMD files: {counts}")
    for kind, (seconds, which) in worst.items():
        print(f"  longest {kind}: {seconds:.2f} s ({which})")
    return 0 if counts["other error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
