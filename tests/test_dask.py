"""Dask inputs give the numpy results: threads, a 2-process LocalCluster, out of core."""

import subprocess
import sys
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

from seis_sklearn import SEISScorer, SubspaceDenoiser, seis_score  # noqa: E402
from seis_sklearn.transforms import rot90  # noqa: E402
from tests.conftest import smooth_fields  # noqa: E402
from tests.tolerance import assert_scores_close, score_tolerance, scorer_tolerance  # noqa: E402


def assert_same(got, want, A, B, **params):
    """Dask and numpy results equal within the rounding bound of the case (tests/tolerance.py)."""
    assert got.n_components == want.n_components and got.n_rows == want.n_rows
    assert_scores_close(got, want, score_tolerance(A, B, **params))


def lazy(A, chunk):
    return da.from_array(A, chunks=(chunk,) + tuple(-1 for _ in A.shape[1:]))


CASES = [  # k well below the rows of a fold: well-conditioned (tests/tolerance.py)
    ((120, 6, 9, 9), "NCHW", "spatial"),
    ((400, 3, 5, 5), "NCHW", "flatten"),
    ((120, 9, 9, 6), "NHWC", "spatial"),
    ((120, 10, 5), "NLD", "channel"),
    ((120, 3, 4, 5, 5), "NCDHW", "spatial"),
    ((120, 30), "ND", "flatten"),
]


def local_cluster(**kwargs):
    """Two worker processes (not threads) on loopback."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            **kwargs,
        )


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster and its client for the module, shut down after it."""
    cluster = local_cluster()
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def _pair(rng, shape, layout):
    A = rng.normal(size=shape)
    axes = {"NCHW": (2, 3), "NHWC": (1, 2), "NCDHW": (3, 4)}.get(layout)
    if axes is None:
        B = -A[:, ::-1] + 0.5 * rng.normal(size=shape)
    else:
        B = np.rot90(A, axes=axes) + 0.3 * rng.normal(size=shape)
    return A, np.ascontiguousarray(B)


@pytest.mark.parametrize("cv", [None, 5])
def test_dask_equals_numpy_on_ill_conditioned_smooth_fields(cv):
    """Issue 28: smooth fields (N=200, C=8, 12×12) shifted by 3 px plus noise, where A
    has variance down to rounding along directions only B's noise fills. Before the
    mean-variance ridge the numpy path alone moved S_E by 2.9e-7 when the samples were
    permuted, so dask and numpy could not be compared tightly; a sum in another order
    is rounding, which moves no score by more than 1e-7 now (SPEC §2.6). Measured on an
    AMD EPYC: 2e-11 in-sample, 1.2e-10 cross-fitted."""
    A = smooth_fields(0, n=200, c=8, size=12)
    B = np.roll(A, 3, axis=-1) + 0.3 * np.random.default_rng(1).normal(size=A.shape)
    with dask.config.set(scheduler="threads"):
        got = seis_score(lazy(A, 17), lazy(B, 29), cv=cv)
    want = seis_score(A, B, cv=cv)
    assert got.n_components == want.n_components
    assert_scores_close(got, want, 1e-7, correlations=cv is None)


@pytest.mark.parametrize("shape, layout, matricization", CASES)
def test_threaded_scheduler_equals_numpy(rng, shape, layout, matricization):
    A, B = _pair(rng, shape, layout)
    params = dict(layout=layout, matricization=matricization, n_components=0.95)
    with dask.config.set(scheduler="threads"):
        assert_same(
            seis_score(lazy(A, 17), lazy(B, 29), **params, cv=None),
            seis_score(A, B, **params, cv=None),
            A,
            B,
            **params,
        )
        assert_same(
            seis_score(lazy(A, 17), lazy(B, 17), cv=4, **params),
            seis_score(A, B, cv=4, **params),
            A,
            B,
            cv=4,
            **params,
        )


