"""The estimators under scikit-learn's contract: checks, clone, pickle, CV, grid search."""

import json
import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, ShuffleSplit, cross_val_score
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
    parametrize_with_checks,
)

from seis_sklearn import SEISResult, SEISScorer, SubspaceDenoiser, seis_score
from seis_sklearn._result import SCORE_NAMES
from tests.tolerance import assert_scores_close, score_tolerance, scorer_tolerance


@parametrize_with_checks([SubspaceDenoiser(), SubspaceDenoiser(n_components=2)])
def test_subspace_denoiser_passes_sklearn_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize(
    "check",
    [
        check_get_params_invariance,
        check_set_params,
        check_no_attributes_set_in_init,
        check_parameters_default_constructible,
    ],
)
def test_scorer_passes_the_applicable_sklearn_checks(check):
    check("SEISScorer", SEISScorer())


def _data(rng, n=60, shape=(4, 6, 6)):
    A = rng.normal(size=(n,) + shape)
    B = np.rot90(A, axes=(-2, -1)) + 0.1 * rng.normal(size=A.shape)
    return A, B


def test_clone_and_pickle_round_trip(rng):
    A, B = _data(rng)
    scorer = SEISScorer(n_components=0.9, score_kind="invariance").fit(A, B)
    twin = clone(scorer)
    assert twin.get_params() == scorer.get_params() and not hasattr(twin, "n_components_")
    restored = pickle.loads(pickle.dumps(scorer))
    assert restored.score(A, B) == scorer.score(A, B)
    assert np.array_equal(restored.canonical_correlations_, scorer.canonical_correlations_)


def test_cross_val_score_splits_samples_not_rows(rng):
    A, B = _data(rng)
    folds = cross_val_score(SEISScorer(n_components=10), A, B, cv=KFold(5))
    assert folds.shape == (5,)
    for f, (train, test) in zip(folds, KFold(5).split(A), strict=True):
        expected = SEISScorer(n_components=10).fit(A[train], B[train]).score(A[test], B[test])
        assert f == expected  # the same computation, in the same order


def test_grid_search_over_n_components(rng):
    A, B = _data(rng)
    search = GridSearchCV(SEISScorer(), {"n_components": [2, 8, 0.9]}, cv=KFold(3)).fit(A, B)
    assert search.best_params_["n_components"] in (2, 8, 0.9)
    assert search.cv_results_["mean_test_score"].shape == (3,)
    assert np.all(
        (search.cv_results_["mean_test_score"] >= 0) & (search.cv_results_["mean_test_score"] <= 1)
    )


@pytest.mark.parametrize("kind", SCORE_NAMES)
def test_score_returns_the_chosen_kind(kind, rng):
    A, B = _data(rng)
    scorer = SEISScorer(n_components=6, score_kind=kind).fit(A, B)
    assert scorer.score(A, B) == getattr(scorer.scores(A, B), kind)


def test_partial_fit_equals_fit_on_the_concatenation(rng):
    A, B = _data(rng, n=90)
    whole = SEISScorer(n_components=0.95, solver="moments").fit(A, B)
    parts = SEISScorer(n_components=0.95)
    for sl in (slice(0, 7), slice(7, 50), slice(50, 90)):
        parts.partial_fit(A[sl], B[sl])
    assert parts.n_rows_ == whole.n_rows_ and parts.n_components_ == whole.n_components_
    assert np.allclose(parts.mean_x_, whole.mean_x_, rtol=1e-12, atol=1e-14)
    scale = np.abs(whole._moments.auto).max()  # sums of 90 terms: tight
    assert np.abs(parts._moments.cross - whole._moments.cross).max() <= 1e-13 * scale
    assert_scores_close(parts.result_, whole.result_, scorer_tolerance(whole))


def test_partial_fit_refuses_another_sample_shape(rng):
    A, B = _data(rng)
    scorer = SEISScorer().partial_fit(A, B)
    with pytest.raises(
        ValueError, match=r"X has per-sample shape \(4, 5, 5\), but this SEISScorer"
    ):
        scorer.partial_fit(A[:, :, :5, :5], B[:, :, :5, :5])
    with pytest.raises(ValueError, match="fitted on per-sample shape"):
        scorer.score(A[:, :, :5, :5], B[:, :, :5, :5])


def test_failed_partial_fit_leaves_the_fit_unchanged(rng):
    A, B = _data(rng)
    scorer = SEISScorer(n_components=5).fit(A[:30], B[:30])
    before = scorer.canonical_correlations_.copy()
    bad = A[30:].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="X contains 1 NaN"):
        scorer.partial_fit(bad, B[30:])
    assert scorer.n_rows_ == 30 * 4 and np.array_equal(scorer.canonical_correlations_, before)


