"""The shared vocabulary every layer imports, with no heavy dependencies (as abTEM's ``abtem/core``).

* :mod:`.classes` — defect class ids, names, meanings and colours;
* :mod:`.jobs` — the job protocol: ``progress(fraction, message)``, ``cancelled()``, :class:`~.jobs.Cancelled`;
* :mod:`.validation` — the bounds every number is checked against, and the size checks;
* :mod:`.parameters` — every user-facing parameter defined once (label, unit, bounds, default), from
  which the CLI options and the widgets' fields are generated.
"""
