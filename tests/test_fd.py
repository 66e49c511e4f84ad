"""Classifier-feature Fréchet distance, k-NN precision/recall, class helpers, and the classifier cache.

The measures are checked on features built directly (closed forms); the cache is
checked with a tiny fake data set, so the real classifier is never trained here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minigen.eval import fd

torch.set_num_threads(1)


def gaussian_feats(n, mean, cov, seed):
    rng = np.random.default_rng(seed)
    return rng.multivariate_normal(mean, cov, size=n)


def random_cov(d, seed):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fd_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert fd.frechet_distance(x, x) < 1e-8


def test_fd_matches_closed_form_between_gaussian_fits():
    """FD computed from the features equals the closed form on their sample means and covariances
    (checked against scipy's general sqrtm), and approaches the population value."""
    from scipy.linalg import sqrtm

    d = 8
    ca, cb = random_cov(d, 1), random_cov(d, 2)
    ma, mb = np.zeros(d), np.linspace(-1, 1, d)
    a, b = gaussian_feats(20_000, ma, ca, 3), gaussian_feats(20_000, mb, cb, 4)

    def closed_form(m1, c1, m2, c2):
        return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * sqrtm(c1 @ c2).real))

    sample = closed_form(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fd.frechet_distance(a, b) == pytest.approx(sample, rel=1e-8)
    assert fd.frechet_distance(a, b) == pytest.approx(closed_form(ma, ca, mb, cb), rel=0.03)
    # 1-D check by hand: N(0, 1) vs N(0, 4) -> (1 - 2)^2 = 1
    assert fd.frechet_distance(np.array([[-1.0], [1.0]]), np.array([[-2.0], [2.0]])) == pytest.approx(
        (np.sqrt(2) - np.sqrt(8)) ** 2)


def test_fd_grows_with_mean_shift_as_its_squared_norm():
    """Equal covariances: FD = ||Δμ||² exactly (the trace term vanishes)."""
    x = torch.as_tensor(gaussian_feats(400, np.zeros(6), random_cov(6, 5), 6))
    previous = -1.0
    for s in [0.5, 1.0, 2.0, 4.0]:
        shift = s * torch.linspace(-1, 1, 6, dtype=torch.float64)
        value = fd.frechet_distance(x, x + shift)
        assert value == pytest.approx(float(shift.pow(2).sum()), rel=1e-6, abs=1e-8)
        assert value > previous
        previous = value


def test_sqrtm_psd_squares_back_and_clips_rounding_negatives():
    c = random_cov(5, 7)
    r = fd.sqrtm_psd(c)
    assert np.allclose(r @ r, c) and np.allclose(r, r.T)
    v = np.ones((3, 1))
    assert np.isfinite(fd.sqrtm_psd(v @ v.T - 1e-12 * np.eye(3))).all()


def test_precision_recall_self_is_one_and_far_away_is_zero():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 10, generator=g)
    assert fd.knn_precision_recall(real, real, k=3) == (1.0, 1.0)
    assert fd.knn_precision_recall(real, real + 100.0, k=3) == (0.0, 0.0)
    # a collapsed generator: precise, but covers almost nothing of the real set
    collapsed = real[:5].repeat(20, 1) + 1e-3 * torch.randn(100, 10, generator=g)
    precision, recall = fd.knn_precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.1


def test_class_helpers():
    probs = torch.full((20, 10), 0.01)
    probs[torch.arange(20), torch.arange(20) % 10] = 0.91
    hist = fd.class_histogram(probs)
    assert torch.allclose(hist, torch.full((10,), 0.1, dtype=torch.float64))
    assert ((hist >= 0.05) & (hist <= 0.15)).all()
    assert fd.mean_top_class_probability(probs) == pytest.approx(0.91)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="dimensions differ"):
        fd.frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="finite"):
        fd.frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
    with pytest.raises(ValueError, match="k must be"):
        fd.knn_precision_recall(torch.randn(5, 3), torch.randn(5, 3), k=5)
    with pytest.raises(ValueError, match="probs"):
        fd.class_histogram(torch.rand(10))
    with pytest.raises(ValueError, match="shape"):
        fd.MnistClassifier().features(torch.rand(2, 3, 28, 28))


