"""Metrics from the literature against independent computations from their definitions."""

from functools import partial
from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import pdist
from scipy.special import softmax
from scipy.stats import entropy

from seis_sklearn import metrics, transforms
from seis_sklearn.metrics import (
    _channel_cosines,
    _mean_distinct,
    _mean_pair_distance,
    _mean_pair_distance_blas,
    channelwise_geed,
    latent_geed,
    linear_cka,
    pwcca,
    softmax_geed,
    svcca,
)

ROT = [partial(transforms.rot90, k=k) for k in range(4)]


@pytest.fixture
def fx(rng):
    return rng.normal(size=(10, 4, 7, 7))


# ---------------------------------------------------------------------- channelwise


def test_channelwise_geed_is_minus_one_when_exactly_equivariant(fx):
    orbit = [transforms.rot90(fx, k) for k in range(4)]
    assert channelwise_geed(orbit, ROT) == pytest.approx(-1.0, abs=1e-12)
    nhwc = [np.moveaxis(o, 1, -1) for o in orbit]
    actions = [partial(transforms.rot90, k=k, layout="NHWC") for k in range(4)]
    assert channelwise_geed(nhwc, actions, layout="NHWC") == pytest.approx(-1.0, abs=1e-12)


def test_channelwise_geed_grows_with_injected_violations(fx, rng):
    noise = rng.normal(size=(4, *fx.shape))
    values = []
    for eps in (0.0, 0.1, 0.3, 1.0, 3.0):
        orbit = [transforms.rot90(fx, k) + eps * noise[k] * (k > 0) for k in range(4)]
        values.append(channelwise_geed(orbit, ROT))
    assert values[0] == pytest.approx(-1.0)
    assert all(b > a for a, b in zip(values, values[1:], strict=False))


def test_channelwise_geed_with_channel_permutations(fx):
    # a C4 group convolution: rotating the input rotates the maps and rolls the channels
    orbit = [np.roll(transforms.rot90(fx, k), k, axis=1) for k in range(4)]
    assert channelwise_geed(orbit, ROT) > -0.5  # blind to the permutation, it sees a violation
    perms = [np.roll(np.arange(4), k) for k in range(4)]
    assert channelwise_geed(orbit, ROT, channel_permutations=perms) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match=r"channel_permutations\[1\] is not a permutation"):
        channelwise_geed(orbit, ROT, channel_permutations=[np.arange(4), [0, 0, 1, 2]] * 2)


def test_channel_cosine_kernel_equals_numpy_with_zero_channels(rng):
    a = rng.normal(size=(5, 3, 11)).astype(np.float32)
    b = rng.normal(size=(5, 3, 11))
    a[0, 1] = 0.0
    b[0, 1] = 0.0  # both zero: equal
    a[2, 2] = 0.0  # one zero: no similarity
    a64 = a.astype(np.float64)
    dot = np.einsum("ncp,ncp->nc", a64, b)
    norms = np.linalg.norm(a64, axis=2) * np.linalg.norm(b, axis=2)
    want = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)
    want[0, 1] = 1.0
    np.testing.assert_allclose(_channel_cosines(a, b), want, rtol=1e-12)


def test_channelwise_geed_errors(fx):
    orbit = [fx, fx]
    with pytest.raises(ValueError, match="actions has 3 entries for an orbit of 2"):
        channelwise_geed(orbit, ROT[:3])
    with pytest.raises(ValueError, match=r"orbit\[1\] has shape"):
        channelwise_geed([fx, fx[:5]], ROT[:2])
    with pytest.raises(TypeError, match="sequence of arrays"):
        channelwise_geed(np.stack(orbit), ROT[:2])
    with pytest.raises(ValueError, match=r"actions\[1\] changed the shape"):
        channelwise_geed(orbit, [None, lambda x: x[:, :2]])
    bad = fx.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"orbit\[1\] contains 1 NaN"):
        channelwise_geed([fx, bad], ROT[:2])


# ---------------------------------------------------------------------------- latent