def test_local_cluster_equals_numpy(rng, cluster):
    for shape, layout, matricization in CASES:
        A, B = _pair(rng, shape, layout)
        params = dict(layout=layout, matricization=matricization)
        assert_same(
            seis_score(lazy(A, 25), lazy(B, 25), **params, cv=None),
            seis_score(A, B, **params, cv=None),
            A,
            B,
            **params,
        )
    A, B = _pair(rng, (150, 5, 7, 7), "NCHW")
    assert_same(seis_score(lazy(A, 40), lazy(B, 40), cv=5), seis_score(A, B, cv=5), A, B, cv=5)


def test_estimators_fit_partial_fit_and_score_dask(rng, cluster):
    A, B = _pair(rng, (160, 5, 7, 7), "NCHW")
    dA, dB = lazy(A, 30), lazy(B, 30)
    want = SEISScorer().fit(A[:120], B[:120])
    got = SEISScorer().fit(dA[:120], dB[:120])
    tol = scorer_tolerance(want)
    assert_scores_close(got.result_, want.result_, tol)
    streamed = SEISScorer().partial_fit(dA[:60], dB[:60]).partial_fit(A[60:120], B[60:120])
    assert_scores_close(streamed.result_, want.result_, tol)
    assert_scores_close(got.scores(dA[120:], dB[120:]), want.scores(A[120:], B[120:]), tol)
    assert got.score(dA[120:], dB[120:]) == pytest.approx(want.score(A[120:], B[120:]), abs=tol)
    X = A.reshape(160, -1)[:, :60]
    dense = SubspaceDenoiser(0.9).fit(X)
    spread = SubspaceDenoiser(0.9).fit(lazy(X, 33))
    assert spread.n_components_ == dense.n_components_
    np.testing.assert_allclose(spread.explained_variance_, dense.explained_variance_, rtol=1e-10)
    projected = spread.transform(lazy(X, 33))
    assert isinstance(projected, da.Array)  # lazy until computed
    np.testing.assert_allclose(
        np.abs(projected.compute()), np.abs(dense.transform(X)), rtol=1e-8, atol=1e-10
    )


def test_a_dask_and_a_numpy_view_mix(rng):
    A, B = _pair(rng, (90, 4, 5, 5), "NCHW")
    with dask.config.set(scheduler="sync"):
        assert_same(seis_score(lazy(A, 20), B, cv=None), seis_score(A, B, cv=None), A, B)


def test_feature_axis_chunks_are_rechunked_with_a_note(rng):
    A, B = _pair(rng, (60, 4, 5, 5), "NCHW")
    split = da.from_array(A, chunks=(20, 2, 5, 5))
    with pytest.warns(UserWarning, match=r"A is chunked along feature axis 1 \(chunks \(2, 2\)\)"):
        result = seis_score(split, lazy(B, 20), cv=None)
    assert_same(result, seis_score(A, B, cv=None), A, B)


def test_dask_errors(rng):
    A, B = _pair(rng, (60, 4, 5, 5), "NCHW")
    bad = A.copy()
    bad[3, 0, 0, 0], bad[40, 1, 1, 1] = np.nan, np.inf
    with pytest.raises(
        ValueError, match=r"A contains 1 NaN and 1 infinite value\(s\) out of 6000"
    ):  # noqa: E501
        seis_score(lazy(bad, 20), lazy(B, 20), cv=None)
    with pytest.raises(ValueError, match="solver='gram' needs every sample at once"):
        seis_score(lazy(A, 20), lazy(B, 20), solver="gram", cv=None)
    unknown = lazy(A, 20)[lazy(A, 20)[:, 0, 0, 0] > -10]
    with pytest.raises(ValueError, match=r"unknown chunk sizes .*A\.compute_chunk_sizes\(\)"):
        seis_score(unknown, unknown, cv=None)
    with pytest.raises(TypeError, match="must be a numeric"):
        seis_score(lazy(A, 20).astype(str), lazy(B, 20), cv=None)


