"""Point annotations (seed 002): QuPath/CSV points, probability maps, the detection matcher, the
negative-feed set and the rare hinge loss, on known values."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from tumormap.points import (PointFileError, match_points, negative_feed, points_geojson, probability_map,
                             read_points, tile_point_maps)


def test_probability_map_reproduces_the_papers_figure_2():
    """e^(−d) around a labelled pixel: 1.00, then 0.37 (d = 1), 0.24 (√2), 0.14 (2), 0.11 (√5)."""
    m = probability_map([(3, 1)], (3, 7), kind="exponential", scale=1.0)
    figure = [[0.11, 0.24, 0.37, 0.24, 0.11],   # the figure's 5 × 3 core, to its 2 decimals
              [0.14, 0.37, 1.00, 0.37, 0.14],
              [0.11, 0.24, 0.37, 0.24, 0.11]]
    assert np.allclose(np.round(m[:, 1:6].astype(float), 2), figure, atol=1e-9, rtol=0)
    assert m[1, 3] == 1.0 and math.isclose(m[1, 4], math.exp(-1), rel_tol=1e-6)
    assert math.isclose(m[0, 2], math.exp(-math.sqrt(2)), rel_tol=1e-6)
    # Gaussian of the distance in µm: σ = 4 µm at 2 µm per pixel → 2 px = 4 µm away: e^(−1/2)
    g = probability_map([(5, 5)], (11, 11), px_size=2.0, kind="gaussian", scale=4.0)
    assert math.isclose(g[5, 7], math.exp(-0.5), rel_tol=1e-6) and math.isclose(g[5, 5], 1.0)
    # two points: the larger value wins
    two = probability_map([(0, 0), (2, 0)], (1, 3), kind="exponential", scale=1.0)
    assert np.allclose(two, [[1.0, math.exp(-1), 1.0]])


def test_points_label_the_tiles_next_to_them():
    tiles = pd.DataFrame({"tile_id": [0, 1, 2], "he_x": [0, 256, 1024], "he_y": [0, 0, 0], "he_extent": [256] * 3,
                          "he_mpp": [0.5] * 3})
    points = pd.DataFrame({"x": [250.0], "y": [130.0], "class": ["tumor"]})   # 3 µm from tile 1's edge
    table, maps = tile_point_maps(points, tiles, out_px=64, kind="gaussian", scale_um=8.0, threshold=0.5)
    assert table["n_points"].tolist() == [1, 0, 0]
    assert table["label"].tolist() == [True, True, False] and table.loc[2, "max_probability"] < 1e-6
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float16
    y, x = np.unravel_index(np.argmax(maps[0].astype(float)), (64, 64))
    assert (y, x) == (32, 62)  # level-0 (250, 130) at 4 level-0 px per map pixel (centres at 4i + 2)
    # tile 1's nearest map pixel centre is level-0 x 258: 8 px = 4 µm away, σ = 8 µm
    assert math.isclose(table.loc[1, "max_probability"], math.exp(-(4.0 ** 2) / (2 * 8.0 ** 2)), rel_tol=1e-3)


def test_matcher_on_known_true_and_false_positives():
    truth = [(0, 0), (10, 0), (20, 0), (100, 100)]
    detected = [(1, 0), (10, 3), (21, 1), (50, 50), (0.5, 0.5)]   # 3 within 4 of a truth; a far one; a duplicate
    m = match_points(detected, truth, tolerance=4)
    assert (m["tp"], m["fp"], m["fn"]) == (3, 2, 1)
    assert math.isclose(m["precision"], 3 / 5) and math.isclose(m["recall"], 3 / 4)
    assert math.isclose(m["f1"], 2 * 3 / (2 * 3 + 2 + 1))
    # one-to-one: the best assignment, not the greedy nearest (d0 is nearest to t0 but needed for t1)
    m = match_points([(3, 0), (0, 0)], [(0, 0), (6, 0)], tolerance=3.5)
    assert m["tp"] == 2
    assert match_points([], truth, 4)["fn"] == 4 and math.isnan(match_points([], [], 4)["f1"])


def test_qupath_point_geojson_round_trip_and_bad_files(tmp_path):
    points = pd.DataFrame({"x": [10.5, 2000.25, 33.0], "y": [7.0, 1500.5, 99.75], "class": ["Tumor", "Other", ""]})
    path = tmp_path / "points.geojson"
    path.write_text(json.dumps(points_geojson(points)))
    back = read_points(path)
    pd.testing.assert_frame_equal(back, points)
    # QuPath's own shapes: a MultiPoint per class, polygons mixed in (skipped), classification as a dict
    qupath = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
         "properties": {}}]}
    path.write_text(json.dumps(qupath))
    assert read_points(path).values.tolist() == [[1.0, 2.0, "Tumor"], [3.0, 4.0, "Tumor"]]
    csv = tmp_path / "points.csv"
    csv.write_text("x,y,class\n1,2,mitosis\n3.5,4,\n")
    assert read_points(csv).values.tolist() == [[1.0, 2.0, "mitosis"], [3.5, 4.0, ""]]
    for name, text, reason in (("a.geojson", "{not json", "not valid JSON"),
                               ("b.geojson", json.dumps({"type": "FeatureCollection", "features": [
                                   {"type": "Feature", "geometry": {"type": "Point", "coordinates": ["x", 1]}}]}),
                                "not \\[x, y\\]"),
                               ("c.geojson", json.dumps(qupath["features"][1:]), "no Point or MultiPoint"),
                               ("d.csv", "a,b\n1,2\n", "missing column"),
                               ("e.csv", "x,y\n1,oops\n", "row 2: x/y is not a number"),
                               ("f.xml", "<x/>", "unknown point file type")):
        bad = tmp_path / name
        bad.write_text(text)
        with pytest.raises(PointFileError, match=f"{name}.*{reason}"):
            read_points(bad)


def test_negative_feed_holds_the_misclassified_and_the_requested_share_of_correct():
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    predicted = np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 1])   # 1 and 8 misclassified, 8 correct
    feed = negative_feed(predicted, labels, correct_fraction=0.25, seed=3)
    assert {1, 8} <= set(feed) and len(feed) == 2 + 2 and len(set(feed)) == len(feed)
    assert all(predicted[i] == labels[i] for i in set(feed) - {1, 8})
    assert negative_feed(predicted, labels, 0.0).tolist() == [1, 8]
    assert len(negative_feed(predicted, labels, 1.0)) == 10
    with pytest.raises(ValueError, match="not in"):
        negative_feed(predicted, labels, 1.5)


def test_rare_hinge_loss_on_known_values():
    torch = pytest.importorskip("torch")
    from tumormap.models.losses import rare_hinge_loss

    score = torch.tensor([0.9, 0.2, 0.2, 0.9, 0.5])
    label = torch.tensor([1, 1, 0, 0, 1])
    got = rare_hinge_loss(score, label, a=2.0, margin=1.0)
    s_y = torch.tensor([0.9, 0.2, 0.8, 0.1, 0.5])
    expected = torch.clamp(2 - 2 * s_y, min=0) * torch.exp(2.0 * label.float())
    assert torch.allclose(got, expected)
    assert math.isclose(got[1].item(), 1.6 * math.exp(2), rel_tol=1e-6)     # a missed positive weighs e^a
    assert math.isclose(got[3].item(), 1.8, rel_tol=1e-6)                   # a false positive does not
    assert rare_hinge_loss(torch.tensor([0.9]), torch.tensor([1]), a=4.0, margin=0.0).item() == 0.0  # beyond margin
    assert torch.allclose(rare_hinge_loss(score, label, a=0.0), torch.clamp(2 - 2 * s_y, min=0))