def _latent_direct(orbit, metric, reference=None):
    """Eq. 6 with explicit loops: (1/M) 1/(|D||G|) Σ_x Σ_g m(f(gx), f̂(x))."""
    G, N = len(orbit), orbit[0].shape[0]
    total = 0.0
    for x in range(N):
        mean = sum(orbit[g][x] for g in range(G)) / G
        for g in range(G):
            v = orbit[g][x]
            if metric == "euclidean":
                total += np.linalg.norm(v - mean)
            else:
                total += -(v @ mean) / (np.linalg.norm(v) * np.linalg.norm(mean))
    ref = orbit[0] if reference is None else reference
    pairs = list(combinations(range(len(ref)), 2))
    if metric == "euclidean":
        M = np.mean([np.linalg.norm(ref[i] - ref[j]) for i, j in pairs])
    else:
        M = np.mean(
            [ref[i] @ ref[j] / (np.linalg.norm(ref[i]) * np.linalg.norm(ref[j])) for i, j in pairs]
        )
    return total / (N * G) / M


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_latent_geed_matches_the_formula(rng, metric):
    base = rng.normal(size=(12, 6)) + 1.0
    orbit = [base + 0.3 * rng.normal(size=base.shape) for _ in range(4)]
    reference = rng.normal(size=(9, 6)) + 2.0
    assert latent_geed(orbit, metric=metric) == pytest.approx(
        _latent_direct(orbit, metric), rel=1e-10
    )
    assert latent_geed(orbit, metric=metric, reference=reference) == pytest.approx(
        _latent_direct(orbit, metric, reference), rel=1e-10
    )


def test_latent_geed_of_an_invariant_layer(rng):
    base = rng.normal(size=(12, 6))
    orbit = [base] * 4
    assert latent_geed(orbit) == 0.0
    M = np.mean([1 - d for d in pdist(base, "cosine")])
    assert latent_geed(orbit, metric="cosine") == pytest.approx(-1.0 / M)
    values = [latent_geed([base + e * rng.normal(size=base.shape) for _ in range(4)])
              for e in (0.1, 0.5, 2.0)]  # fmt: skip
    assert values[0] < values[1] < values[2]


def test_mean_pair_distance_kernels_equal_scipy(rng):
    x = rng.normal(size=(30, 7))
    assert _mean_pair_distance(x) == pytest.approx(pdist(x).mean(), rel=1e-12)
    wide = rng.normal(size=(1100, 80))  # more than one block of rows
    assert _mean_pair_distance_blas(wide) == pytest.approx(pdist(wide).mean(), rel=1e-10)
    assert _mean_distinct(wide, "euclidean") == pytest.approx(pdist(wide).mean(), rel=1e-10)


# --------------------------------------------------------------------------- softmax


def test_softmax_geed_against_scipy_kl(rng):
    logits = [rng.normal(size=(15, 5)) for _ in range(3)]
    probs = [softmax(z, axis=1) for z in logits]
    mean = sum(probs) / 3
    want = np.mean([entropy(p[i], mean[i]) for p in probs for i in range(15)])
    assert softmax_geed(probs) == pytest.approx(want, rel=1e-12)
    assert softmax_geed(logits, from_logits=True) == pytest.approx(want, rel=1e-12)
    assert softmax_geed([probs[0]] * 3) == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="pass from_logits=True"):
        softmax_geed(logits)


# ------------------------------------------------------------------- CKA, SVCCA, PWCCA


def _centre(X):
    X = X.reshape(X.shape[0], -1).astype(np.float64)
    return X - X.mean(axis=0)


def _cka_hsic(X, Y):
    """CKA through HSIC of the linear Gram matrices with the centring matrix H."""
    n = X.shape[0]
    X, Y = X.reshape(n, -1), Y.reshape(n, -1)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T

    def hsic(a, b):
        return np.trace(a @ H @ b @ H)

    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def _reduce_svd(X, threshold):
    u, s, _ = np.linalg.svd(X, full_matrices=False)
    share = np.cumsum(s**2) / np.sum(s**2)
    k = int(np.searchsorted(share, threshold - 1e-12) + 1)
    return u[:, :k] * s[:k]


def _cca_qr(X, Y):
    qx, _ = np.linalg.qr(X)
    qy, _ = np.linalg.qr(Y)
    u, rho, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return rho, qx @ u  # correlations and X's canonical variates (unit norm)


