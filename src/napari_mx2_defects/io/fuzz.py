"""Mutation fuzzing of the reader: seeded corrupt copies of real vendor files, each opened in a driver.

Used by ``tests/test_fuzz_reader.py`` (a few hundred mutations per format) and
``scripts/fuzz_reader.py`` (the long run). The contract checked for every mutated file:
:func:`~.formats.load_images` either returns images or raises :class:`~.safety.ReaderError`
(no other exception escapes), finishes within the case time limit (no hang), and neither the
driver nor the reader's worker goes above the memory limit (no blow-up).

Design: a *driver* subprocess (``python -m napari_mx2_defects.io.fuzz --driver``) runs under an
address-space cap (``resource.setrlimit``), reads one case per line and answers with one JSON line.
The harness gives every case its own time limit; a driver that overruns is killed (its reader
worker dies with it) and a fresh driver takes the next case. One driver serves many cases, so
the cost per case is the parse, not a Python start.

Mutations: byte flips, zeroed runs, truncation, splices, header integer edits (the image's own
dimensions, found in the file in every width and byte order, replaced by 0, -1, 2³¹-1, -2³¹, 50000,
2⁶⁴-1 ...; and random header words), and for ``.npy`` header text edits and sidecar garbage.
"""

from __future__ import annotations

import functools
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SEEDS", "Case", "Harness", "make_case", "run_fuzz"]

#: (format label, file relative to the shared data folder, companion files, image dimensions in the file)
SEEDS: list[tuple[str, str, tuple[str, ...], tuple[int, ...]]] = [
    ("dm3", "formats/rosettasciio/digitalmicrograph/2D/test_STEM_image.dm3", (), (68, 68)),
    ("dm4", "formats/openNCEM/dmTest_float32_nonSquare_diffPixelSize.dm4", (), (64, 128)),
    ("velox", "formats/openNCEM/STEM HAADF Diffraction Micro.emd", (), (128, 128, 1)),
    ("velox", "formats/rosettasciio/emd/fei_example_tem_stack.emd", (), (3, 3, 2)),
    ("berkeley", "formats/openNCEM/Acquisition_18.emd", (), (1024, 1024)),
    ("tia", "formats/rosettasciio/tia/new/128x128-TEM_search.emi", ("128x128-TEM_search_1.ser",), (128, 128)),
    ("tia", "formats/rosettasciio/tia/old/03_Scanning Preview.emi", ("03_Scanning Preview_1.ser",),
     (128, 128)),
    ("mrc", "formats/rosettasciio/mrc/HAADFscan.mrc", (), (16, 16, 1)),
    ("mrc", "formats/openNCEM/temp.mrc", (), (128, 128, 3)),
    ("tiff", "formats/rosettasciio/tiff/test_loading_image_saved_with_imageJ.tif", (), (68, 68)),
    ("tiff", "formats/rosettasciio/tiff/test_loading_image_saved_with_DM.tif", (), (68, 68)),
    ("npy", "real/scilink_mos2/MoS2_stem_Exp-000-2.npy", ("MoS2_stem_Exp-000-2.json",), (512, 512)),
]

FORMATS: tuple[str, ...] = tuple(dict.fromkeys(label for label, *_ in SEEDS))

_NASTY_INTS = (0, 1, -1, 2, 0x7FFFFFFF, -(2**31), 50000, 65535, 2**32 - 1, 2**63 - 1, 10**9, 3)
_INT_LAYOUTS = ("<H", ">H", "<I", ">I", "<Q", ">Q", "<i", ">i")

SIDECAR_GARBAGE: tuple[bytes, ...] = (
    b"\xff\xfe\xfd",
    b"[" * 100_000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b'{"pixel_size_A": "abc"}',
    b"null",
    b"[1, 2]",
    b'{"pixel_size_A": ' + b"7" * 400 + b"}",
    b'{"pixel_size_A": ' + b"7" * 6000 + b"}",
    b'{"pixel_size_A": NaN}',
    b'{"pixel_size_A": -Infinity}',
    b'{"pixel_size_A": 0}',
    b'{"pixel_size_A": [0.2]}',
    b'{"pixel_size": 1, "pixel_size_units": {"a": 1}}',
    b'{"field_of_view_x": 1e999, "field_of_view_units": "nm"}',
    b'{"field_of_view_x": 9, "field_of_view_units": "parsec"}',
    b'{"beam_energy_keV": "x"}',
    b'{"voltage": ' + b"9" * 500 + b"}",
    b'{"voltage": "1e999 kV", "probe_current": "-3 pA", "dwell_time": [1]}',
    b"",
    b'{"pixel_size_A": 0.2',
)


