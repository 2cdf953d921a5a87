"""SEIS in scikit-learn Pipelines: paired stacks, the paired denoiser, no second denoising."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline

from seis_sklearn import DenoisedStack, SEISScorer, SubspaceDenoiser, orbit, pair, seis_score
from tests.tolerance import assert_scores_close, scorer_tolerance


@pytest.fixture
def views(rng):
    A = rng.normal(size=(300, 3, 4, 4))
    A += 0.7 * np.roll(A, 1, axis=-1)
    B = np.flip(A, axis=3) + 0.5 * rng.normal(size=A.shape)
    return A, B


@pytest.mark.parametrize("mode", ["spatial", "flatten", "channel"])
@pytest.mark.parametrize("scorer_mode", [None, "spatial", "flatten", "channel"])
def test_pipeline_equals_the_direct_scorer(views, mode, scorer_mode):
    """The scorer reads the denoiser's coordinates as they are meant, whatever its own
    matricization says (None: left at its default)."""
    A, B = views
    X = pair(A, B)
    scorer = SEISScorer(n_components=None)
    if scorer_mode is not None:
        scorer.set_params(matricization=scorer_mode)
    pipe = make_pipeline(SubspaceDenoiser(0.9, paired=True, matricization=mode), scorer)
    pipe.fit(X[:240])
    direct = SEISScorer(n_components=0.9, matricization=mode).fit(A[:240], B[:240])
    tol = scorer_tolerance(direct, held_out=True)
    assert pipe[-1].result_.matricization == mode
    assert pipe[-1].n_components_ == direct.n_components_
    assert_scores_close(pipe[-1].result_, direct.result_, tol)
    held_pipe = pipe[-1].scores(pipe[0].transform(X[240:]))
    assert_scores_close(held_pipe, direct.scores(A[240:], B[240:]), tol)
    assert pipe.score(X[240:]) == pytest.approx(direct.score(A[240:], B[240:]), abs=tol)


def test_the_default_pipeline_equals_the_default_scorer(views):
    """Regression: the denoiser defaulted to flatten and the scorer to spatial, so the
    default pipeline scored 0.99999993 where the default scorer gave 0.949."""
    A, B = views
    pipe = make_pipeline(SubspaceDenoiser(0.99, paired=True), SEISScorer(n_components=None))
    direct = SEISScorer(n_components=0.99).fit(A, B)
    pipe.fit(pair(A, B))
    assert direct.matricization == SubspaceDenoiser().matricization == "spatial"
    assert_scores_close(pipe[-1].result_, direct.result_, scorer_tolerance(direct))
    assert direct.result_.equivariance < 0.99  # a real difference to get right


def test_cross_val_score_and_grid_search_on_a_pipeline(views):
    A, B = views
    X = pair(A, B)
    pipe = make_pipeline(SubspaceDenoiser(0.9, paired=True), SEISScorer(n_components=None))
    scores = cross_val_score(pipe, X, cv=KFold(5))
    fits = [SEISScorer(n_components=0.9).fit(A[train], B[train]) for train, _ in KFold(5).split(A)]
    want = [
        fit.score(A[test], B[test]) for fit, (_, test) in zip(fits, KFold(5).split(A), strict=True)
    ]
    tol = max(scorer_tolerance(fit, held_out=True) for fit in fits)
    np.testing.assert_allclose(scores, want, atol=tol, rtol=0)
    grid = GridSearchCV(pipe, {"subspacedenoiser__n_components": [0.5, 0.9, 0.99]}, cv=3)
    grid.fit(X)
    assert grid.best_params_["subspacedenoiser__n_components"] in (0.5, 0.9, 0.99)


def test_scorer_takes_paired_and_orbit_stacks(views):
    A, B = views
    stacked = SEISScorer().fit(pair(A, B))
    assert stacked.result_.equivariance == SEISScorer().fit(A, B).result_.equivariance
    streamed = SEISScorer().partial_fit(pair(A[:150], B[:150])).partial_fit(pair(A[150:], B[150:]))
    assert_scores_close(streamed.result_, stacked.result_, scorer_tolerance(stacked))
    rotations = [np.rot90(A, k, axes=(2, 3)) for k in (1, 2, 3)]
    by_stack = SEISScorer(matricization="flatten").fit(orbit(A, *rotations))
    by_list = SEISScorer(matricization="flatten").fit(A, rotations)
    assert by_stack.result_.equivariance == pytest.approx(by_list.result_.equivariance)
    assert len(by_stack.result_.elements) == 3
    assert (
        seis_score(A, B, cv=None).equivariance == SEISScorer().fit(pair(A, B)).result_.equivariance
    )
    with pytest.raises(ValueError, match=r"y is None, so X must be a paired stack"):
        SEISScorer().fit(A.reshape(300, -1))  # 2-D: no views axis


def test_pair_and_orbit_stack_without_copying_when_they_can(views):
    A, B = views
    S = np.stack([A, B], axis=1)
    view = pair(S[:, 0], S[:, 1])
    assert np.shares_memory(view, S) and np.array_equal(view, S)
    assert not view.flags.writeable
    copied = pair(A, B)  # separate buffers: a copy, equal to np.stack
    assert not np.shares_memory(copied, A) and np.array_equal(copied, S)
    with pytest.raises(ValueError, match="view 1 has"):
        pair(A, B[:, :2])
    with pytest.raises(ValueError, match="at least one transformed view"):
        orbit(A)
    da = pytest.importorskip("dask.array")
    lazy = pair(da.from_array(A, chunks=50), da.from_array(B, chunks=50))
    assert isinstance(lazy, da.Array) and lazy.shape == (300, 2, 3, 4, 4)


def test_paired_denoiser_inverse_and_errors(views):
    A, B = views
    X = pair(A, B)
    full = SubspaceDenoiser(1.0, paired=True).fit(X)  # spatial, the scorer's default
    coords = full.transform(X)
    assert coords.shape == (300, 2, 3, full.n_components_)  # rows per sample: 3 channels
    assert isinstance(coords, DenoisedStack) and coords.matricization == "spatial"
    assert full.mean_.shape == (2, 3, 16)  # per-feature means of each view
    np.testing.assert_allclose(full.inverse_transform(coords), X, atol=1e-10)
    flat = SubspaceDenoiser(1.0, paired=True, matricization="flatten").fit(X)
    assert flat.transform(X).shape == (300, 2, flat.n_components_)
    np.testing.assert_allclose(flat.inverse_transform(flat.transform(X)), X, atol=1e-10)
    with pytest.raises(ValueError, match=r"paired=True needs X of shape \(n_samples, G"):
        SubspaceDenoiser(paired=True).fit(A.reshape(300, -1))
    with pytest.raises(ValueError, match="fitted on"):
        flat.transform(X[:, :, :2])
    with pytest.raises(ValueError, match="to be inverse transformed"):
        flat.inverse_transform(np.zeros((3, 2, 5)))
