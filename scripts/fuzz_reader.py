#!/usr/bin/env python
"""Long fuzz run of the reader (issue 15): ≥ 10,000 mutated copies of the real vendor files.

Every mutated file is opened with ``load_images`` in a driver subprocess under an address-space
cap, with a per-case time limit; the run counts successful opens, clean ``ReaderError`` lines,
escaping exceptions, hangs and memory blow-ups (the last three must be 0). Mutations: byte flips,
zeroed/0xFF runs, truncation, splices, header integer edits (the image's dimensions in every width
and byte order set to 0, -1, 2³¹-1, -2³¹, 50000, 2⁶⁴-1 ...), ``.npy`` header edits and sidecar
garbage; see :mod:`napari_mx2_defects.io.fuzz`. Case ``i`` is rebuilt exactly from ``(seed, i)``.

Usage (the machine is shared: run it niced)::

    nice -n 10 .venv/bin/python scripts/fuzz_reader.py --cases-per-format 1500 --out fuzz.json

Failing cases are kept under ``--keep-failures`` for inspection. Record the result in
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_mx2_defects.io import fuzz  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases-per-format", type=int, default=1300,
                        help=f"mutations per format, {len(fuzz.FORMATS)} formats "
                             "(default 1300: 10,400 files)")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--parallel", type=int, default=1, help="drivers run side by side (default 1)")
    parser.add_argument("--reader-timeout", type=float, default=3.0,
                        help="MX2_READER_TIMEOUT_S inside the driver: the reader's own budget per file (s)")
    parser.add_argument("--case-timeout", type=float, default=20.0,
                        help="a case without an answer after this many seconds is a hang")
    parser.add_argument("--memory-cap-gib", type=float, default=6.0, help="address-space cap of each driver")
    parser.add_argument("--blowup-gib", type=float, default=1.0,
                        help="peak resident memory of one case (driver or worker) counted as a blow-up")
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("MX2_SHARED_DATA",
                                                                           ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, help="write the summary as JSON here")
    parser.add_argument("--keep-failures", type=Path, help="move failing cases here")
    args = parser.parse_args(argv)
    if not (args.shared / "formats").is_dir():
        parser.error(f"no shared data at {args.shared}; pass --shared")

    def progress(done: int, total: int, summary: fuzz.Summary) -> None:
        if done % 500 == 0 or done == total:
            elapsed = time.monotonic() - start
            print(f"[fuzz] {done}/{total} in {elapsed:.0f} s: {dict(summary.counts)} {dict(summary.notes)}",
                  file=sys.stderr, flush=True)

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mx2-fuzz-") as folder:
        summary = fuzz.run_fuzz(
            args.shared, Path(folder), cases_per_format=args.cases_per_format, seed=args.seed,
            parallel=args.parallel, progress=progress, keep_failures=args.keep_failures,
            harness_options={"case_timeout_s": args.case_timeout, "reader_timeout_s": args.reader_timeout,
                             "memory_cap_bytes": int(args.memory_cap_gib * 2**30),
                             "blowup_bytes": int(args.blowup_gib * 2**30)},
        )
    report = summary.as_dict()
    report.update({
        "seed": args.seed, "cases_per_format": args.cases_per_format, "parallel_drivers": args.parallel,
        "reader_timeout_s": args.reader_timeout, "case_timeout_s": args.case_timeout,
        "memory_cap_gib": args.memory_cap_gib, "blowup_gib": args.blowup_gib,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "niceness": os.nice(0),
    })
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if summary.bad else 0


if __name__ == "__main__":
    sys.exit(main())