@dataclass
class Case:
    """One mutated file: where it is, how it was made, and what happened."""

    index: int
    fmt: str
    seed: str
    mutation: str
    path: Path
    outcome: str = ""  # ok | reader_error | escape | hang | blowup | crash
    detail: str = ""
    seconds: float = 0.0
    peak_rss_bytes: int = 0


def _find_all(data: bytes, pattern: bytes, limit: int = 64) -> list[int]:
    found, start = [], 0
    while len(found) < limit:
        i = data.find(pattern, start)
        if i < 0:
            break
        found.append(i)
        start = i + 1
    return found


def _position(rng: random.Random, size: int) -> int:
    """A byte offset, biased towards the header (where sizes and offsets live)."""
    if size <= 1:
        return 0
    if rng.random() < 0.6:
        return rng.randrange(min(size, 8192))
    return rng.randrange(size)


def mutate(rng: random.Random, data: bytes, dims: tuple[int, ...]) -> tuple[str, bytes]:
    """One random mutation of ``data``; returns its description and the new bytes."""
    buf = bytearray(data)
    size = len(buf)
    kind = rng.choices(["flip", "zero", "truncate", "int", "dims", "splice", "ones"],
                       weights=[25, 20, 10, 15, 20, 5, 5])[0]
    if kind == "flip":
        n = rng.choice((1, 1, 2, 4, 16, 64))
        for _ in range(n):
            buf[_position(rng, size)] ^= rng.randrange(1, 256)
        return f"flip {n} bytes", bytes(buf)
    if kind in ("zero", "ones"):
        start = _position(rng, size)
        length = rng.choice((1, 4, 8, 64, 735, 4096, 65536))
        fill = 0 if kind == "zero" else 0xFF
        buf[start:start + length] = bytes([fill]) * len(buf[start:start + length])
        return f"{kind} {length} bytes at {start}", bytes(buf)
    if kind == "truncate":
        cut = rng.choice((rng.randrange(max(size, 1)), _position(rng, size), int(size * rng.random())))
        return f"truncate at {cut} of {size}", bytes(buf[:cut])
    if kind == "splice":
        a, b = _position(rng, size), rng.randrange(max(size, 1))
        length = rng.choice((8, 64, 512))
        buf[a:a + length] = data[b:b + length]
        return f"splice {length} bytes {b}->{a}", bytes(buf)
    value = rng.choice(_NASTY_INTS)
    if kind == "dims" and dims:
        dim = rng.choice(dims)
        layouts = [lay for lay in _INT_LAYOUTS if lay[1] in "IQ" or dim < 65536]
        rng.shuffle(layouts)
        for layout in layouts:
            hits = _find_all(data, struct.pack(layout, dim))
            if hits:
                at = rng.choice(hits)
                packed = _pack(layout, value)
                buf[at:at + len(packed)] = packed
                return f"dim {dim} ({layout}) at {at} -> {value}", bytes(buf)
    width = rng.choice((2, 4, 8))
    at = _position(rng, max(size - width, 1)) // width * width
    layout = rng.choice([lay for lay in _INT_LAYOUTS if struct.calcsize(lay) == width])
    packed = _pack(layout, value)
    buf[at:at + width] = packed
    return f"word {layout} at {at} -> {value}", bytes(buf)


def _pack(layout: str, value: int) -> bytes:
    width = struct.calcsize(layout)
    unsigned = layout.replace("i", "I").replace("h", "H").replace("q", "Q")
    return struct.pack(unsigned, value % (1 << (8 * width)))


