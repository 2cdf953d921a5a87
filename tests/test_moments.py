"""The one-pass kernels: moments and Gram against direct numpy, both solvers agree."""

import numpy as np
import pytest

from seis_sklearn import SEISScorer, seis_score
from seis_sklearn._accumulate import accumulate
from seis_sklearn._gram import accumulate_gram
from seis_sklearn._moments import (
    FLOAT32_PRODUCT_ROWS,
    MomentAccumulator,
    _file_mappings,
    check_moment_memory,
)
from tests.reference import reference_matricize
from tests.tolerance import assert_scores_close, score_tolerance, scorer_tolerance

SHAPES = {
    "NCHW": (13, 3, 4, 5),
    "NHWC": (13, 4, 5, 3),
    "NCDHW": (9, 2, 3, 3, 4),
    "NLD": (13, 6, 4),
    "ND": (40, 7),
}


def centred_rows(a, layout, mode):
    """The matricized rows of ``a`` in float64, each feature centred over the samples."""
    a = np.asarray(a, dtype=np.float64)
    return reference_matricize(a - a.mean(axis=0), layout, mode)


def _direct(arrays, layout, mode):
    """Per-feature means (G, R, d) and the per-feature centred products (SPEC §2.1)."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    means = [a.mean(axis=0) for a in arrays]
    Pc = [centred_rows(a, layout, mode) for a in arrays]
    return (
        np.stack([reference_matricize(mu[None], layout, mode) for mu in means]),
        np.stack([z.T @ z for z in Pc]),
        np.stack([Pc[0].T @ z for z in Pc[1:]]),
    )


def _pair(rng, shape, dtype, order):
    A = (rng.normal(size=shape) * 3 + 10).astype(dtype)  # offset: centring matters
    B = (np.flip(A, axis=-1) * 0.5 + rng.normal(size=shape)).astype(dtype)
    return np.asarray(A, order=order), np.asarray(B, order=order)


@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("mode", ["spatial", "flatten", "channel"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order", ["C", "F"])
def test_moments_equal_direct_numpy(layout, mode, dtype, order, rng):
    A, B = _pair(rng, SHAPES[layout], dtype, order)
    moments = accumulate([A, B], layout, mode, names=("A", "B"))
    mean, auto, cross = _direct([A, B], layout, mode)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    scale = np.abs(auto).max()
    assert moments.n_rows == reference_matricize(A, layout, mode).shape[0]
    assert np.allclose(moments.mean, mean, rtol=1e-12, atol=1e-12 * np.abs(mean).max())
    assert np.abs(moments.auto - auto).max() <= tol * scale
    assert np.abs(moments.cross - cross).max() <= tol * scale
    assert np.array_equal(moments.auto, moments.auto.transpose(0, 2, 1))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NLD", "ND"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gram_equals_direct_numpy(layout, dtype, rng):
    A, B = _pair(rng, SHAPES[layout], dtype, "C")
    gm = accumulate_gram([A, B], layout, "flatten", names=("A", "B"))
    P = [reference_matricize(x, layout, "flatten") for x in (A, B)]
    Z = np.vstack([p - p.mean(axis=0) for p in P])
    tol = 1e-12 if dtype == np.float64 else 2e-6
    assert np.abs(gm.gram - Z @ Z.T).max() <= tol * np.abs(Z @ Z.T).max()


def test_many_chunks_and_float32_products(rng):
    """Chunks of FLOAT32_PRODUCT_ROWS rows merged exactly, float32 products within 1e-6."""
    n = 3 * FLOAT32_PRODUCT_ROWS + 17
    A = rng.normal(size=(n, 6)) + 100.0
    B = A @ rng.normal(size=(6, 6)) + rng.normal(size=(n, 6))
    mean, auto, cross = _direct([A, B], "ND", "flatten")
    m64 = accumulate([A, B], "ND", "flatten", names=("A", "B"))
    m32 = accumulate(
        [A.astype(np.float32), B.astype(np.float32)], "ND", "flatten", names=("A", "B")
    )
    assert np.abs(m64.auto - auto).max() <= 1e-11 * np.abs(auto).max()
    # float32 input: the data themselves differ by float32 rounding, ~1e-7 relative
    assert np.abs(m32.auto - auto).max() <= 1e-5 * np.abs(auto).max()
    assert np.abs(m32.cross - cross).max() <= 1e-5 * np.abs(auto).max()


def test_accumulator_matches_a_single_block(rng):
    blocks = [rng.normal(size=(50, 4)) for _ in range(3)]
    acc = MomentAccumulator(3, 1, 4, np.float64)
    for lo, hi in ((0, 7), (7, 8), (8, 50)):
        acc.add([b[lo:hi, None] for b in blocks])
    mean, auto, cross = _direct(blocks, "ND", "flatten")
    got = acc.result()
    assert np.allclose(got.auto, auto, rtol=1e-12) and np.allclose(got.cross, cross, rtol=1e-12)
    assert np.allclose(got.mean, mean, rtol=1e-13)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NCDHW", "NLD", "ND"])
@pytest.mark.parametrize("mode", ["flatten", "spatial"])
def test_gram_solver_equals_moment_solver(layout, mode, rng):
    """Both solvers within the rounding bound of the case (tests/tolerance.py).

    These shapes keep k close to the rows (13 samples), so the held-out and
    cross-fitted bounds are wide: they scale with 1 / (1 − ρ_max).
    """
    A, B = _pair(rng, SHAPES[layout], np.float64, "C")
    kw = dict(layout=layout, matricization=mode, n_components=0.95)
    moments = seis_score(A, B, solver="moments", **kw, cv=None)
    gram = seis_score(A, B, solver="gram", **kw, cv=None)
    assert gram.n_components == moments.n_components
    assert_scores_close(gram, moments, score_tolerance(A, B, **kw))
    # held-out, through the fitted directions V_k of each solver
    A2, B2 = _pair(rng, SHAPES[layout], np.float64, "C")
    fitted = [SEISScorer(solver=s, **kw).fit(A, B) for s in ("moments", "gram")]
    held = [f.scores(A2, B2) for f in fitted]
    tol = scorer_tolerance(fitted[0], held_out=True)
    assert_scores_close(held[1], held[0], tol, correlations=False)
    cv = [seis_score(A, B, cv=3, solver=s, **kw) for s in ("moments", "gram")]
    assert_scores_close(cv[1], cv[0], score_tolerance(A, B, cv=3, **kw), correlations=False)


def test_auto_solver_takes_the_gram_path_for_wide_data(rng):
    # d = 2^17 columns: d × d moments would need 384 GiB; the Gram matrix is 24 × 24
    A = rng.normal(size=(12, 2, 256, 256)).astype(np.float32)
    B = np.roll(A, 3, axis=3)
    scorer = SEISScorer(matricization="flatten", n_components=1.0).fit(A, B)
    assert scorer.solver_ == "gram" and scorer.components_.shape == (scorer.n_components_, 2**17)
    assert scorer.result_.equivariance == pytest.approx(1, abs=1e-4)  # a column permutation
    narrow = SEISScorer(matricization="flatten").fit(A[:, :, :2, :2], B[:, :, :2, :2])
    assert narrow.solver_ == "moments"  # d = 8 <= 2m = 24
    with pytest.raises(ValueError, match=r"need 384\.0 GiB .* use fit with solver='gram'"):
        seis_score(A, B, matricization="flatten", solver="moments", cv=None)


def test_gram_solver_refuses_streaming(rng):
    A = rng.normal(size=(10, 50))
    with pytest.raises(ValueError, match="solver='gram' needs every sample at once"):
        SEISScorer(solver="gram").partial_fit(A, A)
    fitted = SEISScorer(solver="gram").fit(A, A).set_params(solver="auto")
    with pytest.raises(ValueError, match="fitted with the Gram solver, which cannot add samples"):
        fitted.partial_fit(A, A)
    with pytest.raises(ValueError, match="solver must be one of 'auto', 'moments', 'gram'"):
        seis_score(A, A, solver="svd", cv=None)


def test_check_moment_memory_passes_small_and_refuses_huge():
    check_moment_memory(2, 1024)
    with pytest.raises(ValueError, match="GiB"):
        check_moment_memory(2, 10**6)


def test_memory_mapped_inputs(tmp_path, rng):
    A = rng.normal(size=(30, 3, 6, 6)).astype(np.float32)
    np.save(tmp_path / "a.npy", A)
    np.save(tmp_path / "b.npy", np.rot90(A, axes=(2, 3)))
    a = np.load(tmp_path / "a.npy", mmap_mode="r")
    b = np.load(tmp_path / "b.npy", mmap_mode="r")
    assert not a.flags.writeable and len(_file_mappings(a[3:10])) == 1
    assert _file_mappings(np.load(tmp_path / "a.npy", mmap_mode="c")) == []  # copy-on-write
    for solver in ("moments", "gram"):
        assert (
            seis_score(a, b, solver=solver, cv=None).as_dict()
            == seis_score(np.array(a), np.array(b), solver=solver, cv=None).as_dict()
        )
    assert float(a.sum()) == pytest.approx(float(A.sum()))  # still readable after release


WIDE_SHAPES = {  # C order: the Numba kernel reads strided views; F order: numpy copies
    "NCHW": (6, 3, 16, 17),
    "NHWC": (6, 16, 17, 3),
    "NCDHW": (5, 2, 2, 12, 12),
    "NLD": (6, 300, 4),
    "ND": (40, 300),
}


@pytest.mark.parametrize("layout", list(WIDE_SHAPES))
@pytest.mark.parametrize("mode", ["spatial", "flatten"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("order", ["C", "F"])
def test_numba_centring_path_equals_direct_numpy(layout, mode, dtype, order, rng, monkeypatch):
    from seis_sklearn import _moments

    calls = []
    kernel = _moments.centre_into_view
    monkeypatch.setattr(_moments, "centre_into_view", lambda *a: calls.append(1) or kernel(*a))
    A, B = _pair(rng, WIDE_SHAPES[layout], dtype, order)
    moments = accumulate([A, B], layout, mode, names=("A", "B"))
    if order == "C":  # every C-ordered layout is read as a strided view, at any width
        assert calls
    mean, auto, cross = _direct([A, B], layout, mode)
    tol = 1e-12 if dtype == np.float64 else 2e-6
    scale = np.abs(auto).max()
    assert np.allclose(moments.mean, mean, rtol=1e-12, atol=1e-12 * np.abs(mean).max())
    assert np.abs(moments.auto - auto).max() <= tol * scale
    assert np.abs(moments.cross - cross).max() <= tol * scale


def test_numba_path_on_read_only_memory_maps_and_nan(tmp_path, rng):
    A = rng.normal(size=(8, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "a.npy", A)
    a = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert (
        seis_score(a, a[:, ::-1].copy(), cv=None).as_dict()
        == seis_score(A, A[:, ::-1].copy(), cv=None).as_dict()
    )
    bad = A.copy()
    bad[3, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"B contains 1 NaN and 0 infinite"):
        seis_score(A, bad, cv=None)
    with pytest.raises(ValueError, match=r"A contains 0 NaN and 1 infinite"):
        seis_score(np.where(bad != bad, np.inf, bad), A, cv=None)


def test_gram_solver_extreme_scales_overflow_and_constant_views(rng):
    A = rng.normal(size=(10, 3, 8, 8))
    B = np.roll(A, 1, axis=1) + 0.3 * rng.normal(size=A.shape)
    reference = seis_score(A, B, matricization="flatten", solver="gram", cv=None)
    for scale in (1e-30, 1e30):  # float32 products rescaled by exact powers of two
        tiny = seis_score(
            (A * scale).astype(np.float32),
            (B * scale).astype(np.float32),
            matricization="flatten",
            solver="gram",
            cv=None,
        )
        assert tiny.equivariance == pytest.approx(reference.equivariance, abs=1e-4)
    with pytest.raises(ValueError, match="sums overflow float64"):
        seis_score(A * 1e200, B, matricization="flatten", solver="gram", cv=None)
    with pytest.raises(ValueError, match="no variance after centring"):
        seis_score(np.ones((10, 50)), np.ones((10, 50)), solver="gram", cv=None)
    bad = B.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"B contains 0 NaN and 1 infinite"):
        seis_score(A, bad, matricization="flatten", solver="gram", cv=None)


@pytest.fixture
def rescaled_rows(monkeypatch):
    """Rows of every product the moment pass redoes with rescaled values, per call."""
    from seis_sklearn import _moments

    calls = []
    rescale = _moments.MomentAccumulator._add_rescaled
    monkeypatch.setattr(
        _moments.MomentAccumulator,
        "_add_rescaled",
        lambda self, rows: calls.append(len(rows)) or rescale(self, rows),
    )
    return calls


def _streamed_in_batches_of_7(A, B):
    """A float32 NCHW pair added to a spatial accumulator 7 samples at a time."""
    from seis_sklearn._accumulate import accumulator

    acc = accumulator([A, B], "NCHW", "spatial", names=("A", "B"))
    for lo in range(0, len(A), 7):
        acc.add([A[lo : lo + 7], B[lo : lo + 7]])
    return acc


def test_float32_rows_pool_across_small_batches(rng, rescaled_rows):
    """Streaming float32: small batches pool their rows into one product (up to
    FLOAT32_PRODUCT_ROWS); values in float32's safe range are never rescaled, so
    the common product is the only one."""
    A = rng.normal(size=(90, 3, 4, 4)) + 5.0
    B = np.flip(A, axis=3) + rng.normal(size=A.shape)
    A[60:70] *= 1e9  # large, but their products stay far below float32's overflow
    B[60:70] *= 1e9
    A32, B32 = A.astype(np.float32), B.astype(np.float32)
    acc = _streamed_in_batches_of_7(A32, B32)
    assert acc._acc._pending > 0  # the last rows still wait for their product
    got = acc.result()
    mean, auto, cross = _direct([A32, B32], "NCHW", "spatial")
    scale = np.abs(auto).max()
    assert got.n_samples == 90
    assert np.abs(got.auto - auto).max() <= 2e-6 * scale
    assert np.abs(got.cross - cross).max() <= 2e-6 * scale
    assert rescaled_rows == []


@pytest.mark.parametrize("factor", [1e25, 1e-25, 0.0])
def test_float32_products_that_would_over_or_underflow_are_rescaled(rng, rescaled_rows, factor):
    """A product whose diagonal shows over- or underflow (or is zero) is done again,
    each pooled chunk multiplied by the power of two its own range needs: the
    moments keep float32's relative precision. 1e25: some chunks' squares pass
    float32's largest value; 1e-25: every square is below its smallest; 0: one
    view is all zero (nothing to rescale, the same zeros)."""
    A = rng.normal(size=(90, 3, 4, 4))
    B = np.flip(A, axis=3) + rng.normal(size=A.shape)
    if factor > 1:
        A[60:70] *= factor  # only some chunks
        B[60:70] *= factor
    else:
        A *= factor
    A32, B32 = A.astype(np.float32), B.astype(np.float32)
    got = _streamed_in_batches_of_7(A32, B32).result()
    mean, auto, cross = _direct([A32, B32], "NCHW", "spatial")
    assert rescaled_rows and sum(rescaled_rows) == 90 * 3  # every pooled chunk, one by one
    for g in range(2):
        scale = np.abs(auto[g]).max()
        assert np.abs(got.auto[g] - auto[g]).max() <= 2e-6 * scale
    if factor:
        scale = np.sqrt(np.abs(auto[0]).max() * np.abs(auto[1]).max())
        assert np.abs(got.cross - cross).max() <= 2e-6 * scale
    else:
        assert not got.cross.any() and not got.auto[0].any()


def test_float32_centring_overflow_names_the_argument(rng):
    """Finite float32 values whose distance from the mean passes float32's largest
    value: one clear error naming the argument, from add() or from result()."""
    from seis_sklearn._accumulate import accumulator

    big = np.float32(3e38)
    A = rng.normal(size=(8, 2, 4, 4)).astype(np.float32)
    B = A.copy()
    B[:6, 0, 0, 0], B[6:, 0, 0, 0] = big, -big  # mean 1.5e38: -big - mean overflows
    acc = accumulator([A, B], "NCHW", "spatial", names=("A", "B"))
    with pytest.raises(ValueError, match=r"B has float32 values so far from their means"):
        acc.add([A, B]).result()
    with pytest.raises(ValueError, match=r"B has float32 values so far from their means"):
        seis_score(A, B, cv=None)


def test_add_lower_triangle_adds_on_and_below_the_diagonal(rng):
    from seis_sklearn._kernels import add_lower_triangle

    total = rng.normal(size=(7, 7))
    part = rng.normal(size=(7, 7)).astype(np.float32)
    expected = total + np.tril(part.astype(np.float64))
    add_lower_triangle(total, part)
    assert np.array_equal(total, expected)


def test_rows_first_keeps_rows_until_their_moments_are_smaller(rng):
    """RowsFirst keeps the selected samples (in order) while they take at most its
    budget, then moves them into an ordinary accumulator: the moments are the same
    statistics either way (rounding of the sums only)."""
    from seis_sklearn._accumulate import RowsFirst

    A, B = _pair(rng, (40, 3, 4, 5), np.float64, "C")
    sample = 2 * A[:1].nbytes
    pick = [np.arange(0, 10, 2), np.arange(10, 20), np.arange(20, 40, 3)]
    want_rows = np.concatenate(pick)
    mean, auto, cross = _direct([A[want_rows], B[want_rows]], "NCHW", "spatial")
    scale = np.abs(auto).max()
    for budget, kept in ((sample * 40, True), (sample * 12, False), (0, False)):
        acc = RowsFirst([A, B], "NCHW", "spatial", names=("A", "B"), budget=budget)
        for idx in pick:
            acc.add([A, B], idx)
        assert acc.kept is kept and acc.n_samples == len(want_rows)
        rows = acc.rows()
        if kept:
            assert np.array_equal(rows[0], A[want_rows]) and np.array_equal(rows[1], B[want_rows])
            rows[0][:] = 0.0  # copies: the caller's arrays are untouched
            assert not np.array_equal(A[want_rows], rows[0])
        else:
            assert rows is None
        got = acc.result()
        assert np.allclose(got.mean, mean, rtol=1e-12, atol=1e-12 * np.abs(mean).max())
        assert np.abs(got.auto - auto).max() <= 1e-12 * scale
        assert np.abs(got.cross - cross).max() <= 1e-12 * scale
    # the default budget is the bytes of the moment accumulator's 2G − 1 float64 d × d
    # sums: d = 20 columns here
    acc = RowsFirst([A, B], "NCHW", "spatial", names=("A", "B"))
    assert acc.budget == 3 * 20**2 * 8


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, params",
    [
        ((8, 6, 6), {"matricization": "auto"}),  # spatial: d = 36
        ((300,), {"matricization": "auto"}),  # vectors: flatten, d = 300
        ((5, 2, 2), {"matricization": "auto"}),  # a 2×2 map: auto takes flatten, d = 20
        ((17, 12), {"matricization": "spatial", "layout": "NLD"}),  # tokens, 2 dropped
    ],
)
def test_statistics_bytes_bound_what_a_streamed_layer_holds(rng, dtype, shape, params):
    """What a report's memory budget (``transforms_per_pass="auto"``) counts for one
    transform of a layer is at least what its kept and held-out accumulators hold:
    the rows while they are kept, the moment accumulator's arrays after."""
    from seis_sklearn.adapters._common import statistics_bytes
    from seis_sklearn.adapters._layout import Reading

    from seis_sklearn._accumulate import RowsFirst
    from seis_sklearn._matricize import matrix_shape

    n_prefix = 2 if params.get("layout") == "NLD" else 0
    kept_shape = (shape[0] - n_prefix, *shape[1:]) if n_prefix else shape
    mode = "spatial" if len(shape) == 3 and shape[1] > 2 else "flatten"
    mode = params["matricization"] if params["matricization"] != "auto" else mode
    layout = params.get("layout", {3: "NCHW", 1: "ND"}.get(len(shape)))
    for n in (6, 2000):  # rows kept, then (2000 samples) moments
        A, B = (rng.normal(size=(n, *kept_shape)).astype(dtype) for _ in range(2))
        held = np.arange(n) % 5 == 0
        accs = [RowsFirst([A, B], layout, mode, names=None) for _ in range(2)]
        for acc, part in zip(accs, (~held, held), strict=True):
            for start in range(0, n, 128):  # batches of 128, as a report streams them
                idx = np.flatnonzero(part[start : start + 128]) + start
                if idx.size:
                    acc.add([A, B], idx)
        held_bytes = 0
        for acc in accs:
            if acc.kept:
                held_bytes += sum(p.nbytes for part in acc._parts for p in part)
            else:
                m = acc._acc._acc
                held_bytes += sum(
                    x.nbytes for x in (m.auto, m.lower, m._scratch, m._buffer, m._rows, m.sums,
                                       m.shift)
                    if x is not None
                )  # fmt: skip
        reading = Reading(layout, n_prefix)
        bound = statistics_bytes(shape, np.dtype(dtype).itemsize, n, params, reading)
        assert held_bytes <= bound
        assert held_bytes <= statistics_bytes(shape, np.dtype(dtype).itemsize, None, params,
                                              reading)  # fmt: skip
    # few samples: the bound is their rows, both views, exactly
    rows, d = matrix_shape((1, *kept_shape), layout, mode)
    assert statistics_bytes(shape, np.dtype(dtype).itemsize, 1, params, reading) == (
        rows * 2 * d * np.dtype(dtype).itemsize
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [slice(None), slice(None, None, 3)])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_syrk_lower_writes_the_lower_triangle_of_the_product(rng, dtype, rows, beta):
    from seis_sklearn import _blas

    x = rng.normal(size=(257, 40)).astype(dtype)[rows]  # a row-strided view too
    out = rng.normal(size=(40, 40)).astype(dtype)
    before = out.copy()
    lower_only = _blas.syrk_lower(x, out, beta=beta)
    want = x.astype(np.float64).T @ x.astype(np.float64) + beta * before
    # a sum of n products, each rounded: relative c·u·√n of the sum of absolute terms
    scale = np.abs(x).T.astype(np.float64) @ np.abs(x) + np.abs(before)
    tol = 4 * np.finfo(dtype).eps * np.sqrt(x.shape[0]) * scale
    assert (np.abs(np.tril(out - want)) <= np.tril(tol)).all()
    if lower_only:  # the strict upper triangle is left as it was
        np.testing.assert_array_equal(np.triu(out, 1), np.triu(before, 1))
    else:
        assert (np.abs(out - want) <= tol).all()


