"""``python -m napari_mx2_defects.cli``: the same as ``mx2-defects``."""

import sys

from .main import main

if __name__ == "__main__":  # pragma: no cover
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # a Ctrl-C while the interpreter is shutting down
        print("interrupted", file=sys.stderr)
        sys.exit(130)
