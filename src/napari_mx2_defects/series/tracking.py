"""Sites indexed through a series, and the histories of the defects on them.

:func:`index_sites` puts every frame's analysed sites on one common lattice: frame 0's sites (their fitted
lattice positions) are the reference; each frame's sites, moved back by the frame's drift, are matched to
the nearest reference site of the same sublattice within :data:`MATCH_FRACTION` of the projected M–X
distance. A reference site matched in every frame is *tracked*; counts, tracks and cross-sections are made
on the tracked sites only, so every frame is counted over the same columns.

:func:`defect_tracks` follows each defect: it appears (or is present in frame 0), changes class
(V_X → V_XX), hops to a neighbouring site of its sublattice (it leaves one site as the same class appears
on a site at most :data:`HOP_FRACTION` lattice constants away, nearest pairs first), and disappears.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["HOP_FRACTION", "MATCH_FRACTION", "TRACK_COLUMNS", "defect_tracks", "index_sites", "site_class_column"]

#: A frame's site is matched to a reference site within this fraction of the projected M–X distance a/√3.
MATCH_FRACTION = 0.4
#: A hop goes to a site of the same sublattice at most this many lattice constants away (nearest neighbours
#: of one sublattice lie a apart in projection).
HOP_FRACTION = 1.2
#: Columns of ``tracks.csv``.
TRACK_COLUMNS = ["track_id", "frame", "cumulative_dose_e_per_A2", "site", "x_A", "y_A", "sublattice",
                 "defect_class", "event", "previous_class", "previous_site"]


def site_class_column(sites: pd.DataFrame) -> str:
    """The class the analysis counts: ``reported_class`` with a model's defects, else ``defect_class``."""
    return "reported_class" if "reported_class" in sites else "defect_class"


def _positions(sites: pd.DataFrame) -> np.ndarray:
    cols = ("x_ideal_A", "y_ideal_A") if "x_ideal_A" in sites else ("x_A", "y_A")
    return sites[list(cols)].to_numpy(float)


def index_sites(frame_sites: list[pd.DataFrame], drift_xy_A: np.ndarray, a_A: float):
    """(reference sites, classes[frame, site], tracked mask) of a series' per-frame analyses.

    ``reference`` has ``site, x_A, y_A, sublattice`` (frame 0's image, Å); ``classes`` holds each reference
    site's class in each frame (``""`` intact, ``None`` where no site of that frame matched).
    """
    from scipy.spatial import cKDTree

    first = frame_sites[0]
    use = ~first.in_hole.to_numpy(bool) if "in_hole" in first else np.ones(len(first), bool)
    first = first[use & first.sublattice.isin(["M", "X"]).to_numpy()].reset_index(drop=True)
    ref_xy = _positions(first)
    ref_sub = first.sublattice.to_numpy().astype(str)
    tolerance = MATCH_FRACTION * a_A / np.sqrt(3)
    tree = cKDTree(ref_xy)
    classes = np.full((len(frame_sites), len(first)), None, dtype=object)
    for k, sites in enumerate(frame_sites):
        keep = sites.sublattice.isin(["M", "X"]).to_numpy().copy()
        if "in_hole" in sites:
            keep &= ~sites.in_hole.to_numpy(bool)
        sites = sites[keep]
        xy = _positions(sites) - np.asarray(drift_xy_A[k], float)[None, :]
        distance, nearest = tree.query(xy, distance_upper_bound=tolerance)
        ok = np.isfinite(distance)
        ok[ok] &= ref_sub[nearest[ok]] == sites.sublattice.to_numpy().astype(str)[ok]
        values = sites[site_class_column(sites)].fillna("").astype(str).to_numpy()
        # one frame site per reference site: the nearest wins
        order = np.argsort(np.where(ok, distance, np.inf), kind="stable")
        taken = np.zeros(len(first), bool)
        for i in order:
            if not ok[i]:
                break
            s = nearest[i]
            if not taken[s]:
                taken[s] = True
                classes[k, s] = values[i]
    tracked = np.all(classes != None, axis=0)  # noqa: E711 - elementwise on an object array
    reference = pd.DataFrame({"site": np.arange(len(first)), "x_A": ref_xy[:, 0], "y_A": ref_xy[:, 1],
                              "sublattice": ref_sub})
    return reference, classes, tracked


def defect_tracks(reference: pd.DataFrame, classes: np.ndarray, cumulative_dose_e_per_A2, a_A: float) -> pd.DataFrame:
    """One row per defect per frame it exists in, plus a ``disappeared`` row (class ``""``) where it ends:
    :data:`TRACK_COLUMNS`. ``classes`` holds the tracked sites only (``reference`` rows in the same order)."""
    from scipy.spatial import cKDTree

    n_frames = classes.shape[0]
    xy = reference[["x_A", "y_A"]].to_numpy(float)
    sub = reference.sublattice.to_numpy().astype(str)
    ids = reference.site.to_numpy()
    dose = np.asarray(cumulative_dose_e_per_A2, float)
    tree = cKDTree(xy)
    rows: list[tuple] = []
    track_of: dict[int, int] = {}
    next_id = 0

    def row(track, k, s, cls, event, prev_cls="", prev_site=-1):
        rows.append((track, k, dose[k], int(ids[s]), xy[s, 0], xy[s, 1], sub[s], cls, event, prev_cls,
                     int(ids[prev_site]) if prev_site >= 0 else -1))

    for s in np.flatnonzero(classes[0] != ""):
        track_of[s] = next_id
        row(next_id, 0, s, classes[0, s], "present")
        next_id += 1
    for k in range(1, n_frames):
        before, now = classes[k - 1], classes[k]
        gone = [s for s in np.flatnonzero((before != "") & (now == ""))]
        came = [s for s in np.flatnonzero((before == "") & (now != ""))]
        # hops: a defect leaves a site and the same class appears on a neighbouring site of its sublattice
        pairs = []
        if gone and came:
            for s in came:
                for t in tree.query_ball_point(xy[s], HOP_FRACTION * a_A):
                    if t in track_of and t != s and before[t] == now[s] and now[t] == "" and sub[t] == sub[s]:
                        pairs.append((float(np.hypot(*(xy[s] - xy[t]))), s, t))
        moved_from, moved_to = set(), set()
        for _, s, t in sorted(pairs):
            if s in moved_to or t in moved_from:
                continue
            moved_to.add(s)
            moved_from.add(t)
            track_of[s] = track_of.pop(t)
            row(track_of[s], k, s, now[s], "hopped", before[t], t)
        for t in gone:
            if t not in moved_from:
                row(track_of.pop(t), k, t, "", "disappeared", before[t])
        for s in came:
            if s not in moved_to:
                track_of[s] = next_id
                row(next_id, k, s, now[s], "appeared")
                next_id += 1
        for s in np.flatnonzero((before != "") & (now != "")):
            changed = before[s] != now[s]
            row(track_of[s], k, s, now[s], "changed" if changed else "", before[s] if changed else "")
    table = pd.DataFrame(rows, columns=TRACK_COLUMNS)
    return table.sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)
