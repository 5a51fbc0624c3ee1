"""Defects as objects: a contour and a bounding box per defect, and per cluster of adjacent defects.

A class map (the model's Labels, or a twin's ground truth) is turned into objects, so that clusters
and extended defects (a line of chalcogen vacancies, a pore's rim) are counted as objects, as Yang et
al. and Paduri et al. report them.  One *defect* object is one connected region of one class
(skimage's connected-component labelling: neighbouring pixels of the same value, 4-connected as the
defects table counts them); a
*cluster* is a group of at least two defect objects whose regions come within
:data:`CLUSTER_GAP_A` of each other.  Contours are skimage's marching squares at the half level of
each object's mask, so they run on the pixel edge of the region.

Everything is in Å from the image origin, x to the right and y down (the pixel centre (row i,
column j) is at x = j · pixel, y = i · pixel), as the defects table and the site analysis measure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.measure import find_contours, label, regionprops

from ..core.classes import CLASS_NAMES

__all__ = ["CLUSTER_GAP_A", "OBJECT_COLUMNS", "OBJECT_FILES", "DefectObjects", "defect_objects"]

#: Defect regions closer than this (Å, edge to edge) belong to one cluster. The ground-truth disc of
#: a defect has radius 0.95 Å; on MoS2 (a = 3.16 Å) neighbouring M and X sites (a/√3 = 1.83 Å) touch,
#: neighbouring sites of one sublattice (a) leave a gap of 1.26 Å, second M–X neighbours (2a/√3 = 3.65 Å)
#: 1.75 Å. 1.5 Å joins the first two and not the third; the gap is measured by growing each region by
#: half of it on the pixel grid, so it holds to about one pixel.
CLUSTER_GAP_A = 1.5
#: The columns of the objects table (``defect_objects.csv``).
OBJECT_COLUMNS = [
    "object_id",
    "kind",
    "defect_class",
    "cluster_id",
    "n_defects",
    "area_A2",
    "x_A",
    "y_A",
    "x_min_A",
    "y_min_A",
    "x_max_A",
    "y_max_A",
]
#: What :meth:`DefectObjects.save` writes.
OBJECT_FILES = ["defect_objects.csv", "defect_objects.geojson"]


@dataclass
class DefectObjects:
    """Defect and cluster objects of one class map.

    Attributes
    ----------
    table : DataFrame
        One row per object (:data:`OBJECT_COLUMNS`): ``kind`` is ``defect`` or ``cluster``; a
        defect's ``cluster_id`` is its cluster's ``object_id`` (−1 when alone); a cluster's
        ``defect_class`` lists its members' classes (``V_X+V_XX``) and ``n_defects`` counts them.
    contours_A : list of (n, 2) arrays
        The outline of each object, (x, y) in Å, closed (first vertex repeated last), in table order.
    pixel_size_A : float
    """

    table: pd.DataFrame
    contours_A: list[np.ndarray]
    pixel_size_A: float

    def geojson(self) -> dict:
        """A GeoJSON FeatureCollection: one Polygon per object (coordinates x, y in Å) with the table's
        row as properties. The coordinates are not geographic: ``units`` says so."""
        features = []
        for row, ring in zip(self.table.to_dict("records"), self.contours_A):
            properties = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 4).tolist()]},
                    "properties": properties,
                }
            )
        return {
            "type": "FeatureCollection",
            "units": "angstrom",
            "axes": "x right, y down, from the image origin",
            "pixel_size_A": self.pixel_size_A,
            "features": features,
        }

    def save(self, out_dir: str | Path, overwrite: bool = False) -> list[Path]:
        """Write ``defect_objects.csv`` and ``defect_objects.geojson`` into ``out_dir``, together
        (:class:`~..io.atomic.StagedOutput`); existing files are kept unless ``overwrite``."""
        from ..io.atomic import StagedOutput

        with StagedOutput(out_dir, OBJECT_FILES, overwrite=overwrite) as staging:
            self.write(staging)
        return [Path(out_dir) / n for n in OBJECT_FILES]

    def write(self, folder: Path) -> None:
        """Write both files into ``folder`` (a staging folder: no checks, no atomicity)."""
        self.table.to_csv(Path(folder) / OBJECT_FILES[0], index=False)
        (Path(folder) / OBJECT_FILES[1]).write_text(json.dumps(self.geojson()))

    def counts(self) -> dict[str, int]:
        """Objects per kind: defects, clusters, and defects that sit in a cluster."""
        kinds = self.table.kind
        return {
            "defects": int((kinds == "defect").sum()),
            "clusters": int((kinds == "cluster").sum()),
            "clustered defects": int(((kinds == "defect") & (self.table.cluster_id >= 0)).sum()),
        }


def _outline(mask: np.ndarray, top: int, left: int, pixel_size_A: float) -> np.ndarray:
    """The longest half-level contour of a (cropped) mask, as closed (x, y) Å vertices."""
    padded = np.pad(mask.astype(float), 1)
    contours = find_contours(padded, 0.5)
    ring = max(contours, key=len)  # (row, col) in the padded crop; the longest is the outer boundary
    xy = np.column_stack([ring[:, 1] - 1 + left, ring[:, 0] - 1 + top]) * pixel_size_A
    return xy if np.allclose(xy[0], xy[-1]) else np.vstack([xy, xy[:1]])


def _box(bbox, pixel_size_A: float) -> tuple[float, float, float, float]:
    """x_min, y_min, x_max, y_max (Å) of a regionprops bbox: the outer pixel edges."""
    r0, c0, r1, c1 = bbox
    return (
        (c0 - 0.5) * pixel_size_A,
        (r0 - 0.5) * pixel_size_A,
        (c1 - 0.5) * pixel_size_A,
        (r1 - 0.5) * pixel_size_A,
    )


def defect_objects(
    labels: np.ndarray, pixel_size_A: float, cluster_gap_A: float = CLUSTER_GAP_A, min_area_A2: float = 0.6
) -> DefectObjects:
    """Contours, boxes and clusters of the defect regions of a class map.

    Parameters
    ----------
    labels : 2-D integer array
        Class id per pixel (0 = lattice), e.g. :attr:`~..learn.inference.Segmentation.labels`.
    pixel_size_A : float
    cluster_gap_A : float
        Regions closer than this (edge to edge, Å) form one cluster.
    min_area_A2 : float
        Smaller regions are speckle and are left out (the defects table uses the same 0.6 Å²).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"expected a 2-D integer class map, got {labels.dtype} of shape {labels.shape}")
    if not pixel_size_A or not np.isfinite(pixel_size_A) or pixel_size_A <= 0:
        raise ValueError(f"pixel size must be a positive number of Å, got {pixel_size_A!r}")
    unknown = sorted(set(np.unique(labels).tolist()) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(
            f"the class map holds ids {unknown[:5]} that are no defect class (0–{max(CLASS_NAMES)})"
        )
    regions = label(labels, background=0, connectivity=1)  # 4-connected, as learn.inference counts defects
    props = [p for p in regionprops(regions) if p.area * pixel_size_A**2 >= min_area_A2]
    kept = np.zeros(regions.max() + 1, bool)
    kept[[p.label for p in props]] = True
    defect_mask = kept[regions]
    # clusters: the defect mask grown by half the gap on every side joins regions closer than the gap
    radius_px = 0.5 * cluster_gap_A / pixel_size_A
    r = int(np.ceil(radius_px))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = xx**2 + yy**2 <= radius_px**2 + 1e-9
    grown = ndimage.binary_dilation(defect_mask, structure=disc) if r else defect_mask
    groups, _ = ndimage.label(grown, structure=np.ones((3, 3), bool))
    rows, contours = [], []
    group_of = []
    for p in props:
        top, left = p.bbox[0], p.bbox[1]
        cid = int(labels[p.coords[0, 0], p.coords[0, 1]])
        box = _box(p.bbox, pixel_size_A)
        rows.append(
            {
                "kind": "defect",
                "defect_class": CLASS_NAMES[cid],
                "n_defects": 1,
                "area_A2": float(p.area * pixel_size_A**2),
                "x_A": float(p.centroid[1] * pixel_size_A),
                "y_A": float(p.centroid[0] * pixel_size_A),
                "x_min_A": box[0],
                "y_min_A": box[1],
                "x_max_A": box[2],
                "y_max_A": box[3],
            }
        )
        contours.append(_outline(p.image, top, left, pixel_size_A))
        group_of.append(int(groups[p.coords[0, 0], p.coords[0, 1]]))
    group_of = np.asarray(group_of, int)
    cluster_id = np.full(len(rows), -1)
    next_id = len(rows)
    for g in np.unique(group_of):
        members = np.flatnonzero(group_of == g)
        if len(members) < 2:
            continue
        cluster_id[members] = next_id
        next_id += 1
        # the cluster's outline: its members' pixels closed over the gaps that joined them
        region = groups == g
        closed = ndimage.binary_erosion(region, structure=disc, border_value=1) | (defect_mask & region)
        (sl,) = ndimage.find_objects(closed.astype(np.uint8))
        box = _box((sl[0].start, sl[1].start, sl[0].stop, sl[1].stop), pixel_size_A)
        areas = np.array([rows[m]["area_A2"] for m in members])
        cx = np.array([rows[m]["x_A"] for m in members])
        cy = np.array([rows[m]["y_A"] for m in members])
        rows.append(
            {
                "kind": "cluster",
                "defect_class": "+".join(sorted({rows[m]["defect_class"] for m in members})),
                "n_defects": int(len(members)),
                "area_A2": float(areas.sum()),
                "x_A": float(np.average(cx, weights=areas)),
                "y_A": float(np.average(cy, weights=areas)),
                "x_min_A": box[0],
                "y_min_A": box[1],
                "x_max_A": box[2],
                "y_max_A": box[3],
            }
        )
        contours.append(_outline(closed[sl], sl[0].start, sl[1].start, pixel_size_A))
    table = pd.DataFrame(rows, columns=[c for c in OBJECT_COLUMNS if c not in ("object_id", "cluster_id")])
    table.insert(0, "object_id", np.arange(len(table)))
    table.insert(3, "cluster_id", np.concatenate([cluster_id, np.full(len(table) - len(cluster_id), -1)]))
    return DefectObjects(table=table[OBJECT_COLUMNS], contours_A=contours, pixel_size_A=float(pixel_size_A))
