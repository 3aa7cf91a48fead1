import numpy as np
import pandas as pd
import pytest

from tumormap.evaluate import regression_metrics
from tumormap.split import SplitError, split_samples


FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def cohort(n: int, per_patient: int = 2) -> pd.DataFrame:
    return pd.DataFrame({"sample": [f"s{i}" for i in range(n)], "patient": [f"p{i // per_patient}" for i in range(n)]})


def test_adding_a_sample_moves_no_other_sample():
    before = split_samples(cohort(40), FRACTIONS, seed=3).set_index("sample")["split"]
    grown = pd.concat([cohort(40), pd.DataFrame({"sample": ["new1", "new2", "s40"], "patient": ["q1", "p3", "p99"]})])
    after = split_samples(grown, FRACTIONS, seed=3).set_index("sample")["split"]
    assert after.loc[before.index].equals(before)  # nobody moved
    assert after["new2"] == before["s6"]  # a new sample of a known patient joins that patient's split
    shrunk = split_samples(cohort(40).iloc[5:], FRACTIONS, seed=3).set_index("sample")["split"]
    assert shrunk.equals(before.loc[shrunk.index])  # nor does removing (or failing) one
    assert split_samples(cohort(40), FRACTIONS, seed=4)["split"].tolist() != before.sort_index().tolist()


def test_patients_never_span_two_splits_and_fractions_hold_on_a_large_cohort():
    big = split_samples(cohort(6000, per_patient=3), FRACTIONS, seed=0)
    assert big.groupby("patient")["split"].nunique().max() == 1
    share = big.drop_duplicates("patient")["split"].value_counts(normalize=True)
    for k, f in FRACTIONS.items():  # 2000 patients: binomial sd ≤ 0.011
        assert share[k] == pytest.approx(f, abs=0.035)


def test_small_cohort_with_an_empty_split_is_an_error_naming_it_unless_pinned():
    # the shipped demo's four patients under the default seed: one val, one test (README metrics)
    demo = pd.DataFrame({"sample": ["demo1", "demo2", "demo3", "demo4"], "patient": ["P1", "P2", "P3", "P4"]})
    out = split_samples(demo, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=170)
    assert out["split"].tolist() == ["val", "train", "test", "train"]
    two = pd.DataFrame({"sample": ["a", "b"], "patient": [None, None]})
    with pytest.raises(SplitError, match=r"no patient in (train|val|test).*pin samples with the sheet's `split`"):
        split_samples(two, FRACTIONS, seed=0)
    pinned = split_samples(two.assign(split=["train", "test"]), {"train": 0.8, "val": 0.0, "test": 0.2}, seed=0)
    assert pinned["split"].tolist() == ["train", "test"] and pinned["pinned"].all()
    with pytest.raises(SplitError, match="patient P: its samples are pinned to different splits"):
        split_samples(pd.DataFrame({"sample": ["a", "b"], "patient": ["P", "P"], "split": ["train", "test"]}),
                      FRACTIONS, seed=0)
    with pytest.raises(SplitError, match="sum to 1"):
        split_samples(two, {"train": 0.5, "val": 0.5, "test": 0.5})


def test_regression_metrics_known_answers():
    truth = np.array([0.0, 0.1, 0.3, 0.6, 0.9, np.nan])
    pred = np.array([0.04, 0.25, 0.3, 0.4, 0.9, 0.5])
    m = regression_metrics(truth, pred)
    err = np.array([0.04, 0.15, 0.0, 0.2, 0.0])
    assert m["n"] == 5
    assert m["mae"] == pytest.approx(err.mean())
    assert m["rmse"] == pytest.approx(np.sqrt((err ** 2).mean()))
    assert m["within_0.05"] == pytest.approx(3 / 5)
    assert m["within_0.1"] == pytest.approx(3 / 5)
    assert m["within_0.2"] == pytest.approx(1.0)
    # bins 0–0.2, 0.2–0.5, 0.5–1: truth bins 0,0,1,2,2; predicted 0,1,1,1,2
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 1]]
    assert m["bin_accuracy"] == pytest.approx(3 / 5)
    assert m["pearson_r"] == pytest.approx(np.corrcoef(truth[:5], pred[:5])[0, 1])


