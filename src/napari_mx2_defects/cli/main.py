"""``mx2-defects``: the parser, one-line errors and Ctrl-C handling of every command.

Each science package has its command module beside this one (:mod:`.info`, :mod:`.twin`,
:mod:`.learn`, :mod:`.analysis`, :mod:`.batch`, :mod:`.series`, :mod:`.demo`); shared helpers — options generated from the
parameters, the progress printer — are in :mod:`.options`.
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..core.messages import error_message

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: argument --cs: … (see 'mx2-defects simulate --help')``."""

    def error(self, message: str):  # noqa: D401 - argparse API
        one_line = " ".join(str(message).split())
        self.exit(2, f"error: {one_line} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    parser = _Parser(
        prog="mx2-defects",
        description="Point defects in HAADF-STEM images of monolayer MX2.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    from .analysis import add_analysis_commands
    from .batch import add_batch_command
    from .demo import add_demo_command
    from .info import add_info_command
    from .learn import add_learn_commands
    from .series import add_series_command
    from .twin import add_twin_commands

    add_info_command(sub)
    add_twin_commands(sub)
    add_learn_commands(sub)
    add_analysis_commands(sub)
    add_batch_command(sub)
    add_series_command(sub)
    add_demo_command(sub)
    for command in sub.choices.values():  # --debug is also accepted after the subcommand
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
    return parser


def _ignore_sigint() -> None:
    import signal

    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):  # pragma: no cover - not the main thread
        pass


def _exit_interrupted() -> None:
    """Leave with status 130 now that the command has cleaned up after Ctrl-C.

    Outputs are committed or removed by the time the interrupt reaches :func:`main`.  The process
    then ends with ``os._exit``: CPython marks a KeyboardInterrupt that passed through some C-level
    code paths as *unhandled* even when it was caught, and then kills itself with SIGINT at exit
    (status −2 instead of 130, seen here on a busy machine), and shutting torch and dask down
    after an interrupt only delays the exit.
    """
    import os

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # pragma: no cover - a closed pipe
            pass
    os._exit(130)


def _redeliver_swallowed_interrupts() -> None:
    """A Ctrl-C that lands while C code runs a Python callback (numba's llvmlite cache hook, ctypes)
    is swallowed there: Python prints "Exception ignored … KeyboardInterrupt" and the command goes
    on.  This hook keeps that message off the terminal and records the interrupt; the command's next
    progress report raises it (:func:`.options.progress_printer`), so it stops as after any Ctrl-C."""
    from .options import SWALLOWED_INTERRUPT

    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            SWALLOWED_INTERRUPT.set()
            return
        previous(unraisable)

    sys.unraisablehook = hook


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mx2-defects``.

    Every error is one line on stderr (``error: …``, exit status 2); ``--debug`` shows the
    traceback instead.  Ctrl-C (SIGINT) prints ``interrupted`` and exits with 130; outputs are
    written atomically, so an interrupted command leaves the previous result or none.
    """
    words = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in words
    if argv is None:
        _redeliver_swallowed_interrupts()
    try:
        parser = build_parser()
        args = parser.parse_args(words)
        debug = bool(getattr(args, "debug", debug))
        status = int(args.func(args) or 0)
        if argv is None:
            # the command is complete and its outputs are in place: a Ctrl-C while the interpreter
            # shuts down (torch, dask) must not turn success into a signal death
            _ignore_sigint()
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if argv is None:
            _ignore_sigint()
            _exit_interrupted()
        return 130
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001 - every error is one line unless --debug
        if debug:
            raise
        message = error_message(exc)
        if not isinstance(exc, (ValueError, OSError, KeyError, MemoryError)):
            message += " (unexpected: run again with --debug for the traceback and report it)"
        print(f"error: {message}", file=sys.stderr)
        return 2
