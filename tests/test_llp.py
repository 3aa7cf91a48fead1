"""Learning from label proportions (Okuo et al.): intervals, the weighted focal proportion loss,
the nucleus mask, interval metrics, and a small learning run of the network on known bags."""
import math

import numpy as np
import pandas as pd
import pytest

from tumormap.proportion import (PAPER_EDGES, ablation_table, bag_ids, check_edges, check_options,
                                 check_sheet_intervals, disc_mask, interval_gammas, interval_index, interval_metrics,
                                 interval_names, midpoints, parse_interval)
from tumormap.samples import read_sample_sheet


def test_paper_intervals_midpoints_and_gammas():
    assert interval_names(PAPER_EDGES) == ["0–1 %", "1–25 %", "25–50 %", "50–75 %", "75–100 %"]
    assert np.allclose(midpoints(PAPER_EDGES), [0.005, 0.13, 0.375, 0.625, 0.875])
    # γ = 0 for the narrowest interval only ('0–1 %'), 2 elsewhere; one γ for focal; 0 for the KL loss
    assert interval_gammas(PAPER_EDGES, "weighted_focal").tolist() == [0, 2, 2, 2, 2]
    assert interval_gammas(PAPER_EDGES, "focal", 2.0).tolist() == [2] * 5
    assert interval_gammas(PAPER_EDGES, "proportion").tolist() == [0] * 5
    # edges belong to the interval above them; the last interval is closed; NaN has none
    assert interval_index([0, 0.0099, 0.01, 0.25, 0.7499, 0.75, 1.0, np.nan], PAPER_EDGES).tolist() == \
        [0, 0, 1, 2, 3, 4, 4, -1]


@pytest.mark.parametrize("text, index", [("0–1 %", 0), ("1-25%", 1), ("25 to 50 %", 2), ("0.5-0.75", 3),
                                         ("75 — 100 %", 4)])
def test_interval_labels_as_pathologists_write_them(text, index):
    assert parse_interval(text, PAPER_EDGES, "here") == index


def test_bad_interval_labels_are_refused_with_the_sheet_row_named(tmp_path):
    sheet = tmp_path / "samples.tsv"
    sheet.write_text("sample\the\tki67_interval\ns1\ta.svs\t1–25 %\ns2\tb.svs\t1-30 %\n")
    with pytest.raises(ValueError, match=r"samples\.tsv, row 3 \(sample 's2'\).*'1-30 %' is none of the configured "
                                         r"intervals \(0–1 %, 1–25 %"):
        check_sheet_intervals(read_sample_sheet(sheet), PAPER_EDGES, str(sheet))
    sheet.write_text("sample\the\tki67_interval\ns1\ta.svs\tlow\n")
    with pytest.raises(ValueError, match=r"row 2 \(sample 's1'\).*'low' is not an interval"):
        check_sheet_intervals(read_sample_sheet(sheet), PAPER_EDGES, str(sheet))
    sheet.write_text("sample\the\tki67_interval\ns1\ta.svs\t0-1%\ns2\tb.svs\t\n")
    check_sheet_intervals(read_sample_sheet(sheet), PAPER_EDGES, str(sheet))   # valid and empty cells pass
    for edges, reason in (([0, 0.5, 0.25, 1], "strictly increasing"), ([0, 1], "at least 3"),
                          ([0, 0.5, 1.5], r"within|in \[0, 1\]")):
        with pytest.raises(ValueError, match=reason):
            check_edges(edges, "train.models.llp.edges")
    with pytest.raises(ValueError, match=r"train\.models\.x\.loss: 'hinge' is not one of"):
        check_options({"loss": "hinge"}, "train.models.x")
    with pytest.raises(ValueError, match="bag: slide"):
        check_options({"labels": "sheet", "bag": "region"}, "train.models.x")


def test_mask_from_known_centroids():
    mask = disc_mask([(10.0, 10.0), (30.0, 5.0)], (40, 40), radius_px=4.0)
    assert mask[9, 9] and mask[10, 13] and not mask[10, 15]      # pixel centre (13.5, 10.5): d = 3.54 ≤ 4
    assert mask[5, 30] and not mask[20, 20] and not mask[0, 0]
    # each disc holds the pixel centres within 4 px: close to π·4² = 50.3
    assert abs(int(mask[:20, :20].sum()) - math.pi * 16) < 6 and abs(int(mask[:, 25:].sum()) - math.pi * 16) < 6
    assert not disc_mask(np.zeros((0, 2)), (8, 8), 3).any()


