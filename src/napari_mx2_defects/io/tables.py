"""One reader for the points tables the plugin writes and reads: ``x_A, y_A`` in Å plus features.

``defects.csv`` (``segment``), ``truth.csv`` (a twin), a saved Points layer and a user's corrections
all have this shape.  ``analyze --defects``, ``finetune --labels`` and the napari Points reader all
read them here, so a table is accepted or refused the same way everywhere, with one message that
names the file (and the option it came from) and says what is wrong: not a file, too large, not a
CSV table, missing columns, a position that is not a finite number (with its line), or a class the
caller does not know.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["MAX_POINTS_CSV_BYTES", "check_points_table", "read_points_table"]

#: Largest points table read (a million defects is ~60 MB of CSV).
MAX_POINTS_CSV_BYTES = 512 * 1024**2


def _prefix(option: str, name: str) -> str:
    return f"{option} {name}" if option else name


def check_points_table(table: pd.DataFrame, name: str = "the table", *, option: str = "",
                       columns: Sequence[str] = ("x_A", "y_A"), classes: Collection[str] | None = None,
                       what: str = "a points table lists x_A, y_A (Å)") -> pd.DataFrame:
    """``table`` with finite float ``x_A``/``y_A`` (and ``defect_class`` as text), every row checked.

    Parameters
    ----------
    columns : sequence of str
        Columns that must be there (``x_A``, ``y_A`` and, for defects, ``defect_class``).
    classes : collection of str, optional
        The defect classes allowed in ``defect_class``.
    what : str
        What such a table holds, said when columns are missing.
    """
    label = _prefix(option, name)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{label}: columns {missing} are missing; {what}")
    table = table.copy()
    for col in ("x_A", "y_A"):
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise ValueError(f"{label}: {col} on line {int(bad[0]) + 2} is not a finite number (Å)")
        table[col] = values
    if "defect_class" in table:
        table["defect_class"] = table.defect_class.astype(str)
        if classes is not None:
            unknown = sorted(set(table.defect_class) - set(classes))
            if unknown:
                raise ValueError(f"{label}: unknown defect classes {unknown[:5]}; known: {', '.join(classes)}")
    return table.reset_index(drop=True)


def read_points_table(path: str | Path, *, option: str = "", columns: Sequence[str] = ("x_A", "y_A"),
                      classes: Collection[str] | None = None,
                      what: str = "a points table lists x_A, y_A (Å)") -> pd.DataFrame:
    """Read and check one points table (see :func:`check_points_table`); every problem a one-line ValueError."""
    path = Path(path)
    label = _prefix(option, path.name)
    if not path.is_file():
        raise ValueError(f"{_prefix(option, str(path))}: no such file")
    if path.stat().st_size > MAX_POINTS_CSV_BYTES:
        raise ValueError(f"{label}: larger than {MAX_POINTS_CSV_BYTES // 1024**2} MiB; not a points table")
    try:
        table = pd.read_csv(path, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = " ".join(str(exc).split())[:100]
        raise ValueError(f"{label}: not a CSV table ({reason})") from None
    return check_points_table(table, path.name, option=option, columns=columns, classes=classes, what=what)