def test_numpy_openblas_is_used_where_numpy_ships_it():
    import glob
    import os

    from seis_sklearn import _blas

    shipped = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                     "*openblas*"))  # fmt: skip
    if shipped:  # numpy's Linux wheels: SYRK of that very library, both dtypes
        assert set(_blas._SYRK) == {np.dtype(np.float32), np.dtype(np.float64)}
    x = np.ones((3, 2), np.float32)
    out = np.zeros((2, 2), np.float32)
    assert _blas.syrk_lower(x, out) == bool(shipped)
    assert _blas.syrk_lower(x[:, ::2], np.zeros((1, 1), np.float32)) is False  # strided


@pytest.mark.parametrize("n", [1, 2, 37, 300])
def test_eigh_inplace_is_numpy_eigh_in_the_matrix_own_memory(rng, n):
    """numpy's own LAPACK dsyevd on the caller's matrix: on a symmetric matrix the
    bits numpy.linalg.eigh gives (the same routine reading the same numbers), the
    eigenvectors a view of the matrix; from either triangle alone the decomposition
    of the symmetric matrix it stands for; numpy's eigh where it cannot run."""
    import glob
    import os

    from seis_sklearn import _blas

    a = rng.normal(size=(n, n + 3))
    S = a @ a.T
    S = (S + S.T) / 2
    want_w, want_V = np.linalg.eigh(S)
    work = S.copy()
    w, V = _blas.eigh_inplace(work)
    np.testing.assert_array_equal(w, want_w)
    np.testing.assert_array_equal(V, want_V)
    shipped = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs",
                                     "*openblas*"))  # fmt: skip
    assert (V.base is work or np.shares_memory(V, work)) == bool(shipped)
    u = np.finfo(np.float64).eps
    for triangle, part in (("lower", np.tril(S)), ("upper", np.triu(S))):
        w, V = _blas.eigh_inplace(part.copy(), triangle=triangle)
        # backward stable: ‖S V − V diag(w)‖ ≤ c·n·u·‖S‖, eigenvalues within c·n·u·‖S‖
        norm = np.linalg.norm(S, 2)
        np.testing.assert_allclose(w, want_w, rtol=0, atol=16 * n * u * norm)
        assert np.linalg.norm(S @ V - V * w) <= 16 * n * u * norm
        np.testing.assert_allclose(V.T @ V, np.eye(n), rtol=0, atol=16 * n * u)
    # not C-contiguous, not float64: numpy's eigh of the triangle named
    if n > 1:
        w, V = _blas.eigh_inplace(np.asfortranarray(S))
        np.testing.assert_array_equal(w, np.linalg.eigh(S, UPLO="U")[0])
    w32, _ = _blas.eigh_inplace(S.astype(np.float32))
    np.testing.assert_allclose(w32, want_w, rtol=0, atol=64 * n * np.finfo(np.float32).eps * norm)