def test_interval_metrics_from_a_known_confusion_matrix():
    # truth 0,0,1,1,1,2 ; predicted 0,1,1,1,2,2 → confusion [[1,1,0],[0,2,1],[0,0,1]]
    m = interval_metrics([0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2], 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert np.allclose(m["recall"], [0.5, 2 / 3, 1.0]) and np.allclose(m["precision"], [1.0, 2 / 3, 0.5])
    f1 = [2 * 0.5 / 1.5, 2 / 3, 2 * 0.5 / 1.5]
    assert np.isclose(m["mF1"], np.mean(f1)) and np.isclose(m["mRecall"], (0.5 + 2 / 3 + 1) / 3)
    assert np.isclose(m["mPrecision"], (1 + 2 / 3 + 0.5) / 3) and np.isclose(m["accuracy"], 4 / 6)
    # an interval never true nor predicted is left out of the means; one predicted but never true counts 0
    m = interval_metrics([0, 0], [0, 2], 4)
    assert np.isclose(m["mRecall"], (0.5 + 0) / 2) and np.isclose(m["mF1"], (2 / 3 + 0) / 2)


def test_region_bags_follow_a_grid_from_the_slide_origin():
    tiles = pd.DataFrame({"sample": ["a"] * 4, "he_x": [0, 1000, 2048, 4000], "he_y": [0, 0, 10, 2100],
                          "he_extent": [512] * 4})
    ids = bag_ids(tiles, "region", region_um=512, mpp0=0.25)   # 2048 level-0 px squares
    assert ids.tolist() == ["a:0_0", "a:0_0", "a:1_0", "a:2_1"]
    assert bag_ids(tiles, "slide", 512, 0.25).tolist() == ["a"] * 4


def test_slide_proportion_pools_the_scores_of_all_tiles():
    from tumormap.proportion import slide_proportion

    tiles = pd.DataFrame({"positive_score": [3.0, 0.0, 1.0], "negative_score": [1.0, 4.0, 1.0]})
    assert slide_proportion(tiles, PAPER_EDGES) == {"slide_proportion": 4 / 10, "slide_interval": "25–50 %"}
    assert slide_proportion(tiles.iloc[1:2], PAPER_EDGES)["slide_interval"] == "0–1 %"


def test_ablation_table_ranks_models_by_mf1():
    metrics = {"wf": {"intervals": ["a", "b"], "truth_mF1": 0.9, "truth_mRecall": 0.9, "truth_mPrecision": 0.9,
                      "truth_mae": 0.05, "truth_recall": [1.0, 0.8], "truth_n_bags": 9},
               "prop": {"intervals": ["a", "b"], "truth_mF1": 0.5, "truth_mRecall": 0.5, "truth_mPrecision": 0.5,
                        "truth_mae": 0.1, "truth_recall": [0.0, 1.0], "truth_n_bags": 9}}
    table = ablation_table({"prop": metrics["prop"], "wf": metrics["wf"]},
                           {"prop": {"loss": "proportion"}, "wf": {"loss": "weighted_focal", "mask": "nuclei"}})
    assert table["model"].tolist() == ["wf", "prop"] and table["recall a"].tolist() == [1.0, 0.0]
    assert table["truth"].iloc[0] == "drawn regions" and table["mask"].tolist() == ["nuclei", "nuclei"]


def _regions_file(path, label_b="0-1%"):
    square = [[[0, 0], [1000, 0], [1000, 1000], [0, 1000], [0, 0]]]
    ring = [[[2000, 0], [4000, 0], [4000, 2000], [2000, 2000], [2000, 0]],
            [[2500, 500], [3500, 500], [3500, 1500], [2500, 1500], [2500, 500]]]   # with a hole
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square},
                 "properties": {"classification": {"name": "25–50 %"}}},
                {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [ring]},
                 "properties": {"classification": {"name": label_b}}},
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}}]
    path.write_text(__import__("json").dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_annotated_regions_label_the_tiles_inside_them(tmp_path):
    from tumormap.dataset import build_dataset
    from tumormap.proportion import read_interval_regions, region_of_tiles

    path = _regions_file(tmp_path / "regions.geojson")
    regions = read_interval_regions(path, PAPER_EDGES)
    assert [(r["text"], r["interval"]) for r in regions] == [("25–50 %", 2), ("0-1%", 0)]
    # tile centres: in the square, in the ring, in the ring's hole, outside everything
    tiles = pd.DataFrame({"sample": "s", "tile_id": [0, 1, 2, 3], "he_x": [100, 2100, 2900, 5000],
                          "he_y": [100, 100, 900, 100], "he_extent": [200] * 4, "he_mpp": 0.25,
                          "tissue_keep": True, "keep": True})
    assert region_of_tiles(tiles, regions).tolist() == [0, 1, -1, -1]
    with pytest.raises(ValueError, match=r"regions\.geojson, feature 1: ki67_interval '2-30 %' is none"):
        read_interval_regions(_regions_file(tmp_path / "regions.geojson", "2-30 %"), PAPER_EDGES, "row 3")
    _regions_file(tmp_path / "regions.geojson")
    tiles.to_parquet(tmp_path / "tiles.parquet")
    table = build_dataset({"s": str(tmp_path / "tiles.parquet")}, {}, {"s": "train"}, regions={"s": str(path)})
    assert table["region_id"].tolist()[:2] == ["s:r0", "s:r1"] and table["region_id"].isna().tolist()[2:] == [True] * 2
    assert table["region_interval"].tolist()[:2] == ["25–50 %", "0-1%"] and table["region_interval"].isna().sum() == 2
    torch = pytest.importorskip("torch")  # noqa: F841 - the kind imports it
    from tumormap.models.llp import LearningFromProportions

    kind = LearningFromProportions({"labels": "regions", "min_bag_tiles": 1, "mask": "none"}, "t")
    bags = kind.bags(kind.training_rows(table), None)
    assert [(b["bag"], b["interval"], b["target"], b["gamma"]) for b in bags] == [("s:r0", 2, 0.375, 2.0),
                                                                                 ("s:r1", 0, 0.005, 0.0)]


# ---------------------------------------------------------------------------- torch
torch = pytest.importorskip("torch")


def test_proportion_loss_on_known_values():
    from tumormap.models.llp import proportion_loss

    r, r_hat = 0.375, 0.5
    kl = r * math.log(r / r_hat) + (1 - r) * math.log((1 - r) / (1 - r_hat))
    assert math.isclose(proportion_loss(torch.tensor(r_hat), r, 0.0).item(), kl, rel_tol=1e-5)
    assert math.isclose(proportion_loss(torch.tensor(r_hat), r, 2.0).item(), 0.125 ** 2 * kl, rel_tol=1e-5)
    assert proportion_loss(torch.tensor(0.3), 0.3, 2.0).item() == pytest.approx(0, abs=1e-9)
    assert proportion_loss(torch.tensor(0.3), 0.3, 0.0).item() == pytest.approx(0, abs=1e-7)
    # r = 0: the KL term is −log(1 − r̂) (0·log 0 = 0), finite
    assert math.isclose(proportion_loss(torch.tensor(0.2), 0.0, 0.0).item(), -math.log(0.8), rel_tol=1e-5)


def test_weighted_focal_gives_the_narrowest_interval_larger_gradients():
    """The paper's point (Fig. 3): with γ = 2 the '0–1 %' loss is nearly flat around 3 %, so a bag
    of that interval barely pulls the estimate down; γ = 0 there gives it a real gradient."""
    from tumormap.models.llp import proportion_loss

    gammas = {loss: interval_gammas(PAPER_EDGES, loss)[0] for loss in ("weighted_focal", "focal")}
    target = midpoints(PAPER_EDGES)[0]
    for estimate in (0.02, 0.05, 0.1):
        grads = {}
        for loss, gamma in gammas.items():
            r_hat = torch.tensor(estimate, requires_grad=True)
            proportion_loss(r_hat, target, gamma).backward()
            grads[loss] = r_hat.grad.item()
        assert grads["weighted_focal"] > 0 and grads["focal"] > 0           # both pull r̂ down
        assert grads["weighted_focal"] > 20 * grads["focal"], (estimate, grads)
    # γ = 0 has a finite gradient at the target itself (no |d|^0 singularity)
    r_hat = torch.tensor(target, requires_grad=True)
    proportion_loss(r_hat, target, 0.0).backward()
    assert torch.isfinite(r_hat.grad) and abs(r_hat.grad.item()) < 1e-4


def test_masked_proportion_from_known_maps_and_mask():
    from tumormap.models.llp import STRIDE, masked_scores

    h = w = 4
    logits = torch.full((2, 2, h, w), -5.0)
    logits[:, 0, :, :2] = 5.0          # left half positive (F_p ≈ 1), right half negative (F_n ≈ 1)
    logits[:, 1, :, 2:] = 5.0
    mask = torch.zeros(2, h * STRIDE, w * STRIDE)
    mask[0, :, :STRIDE] = 1            # tile 0: cells only in the first (positive) column
    mask[1, :, 2 * STRIDE:] = 1        # tile 1: cells only in the two negative columns
    s_p, s_n = masked_scores(logits, mask)
    assert torch.allclose(s_p + s_n, torch.tensor([4.0, 8.0]))   # Σ M on the map grid
    assert s_p[0] / (s_p[0] + s_n[0]) > 0.99 and s_p[1] / (s_p[1] + s_n[1]) < 0.01
    r_bag = (s_p.sum() / (s_p + s_n).sum()).item()
    assert r_bag == pytest.approx(4 / 12, abs=0.01)               # 4 positive of 12 masked positions
    s_p, s_n = masked_scores(logits, None)                        # mask: none counts every position
    assert torch.allclose(s_p / (s_p + s_n), torch.tensor([0.5, 0.5]), atol=0.01)
    with pytest.raises(ValueError, match="multiple of"):
        masked_scores(logits, torch.ones(2, 30, 30))


def _cells(rng, n_pos, n_neg, px=32):
    """An image with ``n_pos`` dark-red and ``n_neg`` dark-blue round cells on pink, and their centroids."""
    img = np.full((px, px, 3), (235, 200, 215), np.float32)
    yy, xx = np.mgrid[:px, :px] + 0.5
    cells = []
    for colour in [(150, 30, 60)] * n_pos + [(40, 40, 150)] * n_neg:
        x, y = rng.uniform(4, px - 4, 2)
        img[(xx - x) ** 2 + (yy - y) ** 2 <= 9] = colour
        cells.append((x, y))
    return img, np.array(cells)


@pytest.mark.slow
def test_network_learns_cell_proportions_from_bag_intervals_only():
    """Bags of tiles with known counts of two cell types; the loss sees only each bag's interval
    midpoint, never a cell's class. Held-out tiles: r̂ tracks the true proportion."""
    from tumormap.models.llp import ProportionNet, masked_scores, proportion_loss

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    gammas, targets = interval_gammas(PAPER_EDGES, "weighted_focal"), midpoints(PAPER_EDGES)

    def bag(proportion, n_tiles=4):
        images, masks, pos, tot = [], [], 0, 0
        for _ in range(n_tiles):
            n = 6
            n_pos = rng.binomial(n, proportion)
            img, cells = _cells(rng, n_pos, n - n_pos)
            images.append(img)
            masks.append(disc_mask(cells, (32, 32), 3.0))
            pos, tot = pos + n_pos, tot + n
        x = torch.from_numpy((np.stack(images) / 255.0 - 0.5).transpose(0, 3, 1, 2)).float()
        return x, torch.from_numpy(np.stack(masks)).float(), pos / tot

    net = ProportionNet(3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for step in range(120):
        x, m, true = bag(rng.choice([0.0, 0.15, 0.4, 0.6, 0.9]))
        k = int(interval_index(true, PAPER_EDGES)[0])
        s_p, s_n = masked_scores(net(x), m)
        loss = proportion_loss(s_p.sum() / (s_p + s_n).sum(), targets[k], gammas[k])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    estimates, truths = [], []
    with torch.no_grad():
        for proportion in (0.0, 0.2, 0.5, 0.8, 1.0):
            x, m, true = bag(proportion, n_tiles=6)
            s_p, s_n = masked_scores(net(x), m)
            estimates.append((s_p.sum() / (s_p + s_n).sum()).item())
            truths.append(true)
    errors = np.abs(np.subtract(estimates, truths))
    assert np.mean(errors) < 0.1 and np.all(np.diff(estimates) > 0), (estimates, truths)
