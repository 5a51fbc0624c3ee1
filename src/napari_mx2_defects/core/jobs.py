"""The job protocol every long computation of the twin engine follows.

A job takes ``progress(fraction, message)`` and ``cancelled() -> bool`` callables; it reports
progress between steps and raises :class:`Cancelled` when ``cancelled()`` turns true, having
written nothing.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CancelFn", "Cancelled", "ProgressFn", "check_cancelled", "never", "no_progress", "stepper"]

ProgressFn = Callable[[float, str], None]
CancelFn = Callable[[], bool]


class Cancelled(RuntimeError):
    """The user cancelled a long computation; nothing was written."""


def no_progress(fraction: float, message: str) -> None:
    """A progress callback that ignores what it is told."""
    return None


def never() -> bool:
    """A cancel callback that never cancels."""
    return False


def check_cancelled(cancelled: CancelFn, what: str) -> None:
    """Raise :class:`Cancelled` ("``what`` cancelled") if the job was cancelled: the one check every
    long job makes between its steps."""
    if cancelled():
        raise Cancelled(f"{what} cancelled")


def stepper(progress: ProgressFn, cancelled: CancelFn, what: str) -> ProgressFn:
    """``step(fraction, message)``: raise :class:`Cancelled` ("``what`` cancelled") if the job was
    cancelled, else report progress — the check between the steps of a job."""

    def step(fraction: float, message: str) -> None:
        check_cancelled(cancelled, what)
        progress(fraction, message)

    return step
