"""Frame series: defects through time, site tracking and beam-damage cross-sections.

:mod:`.analysis` runs a stack through the per-image pipeline (drift by phase correlation, the network and
the site physics on every frame, one common lattice); :mod:`.tracking` indexes sites and follows defects;
:mod:`.rates` gives cross-sections per process with exact intervals; :mod:`.twin` simulates series under
beam damage and drift with truth per frame. No napari here: the ``series`` command and the *Series* dock
call these functions.
"""

from .analysis import SERIES_FILES, FrameStack, SeriesResult, analyze_series, dose_from_optics, frame_stack, load_series
from .rates import BARN_A2, PROCESSES, cross_section, cross_sections, expected_counts
from .twin import SERIES_TWIN_FILES, SeriesTwin, SeriesTwinRequest, parse_damage, simulate_series

__all__ = ["BARN_A2", "PROCESSES", "SERIES_FILES", "SERIES_TWIN_FILES", "FrameStack", "SeriesResult", "SeriesTwin",
           "SeriesTwinRequest", "analyze_series", "cross_section", "cross_sections", "dose_from_optics",
           "expected_counts", "frame_stack", "load_series", "parse_damage", "simulate_series"]
