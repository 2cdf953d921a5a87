"""Bad input gets one clear error naming the argument (SPEC §4); degenerate data a number."""

import numpy as np
import pytest

from seis_sklearn import SEISScorer, SubspaceDenoiser, seis_score
from seis_sklearn._result import SCORE_NAMES


@pytest.fixture
def pair(rng):
    A = rng.normal(size=(10, 3, 4, 4))
    return A, np.flip(A, axis=3).copy()


def test_shape_mismatch(pair):
    A, B = pair
    with pytest.raises(
        ValueError,
        match=r"A and B must have the same shape; got A \(10, 3, 4, 4\) "
        r"and B \(10, 3, 4, 3\)",
    ):
        seis_score(A, B[..., :3], cv=None)
    with pytest.raises(ValueError, match="X and y must have the same shape"):
        SEISScorer().fit(A, B[:5])


@pytest.mark.parametrize("which, name", [(0, "A"), (1, "B")])
def test_nan_and_inf_are_counted(pair, which, name):
    arrays = [pair[0].copy(), pair[1].copy()]
    arrays[which][0, 0, 0, :3] = np.nan
    arrays[which][5, 1, 2, 2] = -np.inf
    with pytest.raises(
        ValueError, match=rf"{name} contains 3 NaN and 1 infinite value\(s\) out of 480"
    ):
        seis_score(*arrays)


def test_nan_in_float32_and_in_held_out_data(pair):
    A, B = pair
    scorer = SEISScorer(n_components=4).fit(A, B)
    bad = B.astype(np.float32)
    bad[3, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"y contains 0 NaN and 1 infinite"):
        scorer.score(A.astype(np.float32), bad)


def test_overflowing_finite_values(pair):
    A, B = pair
    with pytest.raises(ValueError, match="sums overflow float64"):
        seis_score(A * 1e300, B, cv=None)


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_samples(n, pair):
    A, B = pair
    with pytest.raises(
        ValueError, match=r"A has \d+ sample; at least 2 samples are required|A is empty"
    ):
        seis_score(A[:n], B[:n], cv=None)


def test_too_few_rows_after_matricization():
    with pytest.raises(ValueError, match="at least 2 samples"):
        seis_score(np.ones((1, 5)), np.ones((1, 5)), cv=None)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"layout": "NWHC"}, ValueError, "layout must be one of 'auto', 'NCHW'"),
        ({"layout": "NCDHW"}, ValueError, "layout='NCDHW' needs a 5-D array, but A is 4-D"),
        ({"matricization": "pixels"}, ValueError, "matricization must be one of 'spatial'"),
        ({"n_components": 0}, ValueError, "n_components must be >= 1 when an int; got 0"),
        ({"n_components": 1.5}, ValueError, r"n_components must lie in \(0, 1\] when a float"),
        ({"n_components": 0.0}, ValueError, r"n_components must lie in \(0, 1\]"),
        ({"n_components": True}, TypeError, "n_components must be an int >= 1 or a float"),
        ({"n_components": "all"}, TypeError, "n_components must be an int >= 1 or a float"),
        ({"max_components": 0}, ValueError, "max_components must be >= 1"),
        ({"max_components": 2.5}, TypeError, "max_components must be None or an int"),
        ({"reg": -1e-3}, ValueError, "reg must be a finite float >= 0"),
        ({"reg": np.nan}, ValueError, "reg must be a finite float >= 0"),
        ({"invariance": "sign"}, ValueError, "invariance must be one of 'trace', 'abs'"),
        ({"score_kind": "both"}, ValueError, "score_kind must be one of 'equivariance'"),
        ({"cv": 1}, ValueError, "cv must be at least 2 folds; got cv=1"),
        ({"cv": 6}, ValueError, "fewer than 2 training or test samples"),
    ],
)
def test_bad_parameters(kwargs, error, message, pair):
    A, B = pair
    with pytest.raises(error, match=message):
        seis_score(A, B, **{"cv": None, **kwargs})


@pytest.mark.parametrize(
    "value, error, message",
    [
        (np.array([["a", "b"], ["c", "d"]]), TypeError, "A must be a numeric"),
        (np.array([[1, None], [2, 3]], dtype=object), TypeError, "A is an object array"),
        (np.ones((3, 2), dtype=complex), TypeError, "A must be a numeric"),
        (np.ones(5), ValueError, "A must have a samples axis and at least one feature axis"),
        ([[1.0, 2.0], [3.0]], ValueError, "A cannot be read as an array"),
        (np.ones((4, 0)), ValueError, r"A is empty"),
    ],
)
def test_bad_arrays(value, error, message):
    with pytest.raises(error, match=message):
        seis_score(value, value, cv=None)


def test_denoiser_errors(rng):
    X = rng.normal(size=(10, 4))
    with pytest.raises(ValueError, match="n_components must lie in"):
        SubspaceDenoiser(n_components=2.0).fit(X)
    bad = X.copy()
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"X contains 1 NaN and 0 infinite"):
        SubspaceDenoiser().fit(bad)
    fitted = SubspaceDenoiser(n_components=2).fit(X)
    with pytest.raises(ValueError, match=r"X contains 1 NaN"):
        fitted.transform(bad)
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, 2\)"):
        fitted.inverse_transform(X)
    with pytest.raises(ValueError, match="no variance"):
        SubspaceDenoiser().fit(np.ones((5, 3)))


# -- degenerate data: a correct number or a clear error, never NaN -----------------


def _finite_scores(result):
    values = [
        result.equivariance,
        result.invariance,
        result.equivariance_weighted,
        result.invariance_weighted,
    ]
    assert all(np.isfinite(values)) and all(0 <= v <= 1 for v in values)
    return values


