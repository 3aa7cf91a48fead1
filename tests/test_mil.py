"""Distribution-pooling MIL: the pooling filter, the model, and the MNIST-bag check."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tumormap.mil import DistributionPoolingMIL, distribution_pooling, resnet18_extractor, small_cnn_extractor
from tumormap.mnist_bags import load_digits, read_idx, run_mnist_bags, sample_bags, split_digits

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
IMAGES = MNIST / "t10k-images-idx3-ubyte.gz"
LABELS = MNIST / "t10k-labels-idx1-ubyte.gz"
needs_mnist = pytest.mark.skipif(not IMAGES.is_file(), reason=f"real MNIST idx files absent from {MNIST}")

BIN_POINTS = np.linspace(0, 1, 21)


def test_pooling_sums_to_one_per_feature():
    torch.manual_seed(0)
    features = torch.rand(3, 50, 7)
    pooled = distribution_pooling(features)
    assert pooled.shape == (3, 7, 21)
    assert torch.allclose(pooled.sum(-1), torch.ones(3, 7), atol=1e-6)
    assert bool((pooled >= 0).all())


@pytest.mark.parametrize("value", [0.0, 0.33, 0.5, 0.87, 1.0])
def test_constant_bag_peaks_at_nearest_bin(value):
    pooled = distribution_pooling(torch.full((1, 40, 2), value))
    nearest = int(np.argmin(np.abs(BIN_POINTS - value)))
    assert pooled[0].argmax(-1).tolist() == [nearest, nearest]


def test_two_value_bag_splits_mass_30_70():
    values = torch.tensor([0.2] * 30 + [0.8] * 70)[torch.randperm(100)]
    pooled = distribution_pooling(values.view(1, 100, 1))[0, 0].numpy()
    near_low = np.abs(BIN_POINTS - 0.2) <= 0.16
    near_high = np.abs(BIN_POINTS - 0.8) <= 0.16
    assert pooled[near_low].sum() == pytest.approx(0.3, abs=0.005)
    assert pooled[near_high].sum() == pytest.approx(0.7, abs=0.005)
    assert BIN_POINTS[pooled.argmax()] == pytest.approx(0.8)
    # two separate peaks: the density between them is a trough
    assert pooled[10] < 0.01 * pooled.max()


def test_pooling_mask_ignores_padded_instances():
    torch.manual_seed(1)
    features = torch.rand(2, 10, 4)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    padded = features.clone()
    padded[0, 6:] = 0.99  # garbage in the masked slots must not matter
    pooled = distribution_pooling(padded, mask=mask)
    assert torch.allclose(pooled[0], distribution_pooling(features[:1, :6])[0], atol=1e-6)
    assert torch.allclose(pooled[1], distribution_pooling(features[1:])[0], atol=1e-6)
    with pytest.raises(ValueError, match="no instance"):
        distribution_pooling(features, mask=torch.zeros(2, 10, dtype=torch.bool))


def _tiny_model():
    torch.manual_seed(0)
    return DistributionPoolingMIL(small_cnn_extractor(16), n_features=16).eval()


def test_model_is_permutation_invariant_and_in_unit_range():
    model = _tiny_model()
    bags = torch.rand(2, 12, 1, 28, 28)
    with torch.no_grad():
        out = model(bags)
        shuffled = model(bags[:, torch.randperm(12)])
    assert out.shape == (2,)
    assert torch.allclose(out, shuffled, atol=1e-6)
    # and it is not constant: different bags give different ratios
    assert abs(float(out[0] - out[1])) > 0


def test_model_mask_equals_shorter_bag():
    model = _tiny_model()
    bags = torch.rand(1, 9, 1, 28, 28)
    padded = torch.cat([bags, torch.rand(1, 3, 1, 28, 28)], dim=1)
    mask = torch.tensor([[True] * 9 + [False] * 3])
    with torch.no_grad():
        assert torch.allclose(model(padded, mask), model(bags), atol=1e-6)


def test_untrained_mnist_features_spread_over_the_unit_interval():
    torch.manual_seed(0)
    with torch.no_grad():
        feats = torch.sigmoid(small_cnn_extractor(16).train()(torch.rand(64, 1, 28, 28)))
    assert float(feats.std(dim=0).mean()) > 0.1


def test_gradients_reach_extractor_and_regressor():
    model = _tiny_model().train()
    loss = (model(torch.rand(2, 8, 1, 28, 28)) - torch.tensor([0.2, 0.9])).abs().mean()
    loss.backward()
    for name in ("extractor.0.weight", "extractor.7.weight", "regressor.0.weight", "regressor.6.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_resnet18_extractor_channels_and_local_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), weights)

    rgb = resnet18_extractor(3, 32, weights).eval()
    assert torch.equal(rgb.conv1.weight, reference.conv1.weight)
    assert torch.equal(rgb.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    four = resnet18_extractor(4, 32, weights).eval()
    assert torch.equal(four.conv1.weight[:, :3], reference.conv1.weight)  # RGB filters kept
    assert torch.allclose(four.conv1.weight[:, 3:], reference.conv1.weight.mean(dim=1, keepdim=True))
    with torch.no_grad():
        assert rgb(torch.rand(2, 3, 32, 32)).shape == (2, 32)
        assert four(torch.rand(2, 4, 32, 32)).shape == (2, 32)
        assert resnet18_extractor(1, 8)(torch.rand(2, 1, 32, 32)).shape == (2, 8)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        resnet18_extractor(3, 32, tmp_path / "missing.pt")


@pytest.mark.parametrize("make, shape", [(lambda: resnet18_extractor(3, 16), (64, 3, 32, 32))])
def test_calibrated_untrained_features_spread_over_the_unit_interval(make, shape):
    # features squashed into one kernel width would make every bag's density the same
    torch.manual_seed(0)
    model = DistributionPoolingMIL(make(), n_features=16)
    x = torch.rand(shape)
    with torch.no_grad():
        before = model.instance_features(x)
        model.calibrate(x)
        feats = model.train().instance_features(x)
    assert float(before.std(dim=0).mean()) < 0.1  # uncalibrated: all in the middle bins
    assert float(feats.std(dim=0).mean()) > 0.1


@pytest.mark.parametrize("make, shape", [(lambda: resnet18_extractor(3, 16), (3, 32, 32))])
def test_a_bags_features_do_not_depend_on_its_batch_mates_in_training(make, shape):
    """Oner et al.'s model pools each bag on its own; a BatchNorm over the batch would make a
    bag's features (and its predicted ratio) move with whichever bags share its batch."""
    torch.manual_seed(0)
    model = DistributionPoolingMIL(make(), n_features=16, dropout=0.0)
    bag = torch.rand(1, 12, *shape)
    mate_a, mate_b = torch.rand(1, 12, *shape), torch.rand(1, 12, *shape) * 0.2 + 0.8
    model.calibrate(torch.cat([bag, mate_a, mate_b]).flatten(0, 1))
    model.train()
    with torch.no_grad():
        with_a = model.features(torch.cat([bag, mate_a]))[0]
        with_b = model.features(torch.cat([bag, mate_b]))[0]
        alone = model.features(bag)[0]
    torch.testing.assert_close(with_a, with_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(with_a, alone, rtol=1e-5, atol=1e-5)


def test_pooling_runs_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    model = _tiny_model()
    features = torch.rand(2, 50, 16)
    with torch.no_grad():
        exact = model.ratio_from_features(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            under_autocast = model.ratio_from_features(features.bfloat16())
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, exact, atol=5e-3, rtol=0)  # only the bf16 input rounding


def test_read_idx_rejects_a_non_idx_file(tmp_path):
    bad = tmp_path / "bad-idx.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"\x00\x00\x09\x99" + bytes(20))
    with pytest.raises(ValueError, match="bad-idx.gz.*magic"):
        read_idx(bad)


@needs_mnist
def test_read_real_mnist_counts():
    images, labels = read_idx(IMAGES), read_idx(LABELS)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    digits, digit_labels = load_digits(IMAGES, LABELS, (0, 7))
    assert (digit_labels == 0).sum() == 980 and (digit_labels == 7).sum() == 1028
    assert digits.shape == (2008, 1, 28, 28) and 0 <= digits.min() and digits.max() == 1.0


def test_digit_split_is_disjoint_stratified_and_deterministic():
    labels = np.array([0] * 980 + [7] * 1028)
    train, test = split_digits(labels, 0.3, seed=5)
    assert len(np.intersect1d(train, test)) == 0
    assert len(train) + len(test) == len(labels)
    assert (labels[test] == 0).sum() == 294 and (labels[test] == 7).sum() == 308
    again_train, again_test = split_digits(labels, 0.3, seed=5)
    assert np.array_equal(train, again_train) and np.array_equal(test, again_test)
    assert not np.array_equal(test, split_digits(labels, 0.3, seed=6)[1])


def test_bags_hold_the_labelled_fraction_from_their_pools_only():
    rng = np.random.default_rng(0)
    positives, negatives = np.arange(0, 300), np.arange(1000, 1400)
    bags, fractions = sample_bags(rng, positives, negatives, 500, 100)
    assert bags.shape == (500, 100)
    assert np.allclose(np.isin(bags, positives).mean(axis=1), fractions, atol=1e-6)
    assert np.isin(bags, np.concatenate([positives, negatives])).all()
    assert all(len(np.unique(bag)) == 100 for bag in bags)
    # fractions ~ U(0, 1)
    assert fractions.min() < 0.03 and fractions.max() > 0.97 and abs(fractions.mean() - 0.5) < 0.05
    with pytest.raises(ValueError, match="cannot fill"):
        sample_bags(rng, positives[:50], negatives, 1, 100)


@needs_mnist
def test_short_training_run_lowers_held_out_l1_and_writes_outputs(tmp_path):
    out = {name: tmp_path / name for name in ("metrics.json", "loss_curve.png", "model.pt", "history.csv")}
    metrics = run_mnist_bags(IMAGES, LABELS, out["metrics.json"], out["loss_curve.png"], out["model.pt"],
                             out["history.csv"], bag_size=20, train_bags_per_epoch=64, test_bags=100,
                             epochs=3, lr=2e-3, lr_schedule="constant", device="cpu", seed=0)
    assert all(path.is_file() for path in out.values())
    assert json.loads(out["metrics.json"].read_text())["test_l1"] == pytest.approx(metrics["test_l1"])
    assert len(out["history.csv"].read_text().splitlines()) == 1 + 3
    # an untrained model predicts ~0.5 for every bag (L1 ~0.25); a few steps must beat it clearly
    assert metrics["initial_test_l1"] > 0.2
    assert metrics["test_l1"] < 0.6 * metrics["initial_test_l1"]
    state = torch.load(out["model.pt"], weights_only=True)["state_dict"]
    assert "regressor.0.weight" in state
