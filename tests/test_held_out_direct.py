"""Held-out scores from d × d moments: projected on V_k first, or through the variates'
directions in feature space — the same algebra in another order."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seis_sklearn import SEISScorer, _fit
from seis_sklearn._accumulate import accumulate

SCORES = ("equivariance", "invariance", "equivariance_weighted", "invariance_weighted")


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(12, 60),
    rows=st.integers(1, 3),
    d=st.integers(2, 24),
    n_transformed=st.integers(1, 2),
    n_components=st.sampled_from([None, 0.9, 0.99]),
    offset=st.sampled_from([0.0, 5.0, -1e3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_direct_held_out_equals_the_projected(
    n, rows, d, n_transformed, n_components, offset, seed
):
    """Whichever order :func:`held_out_moments` takes (forced both ways), the scores and
    held-out correlations agree to rounding — pairs and orbits, truncated or not,
    held-out means away from the fitted ones (the recentring), offsets to 1e3."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(2 * n, rows, d)) + offset
    views = [A[:, :, ::-1] * 2 + 0.5 * rng.normal(size=A.shape) for _ in range(n_transformed)]
    y = views[0] if n_transformed == 1 else views
    half = slice(0, n)
    scorer = SEISScorer(layout="NLD", matricization="spatial", n_components=n_components)
    try:
        scorer.fit(A[half], y[half] if n_transformed == 1 else [v[half] for v in views])
    except ValueError:  # too few rows for the components asked: nothing to compare
        return
    test = [A[n:] + 0.1, *(v[n:] for v in views)]  # held-out means moved: recentred
    moments = accumulate(test, "NLD", "spatial", names=[f"v{i}" for i in range(len(test))])
    got = {}
    for direct in (True, False):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_fit, "direct_is_cheaper", lambda *_, direct=direct: direct)
            got[direct] = scorer._score_moments(moments, orbit=n_transformed > 1)
    # the covariances differ by rounding of products of magnitude (1 + |offset|)²
    tol = 1e4 * np.finfo(float).eps * d * (1 + abs(offset)) ** 2
    for name in SCORES:
        assert getattr(got[True], name) == pytest.approx(getattr(got[False], name), abs=tol)


def test_the_cheaper_order_is_chosen_by_its_flops():
    """At k near d (a 56×56 map) scoring through the directions is cheaper; with a
    basis much narrower than the features, projecting first is."""
    assert _fit.direct_is_cheaper(3136, 2983, 1)
    assert not _fit.direct_is_cheaper(3136, 300, 1)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(12, 50),
    layout_mode=st.sampled_from(
        [
            ("NCHW", "spatial"),
            ("NCHW", "channel"),
            ("NCHW", "flatten"),
            ("NHWC", "spatial"),
            ("NLD", "spatial"),
        ]
    ),  # fmt: skip
    n_transformed=st.integers(1, 3),
    n_components=st.sampled_from([None, 0.9, 0.99]),
    offset=st.sampled_from([0.0, 5.0, -1e3]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_held_out_rows_equal_the_projected_moments(
    n, layout_mode, n_transformed, n_components, offset, dtype, seed
):
    """Scoring rows held in memory (:func:`held_out_rows`: the variates summed from the
    rows) and scoring the moments of their projection on V_k (what torch tensors and
    dask arrays get) agree to rounding: every score and every held-out correlation,
    pairs and orbits, every matricization, float32 and float64, held-out means away
    from the fitted ones (the recentring), offsets to 1e3."""
    layout, mode = layout_mode
    rng = np.random.default_rng(seed)
    shape = {"NCHW": (3, 4, 5), "NHWC": (4, 5, 3), "NLD": (6, 5)}[layout]
    A = rng.normal(size=(2 * n, *shape)) + offset
    views = [np.flip(A, axis=1) * 2 + 0.5 * rng.normal(size=A.shape) for _ in range(n_transformed)]
    A, views = A.astype(dtype), [v.astype(dtype) for v in views]
    y = views[0] if n_transformed == 1 else [v[:n] for v in views]
    scorer = SEISScorer(layout=layout, matricization=mode, n_components=n_components)
    try:
        scorer.fit(A[:n], y[:n] if n_transformed == 1 else y)
    except ValueError:  # too few rows for the components asked: nothing to compare
        return
    test = [A[n:] + dtype(0.1), *(v[n:] for v in views)]  # held-out means moved
    names = tuple(f"v{i}" for i in range(len(test)))
    orbit = n_transformed > 1
    rows = scorer._score_rows(test, names, orbit)
    projected = accumulate(test, scorer.layout_, scorer.matricization_, names=names,
                           projection=scorer.components_.T)  # fmt: skip
    moments = scorer._score_projected(projected, names, orbit)
    tol = 1e4 * np.finfo(float).eps * A[0].size * (1 + abs(offset)) ** 2
    for name in SCORES:
        assert getattr(rows, name) == pytest.approx(getattr(moments, name), abs=tol)
    for got, want in zip(rows.elements or (rows,), moments.elements or (moments,), strict=True):
        np.testing.assert_allclose(
            got.canonical_correlations, want.canonical_correlations, rtol=0, atol=tol
        )


def test_held_out_rows_read_memory_maps_and_name_non_finite_views(tmp_path, rng):
    """A memory-mapped held-out view scores as the array it maps; a NaN in a held-out
    view is one error naming it."""
    A = rng.normal(size=(80, 4, 6, 6))
    B = np.roll(A, 1, axis=-1) + 0.2 * rng.normal(size=A.shape)
    scorer = SEISScorer().fit(A[:60], B[:60])
    path = tmp_path / "b.npy"
    np.save(path, B[60:])
    mapped = np.load(path, mmap_mode="r")
    want = scorer.scores(A[60:], B[60:])
    got = scorer.scores(A[60:], mapped)
    for name in SCORES:
        assert getattr(got, name) == getattr(want, name)
    bad = B[60:].copy()
    bad[3, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="^y .*NaN") as info:
        scorer.scores(A[60:], bad)
    assert "X" not in str(info.value).split()[0]