def test_failed_refit_keeps_the_previous_fit(rng):
    A, B = _data(rng)
    scorer = SEISScorer(n_components=5).fit(A, B)
    before = scorer.result_
    with pytest.raises(ValueError, match="X and y must have the same shape"):
        scorer.fit(A, B[:10])
    assert scorer.result_ is before and scorer.layout_ == "NCHW"
    assert scorer.score(A, B) == SEISScorer(n_components=5).fit(A, B).score(A, B)
    denoiser = SubspaceDenoiser(n_components=2).fit(A.reshape(60, -1))
    components = denoiser.components_.copy()
    with pytest.raises(ValueError):
        denoiser.fit(np.full((1, 144), np.nan))
    assert np.array_equal(denoiser.components_, components)


def test_unfitted_scorer_raises_not_fitted(rng):
    from sklearn.exceptions import NotFittedError

    A, B = _data(rng)
    with pytest.raises(NotFittedError):
        SEISScorer().score(A, B)


def test_cross_fitted_seis_score_equals_fold_by_fold_fits(rng):
    A, B = _data(rng)
    result = seis_score(A, B, cv=3, n_components=8)
    manual = [
        SEISScorer(n_components=8).fit(A[tr], B[tr]).scores(A[te], B[te])
        for tr, te in KFold(3).split(A)
    ]
    tol = score_tolerance(A, B, cv=3, n_components=8)  # merged fold moments vs refits
    for name in SCORE_NAMES:
        values = [getattr(r, name) for r in manual]
        assert getattr(result, name) == pytest.approx(np.mean(values), abs=tol)
        assert getattr(result, name + "_std") == pytest.approx(np.std(values), abs=tol)
    assert result.evaluation == "cross-fitted" and result.n_folds == 3 and len(result.folds) == 3
    full = seis_score(A, B, n_components=8, cv=None)
    assert np.allclose(result.canonical_correlations, full.canonical_correlations, atol=tol)


def test_cross_fitting_with_overlapping_splits(rng):
    A, B = _data(rng)
    splitter = ShuffleSplit(n_splits=3, test_size=0.3, random_state=0)
    result = seis_score(A, B, cv=splitter, n_components=8)
    manual = [
        SEISScorer(n_components=8).fit(A[tr], B[tr]).score(A[te], B[te])
        for tr, te in splitter.split(A)
    ]
    tol = max(
        scorer_tolerance(SEISScorer(n_components=8).fit(A[tr], B[tr]), held_out=True)
        for tr, _ in splitter.split(A)
    )
    assert result.equivariance == pytest.approx(np.mean(manual), abs=tol)


def test_result_dict_and_repr(rng):
    A, B = _data(rng)
    result = seis_score(A, B, n_components=6, cv=None)
    as_dict = result.as_dict()
    json.dumps(as_dict)  # plain types only
    assert as_dict["n_components"] == 6 and len(as_dict["canonical_correlations"]) == 6
    text = repr(result)
    assert text.startswith("SEISResult(in-sample; spatial matricization of NCHW (6×6 grid); k=6")
    assert f"{result.equivariance:.4f}" in text and "biased upward" in text
    cv_text = repr(seis_score(A, B, n_components=6, cv=3))
    assert "cross-fitted, 3 folds" in cv_text and "±" in cv_text and "biased" not in cv_text
    assert isinstance(result, SEISResult) and result.score("invariance") == result.invariance
    with pytest.raises(ValueError, match="kind must be one of"):
        result.score("equivariant")


def test_degenerate_results_say_why(rng):
    """SPEC §2.1: few columns, k = 1 or k ≥ m/2 are flagged, with the reason."""
    A = rng.normal(size=(100, 8, 2, 2))
    tiny = seis_score(A, np.rot90(A, axes=(2, 3)), cv=None)  # spatial on a 2×2 map: d = 4
    assert tiny.degenerate and "only d=4 columns" in tiny.degenerate_reason
    assert "degenerate" in repr(tiny)
    one = seis_score(A, A, n_components=1, matricization="flatten", cv=None)
    assert one.degenerate and "k=1" in one.degenerate_reason
    wide = rng.normal(size=(20, 40))
    many = seis_score(wide, wide + rng.normal(size=wide.shape), n_components=15, cv=None)
    assert many.degenerate and "at least half of the m=20 rows" in many.degenerate_reason
    held = SEISScorer(n_components=12).fit(wide[:15] * 1.0, wide[:15] + 0.1)
    assert held.scores(wide[15:], wide[15:] + 0.1).degenerate  # k=12 of 15 rows fitted
    fine = seis_score(A, np.flip(A, axis=1), matricization="flatten", n_components=0.9, cv=None)
    assert not fine.degenerate and fine.degenerate_reason == ""
    assert fine.as_dict()["degenerate"] is False
