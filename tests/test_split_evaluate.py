import numpy as np
import pandas as pd
import pytest

from tumormap.evaluate import regression_metrics
from tumormap.split import split_samples


def test_split_keeps_patients_whole_and_is_deterministic():
    samples = pd.DataFrame({"sample": [f"s{i}" for i in range(20)], "patient": [f"p{i // 2}" for i in range(20)]})
    a = split_samples(samples, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    b = split_samples(samples, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a.groupby("patient")["split"].nunique().max() == 1
    counts = a.drop_duplicates("patient")["split"].value_counts()
    assert counts.to_dict() == {"train": 6, "val": 2, "test": 2}
    assert split_samples(samples, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=4)["split"].tolist() != a["split"].tolist()


def test_split_small_and_missing_patients():
    samples = pd.DataFrame({"sample": ["a", "b", "c"], "patient": [None, None, None]})
    out = split_samples(samples, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    assert sorted(out["split"]) == ["test", "train", "val"]
    with pytest.raises(ValueError, match="sum to 1"):
        split_samples(samples, {"train": 0.5, "val": 0.5, "test": 0.5})


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
