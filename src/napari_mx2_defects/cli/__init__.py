"""The ``mx2-defects`` command line: the same functions the docks call, one module per science package.

``mx2-defects`` runs :func:`main`; :func:`build_parser` documents every command.
"""

from .main import build_parser, error_message, main

__all__ = ["build_parser", "error_message", "main"]
