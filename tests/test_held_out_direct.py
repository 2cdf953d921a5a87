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