def test_linear_cka_against_hsic(rng):
    X = rng.normal(size=(40, 6, 3))
    Y = X[:, ::-1] @ rng.normal(size=(3, 3)) + rng.normal(size=X.shape)
    assert linear_cka(X, Y) == pytest.approx(_cka_hsic(X, Y), rel=1e-10)
    Q, _ = np.linalg.qr(rng.normal(size=(18, 18)))
    flat = X.reshape(40, -1)
    assert linear_cka(flat, 3.0 * flat @ Q) == pytest.approx(1.0, rel=1e-12)
    # known answer of the debiased estimator: identical views (up to an orthogonal map
    # and a scale) → 1, at any number of samples from its 4 up, in every matricization
    for n in (4, 7, 40):
        for mode in ("flatten", "spatial", "channel"):
            got = linear_cka(X[:n], 0.5 * X[:n] + 2.0, matricization=mode, debiased=True)
            assert got == pytest.approx(1.0, rel=1e-9)
    assert metrics.cka(flat, 3.0 * flat @ Q, debiased=True) == pytest.approx(1.0, rel=1e-12)


def test_svcca_against_svd_then_qr_cca(rng):
    X = rng.normal(size=(80, 5)) @ rng.normal(size=(5, 12))  # rank 5 in 12 columns
    X += 0.01 * rng.normal(size=X.shape)
    Y = X @ rng.normal(size=(12, 12)) + 0.5 * rng.normal(size=(80, 12))
    for threshold in (0.99, 0.9, 1.0):
        rho, _ = _cca_qr(_reduce_svd(_centre(X), threshold), _reduce_svd(_centre(Y), threshold))
        assert svcca(X, Y, threshold=threshold) == pytest.approx(rho.mean(), rel=1e-8)


def test_pwcca_against_projection_weights(rng):
    X = rng.normal(size=(100, 6))
    Y = X[:, :4] @ rng.normal(size=(4, 6)) + 0.7 * rng.normal(size=(100, 6))
    Xc, Yc = _centre(X), _centre(Y)
    rho, h = _cca_qr(Xc, Yc)
    alpha = np.abs(h.T @ Xc).sum(axis=1)
    want = np.sum(alpha / alpha.sum() * rho)
    assert pwcca(X, Y) == pytest.approx(want, rel=1e-8)
    assert pwcca(X, X @ rng.normal(size=(6, 6))) == pytest.approx(1.0, abs=1e-8)


def test_similarity_metrics_take_layouts_and_dask(rng):
    da = pytest.importorskip("dask.array")
    import dask

    A = rng.normal(size=(60, 4, 5, 5))
    B = np.flip(A, axis=3) + 0.3 * rng.normal(size=A.shape)
    for metric in (linear_cka, svcca, pwcca):
        want = metric(A, B, matricization="channel")
        with dask.config.set(scheduler="sync"):
            got = metric(da.from_array(A, chunks=(20, 4, 5, 5)), da.from_array(B, chunks=20),
                         matricization="channel")  # fmt: skip
        assert got == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match=r"threshold must lie in \(0, 1\]"):
        svcca(A, B, threshold=1.5)


@pytest.mark.parametrize("mode", ["spatial", "channel", "flatten"])
def test_moment_metrics_ignore_per_feature_offsets(mode, rng):
    """CKA, SVCCA and PWCCA come from the SEIS moments, centred over samples per feature
    (SPEC §2.1): per-channel offsets (biases, BatchNorm shifts) change none of them."""
    A = rng.normal(size=(600, 4, 5, 5))  # 600 samples for 100 flatten columns: PWCCA,
    B = np.rot90(A, axes=(2, 3)) + 0.5 * rng.normal(size=A.shape)  # unregularised, needs them
    offset = 5.0 * rng.normal(size=(1, 4, 1, 1))
    for metric in (linear_cka, svcca, pwcca):
        plain = metric(A, B, matricization=mode)
        shifted = metric(A + offset, B + offset, matricization=mode)
        assert shifted == pytest.approx(plain, abs=1e-9)
    # independent content: the offsets, identical in both views, no longer make it similar
    # (flatten never had the problem; its CKA of independent data is biased by d/m)
    C = rng.normal(size=A.shape)
    if mode != "flatten":
        assert linear_cka(A + offset, C + offset, matricization=mode) < 0.05


# ------------------------------------------------------------------ debiased linear CKA


