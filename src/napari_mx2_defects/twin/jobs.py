"""The job protocol, re-exported from :mod:`..core.jobs` (where every layer takes it from)."""

from ..core.jobs import CancelFn, Cancelled, ProgressFn, never, no_progress

__all__ = ["CancelFn", "Cancelled", "ProgressFn", "never", "no_progress"]
