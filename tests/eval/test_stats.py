"""Feature statistics across ranks (one all-reduce) and the eigen-based Fréchet distance."""

import numpy as np
import pytest
import scipy.linalg
import torch

from ect_scale.eval.stats import FeatureStats, GaussianStats, fd_between, frechet_distance, no_tf32, reduce_stats
from tests.distributed import run_ranks


def _features(rank_rows, dim, seed, dtype=np.float64):
    """Deterministic features with a non-zero mean and correlated columns (cancellation in Σffᵀ - nμμᵀ matters)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return (rng.normal(size=(rank_rows, dim)) @ mix + 3.0 + rng.uniform(size=dim)).astype(dtype)


def _stats_worker(rank, world_size, rows, dims):
    import torch.distributed as dist

    dist.init_process_group("gloo")
    calls = []
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls.append(args[0].numel())
        return real_all_reduce(*args, **kwargs)

    dist.all_reduce = counting_all_reduce
    accs = []
    for j, dim in enumerate(dims):  # Detector features are float32 (j=1); accumulation is float64 either way.
        feats = _features(rows[rank], dim, seed=100 * j + rank, dtype=np.float64 if j == 0 else np.float32)
        acc = FeatureStats(dim)
        for chunk in np.array_split(feats, 3):  # Several batches per rank.
            acc.update(torch.from_numpy(chunk))
        accs.append(acc)
    reduce_stats(accs)
    gs = [a.gaussian() for a in accs]
    return {"calls": calls, "mu": [g.mu for g in gs], "sigma": [g.sigma for g in gs], "num": [g.num for g in gs]}


def test_two_rank_statistics_equal_single_process_numpy():
    rows, dims = [37, 29], [16, 7]
    out = run_ranks(_stats_worker, 2, args=(rows, dims), timeout=120)
    assert out[0]["calls"] == [1 + 16 + 256 + 1 + 7 + 49]  # ONE all-reduce of every accumulator, packed.
    for j, dim in enumerate(dims):
        dtype = np.float64 if j == 0 else np.float32
        feats = np.concatenate([_features(rows[r], dim, 100 * j + r, dtype) for r in range(2)]).astype(np.float64)
        mu_ref, sigma_ref = feats.mean(0), np.cov(feats, rowvar=False)
        for r in range(2):  # Every rank holds the same result.
            assert out[r]["num"][j] == sum(rows)
            assert np.linalg.norm(out[r]["mu"][j] - mu_ref) / np.linalg.norm(mu_ref) <= 1e-10
            assert np.linalg.norm(out[r]["sigma"][j] - sigma_ref) / np.linalg.norm(sigma_ref) <= 1e-10


def test_single_process_without_group_is_the_identity_reduction():
    feats = _features(50, 5, seed=3)
    acc = FeatureStats(5)
    acc.update(torch.from_numpy(feats))
    reduce_stats([acc])
    g = acc.gaussian()
    np.testing.assert_allclose(g.sigma, np.cov(feats, rowvar=False), rtol=1e-10, atol=1e-12)
    with pytest.raises(RuntimeError, match="after reduce_stats"):
        acc.update(torch.zeros(1, 5))
    with pytest.raises(RuntimeError, match="already reduced"):
        reduce_stats([acc])


def test_state_dict_round_trip_and_input_checks():
    acc = FeatureStats(4)
    acc.update(torch.randn(10, 4))
    other = FeatureStats(4)
    other.load_state_dict(acc.state_dict())
    assert torch.equal(other.outer, acc.outer) and other.num == 10
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        acc.update(torch.randn(3, 5))
    one = FeatureStats(4)
    one.update(torch.randn(1, 4))
    with pytest.raises(ValueError, match="at least 2 samples"):
        one.gaussian()


def _random_stats(dim, rank, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, rank))
    return rng.normal(size=dim), a @ a.T / rank


def _scipy_fd(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2)  # No `disp=` (removed in SciPy 1.18).
    return float(np.square(mu1 - mu2).sum() + np.trace(s1 + s2 - 2 * np.real(covmean)))


@pytest.mark.parametrize("dim,rank1,rank2", [(8, 20, 30), (64, 200, 150), (48, 300, 300)])
def test_fd_matches_scipy_sqrtm(dim, rank1, rank2):
    mu1, s1 = _random_stats(dim, rank1, seed=dim)
    mu2, s2 = _random_stats(dim, rank2, seed=dim + 1)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert abs(ours - _scipy_fd(mu1, s1, mu2, s2)) <= 1e-6
    assert abs(ours - frechet_distance(mu2, s2, mu1, s1)) <= 1e-9  # Symmetric.
    ref = GaussianStats(mu=mu2, sigma=s2, num=rank2)
    gen = GaussianStats(mu=mu1, sigma=s1, num=rank1)
    assert abs(fd_between(gen, ref) - ours) <= 1e-9 and ref._sigma_sqrt is not None  # Cached reference sqrt.
    assert abs(fd_between(gen, ref) - ours) <= 1e-9


def test_fd_rank_deficient_covariance_matches_scipy():
    """Fewer samples than dimensions (as for small in-loop FIDs of 2048-d features): S1 is singular."""
    mu1, s1 = _random_stats(40, 12, seed=5)
    mu2, s2 = _random_stats(40, 60, seed=6)
    assert abs(frechet_distance(mu1, s1, mu2, s2) - _scipy_fd(mu1, s1, mu2, s2)) <= 1e-6


def test_fd_of_identical_statistics_is_zero_and_mean_shift_adds_its_square():
    mu, s = _random_stats(32, 100, seed=7)
    assert frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    shift = np.zeros(32)
    shift[3] = 2.0
    assert frechet_distance(mu, s, mu + shift, s) == pytest.approx(4.0, abs=1e-8)
    g = GaussianStats(mu=mu, sigma=s, num=100)
    assert fd_between(g, g) == pytest.approx(0.0, abs=1e-9)


def test_fd_rejects_mismatched_or_nonfinite_statistics():
    mu, s = _random_stats(6, 10, seed=1)
    with pytest.raises(ValueError, match="same detector"):
        frechet_distance(mu, s, mu[:5], s[:5, :5])
    bad = s.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(mu, bad, mu, s)


def test_no_tf32_switches_off_and_restores():
    before = (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    with no_tf32():
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == before