def _u_centred_cka(X, Y, debiased):
    """CKA from the n × n Gram matrices of the rows, written independently after the
    reference code of Kornblith et al. (``center_gram(gram, unbiased=True)``: the
    U-centring of Song et al. 2012), and the ratio by which rounding of the raw Grams
    is amplified in it (for the tolerance)."""

    def centre(g):
        g = g.copy()
        n = g.shape[0]
        if debiased:
            np.fill_diagonal(g, 0.0)
            means = g.sum(axis=0) / (n - 2)
            means -= means.sum() / (2 * (n - 1))
            g -= means[:, None]
            g -= means[None, :]
            np.fill_diagonal(g, 0.0)
        else:
            means = g.mean(axis=0)
            means -= means.mean() / 2
            g -= means[:, None]
            g -= means[None, :]
        return g

    X, Y = X - X.mean(axis=0), Y - Y.mean(axis=0)
    raw = [X @ X.T, Y @ Y.T]
    gx, gy = (centre(g) for g in raw)
    norm = np.linalg.norm(gx) * np.linalg.norm(gy)
    amplification = np.linalg.norm(raw[0]) * np.linalg.norm(raw[1]) / norm
    return float(gx.ravel() @ gy.ravel() / norm), amplification


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(4, 40),
    d=st.integers(1, 24),
    offset=st.floats(-1e3, 1e3),
    coupling=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_debiased_cka_equals_the_u_centred_gram_estimator(n, d, offset, coupling, seed):
    """``linear_cka(debiased=True)`` — from moments and the rows' norms, no n × n matrix
    — equals the unbiased HSIC computed on U-centred Gram matrices (Song et al. 2012;
    the estimator of Nguyen, Raghu & Kornblith 2021), and ``debiased=False`` the
    ordinary centred Grams; to rounding amplified by the centring's cancellation."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) + offset
    Y = coupling * X @ rng.normal(size=(d, d)) + rng.normal(size=(n, d)) + offset
    for debiased in (False, True):
        want, amplification = _u_centred_cka(X, Y, debiased)
        got = linear_cka(X, Y, debiased=debiased)
        # offsets of 1e3 round the raw rows by u·1e3 before centring: relative to
        # unit-variance features, (1 + |offset|)² times the products' rounding
        tol = 1e3 * np.finfo(float).eps * n * amplification * (1 + abs(offset)) ** 2
        assert got == pytest.approx(want, abs=tol)


def test_debiased_cka_is_near_zero_for_unrelated_views_where_the_biased_is_not():
    """Known answer: for independent Gaussian activations the unbiased HSIC has mean 0,
    so debiased CKA scatters about 0 (Nguyen et al. 2021); the biased estimator
    at 32 samples of 256 features is near 1 (≈ d/(d + n) for isotropic views)."""
    biased, debiased = [], []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        A, B = rng.normal(size=(32, 256)), rng.normal(size=(32, 256))
        biased.append(linear_cka(A, B))
        debiased.append(linear_cka(A, B, debiased=True))
    assert min(biased) > 0.85
    # each value scatters with a standard deviation ≈ 0.045 (measured over 200 seeds):
    # their mean over 100 within 0.02 is 4σ, each within 0.25 5σ
    assert abs(np.mean(debiased)) < 0.02 and max(np.abs(debiased)) < 0.25
    # at any n: the mean over independent pairs is 0 within four of its standard errors
    # (estimated from the same values), from the estimator's smallest n up
    for n in (5, 12, 128):
        values = [
            linear_cka(*np.random.default_rng(1000 + seed).normal(size=(2, n, 64)), debiased=True)
            for seed in range(60)
        ]
        assert abs(np.mean(values)) < 4 * np.std(values, ddof=1) / np.sqrt(len(values))
    # the same views, dependent: both see it
    rng = np.random.default_rng(0)
    A = rng.normal(size=(32, 256))
    B = A @ rng.normal(size=(256, 256)) / 16 + 0.5 * rng.normal(size=(32, 256))
    assert linear_cka(A, B, debiased=True) > 0.5


def test_debiased_cka_streams_and_reads_rows_of_every_matricization(rng, tmp_path):
    """Memory maps and dask arrays give the in-memory value; spatial mode is the
    estimator on the rows centred per feature (SPEC §2.1); invariances of CKA hold
    for the debiased one (an orthogonal map of the columns, a scale of one view)."""
    A = rng.normal(size=(30, 3, 4, 5)) + 2.0
    B = np.flip(A, axis=-1) + 0.7 * rng.normal(size=A.shape)
    want = linear_cka(A, B, debiased=True)
    paths = [tmp_path / "a.npy", tmp_path / "b.npy"]
    for path, x in zip(paths, (A, B), strict=True):
        np.save(path, x.astype(np.float32))
    maps = [np.load(p, mmap_mode="r") for p in paths]
    assert linear_cka(*maps, debiased=True) == pytest.approx(want, abs=1e-5)  # float32 files
    da = pytest.importorskip("dask.array")
    dA, dB = da.from_array(A, chunks=(7, 3, 4, 5)), da.from_array(B, chunks=(7, 3, 4, 5))
    assert linear_cka(dA, dB, debiased=True) == pytest.approx(want, rel=1e-12)
    # spatial: the estimator's observations are the rows (sample, channel) — the
    # U-centring centres them by their mean over all rows, not per channel
    rows = [x.reshape(30 * 3, 20) for x in (A, B)]
    got = linear_cka(A, B, matricization="spatial", debiased=True)
    assert got == pytest.approx(_u_centred_cka_rows(*rows), rel=1e-10)
    Q = np.linalg.qr(rng.normal(size=(60, 60)))[0]
    flat = [x.reshape(30, 60) for x in (A, B)]
    assert linear_cka(flat[0] @ Q, 1e-3 * flat[1], debiased=True) == pytest.approx(want, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    n_chunks=st.integers(1, 6),
    rows_per_sample=st.integers(1, 4),
    offset=st.sampled_from([0.0, 3.0, -1e3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_row_norm_sums_give_the_estimator_in_any_chunking(n_chunks, rows_per_sample, offset,
                                                         seed):  # fmt: skip
    """The debiased CKA from moments and norms summed about the first chunk's centre is
    the U-centred estimator of all rows, however the rows are chunked and wherever
    the first chunk's centre falls (offsets up to 1e3: the expansion about it cancels
    as the raw products do, so the tolerance grows with (1 + |offset|)²)."""
    from seis_sklearn._accumulate import accumulate
    from seis_sklearn.metrics import RowNormSums, cka_debiased_from_moments

    rng = np.random.default_rng(seed)
    n, d = 24, 5
    # spatial mode of (N, C, 1, d) maps: rows (sample, channel), positions as features
    A = rng.normal(size=(n, rows_per_sample, 1, d)) + offset
    B = 0.5 * A + rng.normal(size=A.shape) + rng.normal(size=(1, rows_per_sample, 1, d))
    moments = accumulate([A, B], "NCHW", "spatial", names=("A", "B"))
    sums = RowNormSums()
    for part in np.array_split(np.arange(n), n_chunks):
        sums.add(A[part].reshape(-1, d), B[part].reshape(-1, d))
    got = cka_debiased_from_moments(moments, sums)
    want = _u_centred_cka_rows(A.reshape(-1, d), B.reshape(-1, d))
    assert got == pytest.approx(want, abs=1e-9 * (1 + abs(offset)) ** 2)
    again = RowNormSums.from_state(sums.state())
    assert cka_debiased_from_moments(moments, again) == got


def _u_centred_cka_rows(X, Y):
    """The debiased estimator of the rows as observations (U-centring centres them)."""

    def centre(g):
        n = g.shape[0]
        g = g.copy()
        np.fill_diagonal(g, 0.0)
        means = g.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        g -= means[:, None] + means[None, :]
        np.fill_diagonal(g, 0.0)
        return g

    gx, gy = centre(X @ X.T), centre(Y @ Y.T)
    return float(gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy)))


def test_debiased_cka_refuses_what_it_cannot_estimate(rng):
    A = rng.normal(size=(3, 5))
    with pytest.raises(ValueError, match="at least 4"):
        linear_cka(A, A + 1, debiased=True)
    A = rng.normal(size=(10, 5))
    with pytest.raises(ValueError, match="B has no variance"):
        linear_cka(A, np.ones_like(A), debiased=True)
    with pytest.raises(TypeError, match="debiased must be True or False"):
        linear_cka(A, A, debiased="yes")
