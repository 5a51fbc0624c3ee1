"""The reader's worker process: parses vendor files so that the caller can abandon it.

Started by :mod:`.isolation` as ``python -m napari_mx2_defects.io._worker``. It reads one request
per line on stdin (JSON: ``{"path": ..., "memory_bytes": ...}``) and answers on its original stdout
with length-prefixed frames: a JSON header, then the raw bytes of each signal's pixels. No pickle is
used in either direction. Library output written to stdout is redirected to stderr so it cannot
corrupt the protocol. The process exits when stdin closes (its parent is gone).
"""

from __future__ import annotations

import gc
import json
import math
import os
import signal
import struct
import sys
from pathlib import Path

__all__ = ["main", "read_frame", "write_frame"]

_LENGTH = struct.Struct(">Q")


def write_frame(fd: int, payload: bytes | memoryview) -> None:
    """Write ``payload`` to ``fd`` with an 8-byte length prefix."""
    _write_all(fd, _LENGTH.pack(len(payload)))
    _write_all(fd, payload)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[: 1 << 24])
        view = view[written:]


def read_frame(stream) -> bytes | None:
    """Read one length-prefixed frame from a binary stream (None at end of stream)."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    return stream.read(size)


def _limit_address_space(memory_bytes: int | None):
    """Cap this process's address space at its current size plus ``memory_bytes`` (soft limit only)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if not memory_bytes:
        return soft
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return soft
    cap = vm + int(memory_bytes)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    if soft != resource.RLIM_INFINITY:
        cap = min(cap, soft)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):
        pass
    return soft


def _restore_address_space(soft) -> None:
    if soft is None:
        return
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (soft, resource.getrlimit(resource.RLIMIT_AS)[1]))
    except (ValueError, OSError):
        pass


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when its parent dies (it may be stuck in C code)."""
    parent = os.environ.get("MX2_READER_PARENT_PID")
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if parent and str(os.getppid()) != parent:  # the parent died before prctl took effect
        os._exit(0)


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")  # resets VmHWM, so each answer reports its own request's peak
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return 0


def main() -> int:
    """Serve read requests until stdin closes."""
    _die_with_parent()
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    import warnings

    warnings.simplefilter("ignore")
    from napari_mx2_defects.io.safety import ReaderError, one_line
    from napari_mx2_defects.io.vendor import RSCIIO_MODULES, read_signals

    import importlib

    for module in sorted(set(RSCIIO_MODULES.values())):  # warm imports, outside any time budget
        try:
            importlib.import_module(f"rsciio.{module}")
        except Exception:  # noqa: BLE001 - reported per file later
            pass
    try:
        import dask.array  # noqa: F401  - rosettasciio's lazy readers
        import h5py  # noqa: F401
    except Exception:  # noqa: BLE001
        pass
    write_frame(out_fd, json.dumps({"ready": True, "pid": os.getpid()}).encode())
    for line in sys.stdin.buffer:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        soft = _limit_address_space(request.get("memory_bytes"))
        _reset_peak_rss()
        arrays, signals = [], []
        # A hard deadline of our own: SIGALRM's default action ends the process even while C code
        # holds the GIL, so a worker whose parent could not kill it does not spin forever.
        budget = float(request.get("budget_s") or 0)
        if budget > 0 and hasattr(signal, "alarm"):
            signal.alarm(int(math.ceil(budget)) + 30)
        try:
            signals = read_signals(Path(request["path"]))
            header = {"ok": True, "signals": []}
            for item in signals:
                data = item.pop("data")
                arrays.append(data)
                header["signals"].append({**item, "dtype": data.dtype.str, "shape": list(data.shape),
                                          "nbytes": int(data.nbytes)})
        except ReaderError as exc:
            header = {"ok": False, "kind": "reader", "message": str(exc)}
        except MemoryError:
            header = {"ok": False, "kind": "memory", "message": ""}
        except RecursionError:
            header = {"ok": False, "kind": "exception", "type": "RecursionError",
                      "message": "nested too deep"}
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the parent as one line
            header = {"ok": False, "kind": "exception", "type": type(exc).__name__, "message": one_line(exc)}
        finally:
            _restore_address_space(soft)
            if hasattr(signal, "alarm"):
                signal.alarm(0)
        header["peak_rss_bytes"] = _peak_rss_bytes()
        try:
            payload = json.dumps(header, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            arrays = []
            payload = json.dumps({"ok": False, "kind": "exception", "type": type(exc).__name__,
                                  "message": "metadata could not be encoded"}).encode()
        write_frame(out_fd, payload)
        for data in arrays:
            if data.size:
                _write_all(out_fd, memoryview(data.reshape(-1).view("u1")))
        del arrays, signals
        gc.collect(1)  # lazily opened files (h5py, memmaps) are closed now, not at some later read
    return 0


if __name__ == "__main__":
    sys.exit(main())
