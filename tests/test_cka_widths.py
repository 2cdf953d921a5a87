"""Representation similarity of views of different widths, and the report's CKA columns.

CKA, SVCCA and PWCCA compare two views of the same samples; their widths may differ
(layers of different shapes). Every value here is checked against an independent
computation from the definition: Gram matrices with explicit centring matrices, the
closed form of the unbiased HSIC (Song et al. 2012), principal angles between column
spaces (scipy). A layerwise report's ``cka``/``cka_debiased`` columns are the
standard CKA of the flattened activations — the same number as ``linear_cka`` and the
diagonal of ``similarity_map`` under the report's transform (docs/metrics.rst).
"""

import numpy as np
import pytest
from scipy.linalg import orth, subspace_angles

from seis_sklearn import metrics
from seis_sklearn.metrics import MinibatchCKA, linear_cka, pwcca, svcca

EPS32 = np.finfo(np.float32).eps


def _flat(x):
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def _hsic_biased(K, L):
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def _hsic_unbiased(K, L):
    """Song et al. (2012), eq. 5, with the diagonals of K and L set to zero."""
    n = len(K)
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    total = (np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
             - 2 / (n - 2) * (one @ K @ L @ one))  # fmt: skip
    return total / (n * (n - 3))


def _cka_definition(X, Y, debiased=False):
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), K = XXᵀ, L = YYᵀ (flattened)."""
    X, Y = _flat(X), _flat(Y)
    K, L = X @ X.T, Y @ Y.T
    hsic = _hsic_unbiased if debiased else _hsic_biased
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def _amplification(X, Y):
    """How much centring amplifies the rounding of the raw products (for tolerances):
    ‖K‖‖L‖ / (‖HKH‖‖HLH‖) of the uncentred Grams."""
    X, Y = _flat(X), _flat(Y)
    n = len(X)
    H = np.eye(n) - np.ones((n, n)) / n
    K, L = X @ X.T, Y @ Y.T
    return (
        np.linalg.norm(K)
        * np.linalg.norm(L)
        / (np.linalg.norm(H @ K @ H) * np.linalg.norm(H @ L @ H))
    )


def test_google_demo_values():
    """The published values of the CKA demo of Kornblith et al. (google-research
    ``representation_similarity``): 0.55761 (linear) and 0.51346 (debiased), given to
    5 decimals."""
    np.random.seed(1337)  # noqa: NPY002 - the demo's legacy generator, to reproduce it
    X = np.random.randn(100, 10)  # noqa: NPY002
    Y = np.random.randn(100, 10) + X  # noqa: NPY002
    assert linear_cka(X, Y) == pytest.approx(0.55761, abs=5e-6)
    assert linear_cka(X, Y, debiased=True) == pytest.approx(0.51346, abs=5e-6)


@pytest.mark.parametrize("n", [12, 100])  # 12 < d: Gram matrices; 100 > d: moments
def test_cka_of_layers_of_different_widths_against_the_definition(n, rng):
    X = rng.normal(size=(n, 10)) + 3.0
    Y = X[:, :5] @ rng.normal(size=(5, 5)) + rng.normal(size=(n, 5)) - 1.0
    for debiased in (False, True):
        want = _cka_definition(X, Y, debiased)
        # float64 products of unit-scale data, cancellation of the offsets amplified
        tol = 1e3 * np.finfo(float).eps * n * _amplification(X, Y)
        assert linear_cka(X, Y, debiased=debiased) == pytest.approx(want, abs=tol)
        assert linear_cka(Y, X, debiased=debiased) == pytest.approx(want, abs=tol)
    # a conv map (N, C, H, W) against a vector layer (N, D): any shapes, flattened
    maps = rng.normal(size=(n, 3, 4, 4))
    vec = maps.reshape(n, -1)[:, :7] + 0.5 * rng.normal(size=(n, 7))
    for debiased in (False, True):
        want = _cka_definition(maps, vec, debiased)
        tol = 1e3 * np.finfo(float).eps * n * _amplification(maps, vec)
        assert linear_cka(maps, vec, debiased=debiased) == pytest.approx(want, abs=tol)
    # invariances: an orthogonal map and a scale of one view
    Q = np.linalg.qr(rng.normal(size=(10, 10)))[0]
    assert linear_cka(X @ Q, 7.0 * Y) == pytest.approx(linear_cka(X, Y), rel=1e-10)


def test_both_ways_of_computing_agree_and_stream(rng, tmp_path):
    """The Gram matrices (n < d) and the moments (dask: always) give one value; memory
    maps and dask arrays of different widths stream."""
    da = pytest.importorskip("dask.array")
    X = rng.normal(size=(30, 4, 3, 3))
    Y = rng.normal(size=(30, 5)) + X[:, 0, 0, :1]
    paths = [tmp_path / "x.npy", tmp_path / "y.npy"]
    for path, v in zip(paths, (X, Y), strict=True):
        np.save(path, v)
    maps = [np.load(p, mmap_mode="r") for p in paths]
    lazy = [da.from_array(X, chunks=(7, 4, 3, 3)), da.from_array(Y, chunks=(7, 5))]
    for debiased in (False, True):
        want = _cka_definition(X, Y, debiased)
        tol = 1e3 * np.finfo(float).eps * 30 * _amplification(X, Y)
        for views in ((X, Y), maps, lazy):
            assert linear_cka(*views, debiased=debiased) == pytest.approx(want, abs=tol)


def test_matricized_cka_of_different_widths_needs_matching_rows(rng):
    """Channel mode compares layers of one map size and different channel counts: the
    rows (sample, position) correspond; spatial mode's rows (sample, channel) do not."""
    X = rng.normal(size=(25, 3, 4, 4))
    Y = rng.normal(size=(25, 5, 4, 4))
    Y[:, :3] += 2.0 * X
    rows_x = np.moveaxis(X, 1, -1).reshape(25 * 16, 3)
    rows_y = np.moveaxis(Y, 1, -1).reshape(25 * 16, 5)
    # each (position, channel) feature centred over the samples, as SEIS centres
    centred = [
        r.reshape(25, 16, -1) - r.reshape(25, 16, -1).mean(axis=0) for r in (rows_x, rows_y)
    ]
    cx, cy = (c.reshape(25 * 16, -1) for c in centred)
    want = np.linalg.norm(cx.T @ cy) ** 2 / (np.linalg.norm(cx.T @ cx) * np.linalg.norm(cy.T @ cy))
    assert linear_cka(X, Y, matricization="channel") == pytest.approx(want, rel=1e-10)
    with pytest.raises(ValueError, match=r"A \(25, 3, 4, 4\) and B \(25, 5, 4, 4\) give 3 and 5 "
                       "rows per sample with matricization='spatial'"):  # fmt: skip
        linear_cka(X, Y, matricization="spatial")
    with pytest.raises(ValueError, match="A and B must hold the same samples.*25 samples in A"):
        linear_cka(X, Y[:20])
    with pytest.raises(ValueError, match="A and B must hold the same samples"):
        svcca(X, Y[:20])


