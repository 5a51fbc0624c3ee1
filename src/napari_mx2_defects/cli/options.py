"""What every ``mx2-defects`` command shares: options generated from the parameters, progress, the command line.

The options of the twin, the microscope and the imperfections are generated from their one
declaration (:mod:`..core.parameters`): flag, default, help with the unit, ``type=`` from the bound
(:func:`~..core.validation.arg_type`), and ``dest`` = the parameter's science name, so
:func:`values_from_args` hands the same ``{name: value}`` mapping to the science that the docks'
generated fields give (:mod:`..widgets.fields`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import threading
from collections.abc import Iterable

from ..core.parameters import Pair, Parameter
from ..core.validation import BOUNDS, Bound, arg_type

__all__ = ["SWALLOWED_INTERRUPT", "add_parameters", "add_runtime_option", "bound_type", "command_line",
           "progress_printer", "values_from_args"]


def bound_type(key: str, option: str | None = None):
    """argparse ``type=`` of the parameter ``key`` of :data:`~..core.validation.BOUNDS`."""
    bound = BOUNDS[key] if option is None else BOUNDS[key].with_option(option)
    return arg_type(bound)


def _type(p: Parameter):
    if p.kind is str:
        return str
    return arg_type(p.bounds)


def add_parameters(parser: argparse.ArgumentParser, parameters: Iterable[Parameter | Pair]) -> None:
    """One option per parameter (two values for a :class:`~..core.parameters.Pair`)."""
    for p in parameters:
        if isinstance(p, Pair):  # each value a finite number here; the parts' bounds and order in the checks
            finite = arg_type(Bound(f"{p.flag.lstrip('-')} value", p.parts[0].unit))
            parser.add_argument(p.flag, dest=p.name, nargs=2, metavar=p.metavar, default=p.default, type=finite,
                                help=p.cli_help())
        elif p.kind is bool:
            parser.add_argument(p.flag, dest=p.name, action="store_true", help=p.cli_help())
        else:
            parser.add_argument(p.flag, dest=p.name, type=_type(p), default=p.default,
                                choices=list(p.choices) or None, help=p.cli_help(),
                                metavar=None if p.choices else p.flag.lstrip("-").upper().replace("-", "_"))


def values_from_args(args: argparse.Namespace, parameters: Iterable[Parameter | Pair]) -> dict:
    """``{name: value}`` of the parsed options of ``parameters`` (a pair as a tuple)."""
    values = {}
    for p in parameters:
        value = getattr(args, p.name)
        values[p.name] = tuple(value) if isinstance(p, Pair) and value is not None else value
    return values


#: Set when a Ctrl-C was swallowed inside a C callback (see :func:`.main._redeliver_swallowed_interrupts`).
SWALLOWED_INTERRUPT = threading.Event()


def progress_printer(quiet: bool):
    """``progress(fraction, message)`` printing ``[ 42.0 %] message`` on stderr (nothing if quiet); it raises
    a Ctrl-C that C code swallowed, at this safe point between steps."""
    def show(fraction: float, message: str) -> None:
        if SWALLOWED_INTERRUPT.is_set():
            SWALLOWED_INTERRUPT.clear()
            raise KeyboardInterrupt
        if not quiet:
            print(f"[{100 * fraction:5.1f} %] {message}", file=sys.stderr, flush=True)

    return show


def command_line() -> str:
    """The command as typed (for model cards)."""
    return "mx2-defects " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def add_runtime_option(parser) -> None:
    """``--runtime``: what runs the network (:mod:`..learn.runtime`). The names come from
    :data:`..core.parameters.RUNTIMES`: building the parser must not import the learning package,
    whose guard against triton in GUI processes has to run after napari is imported."""
    from ..core.parameters import RUNTIMES

    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="what runs the network: auto (OpenVINO on the CPU, PyTorch on a GPU), torch, "
                             "onnx (ONNX Runtime fp32), onnx-int8, openvino (bf16 where the CPU has it) or "
                             "openvino-int8")
