"""Vendor parsing in a worker process with a time budget, so a pathological file never freezes napari.

h5py can spin forever on a corrupt Velox file while ignoring Ctrl-C, and a C library may crash on
one; neither may take the viewer down. :func:`read_signals_isolated` sends the path to a
long-lived worker process (:mod:`._worker`, started once, reused for every read) and waits at most
the time budget; a worker that overruns is killed and a fresh one started for the next file.

Settings (environment variables):

``MX2_READER_TIMEOUT_S``
    Base time budget per file in seconds (default 20). Large files get an extra second per 50 MB.
``MX2_READER_MAX_MEMORY_GB``
    Memory the worker may use to parse one file (default: 1 GiB plus 16 times the file size, at
    most the free memory).
``MX2_READER_ISOLATION``
    ``process`` (default) or ``inline`` (parse in the calling process: no time budget, no
    protection; for debugging).

The worker answers with a JSON header and raw pixel bytes (no pickle). Its overhead on a warm
worker is a few milliseconds per file (see ``benchmarks/RESULTS.md``); starting it costs about one
second, paid once per session.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .safety import ReaderError, available_memory_bytes, check_allocation, format_bytes

__all__ = ["isolation_mode", "read_signals_isolated", "shutdown_worker", "time_budget_s", "worker_pid"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 20.0
#: Extra budget for large files: one second per this many bytes.
BYTES_PER_EXTRA_SECOND = 50e6
#: Starting the worker (imports of numpy, h5py, rosettasciio) may take this long on a busy machine.
STARTUP_TIMEOUT_S = 120.0
#: After a read that moved this much data, the worker is restarted to give its memory back.
RECYCLE_AFTER_BYTES = 512 * 2**20
_LENGTH_BYTES = 8
#: Worker memory allowance: this much, plus this many times the file size (see worker_memory_bytes).
WORKER_BASE_BYTES = 2**30
WORKER_BYTES_PER_FILE_BYTE = 16
_LAST_PEAK = [0]


def time_budget_s(file_bytes: int = 0) -> float:
    """Seconds a file of ``file_bytes`` may take to parse (``MX2_READER_TIMEOUT_S`` + size allowance)."""
    try:
        base = float(os.environ.get("MX2_READER_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    except ValueError:
        base = DEFAULT_TIMEOUT_S
    if not base > 0:
        base = DEFAULT_TIMEOUT_S
    return base + file_bytes / BYTES_PER_EXTRA_SECOND


def isolation_mode() -> str:
    """``"process"`` (default) or ``"inline"``, from ``MX2_READER_MAX_MEMORY_GB``
    Memory the worker may use to parse one file (default: 1 GiB plus 16 times the file size, at
    most the free memory).