def _npy_header_edit(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    end = data.find(b"\n", 10)
    header = data[10:end].decode("latin-1")
    edits = [("(512, 512)", "(512, -512)"), ("(512, 512)", "(50000, 50000)"), ("(512, 512)", "(512,)"),
             ("(512, 512)", "(2**31, 2)"), ("<f8", "|O"), ("<f8", "<U4"), ("<f8", "<c16"),
             ("'shape'", "'shap'"),
             ("False", "True"), ("(512, 512)", "(" * 50), ("<f8", "<f8', 'x': ('"), ("}", "")]
    old, new = rng.choice(edits)
    header = header.replace(old, new, 1)
    raw = header.encode("latin-1")
    pad = (64 - (10 + len(raw) + 1) % 64) % 64
    raw = raw + b" " * pad + b"\n"
    return f"npy header {old!r}->{new!r}", data[:8] + struct.pack("<H", len(raw)) + raw + data[end + 1:]


@functools.lru_cache(maxsize=32)
def _seed_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def make_case(index: int, rng: random.Random, shared: Path, folder: Path, *, fmt: str | None = None) -> Case:
    """Write one mutated copy of a seed (with its companions) into its own sub-folder of ``folder``."""
    seeds = [s for s in SEEDS if fmt is None or s[0] == fmt]
    label, rel, companions, dims = rng.choice(seeds)
    src = shared / rel
    case_dir = folder / f"c{index:06d}"
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    files = {src.name: _seed_bytes(str(src))}
    for name in companions:
        files[name] = _seed_bytes(str(src.parent / name))
    target = src.name
    if label == "npy":
        roll = rng.random()
        if roll < 0.35:
            garbage = rng.choice(SIDECAR_GARBAGE)
            files[companions[0]] = garbage
            description = f"sidecar garbage {garbage[:24]!r}"
        elif roll < 0.55:
            description, files[src.name] = _npy_header_edit(rng, files[src.name])
        elif roll < 0.7:
            text = files[companions[0]]
            description, files[companions[0]] = mutate(rng, text, ())
            description = "sidecar " + description
        else:
            description, files[src.name] = mutate(rng, files[src.name], dims)
    else:
        victim = rng.choice(list(files)) if companions and rng.random() < 0.5 else target
        description, files[victim] = mutate(rng, files[victim], dims)
        if victim != target:
            description = f"{victim}: {description}"
        if rng.random() < 0.1:  # a second mutation on top
            more, files[target] = mutate(rng, files[target], dims)
            description += f"; {more}"
    for name, content in files.items():
        (case_dir / name).write_bytes(content)
    return Case(index, label, rel, description, case_dir / target)


# --- the driver (runs in its own process) ------------------------------------------------------------


def _vm_hwm() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _driver(memory_cap_bytes: int) -> int:
    import resource
    import warnings

    warnings.simplefilter("ignore")
    if memory_cap_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_cap_bytes, memory_cap_bytes))
    from napari_mx2_defects.io import isolation
    from napari_mx2_defects.io.formats import ReaderError, load_images

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
        except OSError:
            pass
        start = time.monotonic()
        try:
            images = load_images(request["path"])
            outcome, detail = "ok", f"{len(images)} image(s) {images[0].data.shape}"
        except ReaderError as exc:
            outcome, detail = "reader_error", str(exc)
        except BaseException as exc:  # noqa: BLE001 - this is what the fuzz run counts
            outcome, detail = "escape", f"{type(exc).__name__}: {exc}"[:500]
        seconds = time.monotonic() - start
        peak = max(_vm_hwm(), isolation.worker_peak_rss_bytes() if outcome != "escape" else 0)
        print(json.dumps({"outcome": outcome, "detail": detail, "seconds": seconds, "peak_rss_bytes": peak}),
              flush=True)
    return 0