def test_eigh_inplace_raises_numpy_error_when_it_does_not_converge():
    from seis_sklearn import _blas

    bad = np.full((4, 4), np.nan)
    with pytest.raises(np.linalg.LinAlgError):
        _blas.eigh_inplace(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_moments_equal_with_and_without_numpy_openblas(rng, dtype, monkeypatch):
    """The lower-triangle SYRK path (diagonal blocks mirrored in result) and numpy.matmul."""
    from seis_sklearn import _blas

    A, B = _pair(rng, (50, 3, 6, 7), dtype, "C")
    fast = accumulate([A, B], "NCHW", "spatial", names=None)
    monkeypatch.setattr(_blas, "_SYRK", {})  # numpy.matmul: both triangles
    plain = accumulate([A, B], "NCHW", "spatial", names=None)
    u = np.finfo(dtype).eps
    for got, want in ((fast.auto, plain.auto), (fast.cross, plain.cross)):
        scale = np.abs(want).max()
        np.testing.assert_allclose(got, want, rtol=0, atol=8 * u * np.sqrt(A.size) * scale)
    np.testing.assert_array_equal(fast.mean, plain.mean)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", [3, 40])  # 3·16 rows pooled; 40·16 ≥ 1,024 multiplied at once
def test_accumulator_blocks_orbits_and_final_result(rng, dtype, batch):
    """The accumulator keeps only the blocks SEIS reads (``Z_gᵀZ_g``, ``Z_gᵀZ_0``), for
    an orbit of four views too; large float32 chunks are multiplied from the shared
    row buffer (the accumulator owns no rows), small ones pool in its own; both give
    the direct moments. ``result(final=True)`` equals ``result()`` and ends it."""
    from seis_sklearn._moments import DIRECT_PRODUCT_ROWS, MomentAccumulator

    n, R, d = 120, 16, 9
    base = rng.normal(size=(n, R, d)) * 2 + 5
    views = [base] + [np.roll(base, g, axis=2) + rng.normal(size=base.shape) for g in (1, 2, 3)]
    views = [v.astype(dtype) for v in views]
    acc = MomentAccumulator(4, R, d, dtype)
    for start in range(0, n, batch):
        acc.add([v[start : start + batch] for v in views])
    assert acc.auto.shape == (4, d, d) and acc.lower.shape == (3, d, d)
    big = batch * R >= DIRECT_PRODUCT_ROWS
    if dtype == np.float32:
        assert (acc._buffer is None) == big and (acc._rows is not None) == big
    centred = [(v.astype(np.float64) - v.astype(np.float64).mean(axis=0)).reshape(-1, d)
               for v in views]  # fmt: skip
    auto = np.stack([z.T @ z for z in centred])
    cross = np.stack([centred[0].T @ z for z in centred[1:]])
    scale = np.abs(auto).max()
    # float32 products: each product's rounding, u32·(rows summed)·scale at most
    tol = (64 * 2**-24 if dtype == np.float32 else 64 * 2**-53) * np.sqrt(n * R) * scale
    copy = acc.result()
    final = acc.result(final=True)
    for got in (copy, final):
        assert np.abs(got.auto - auto).max() <= tol
        assert np.abs(got.cross - cross).max() <= tol
        assert np.allclose(got.auto, np.swapaxes(got.auto, 1, 2), rtol=0, atol=0)
    assert np.array_equal(copy.auto, final.auto) and np.array_equal(copy.cross, final.cross)
    assert acc.auto is None
    with pytest.raises(RuntimeError, match="final=True"):
        acc.add([v[:2] for v in views])


def test_a_fit_holds_few_k_by_k_matrices(rng):
    """The algebra of one fit (basis, CCA) at k = d holds at most 8 k × k float64
    matrices at once besides its moments (numpy's own allocations, traced; LAPACK's
    workspace is not), and keeps 3 (``V_k`` and the two sets of canonical directions)
    — at a 56×56 map (k ≈ 3,000) each is 71 MB. Before the covariances were consumed
    and the products formed in place: 16 at once, 6 kept."""
    import tracemalloc

    from seis_sklearn import _fit

    n, R, d = 40, 16, 300
    A = rng.normal(size=(n, R, 1, d))
    B = np.roll(A, 3, axis=3) + 0.5 * rng.normal(size=A.shape)
    moments = accumulate([A, B], "NCHW", "spatial", names=("A", "B"))
    params = dict(n_components=1.0, max_components=None, reg=1e-6)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fitted = _fit.fit(moments, params)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    unit = fitted.basis.k**2 * 8
    assert fitted.basis.k == d
    assert peak - before <= 8 * unit
    assert held - before <= 3.5 * unit


@pytest.mark.parametrize("n, block", [(1, 256), (7, 3), (600, 256), (512, 256)])
def test_in_place_symmetric_helpers_equal_their_formulas(rng, n, block):
    """``symmetrize`` and ``mirror_lower`` work block by block in place (no temporary
    the size of the matrix) and give exactly ``(S + Sᵀ)/2`` and ``tril(S) +
    tril(S, -1)ᵀ``."""
    from seis_sklearn._blas import mirror_lower, symmetrize

    S = rng.normal(size=(n, n))
    want = 0.5 * (S + S.T)
    got = symmetrize(S.copy(), block=block)
    assert np.array_equal(got, want)
    want = np.tril(S) + np.tril(S, -1).T
    got = mirror_lower(S.copy(), block=block)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("k", [1, 7, 511, 512, 700])
def test_symmetric_product_is_the_product_exactly_symmetric(rng, k):
    """``Vᵀ(CV)`` for a symmetric C by block rows of its lower triangle: the product to
    rounding, exactly symmetric, for sizes below and above the blocked threshold."""
    from seis_sklearn import _blas

    d = k + 5
    V = rng.normal(size=(d, k))
    a = rng.normal(size=(d, d))
    C = a @ a.T
    CV = C @ V
    got = _blas.symmetric_product(V, CV)
    want = V.T @ CV
    scale = np.abs(V).T @ np.abs(CV)
    assert (np.abs(got - want) <= 4 * np.finfo(float).eps * np.sqrt(d) * scale).all()
    if k >= _blas.SYMMETRIC_MIN:
        np.testing.assert_array_equal(got, got.T)