``MX2_READER_ISOLATION``."""
    mode = os.environ.get("MX2_READER_ISOLATION", "process").strip().lower()
    if mode == "inline" or os.name != "posix":
        return "inline"
    return "process"


class _WorkerGone(Exception):
    """The worker died or stopped answering (the message says which)."""


class _Worker:
    """One worker process and its pipes."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["MX2_READER_PARENT_PID"] = str(os.getpid())
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        debug = bool(os.environ.get("MX2_READER_DEBUG"))
        self.owner_pid = os.getpid()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "napari_mx2_defects.io._worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if debug else subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches the caller, which then stops the worker
            close_fds=True,
        )
        self.fd = self.proc.stdout.fileno()
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        self.last_peak_rss_bytes = 0
        hello = self._read_json(time.monotonic() + STARTUP_TIMEOUT_S, "start")
        if not hello.get("ready"):
            raise _WorkerGone("the worker did not start")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def peak_rss_now(self) -> int:
        """The worker's peak resident memory so far (read before killing it)."""
        try:
            with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as fh:
                return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
        except (OSError, StopIteration, ValueError):
            return 0

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kill -9 that does not finish
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def _read_exact(self, view: memoryview, deadline: float, what: str) -> None:
        got = 0
        while got < len(view):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(what)
            if not self.poller.poll(int(min(remaining, 1.0) * 1000) + 1):  # poll: no FD_SETSIZE limit
                continue
            n = os.readv(self.fd, [view[got:]])
            if n == 0:
                code = self.proc.poll()
                if code is None:
                    try:
                        code = self.proc.wait(timeout=2)
                    except subprocess.TimeoutExpired:
                        code = None
                raise _WorkerGone(f"exit code {code}")
            got += n

    def _read_json(self, deadline: float, what: str) -> dict:
        head = bytearray(_LENGTH_BYTES)
        self._read_exact(memoryview(head), deadline, what)
        size = int.from_bytes(head, "big")
        if size > 256 * 2**20:
            raise _WorkerGone("the worker sent a malformed answer")
        body = bytearray(size)
        self._read_exact(memoryview(body), deadline, what)
        return json.loads(body)

    def request(self, path: Path, deadline: float) -> tuple[dict, Any]:
        message = json.dumps({"path": str(path), "memory_bytes": worker_memory_bytes(path),
                              "budget_s": max(0.0, deadline - time.monotonic())}) + "\n"
        try:
            self.proc.stdin.write(message.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _WorkerGone(f"the worker is gone ({exc})") from None
        header = self._read_json(deadline, "parse")
        self.last_peak_rss_bytes = int(header.get("peak_rss_bytes") or 0)
        return header, None


_LOCK = threading.RLock()
_WORKER: _Worker | None = None


def _get_worker() -> _Worker:
    global _WORKER
    if _WORKER is not None and (_WORKER.owner_pid != os.getpid() or not _WORKER.alive):
        if _WORKER.owner_pid == os.getpid():
            _WORKER.kill()
        _WORKER = None  # (a forked child never touches its parent's worker)
    if _WORKER is None:
        _WORKER = _Worker()
    return _WORKER


def shutdown_worker() -> None:
    """Stop the worker process (a new one starts with the next read)."""
    global _WORKER
    with _LOCK:
        if _WORKER is not None and _WORKER.owner_pid == os.getpid():
            _WORKER.kill()
        _WORKER = None


atexit.register(shutdown_worker)


def worker_pid() -> int | None:
    """Process id of the running worker, or None (for tests and the fuzz harness)."""
    worker = _WORKER
    return worker.proc.pid if worker is not None and worker.alive else None


def worker_peak_rss_bytes() -> int:
    """Peak resident memory of the worker during the last read (for the fuzz harness)."""
    return _WORKER.last_peak_rss_bytes if _WORKER is not None else _LAST_PEAK[0]


def worker_memory_bytes(path: Path) -> int:
    """Memory the worker may allocate while parsing ``path``: free memory, but no more than
    ``MX2_READER_MAX_MEMORY_GB`` when set, else 1 GiB plus 16 times the file's size.

    A corrupt HDF5 file can make h5py allocate without end while it spins; the cap turns that into
    a MemoryError (a clean ReaderError) instead of a machine that swaps.
    """
    try:
        file_bytes = _file_size_with_companions(path)
    except OSError:
        file_bytes = 0
    cap = WORKER_BASE_BYTES + WORKER_BYTES_PER_FILE_BYTE * file_bytes
    try:
        override = float(os.environ.get("MX2_READER_MAX_MEMORY_GB", "0"))
    except ValueError:
        override = 0.0
    if override > 0:
        cap = int(override * 1e9)
    return int(min(available_memory_bytes(), cap))


def _file_size_with_companions(path: Path) -> int:
    from .vendor import companion_files

    return path.stat().st_size + sum(p.stat().st_size for p in companion_files(path) if p.exists())


def read_signals_isolated(path: Path, file_bytes: int) -> list[dict[str, Any]]:
    """:func:`.vendor.read_signals` for ``path``, run in the worker within the time budget.

    Falls back to parsing in process (with a logged warning) when no worker can be started, e.g. in
    an embedded interpreter without a usable ``sys.executable``.

    Raises
    ------
    ReaderError
        The file's own errors, a parse that overran the budget ("took more than N s"), a worker
        that crashed on the file, or pixels that do not fit the memory available.
    """
    from .vendor import read_signals

    if isolation_mode() == "inline":
        return read_signals(path)
    budget = time_budget_s(file_bytes)
    suffix = path.suffix.lower()
    with _LOCK:
        _LAST_PEAK[0] = 0
        try:
            worker = _get_worker()
        except (OSError, _WorkerGone, TimeoutError, ValueError) as exc:
            log.warning("reader worker could not start (%s); parsing %s in process without a time budget",
                        exc, path.name)
            shutdown_worker()
            return read_signals(path)
        deadline = time.monotonic() + budget
        try:
            header, _ = worker.request(path, deadline)
            if not header.get("ok"):
                kind = header.get("kind")
                if kind == "reader":
                    raise ReaderError(header.get("message") or f"{path.name}: cannot read this file.")
                if kind == "memory" or (kind == "reader" and "more memory than" in header.get("message", "")):
                    allowed = worker_memory_bytes(path)
                    raise ReaderError(
                        f"{path.name}: parsing it needed more than the {format_bytes(allowed)} of memory "
                        "allowed for a file of this size; the file is probably corrupt (or set "
                        "MX2_READER_MAX_MEMORY_GB to allow more).")
                raise ReaderError(f"{path.name}: cannot read this {suffix} file ({header.get('type')}: "
                                  f"{header.get('message')}). It may be truncated or corrupt: copy it again "
                                  "from the microscope PC.")
            signals = header["signals"]
            total = sum(int(s["nbytes"]) for s in signals)
            try:
                check_allocation(path, total, f"{len(signals)} image(s) of {format_bytes(total)} in all")
            except ReaderError:
                shutdown_worker()  # its pixels are still in the pipe
                raise
            # moving the pixels cannot hang, but a huge file on a slow disk may take long: allow for it
            deadline = max(deadline, time.monotonic() + 10.0 + total / BYTES_PER_EXTRA_SECOND)
            for signal in signals:
                nbytes = int(signal.pop("nbytes"))
                buffer = bytearray(nbytes)
                if nbytes:
                    worker._read_exact(memoryview(buffer), deadline, "transfer")
                dtype = np.dtype(signal.pop("dtype"))
                shape = tuple(int(n) for n in signal.pop("shape"))
                signal["data"] = np.frombuffer(buffer, dtype=dtype).reshape(shape)
            if total > RECYCLE_AFTER_BYTES:
                shutdown_worker()
            return signals
        except TimeoutError:
            worker.last_peak_rss_bytes = worker.peak_rss_now()
            _LAST_PEAK[0] = worker.last_peak_rss_bytes
            shutdown_worker()
            raise ReaderError(
                f"{path.name}: reading this {suffix} file took more than {budget:.0f} s and was stopped; the "
                "file is probably corrupt: copy it again from the microscope PC (or allow more time with "
                f"MX2_READER_TIMEOUT_S={2 * budget:.0f})."
            ) from None
        except _WorkerGone as exc:
            shutdown_worker()
            raise ReaderError(
                f"{path.name}: the {suffix} parser crashed on this file ({exc}); the file is probably "
                "corrupt: copy it again from the microscope PC."
            ) from None
        except ReaderError:
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed answer: the worker's state is unknown
            shutdown_worker()
            raise ReaderError(f"{path.name}: the {suffix} parser gave a malformed answer "
                              f"({type(exc).__name__}); try again, and copy the file again if it "
                              "persists.") from None
        except BaseException:
            shutdown_worker()  # KeyboardInterrupt: stop the worker, whatever it was doing
            raise
