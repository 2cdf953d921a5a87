"""The torch accumulator gives the numpy path's statistics, on every device torch has
here: CPU tensors always, CUDA tensors where a GPU is present (the device check of
``benchmarks/device_check.sh`` runs these there)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn import SEISScorer  # noqa: E402
from seis_sklearn._accumulate import accumulate, accumulator, backend_of  # noqa: E402
from tests.test_moments import SHAPES, _pair, centred_rows  # noqa: E402
from tests.tolerance import assert_scores_close, scorer_tolerance  # noqa: E402

# CUDA only where there is one: no parameter stands in for a device that is absent
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _on(device, *arrays):
    """The arrays as tensors on ``device``."""
    return [torch.from_numpy(a).to(device) for a in arrays]


@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("mode", ["spatial", "flatten", "channel"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_moments_equal_the_numpy_path(layout, mode, dtype, device, rng):
    A, B = _pair(rng, SHAPES[layout], dtype, "C")
    want = accumulate([A, B], layout, mode, names=("A", "B"))
    tensors = _on(device, A, B)
    assert backend_of(tensors) == "torch"
    got = accumulate(tensors, layout, mode, names=("A", "B"))
    # the same sums in another order: float64 to 1e-12, float32 products to their rounding
    tol = 1e-12 if dtype == np.float64 else 2e-6
    scale = np.abs(want.auto).max()
    assert got.n_samples == want.n_samples and got.mean.shape == want.mean.shape
    np.testing.assert_allclose(
        got.mean, want.mean, rtol=1e-12, atol=1e-12 * np.abs(want.mean).max()
    )
    assert np.abs(got.auto - want.auto).max() <= tol * scale
    assert np.abs(got.cross - want.cross).max() <= tol * scale


@pytest.mark.parametrize("device", DEVICES)
def test_batches_indices_projection_and_errors(device, rng):
    A, B = _pair(rng, (60, 3, 6, 6), np.float64, "C")
    tensors = _on(device, A, B)
    acc = accumulator(tensors, "NCHW", "spatial", names=("A", "B"))
    for lo, hi in ((0, 7), (7, 8), (8, 60)):  # batches of any size, merged exactly
        acc.add([t[lo:hi] for t in tensors])
    want = accumulate([A, B], "NCHW", "spatial", names=("A", "B"))
    np.testing.assert_allclose(acc.result().auto, want.auto, rtol=1e-12, atol=1e-12)
    take = np.arange(0, 60, 3)
    sub = accumulate(tensors, "NCHW", "spatial", names=("A", "B"), indices=take)
    np.testing.assert_allclose(
        sub.cross, accumulate([A, B], "NCHW", "spatial", names=None, indices=take).cross,
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    V = np.linalg.qr(rng.normal(size=(36, 5)))[0]
    proj = accumulate(tensors, "NCHW", "spatial", names=("A", "B"), projection=V)
    np.testing.assert_allclose(
        proj.auto, accumulate([A, B], "NCHW", "spatial", names=None, projection=V).auto,
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    bad = A.copy()
    bad[5, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"B contains 1 NaN and 0 infinite"):
        accumulate([tensors[0], torch.from_numpy(bad).to(device)], "NCHW", "spatial",
                   names=("A", "B"))  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_scores_from_torch_moments_equal_numpy_scores(dtype, device, rng):
    """≤ the case's rounding bound in float64; float32 scores within 1e-4 (SPEC §2.6)."""
    A = rng.normal(size=(200, 8, 6, 6))
    B = np.rot90(A, axes=(2, 3)) + 0.5 * rng.normal(size=A.shape)
    A, B = A.astype(dtype), B.astype(dtype)
    want = SEISScorer(n_components=0.95).fit(A, B)
    tensors = _on(device, A, B)
    moments = accumulate(tensors, "NCHW", "spatial", names=("A", "B"))
    got = SEISScorer(n_components=0.95)._fit_from_moments(moments, "NCHW", A.shape[1:])
    tol = scorer_tolerance(want, dtype=dtype) if dtype == np.float64 else 1e-4
    assert_scores_close(got.result_, want.result_, tol)


