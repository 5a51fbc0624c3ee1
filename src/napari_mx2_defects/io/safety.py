"""Cheap checks a reader makes before it trusts a file: what it is, how big it is, what it declares.

Every check raises :class:`ReaderError` with one line naming the image file and saying what to do.
They run before any allocation or vendor parsing, so a FIFO, a character device, a directory, or a
header declaring 50000 × 50000 pixels in a 167 KB file is refused at once instead of blocking or
allocating gigabytes.
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

__all__ = [
    "ReaderError",
    "available_memory_bytes",
    "check_allocation",
    "check_declared_size",
    "check_regular_file",
    "format_bytes",
    "one_line",
]

#: Fraction of the available memory one image may take (the caller needs room for a copy).
MEMORY_FRACTION = 0.8


class ReaderError(ValueError):
    """A file of a supported format could not be read.

    The message is one line: it names the image file and the problem, and says what to do.
    """


def one_line(text: object, limit: int = 200) -> str:
    """First line of ``text``, whitespace collapsed, at most ``limit`` characters.

    Library messages (numpy's multi-line ``.npy`` header dumps, h5py's error stacks) must not
    leak into the reader's one-line errors.
    """
    text = str(text).strip()
    line = text.splitlines()[0] if text else ""
    line = re.sub(r"\s+", " ", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def format_bytes(n: float) -> str:
    """``n`` bytes as a short human string (``'4.7 GB'``)."""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"  # pragma: no cover


def check_regular_file(path: Path, *, image: Path | None = None, role: str = "") -> os.stat_result:
    """Refuse anything that is not a non-empty, readable regular file (after following symlinks).

    Parameters
    ----------
    path : pathlib.Path
        The file to check.
    image, role : pathlib.Path, str
        When ``path`` is a companion of an image (a ``.npy`` sidecar, the ``.ser`` of an ``.emi``),
        the image and what the companion is (``"calibration sidecar"``): the message then leads
        with the image's name.

    Returns
    -------
    os.stat_result
        The file's status (size in ``st_size``).
    """
    if image is None:
        lead, subject, missing = f"{path.name}:", "the file", f"{path}: no such file; check the path."
    else:
        lead, subject = f"{image.name}: its {role} {path.name}", ""
        missing = f"{lead} does not exist; copy it next to {image.name}."
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ReaderError(missing) from None
    except OSError as exc:
        raise ReaderError(f"{lead} cannot be accessed ({one_line(exc.strerror or exc)}); check its "
                          "permissions.") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise ReaderError(f"{lead} is a folder, not an image file; open a file inside it.")
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else
                "a character device" if stat.S_ISCHR(mode) else
                "a block device" if stat.S_ISBLK(mode) else
                "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise ReaderError(f"{lead} is {kind}, not a regular file; only files saved on disk are read: copy "
                          "the data into a file first.")
    if st.st_size == 0:
        raise ReaderError(f"{lead} is empty (0 bytes); copy {subject or 'it'} again from the microscope PC.")
    if not os.access(path, os.R_OK):
        raise ReaderError(f"{lead} cannot be read (no permission); check its permissions.")
    return st


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform
        return None


def _address_space_left() -> int | None:
    """Bytes left under this process's RLIMIT_AS (None when unlimited or unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (OSError, ValueError):
        return None
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return max(0, soft - used)


def available_memory_bytes() -> int:
    """Memory an image may use now: free RAM, further limited by this process's address-space cap."""
    candidates = [v for v in (_meminfo_available(), _address_space_left()) if v is not None]
    return min(candidates) if candidates else 2**62


def check_allocation(image: Path, nbytes: float, what: str) -> None:
    """Refuse to allocate ``nbytes`` for ``what`` when it exceeds the memory available.

    Parameters
    ----------
    image : pathlib.Path
        The image file (named in the message).
    nbytes : float
        Bytes the read would allocate.
    what : str
        What would be allocated, e.g. ``"a 50000 × 50000 uint16 image"``.
    """
    available = available_memory_bytes()
    if not math.isfinite(nbytes) or nbytes > MEMORY_FRACTION * available:
        raise ReaderError(
            f"{image.name}: declares {what} ({format_bytes(nbytes)}) but only {format_bytes(available)} of "
            "memory is available; the file is corrupt, or open it on a machine with more memory."
        )


def check_declared_size(image: Path, declared_bytes: float, held_bytes: float, what: str,
                        *, where: str = "the file", factor: float = 1.0) -> None:
    """Refuse a header that declares more pixel bytes than ``where`` holds (times ``factor``).

    ``factor`` allows for formats that legitimately expand stored bytes (compression, packed
    complex data); a truncated file or a header with a huge or garbage size fails it.
    """
    if not math.isfinite(declared_bytes) or declared_bytes > factor * held_bytes:
        raise ReaderError(
            f"{image.name}: declares {what} ({format_bytes(declared_bytes)}) but {where} holds only "
            f"{format_bytes(held_bytes)}; the file is truncated or corrupt: copy it again from the "
            "microscope PC."
        )