class Harness:
    """Runs cases through a driver subprocess with a per-case time limit, restarting it after a hang."""

    def __init__(self, *, case_timeout_s: float = 15.0, reader_timeout_s: float = 3.0,
                 memory_cap_bytes: int = 4 * 2**30, blowup_bytes: int = 1 * 2**30, nice: int = 0) -> None:
        self.case_timeout_s = case_timeout_s
        self.reader_timeout_s = reader_timeout_s
        self.memory_cap_bytes = memory_cap_bytes
        self.blowup_bytes = blowup_bytes
        self.nice = nice
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def _start(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["MX2_READER_TIMEOUT_S"] = str(self.reader_timeout_s)
        env.setdefault("OMP_NUM_THREADS", "1")
        command = [sys.executable, "-m", "napari_mx2_defects.io.fuzz", "--driver", str(self.memory_cap_bytes)]
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1,
                                     preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        line = self._readline(120.0)
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError("fuzz driver did not start")

    def _readline(self, timeout: float) -> str | None:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        return self.proc.stdout.readline()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            self.proc = None

    def run(self, case: Case) -> Case:
        """Open ``case.path`` in the driver and fill in the outcome."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        start = time.monotonic()
        self.proc.stdin.write(json.dumps({"path": str(case.path)}) + "\n")
        self.proc.stdin.flush()
        line = self._readline(self.case_timeout_s)
        case.seconds = time.monotonic() - start
        if line is None:
            case.outcome, case.detail = "hang", f"no answer in {self.case_timeout_s:g} s"
            self.stop()
            self.restarts += 1
            return case
        if not line:
            code = self.proc.wait()
            case.outcome = "blowup" if code in (-9, 137) else "crash"
            case.detail = f"driver exited with {code}"
            self.stop()
            self.restarts += 1
            return case
        answer = json.loads(line)
        case.outcome, case.detail = answer["outcome"], answer["detail"]
        case.peak_rss_bytes = int(answer.get("peak_rss_bytes") or 0)
        if case.outcome == "escape" and "MemoryError" in case.detail:
            case.outcome = "blowup"
        elif case.peak_rss_bytes > self.blowup_bytes:
            case.outcome, case.detail = "blowup", f"peak {case.peak_rss_bytes / 2**30:.2f} GiB; {case.detail}"
        return case


@dataclass
class Summary:
    """Counts per outcome, per format, and the failing cases."""

    counts: Counter = field(default_factory=Counter)
    per_format: dict[str, Counter] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)
    failures: list[Case] = field(default_factory=list)
    slowest: list[tuple[float, str]] = field(default_factory=list)
    max_peak_rss_bytes: int = 0
    wall_s: float = 0.0
    restarts: int = 0

    def add(self, case: Case) -> None:
        self.counts[case.outcome] += 1
        self.per_format.setdefault(case.fmt, Counter())[case.outcome] += 1
        if case.outcome == "reader_error":
            if "took more than" in case.detail:
                self.notes["stopped by the time budget"] += 1
            elif "parser crashed" in case.detail:
                self.notes["worker crashed (clean error)"] += 1
            elif "memory" in case.detail:
                self.notes["refused: memory"] += 1
            elif "declares" in case.detail:
                self.notes["refused: declared size"] += 1
        if case.outcome not in ("ok", "reader_error"):
            self.failures.append(case)
        self.max_peak_rss_bytes = max(self.max_peak_rss_bytes, case.peak_rss_bytes)
        self.slowest.append((case.seconds, f"#{case.index} {case.fmt} {case.mutation}"))
        self.slowest = sorted(self.slowest, reverse=True)[:5]

    @property
    def bad(self) -> int:
        """Escaping exceptions, hangs, blow-ups and driver crashes."""
        return sum(n for k, n in self.counts.items() if k not in ("ok", "reader_error"))

    def as_dict(self) -> dict[str, Any]:
        return {
            "cases": sum(self.counts.values()),
            "counts": dict(self.counts),
            "per_format": {k: dict(v) for k, v in self.per_format.items()},
            "notes": dict(self.notes),
            "failures": [{"index": c.index, "fmt": c.fmt, "seed": c.seed, "mutation": c.mutation,
                          "outcome": c.outcome, "detail": c.detail[:300]} for c in self.failures[:50]],
            "slowest_s": [(round(s, 2), what) for s, what in self.slowest],
            "max_peak_rss_MiB": round(self.max_peak_rss_bytes / 2**20, 1),
            "wall_s": round(self.wall_s, 1),
            "driver_restarts": self.restarts,
        }


def case_rng(seed: int, index: int) -> random.Random:
    """The random stream of case ``index``: any case can be rebuilt alone from (seed, index)."""
    return random.Random(seed * 1_000_003 + index)


def run_fuzz(shared: Path, folder: Path, *, cases_per_format: int, seed: int = 0,
             formats: tuple[str, ...] = FORMATS, harness_options: dict | None = None, parallel: int = 1,
             progress=None, keep_failures: Path | None = None) -> Summary:
    """Run ``cases_per_format`` seeded mutations of every format; return the summary.

    Cases are interleaved across formats and spread over ``parallel`` drivers; case ``i`` is built
    from :func:`case_rng` ``(seed, i)`` whatever the driver. Each case's folder is deleted after it
    ran unless it failed and ``keep_failures`` is given (then it is moved there for inspection).
    """
    import threading

    summary = Summary()
    lock = threading.Lock()
    start = time.monotonic()
    total = cases_per_format * len(formats)
    harnesses = [Harness(**(harness_options or {})) for _ in range(max(1, parallel))]
    done = [0]

    def work(lane: int) -> None:
        harness = harnesses[lane]
        try:
            for index in range(lane, total, len(harnesses)):
                fmt = formats[index % len(formats)]
                case = make_case(index, case_rng(seed, index), shared, folder, fmt=fmt)
                harness.run(case)
                with lock:
                    summary.add(case)
                    done[0] += 1
                    if progress is not None:
                        progress(done[0], total, summary)
                if case.outcome not in ("ok", "reader_error") and keep_failures is not None:
                    keep_failures.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(case.path.parent), str(keep_failures / case.path.parent.name))
                else:
                    shutil.rmtree(case.path.parent, ignore_errors=True)
        finally:
            harness.stop()

    threads = [threading.Thread(target=work, args=(lane,), daemon=True) for lane in range(len(harnesses))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary.wall_s = time.monotonic() - start
    summary.restarts = sum(h.restarts for h in harnesses)
    return summary


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--driver":
        sys.exit(_driver(int(sys.argv[2]) if len(sys.argv) > 2 else 0))
    sys.exit("usage: python -m napari_mx2_defects.io.fuzz --driver [MEMORY_CAP_BYTES] "
             "(see scripts/fuzz_reader.py)")