def test_constant_columns_are_ignored(rng):
    A = rng.normal(size=(50, 6))
    A[:, 2] = 3.0
    values = _finite_scores(seis_score(A, A, n_components=6, cv=None))
    assert values == pytest.approx([1, 1, 1, 1], abs=1e-5)


def test_rank_deficient_data(rng):
    Z, M = rng.normal(size=(50, 3)), rng.normal(size=(3, 8))
    A = Z @ M
    same_span = seis_score(A, -2 * A, n_components=8, cv=None)
    assert same_span.n_components == 3  # zero eigenvalues are never kept
    assert _finite_scores(same_span)[:2] == pytest.approx([1, 0], abs=1e-5)
    # A and A·T span two 3-dim subspaces: pooled rank 6, but each view fills only 3
    # of those directions, so only 3 canonical pairs can exist, and all 3 correlate:
    # an invertible re-encoding keeps everything (docs/math.rst, "Counting the pairs a
    # view can have"; dividing by the pooled k read 0.5 here).
    other_span = seis_score(A, A @ np.eye(8)[::-1], n_components=8, cv=None)
    assert other_span.n_components == 6
    assert _finite_scores(other_span)[0] == pytest.approx(1.0, abs=1e-5)
    # B keeping what 2 of A's 3 latent factors put there has lost the third: 2 of 3
    lost = seis_score(A, Z[:, :2] @ M[:2], n_components=8, cv=None)
    assert lost.n_components == 3
    assert _finite_scores(lost)[0] == pytest.approx(2 / 3, abs=1e-5)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_extreme_scales(scale, rng):
    A = rng.normal(size=(40, 3, 4, 4))
    B = np.roll(A, 1, axis=3) + 0.2 * rng.normal(size=A.shape)
    reference = seis_score(A, B, cv=None)
    for dtype in (np.float64, np.float32):
        scaled = seis_score((A * scale).astype(dtype), (B * scale).astype(dtype), cv=None)
        tol = 1e-8 if dtype == np.float64 else 1e-4
        assert scaled.equivariance == pytest.approx(reference.equivariance, abs=tol)
        assert scaled.invariance == pytest.approx(reference.invariance, abs=tol)


def test_two_samples():
    A = np.array([[0.0, 1.0, 2.0], [1.0, 3.0, 2.5]])
    result = seis_score(A, 2 * A + 1, cv=None)
    assert result.n_components == 1 and _finite_scores(result)[0] == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize("cv", [None, 5])
@pytest.mark.parametrize("which", ["A", "B"])
def test_one_constant_view_has_no_score_and_says_why(rng, which, cv):
    """One rule for a view with no variance (issue 38, item 5): no score — NaN with
    the reason, as a layerwise report's row for a constant layer — not a 0.0 that
    reads as 'everything lost' with degenerate false."""
    A = rng.normal(size=(30, 5))
    pair = (A, np.full_like(A, 3.0)) if which == "B" else (np.full_like(A, 3.0), A)
    with pytest.warns(UserWarning, match="no score: the"):
        result = seis_score(*pair, n_components=5, cv=cv)
    assert all(np.isnan(getattr(result, n)) for n in SCORE_NAMES)
    assert result.degenerate
    view = "transformed" if which == "B" else "original"
    assert result.degenerate_reason.startswith(f"the {view} view has no variance after centring")


def test_both_views_constant_is_an_error():
    with pytest.raises(ValueError, match="no variance after centring"):
        seis_score(np.ones((5, 4)), np.full((5, 4), 2.0), cv=None)


def test_integer_and_bool_inputs(rng):
    A = rng.integers(0, 5, size=(30, 2, 3, 3))
    r_int = seis_score(A, np.flip(A, axis=3), cv=None)
    r_float = seis_score(A.astype(float), np.flip(A, axis=3).astype(float), cv=None)
    assert r_int.equivariance == r_float.equivariance
    _finite_scores(seis_score(A > 2, np.flip(A > 2, axis=3), cv=None))


def test_readonly_memmap_input(tmp_path, rng):
    A = rng.normal(size=(20, 3, 5, 5)).astype(np.float32)
    B = np.rot90(A, axes=(2, 3))
    np.save(tmp_path / "a.npy", A)
    np.save(tmp_path / "b.npy", B)
    Am = np.load(tmp_path / "a.npy", mmap_mode="r")
    Bm = np.load(tmp_path / "b.npy", mmap_mode="r")
    assert seis_score(Am, Bm, cv=None).equivariance == seis_score(A, B, cv=None).equivariance


def test_held_out_data_without_variance_raise_the_fits_error(rng):
    """Regression: held-out constant data scored 0.4999999999999998 and data of scale
    1e-300 (products underflow) silently 0.0; both now raise what a fit raises."""
    A = rng.normal(size=(40, 3, 5, 5))
    B = np.flip(A, axis=3) + 0.3 * rng.normal(size=A.shape)
    scorer = SEISScorer().fit(A, B)
    with pytest.raises(ValueError, match="no variance after centring") as fit_error:
        SEISScorer().fit(np.full_like(A, 3.0), np.full_like(B, 3.0))
    for X, y in ((np.full_like(A, 3.0), np.full_like(B, 3.0)), (A * 1e-300, B * 1e-300)):
        with pytest.raises(ValueError, match="X and y have no variance in the fitted subspace"):
            scorer.score(X, y)
    with pytest.raises(ValueError, match="no variance after centring"):
        SEISScorer().fit(A * 1e-300, B * 1e-300)
    assert "there is nothing to score" in str(fit_error.value)
    # one constant view is a real answer (nothing of A survives in B), not an error
    assert scorer.scores(A, np.full_like(B, 3.0)).equivariance < 1e-6