@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("mode", ["spatial", "flatten", "channel"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_gram_equals_the_numpy_gram(layout, mode, dtype, device, rng, monkeypatch):
    """The Gram pass on the tensors' device: the numpy pass's Gram matrix, means and
    ``V_k`` (several column chunks: the chunk budget is made small for both)."""
    import seis_sklearn._torch as torch_module
    from seis_sklearn._accumulate import accumulate_gram, gram_components
    from seis_sklearn._cca import gram_basis
    from seis_sklearn._validation import CHUNK_BYTES

    A, B = _pair(rng, SHAPES[layout], dtype, "C")
    monkeypatch.setattr("seis_sklearn._gram.CHUNK_BYTES", 64)
    monkeypatch.setattr(torch_module, "CHUNK_BYTES", 64)
    assert CHUNK_BYTES > 64
    want = accumulate_gram([A, B], layout, mode, names=("A", "B"))
    tensors = _on(device, A, B)
    got = accumulate_gram(tensors, layout, mode, names=("A", "B"))
    assert isinstance(got.gram, np.ndarray) and isinstance(got.mean, np.ndarray)
    assert got.n_rows == want.n_rows and got.gram.shape == want.gram.shape
    # Both sides round the same centred values to the product dtype and differ only in
    # the order of the sums: each Gram entry sums d products (one column chunk at a
    # time), so |error| <= 2·d·eps·|z_i|·|z_j| <= 2·d·eps·max diagonal.
    eps = np.finfo(dtype).eps
    d = A[0].size
    assert np.abs(got.gram - want.gram).max() <= 2 * d * eps * np.diagonal(want.gram).max()
    np.testing.assert_allclose(
        got.mean, want.mean, rtol=1e-12, atol=1e-12 * np.abs(want.mean).max()
    )
    basis = gram_basis(want, 0.9)
    V = gram_components(tensors, layout, mode, basis, names=("A", "B"))
    V_numpy = gram_components([A, B], layout, mode, basis, names=("A", "B"))
    assert isinstance(V, np.ndarray) and V.shape == V_numpy.shape
    # each entry of V sums G·m products z·c: |error| <= 2·G·m·eps·(|Z|ᵀ|C|)
    Z = np.concatenate([centred_rows(a, layout, mode) for a in (A, B)])
    bound = 2 * Z.shape[0] * eps * (np.abs(Z).T @ np.abs(basis.coefficients))
    assert np.all(np.abs(V - V_numpy) <= bound)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_gram_names_the_view_with_nan(device, rng):
    from seis_sklearn._accumulate import accumulate_gram

    A, B = _pair(rng, (20, 3, 4, 4), np.float32, "C")
    B[3, 0, 1, 1] = np.inf
    tensors = _on(device, A, B)
    with pytest.raises(ValueError, match=r"B contains 0 NaN and 1 infinite"):
        accumulate_gram(tensors, "NCHW", "flatten", names=("A", "B"))


@pytest.mark.parametrize("device", DEVICES)
def test_rows_first_keeps_tensors_on_their_device(device, rng):
    """A wide layer's samples are kept as tensors where they are (copies of the selected
    rows) until they would outgrow the moments; then the moments of all of them."""
    from seis_sklearn._accumulate import RowsFirst

    A, B = _pair(rng, (30, 2, 8, 8), np.float32, "C")
    tensors = _on(device, A, B)
    acc = RowsFirst(tensors, "NCHW", "flatten", names=("A", "B"))
    acc.add([t[:10] for t in tensors], np.arange(0, 10, 2))
    acc.add([t[10:] for t in tensors])
    assert acc.kept and acc.n_samples == 25
    rows = acc.rows()
    assert all(isinstance(r, torch.Tensor) and r.device.type == device for r in rows)
    expect = np.concatenate([A[0:10:2], A[10:]])
    np.testing.assert_array_equal(rows[0].cpu().numpy(), expect)
    sample = 2 * 128 * 4  # bytes of one sample of both views
    small = RowsFirst(tensors, "NCHW", "flatten", names=("A", "B"), budget=3 * sample)
    small.add([t[:2] for t in tensors])
    small.add([t[2:5] for t in tensors])  # 5 samples > 3: moments from here on
    assert not small.kept and small.rows() is None and small.n_samples == 5
    got = small.result()
    want = accumulate([A[:5], B[:5]], "NCHW", "flatten", names=None)
    scale = np.abs(want.auto).max()
    assert np.abs(got.auto - want.auto).max() <= 2e-6 * scale  # float32 products
    assert np.abs(got.cross - want.cross).max() <= 2e-6 * scale
    tensors[0].zero_()  # the kept rows are copies
    np.testing.assert_array_equal(acc.rows()[0].cpu().numpy(), expect)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_fit_on_kept_tensors_equals_the_fit_on_arrays(dtype, device, rng):
    """Kept rows given as tensors are fitted where they are, by the solver the same rows
    get as arrays (Gram for few wide rows, moments otherwise), with the same scores."""
    for shape, solver in (((40, 2, 8, 8), "gram"), ((300, 2, 3, 3), "moments")):
        A, B = _pair(rng, shape, dtype, "C")
        want = SEISScorer(n_components=0.9, matricization="flatten", layout="NCHW")
        want = want._fit_rows([A, B], ("A", "B"))
        tensors = _on(device, A, B)
        got = SEISScorer(n_components=0.9, matricization="flatten", layout="NCHW")
        got = got._fit_rows(tensors, ("A", "B"))
        assert got.solver_ == want.solver_ == solver
        assert got.components_.shape == want.components_.shape
        tol = scorer_tolerance(want, dtype=dtype) if dtype == np.float64 else 1e-4
        assert_scores_close(got.result_, want.result_, tol)
        assert_scores_close(got.scores(A, B), want.scores(A, B), tol)  # V_k used to score


@pytest.mark.parametrize("device", DEVICES)
def test_torch_float32_extremes_and_overflows(device, rng):
    """float32 products rescaled on the device by exact powers of two (no host read),
    as the numpy path rescales them; the errors of the numpy path, naming the view."""
    A = rng.normal(size=(40, 3, 6, 6))
    B = np.roll(A, 1, axis=1) + 0.3 * rng.normal(size=A.shape)
    for scale in (2.0**-100, 2.0**-30, 2.0**40, 2.0**100):
        pair = [(A * scale).astype(np.float32), (B * scale).astype(np.float32)]
        want = accumulate(pair, "NCHW", "spatial", names=("A", "B"))
        tensors = _on(device, *pair)
        got = accumulate(tensors, "NCHW", "spatial", names=("A", "B"))
        top = np.abs(want.auto).max()
        assert np.isfinite(got.auto).all() and top > 0
        assert np.abs(got.auto - want.auto).max() <= 2e-6 * top  # as at scale 1
        assert np.abs(got.cross - want.cross).max() <= 2e-6 * top
    big = np.float32(3e38)
    X = rng.normal(size=(8, 2, 4, 4)).astype(np.float32)
    Y = X.copy()
    Y[:6, 0, 0, 0], Y[6:, 0, 0, 0] = big, -big  # mean 1.5e38: -big - mean overflows
    tensors = _on(device, X, Y)
    with pytest.raises(ValueError, match=r"B has float32 values so far from their means"):
        accumulate(tensors, "NCHW", "spatial", names=("A", "B"))
    with pytest.raises(ValueError, match=r"A has finite values whose sums overflow float64"):
        huge = torch.from_numpy(A[:8, :2, :4, :4] * 1e200).to(device)
        accumulate([huge, huge], "NCHW", "spatial", names=("A", "B"))


def test_one_host_read_per_batch_whatever_its_chunks(rng, monkeypatch):
    """Every read of a device value by the host is a synchronisation on a GPU: the
    accumulator makes one per batch (its checks), not one per chunk."""
    A, B = _pair(rng, (256, 64, 4, 4), np.float32, "C")  # 64 rows a sample: 64 per chunk
    tensors = [torch.from_numpy(A), torch.from_numpy(B)]
    acc = accumulator(tensors, "NCHW", "spatial", names=("A", "B"))
    reads = []
    for method in ("__bool__", "__float__", "__int__", "item", "cpu", "tolist"):
        real = getattr(torch.Tensor, method)

        def spy(self, *args, _real=real, _method=method, **kwargs):
            reads.append(_method)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, spy)
    acc.add(tensors)
    assert acc.n_samples == 256 and acc.step == 64  # four chunks
    assert len(reads) == 1, reads


@pytest.mark.parametrize("device", DEVICES)
def test_sample_indices_are_copied_to_the_device_once_per_pattern(device, rng, monkeypatch):
    """A copy host → device synchronises on a GPU: the index sets of a stream's batches
    (a few patterns that repeat) are copied once each, and select the right samples."""
    from seis_sklearn import _torch

    copies = []
    real = torch.as_tensor

    def spy(data, *args, **kwargs):
        copies.append(kwargs.get("device"))
        return real(data, *args, **kwargs)

    _torch._cached_indices.cache_clear()
    monkeypatch.setattr(torch, "as_tensor", spy)
    A, B = _pair(rng, (20, 2, 3, 3), np.float64, "C")
    tensors = [real(A).to(device), real(B).to(device)]
    acc = accumulator(tensors, "NCHW", "spatial", names=("A", "B"))
    patterns = [np.array([0, 2, 3]), np.array([1, 4]), np.array([0, 2, 3]), np.array([1, 4])]
    for take in patterns:
        acc.add(tensors, take)
    assert sum(str(c).startswith(device) for c in copies) == 2  # two distinct patterns
    want = accumulate(
        [np.concatenate([A[p] for p in patterns]), np.concatenate([B[p] for p in patterns])],
        "NCHW", "spatial", names=None,
    )  # fmt: skip
    np.testing.assert_allclose(acc.result().auto, want.auto, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_gram_extreme_scales_and_overflow(device, rng):
    """The Gram pass rescales float32 columns by exact powers of two as the numpy pass
    does; float64 products that overflow name the view (or raise NonFiniteError)."""
    from seis_sklearn._accumulate import accumulate_gram
    from seis_sklearn._moments import NonFiniteError

    A = rng.normal(size=(12, 2, 5, 5))
    B = np.roll(A, 1, axis=1) + 0.3 * rng.normal(size=A.shape)
    for scale in (2.0**-100, 2.0**100):
        pair = [(A * scale).astype(np.float32), (B * scale).astype(np.float32)]
        want = accumulate_gram(pair, "NCHW", "flatten", names=("A", "B"))
        got = accumulate_gram(_on(device, *pair), "NCHW", "flatten", names=("A", "B"))
        top = np.diagonal(want.gram).max()
        assert np.isfinite(got.gram).all() and top > 0
        d = A[0].size  # each entry sums d products: the bound of the Gram test above
        assert np.abs(got.gram - want.gram).max() <= 2 * d * np.finfo(np.float32).eps * top
    huge = _on(device, A, B * 1e200)
    with pytest.raises(ValueError, match=r"B has finite values whose sums overflow float64"):
        accumulate_gram(huge, "NCHW", "flatten", names=("A", "B"))
    with pytest.raises(NonFiniteError) as caught:
        accumulate_gram(huge, "NCHW", "flatten", names=None)
    assert caught.value.view == 1