def _canonical(X, Y):
    """Canonical correlations (cosines of the principal angles between the centred
    column spaces, scipy) and X's canonical variates (orthonormal basis, SVD)."""
    Xc, Yc = (_flat(v) - _flat(v).mean(axis=0) for v in (X, Y))
    rho = np.sort(np.cos(subspace_angles(Xc, Yc)))[::-1]
    qx, qy = orth(Xc), orth(Yc)
    u, s, _ = np.linalg.svd(qx.T @ qy, full_matrices=False)
    return rho, qx @ u, Xc, s


def test_svcca_and_pwcca_of_different_widths_against_principal_angles(rng):
    X = rng.normal(size=(200, 8))
    Y = X[:, :3] @ rng.normal(size=(3, 5)) + 0.8 * rng.normal(size=(200, 5))
    rho, h, Xc, s = _canonical(X, Y)
    assert rho.size == 5 and np.allclose(rho, s, atol=1e-10)  # two ways, one answer
    # SVCCA keeping every direction (threshold 1): the mean canonical correlation
    assert svcca(X, Y, threshold=1.0) == pytest.approx(rho.mean(), rel=1e-8)
    assert svcca(Y, X, threshold=1.0) == pytest.approx(rho.mean(), rel=1e-8)
    # PWCCA: each correlation weighted by Σ_j |⟨h_i, x_j⟩| over X's centred neurons
    alpha = np.abs(h.T @ Xc).sum(axis=1)
    assert pwcca(X, Y) == pytest.approx(np.sum(alpha / alpha.sum() * s), rel=1e-8)

    # SVCCA at 0.99: each view reduced to the singular directions keeping 99 % first
    def reduced(v):
        v = _flat(v) - _flat(v).mean(axis=0)
        u, sv, _ = np.linalg.svd(v, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(sv**2) / np.sum(sv**2), 0.99 - 1e-12) + 1)
        return u[:, :k] * sv[:k]

    angles = subspace_angles(reduced(X), reduced(Y))
    assert svcca(X, Y) == pytest.approx(np.cos(angles).mean(), rel=1e-8)


def test_orbit_metrics_still_need_one_shape():
    """G-EED compares f(gx) with g·f(x) (channelwise) or points of one space (latent,
    softmax): the same shape by definition, said naming the orbit element."""
    a, b = np.zeros((4, 3, 5, 5)), np.zeros((4, 2, 5, 5))
    for metric in (metrics.latent_geed, metrics.softmax_geed):
        with pytest.raises(ValueError, match=r"orbit\[1\] has shape \(4, 2, 5, 5\); every "
                           r"element must have orbit\[0\]'s shape \(4, 3, 5, 5\)"):  # fmt: skip
            metric([a, b])
    with pytest.raises(ValueError, match=r"orbit\[1\] has shape"):
        metrics.channelwise_geed([a, b], [lambda x: x] * 2)