@pytest.fixture
def tiny_classifier_setup(tmp_path, monkeypatch):
    """A fake 'MNIST' of 64 + 32 random images and one short epoch, cached under tmp_path."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 1, 28, 28), generator=g).to(torch.uint8)
    y = torch.arange(96) % 10
    monkeypatch.setattr(fd, "_mnist_splits", lambda: ((x[:64], y[:64]), (x[64:], y[64:])))
    monkeypatch.setattr(fd, "TRAIN_CONFIG", {**fd.TRAIN_CONFIG, "epochs": 1, "batch_size": 32})
    monkeypatch.setenv(fd.CACHE_ENV, str(tmp_path))
    return tmp_path


def test_classifier_cache_round_trips_and_corrupt_file_retrains(tiny_classifier_setup, monkeypatch):
    path = fd.classifier_cache_path()
    assert path.parent == tiny_classifier_setup and not path.exists()
    first = fd.load_classifier(verbose=False)
    assert path.exists() and set(first.info) >= {"test_accuracy", "test_accuracy_14"}
    x = torch.rand(4, 1, 14, 14) * 2 - 1
    calls = []
    real_train = fd.train_classifier
    monkeypatch.setattr(fd, "train_classifier", lambda cfg=None: calls.append(1) or real_train(cfg))
    again = fd.load_classifier(verbose=False)           # loads from the cache: no training
    assert calls == [] and torch.equal(fd.features(x, first), fd.features(x, again))
    assert fd.features(x, again).shape == (4, fd.MnistClassifier.feature_dim)
    path.write_bytes(b"not a checkpoint")                # corrupt: retrained and rewritten
    retrained = fd.load_classifier(verbose=False)
    assert calls == [1] and torch.equal(fd.features(x, first), fd.features(x, retrained))  # deterministic
    assert fd.load_classifier(verbose=False).info == retrained.info
    assert fd.classifier_cache_path({"epochs": 2}) != path  # settings are part of the name


def test_real_vs_real_floor_and_probabilities_on_the_fake_set(tiny_classifier_setup):
    model = fd.load_classifier(verbose=False)
    floor = fd.real_vs_real_floor(32, size=14, classifier=model)
    assert floor["fd"] > 0 and 0 <= floor["precision"] <= 1 and floor["n"] == 32
    with pytest.raises(ValueError, match="n must be"):
        fd.real_vs_real_floor(33, classifier=model)
    probs = fd.class_probabilities(fd.real_mnist_images("test", 7)[0], model)
    assert probs.shape == (32, 10) and torch.allclose(probs.sum(1), torch.ones(32))


def test_sample_quality_of_the_real_images_themselves():
    """Images scored against their own features: FD 0, precision and recall 1, class shares that
    sum to 1; values outside [-1, 1] are clamped first (the same figures as the clamped set)."""
    torch.manual_seed(0)
    model = fd.MnistClassifier().eval()
    x = torch.rand(40, 1, 14, 14) * 2 - 1
    q = fd.sample_quality(x, fd.features(x, model), model)
    assert q["fd"] == pytest.approx(0.0, abs=1e-6)
    assert q["precision"] == 1.0 and q["recall"] == 1.0
    assert q["hist"].shape == (10,) and float(q["hist"].sum()) == pytest.approx(1.0)
    loud = fd.sample_quality(3 * x, fd.features(x.clamp(-1, 1), model), model)
    assert loud["fd"] == pytest.approx(fd.sample_quality((3 * x).clamp(-1, 1), fd.features(x, model),
                                                          model)["fd"])