def test_nothing_is_computed_whole_and_only_moments_come_back(rng, cluster):
    """The client receives the root Moments only: a task graph of block moments and merges."""
    A, B = _pair(rng, (100, 4, 5, 5), "NCHW")
    dA = lazy(A, 10).map_blocks(lambda b: b + 0.0, dtype=A.dtype)  # a lazily computed input
    from seis_sklearn._dask import accumulate_dask

    moments = accumulate_dask([dA, lazy(B, 10)], "NCHW", "spatial", names=("A", "B"))[0]
    assert moments.n_rows == 100 * 4 and moments.auto.shape == (2, 25, 25)  # rows: channels
    assert moments.mean.shape == (2, 4, 25)  # per-feature means: (views, channels, positions)
    assert_same(seis_score(dA, lazy(B, 10), cv=None), seis_score(A, B, cv=None), A, B)


def test_out_of_core_under_a_worker_memory_limit(tmp_path, rng):
    """Data on disk larger than a worker's memory limit, one .npy file per batch, streamed."""
    from dask import delayed

    files_a, files_b, pieces = [], [], []
    n_files, per_file, shape = 10, 512, (64, 16, 16)  # 32 MiB per file and view (float32)
    for i in range(n_files):
        a = rng.normal(size=(per_file, *shape)).astype(np.float32)
        np.save(tmp_path / f"a{i}.npy", a)
        np.save(tmp_path / f"b{i}.npy", rot90(a))
        files_a.append(tmp_path / f"a{i}.npy")
        files_b.append(tmp_path / f"b{i}.npy")
        pieces.append(a[:8])

    def stack(paths):
        load = delayed(np.load, pure=True)
        return da.concatenate(
            [
                da.from_delayed(load(str(p), mmap_mode="r"), (per_file, *shape), np.float32)
                for p in paths
            ]
        )

    A, B = stack(files_a), stack(files_b)
    total = 2 * A.nbytes
    limit = 500 * 2**20  # a worker holds ~290 MiB of libraries and arenas already
    assert total > limit
    cluster = local_cluster(memory_limit=limit)
    with cluster, distributed.Client(cluster):
        result = seis_score(A, B, n_components=0.9, cv=None)
    whole_a = np.concatenate([np.load(p, mmap_mode="r") for p in files_a])
    whole_b = np.concatenate([np.load(p, mmap_mode="r") for p in files_b])
    want = seis_score(whole_a, whole_b, n_components=0.9, cv=None)
    # float32 products summed in other orders: the float32 rounding bound of the case
    assert result.n_components == want.n_components and result.n_rows == want.n_rows
    assert_scores_close(result, want, score_tolerance(whole_a, whole_b, n_components=0.9))


def test_zarr_store_recipe(tmp_path, rng):
    zarr = pytest.importorskip("zarr")
    A, B = _pair(rng, (64, 4, 6, 6), "NCHW")
    for name, array in (("original", A), ("transformed", B)):
        store = zarr.open_array(
            str(tmp_path / f"{name}.zarr"), mode="w", shape=array.shape, chunks=(16, 4, 6, 6),
            dtype=array.dtype,
        )  # fmt: skip
        store[:] = array
    dA = da.from_zarr(str(tmp_path / "original.zarr"))
    dB = da.from_zarr(str(tmp_path / "transformed.zarr"))
    with dask.config.set(scheduler="threads"):
        assert_same(seis_score(dA, dB, cv=4), seis_score(A, B, cv=4), A, B, cv=4)


def test_importing_and_numpy_use_never_import_dask():
    code = (
        "import sys, numpy as np; import seis_sklearn; from seis_sklearn import seis_score;"
        "A = np.random.default_rng(0).normal(size=(20, 3, 4, 4)); seis_score(A, A, cv=2);"
        "assert not any(m.split('.')[0] in ('dask', 'distributed') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