def _minibatch_definition(X, Y, size, debiased):
    """The minibatch CKA of Nguyen, Raghu & Kornblith (2021): HSIC estimates of each
    batch summed, then the ratio (from the definitions above)."""
    hsic = _hsic_unbiased if debiased else _hsic_biased
    terms = np.zeros(3)
    for start in range(0, len(X), size):
        x, y = _flat(X[start : start + size]), _flat(Y[start : start + size])
        K, L = x @ x.T, y @ y.T
        terms += [hsic(K, L), hsic(K, K), hsic(L, L)]
    return terms[0] / np.sqrt(terms[1] * terms[2])


def test_minibatch_cka_against_its_definition(rng):
    X = rng.normal(size=(40, 6, 3)) + 1.0
    Y = X[:, :2] @ rng.normal(size=(3, 3)) + rng.normal(size=(40, 2, 3))
    for size in (40, 16, 10):
        sums = MinibatchCKA()
        for start in range(0, 40, size):
            sums.add(X[start : start + size], Y[start : start + size])
        again = MinibatchCKA.from_state(sums.state())
        for debiased in (False, True):
            want = _minibatch_definition(X, Y, size, debiased)
            assert sums.value(debiased=debiased) == pytest.approx(want, abs=1e-12)
            assert again.value(debiased=debiased) == sums.value(debiased=debiased)
            if size == 40:  # one batch of every sample: linear_cka exactly
                assert sums.value(debiased=debiased) == pytest.approx(
                    linear_cka(X, Y, debiased=debiased), abs=1e-12
                )
    small = MinibatchCKA()
    small.add(X[:3], Y[:3])  # too few for the unbiased estimator: skipped, said
    assert small.skipped.tolist() == [0, 3]
    with pytest.raises(ValueError, match="no batch of at least 4 samples"):
        small.value(debiased=True)
    constant = MinibatchCKA()
    constant.add(np.ones((8, 3)), Y[:8])
    with pytest.raises(ValueError, match="A is constant"):
        constant.value()
    with pytest.raises(ValueError, match="A has no variance left"):
        constant.value(debiased=True)


# ------------------------------------------------------------ the report's CKA columns


def _report_net(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 5),
    ).eval()


def test_report_cka_columns_are_linear_cka_and_the_similarity_map_diagonal():
    """One name, one meaning: a report's ``cka``/``cka_debiased`` are the standard CKA
    of the flattened activations — ``linear_cka`` of them and the diagonal of the map
    of the model against itself under the transform — whatever matricization the
    report scores the layer in (spatial for the 8×8 maps, flatten for the head under
    ``"auto"``), to float32 rounding (separate forward passes)."""
    torch = pytest.importorskip("torch")
    from seis_sklearn.adapters.torch import extract_activations, layerwise_seis, similarity_map
    from seis_sklearn.adapters.torch import transforms as TT

    net = _report_net(torch)
    x = torch.randn(48, 3, 8, 8)
    layers = ["0", "3", "6"]
    columns = ["cka", "cka_debiased"]
    a = extract_activations(net, x, layers, progress=False)
    b = extract_activations(net, TT.rot90(x), layers, progress=False)

    def report(**kwargs):
        frame = layerwise_seis(net, x, {"rot90": TT.rot90}, layers=layers, metrics=columns,
                               progress=False, **kwargs)  # fmt: skip
        return frame.set_index("layer")

    stored = report(held_out=None, batch_size=16)  # exact over all samples
    one_batch = report(held_out=0.2, batch_size=64)  # streamed, one batch of all 48
    assert list(one_batch["matricization"]) == ["spatial", "spatial", "flatten"]
    flat = report(held_out=0.2, batch_size=64, matricization="flatten")
    for name in columns:
        debiased = name == "cka_debiased"
        cka_map = similarity_map(net, x, layers, transform=TT.rot90, metric=name,
                                 batch_size=64, progress=False)  # fmt: skip
        for layer in layers:
            want = _cka_definition(a[layer], b[layer], debiased)
            # float32 activations of separate passes: their rounding (ε₃₂) amplified by
            # the centring's cancellation, as the products are in float64
            tol = 64 * EPS32 * _amplification(a[layer], b[layer])
            got = [linear_cka(a[layer], b[layer], debiased=debiased), stored.loc[layer, name],
                   one_batch.loc[layer, name], flat.loc[layer, name],
                   cka_map.loc[layer, layer]]  # fmt: skip
            assert np.allclose(got, want, rtol=0, atol=tol), (layer, name, got, want, tol)
    # smaller batches: the streamed columns are the map's minibatch estimator, the same
    # batches (16 + 16 + 16), and differ from the one-batch value
    streamed = report(held_out=0.2, batch_size=16)
    for name in columns:
        cka_map = similarity_map(net, x, layers, transform=TT.rot90, metric=name,
                                 batch_size=16, progress=False)  # fmt: skip
        for layer in layers:
            want = _minibatch_definition(a[layer], b[layer], 16, name == "cka_debiased")
            tol = 64 * EPS32 * _amplification(a[layer], b[layer])
            assert streamed.loc[layer, name] == pytest.approx(want, abs=tol)
            assert cka_map.loc[layer, layer] == pytest.approx(want, abs=tol)