def test_three_bin_accuracy_is_the_heads_when_it_is_trained():
    from tumormap.evaluate import regression_metrics

    truth = [0.1, 0.1, 0.3, 0.7]
    ratio = [0.1, 0.1, 0.3, 0.7]          # the ratio alone bins perfectly
    head = [0, 2, 1, 2]                   # the head misclassifies one tile
    from_ratio = regression_metrics(truth, ratio)
    from_head = regression_metrics(truth, ratio, head)
    assert from_ratio["bin_accuracy"] == 1.0 and from_ratio["bin_source"] == "binned predicted ratio"
    assert from_head["bin_accuracy"] == 0.75 and from_head["bin_source"] == "3-bin head"
    assert from_head["confusion_matrix"][0] == [1, 0, 1]


def test_geojson_classes_follow_maps_tumor_threshold():
    import pandas as pd

    from tumormap.export import tiles_geojson

    pred = pd.DataFrame({"tile_id": [0, 1], "row": [0, 0], "col": [0, 1], "he_x": [0, 64], "he_y": [0, 0],
                         "he_extent": [64, 64], "predicted_ratio": [0.35, 0.6]})
    classes = lambda t: [f["properties"]["classification"]["name"]  # noqa: E731
                         for f in tiles_geojson(pred, sample="s", model="m", tumor_threshold=t)["features"]]
    assert classes(0.5) == ["Stroma/normal", "Tumor"]
    assert classes(0.3) == ["Tumor", "Tumor"]


def test_model_kinds_are_found_without_torch_and_an_unknown_kind_names_the_card():
    import subprocess
    import sys

    code = ("import sys; from tumormap.models import known_kinds; k = known_kinds(); "
            "assert 'torch' not in sys.modules, 'listing kinds imported torch'; print(' '.join(k))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert {"regressor", "mil"} <= set(out)
    from tumormap.models import get_kind

    with pytest.raises(ValueError, match=r"m/card.json: unknown model kind 'unet'; known kinds: .*mil.*regressor"):
        get_kind("unet", "m/card.json")
    assert get_kind("mil").kind == "mil"


def test_region_auc_scores_tiles_against_the_drawn_regions_and_the_grid_table_orders_alpha_beta(tmp_path):
    from tumormap.evaluate import alphabeta_grid_table, plot_alphabeta_grid, region_detection_metrics

    regions = pd.DataFrame({"x0": [0, 100], "y0": [0, 0], "x1": [100, 200], "y1": [100, 100],
                            "tumor_fraction": [0.9, 0.1]})
    pred = pd.DataFrame({"sample": "s", "he_x": [0, 50, 100, 150, 300], "he_y": 0, "he_extent": 50,
                         "predicted_ratio": [0.8, 0.3, 0.2, 0.1, 0.9]})  # the last tile lies in no region
    assert region_detection_metrics([pred], {"s": regions}, 0.5) == {"region_auc": 1.0, "region_auc_tiles": 4}
    swapped = pred.assign(predicted_ratio=[0.1, 0.2, 0.8, 0.3, 0.9])
    assert region_detection_metrics([swapped], {"s": regions}, 0.5)["region_auc"] == 0.0
    assert region_detection_metrics([pred], {"other": regions}, 0.5) == {}

    metrics = {"b": {"tumor_auc": 0.7}, "a": {"tumor_auc": 0.9, "region_auc": 0.95}}
    table = alphabeta_grid_table(metrics, {"b": (0.4, 0.0), "a": (0.2, 0.2)})
    assert list(table["model"]) == ["a", "b"] and table.loc[0, "region_auc"] == 0.95 and np.isnan(table.loc[1, "region_auc"])
    plot_alphabeta_grid(table, str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").stat().st_size > 0
