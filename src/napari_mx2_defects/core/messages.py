"""One-line messages: what went wrong and, where it can, what to change.

The commands print them, the batch runner records them per file, the docks show them: one rule, so
the same error reads the same everywhere.
"""

from __future__ import annotations

__all__ = ["error_message", "one_line"]


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (runs of white space become one space), cut to ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def error_message(exc: BaseException) -> str:
    """One line saying what went wrong and, where it can, what to change."""
    if isinstance(exc, OSError) and exc.filename is not None and not str(exc).startswith(("error", "--")):
        reason = (exc.strerror or type(exc).__name__).lower()
        target = exc.filename if exc.filename2 is None else f"{exc.filename} → {exc.filename2}"
        hints = {
            PermissionError: "choose a location you can write to (or fix its permissions)",
            NotADirectoryError: "a part of the path is a file, not a folder; choose another path",
            IsADirectoryError: "that is a folder; give a file name",
            FileNotFoundError: "check the path",
        }
        hint = next((h for cls, h in hints.items() if isinstance(exc, cls)), "")
        if exc.errno == 28:  # ENOSPC
            hint = "free some disk space or choose another --out"
        return one_line(f"{target}: {reason}{'; ' + hint if hint else ''}")
    if isinstance(exc, MemoryError):
        return "not enough memory for this job; use a smaller image, --fov or --size"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing or unknown entry {text}"
    known = (ValueError, OSError, KeyError)
    if not isinstance(exc, known) or type(exc).__module__.startswith(("safetensors", "zarr", "distributed")):
        text = f"{type(exc).__name__}: {text}"
    return one_line(text)
