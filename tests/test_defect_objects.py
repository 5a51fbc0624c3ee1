"""Defects as objects (issue 14, item 6): contours, boxes and clusters, the same from API, command and dock."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from napari_mx2_defects.analysis.objects import CLUSTER_GAP_A, defect_objects
from napari_mx2_defects.twin.api import DEFECT_RADIUS_A, TwinRequest, simulate_twin
from napari_mx2_defects.twin.imperfections import Imperfections


@pytest.fixture(scope="module")
def crowded_twin():
    """A 100 Å MoS2 twin with enough defects that some sit on neighbouring sites."""
    return simulate_twin(
        TwinRequest(
            material="MoS2",
            defects="V_X=40,V_XX=12,V_M=8",
            fov_A=100,
            pixel_size_A=0.1,
            seed=3,
            imperfections=Imperfections(dose_e_per_A2=1e6),
        )
    )


def _truth_clusters(truth: pd.DataFrame) -> list[set[int]]:
    """Clusters from the truth positions alone, by a graph rule independent of the image morphology: two
    defects join when their ground-truth discs come within the cluster gap (centres < 2 r + gap)."""
    xy = truth[["x_A", "y_A"]].to_numpy()
    pairs = cKDTree(xy).query_pairs(2 * DEFECT_RADIUS_A + CLUSTER_GAP_A, output_type="ndarray")
    n, group = connected_components(_adjacency(len(xy), pairs), directed=False)
    return [set(np.flatnonzero(group == g)) for g in range(n) if (group == g).sum() > 1]


def _adjacency(n: int, pairs: np.ndarray):
    from scipy.sparse import coo_matrix

    return coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))


def test_objects_of_a_twin_match_its_truth(crowded_twin):
    twin = crowded_twin
    pixel = float(twin.pixel_size_A[0])
    objects = defect_objects(twin.labels, pixel)
    table = objects.table
    defects = table[table.kind == "defect"]
    truth = twin.truth_table().reset_index(drop=True)
    width, height = twin.extent_xy_A
    inner = truth[
        (truth[["x_A", "y_A"]].min(axis=1) > 2) & (truth.x_A < width - 2) & (truth.y_A < height - 2)
    ]
    # every interior defect is one object of its class, centred on it (discs cut by a neighbour's shift < 0.4 Å)
    dist, idx = cKDTree(defects[["x_A", "y_A"]].to_numpy()).query(inner[["x_A", "y_A"]].to_numpy())
    assert (dist < 0.45).all(), dist.max()
    assert (defects.defect_class.to_numpy()[idx] == inner.defect_class.to_numpy()).all()
    assert len(set(idx)) == len(inner)
    # boxes hold their contours, and each box is the disc's size
    for row, ring in zip(table.itertuples(), objects.contours_A):
        assert row.x_min_A - 1e-9 <= ring[:, 0].min() and ring[:, 0].max() <= row.x_max_A + 1e-9
        assert row.y_min_A - 1e-9 <= ring[:, 1].min() and ring[:, 1].max() <= row.y_max_A + 1e-9
        assert np.allclose(ring[0], ring[-1])
    alone = defects[(defects.cluster_id < 0) & defects.object_id.isin(idx)]
    assert ((alone.x_max_A - alone.x_min_A) - 2 * DEFECT_RADIUS_A).abs().max() < 0.25
    # clusters: the same groups as the graph rule on the truth positions (interior ones)
    expected = _truth_clusters(truth)
    assert len(expected) >= 3  # the twin does hold neighbouring defects
    clusters = table[table.kind == "cluster"]
    found = []
    for cid in clusters.object_id:
        members = defects[defects.cluster_id == cid]
        d, j = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(members[["x_A", "y_A"]].to_numpy())
        found.append(set(j[d < 0.45].tolist()))
    interior = set(inner.index)
    assert sorted(map(sorted, (c for c in expected if c <= interior))) == sorted(
        map(sorted, (c for c in found if c and c <= interior))
    )
    for cid, row in zip(clusters.object_id, clusters.itertuples()):
        assert row.n_defects == (defects.cluster_id == cid).sum() >= 2


def test_geojson_and_bad_input(crowded_twin, tmp_path):
    objects = defect_objects(crowded_twin.labels, 0.1)
    paths = objects.save(tmp_path / "out")
    collection = json.loads(paths[1].read_text())
    assert collection["type"] == "FeatureCollection" and collection["units"] == "angstrom"
    assert len(collection["features"]) == len(objects.table)
    first = collection["features"][0]
    assert first["geometry"]["type"] == "Polygon" and first["properties"]["kind"] == "defect"
    assert pd.read_csv(paths[0]).equals(objects.table)
    with pytest.raises(FileExistsError):
        objects.save(tmp_path / "out")
    with pytest.raises(ValueError, match="integer class map"):
        defect_objects(np.zeros((8, 8)), 0.1)
    with pytest.raises(ValueError, match="no defect class"):
        defect_objects(np.full((8, 8), 99), 0.1)
    with pytest.raises(ValueError, match="pixel size"):
        defect_objects(np.zeros((8, 8), int), 0.0)
    empty = defect_objects(np.zeros((8, 8), np.uint8), 0.1)
    assert empty.table.empty and empty.geojson()["features"] == []


@pytest.mark.slow
@pytest.mark.gui
def test_objects_from_dock_command_and_api_agree(make_napari_viewer, qtbot, tmp_path):
    """The *Find defects* dock's Shapes layers, ``segment --objects`` and ``api.defect_objects`` give one answer."""
    from napari_mx2_defects import api
    from napari_mx2_defects.cli import main
    from napari_mx2_defects.io.writer import write_calibrated_tiff
    from napari_mx2_defects.widgets.segment import SegmentWidget

    twin = simulate_twin(
        TwinRequest(
            material="MoS2",
            defects="V_X=10,V_XX=3,V_M=2",
            fov_A=50,
            pixel_size_A=0.1,
            seed=11,
            imperfections=Imperfections(dose_e_per_A2=1e6),
        )
    )
    path = write_calibrated_tiff(tmp_path / "twin.tif", twin.image.astype(np.float32), 0.1)
    assert main(["segment", str(path), "--objects", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "defect_objects.csv")
    seg = api.segment_image(twin.image, 0.1)
    from_api = api.defect_objects(seg.labels, 0.1).table
    pd.testing.assert_frame_equal(cli, from_api, check_dtype=False, atol=1e-9)
    assert (cli.kind == "defect").sum() >= 10

    viewer = make_napari_viewer()
    viewer.open(path, plugin="napari-mx2-defects")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.objects.value = True
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.runner.worker is None, timeout=300_000)
    qtbot.waitUntil(
        lambda: any(layer.name.endswith("defect boxes") for layer in viewer.layers), timeout=60_000
    )
    contours = viewer.layers["twin defect contours"]
    boxes = viewer.layers["twin defect boxes"]
    assert len(contours.data) == len(boxes.data) == len(cli)
    pd.testing.assert_frame_equal(contours.features.reset_index(drop=True), cli, check_dtype=False, atol=1e-9)
    assert viewer.layers.selection.active.name == "twin defect points"  # editing stays on the points
    # the box of the first object, in world coordinates, is the table's (a calibrated layer: Å)
    corners = boxes.data[0] * boxes.scale + boxes.translate
    assert corners[:, 1].min() == pytest.approx(cli.x_min_A[0]) and corners[:, 0].max() == pytest.approx(
        cli.y_max_A[0]
    )
    assert widget.export_objects_button.enabled
    written = widget.defect_objects.save(tmp_path / "dock")
    assert pd.read_csv(written[0]).equals(pd.read_csv(tmp_path / "cli" / "defect_objects.csv"))
