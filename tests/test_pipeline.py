"""SEIS in scikit-learn Pipelines: paired stacks, the paired denoiser, no second denoising."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline

from seis_sklearn import SEISScorer, SubspaceDenoiser, orbit, pair, seis_score

SCORES = ("equivariance", "invariance", "equivariance_weighted", "invariance_weighted")


@pytest.fixture
def views(rng):
    A = rng.normal(size=(300, 3, 4, 4))
    A += 0.7 * np.roll(A, 1, axis=-1)
    B = np.flip(A, axis=3) + 0.5 * rng.normal(size=A.shape)
    return A, B


@pytest.mark.parametrize(
    "mode, scorer_mode", [("flatten", "spatial"), ("spatial", "channel"), ("channel", "channel")]
)
def test_pipeline_equals_the_direct_scorer(views, mode, scorer_mode):
    A, B = views
    X = pair(A, B)
    pipe = make_pipeline(
        SubspaceDenoiser(0.9, paired=True, matricization=mode),
        SEISScorer(n_components=None, matricization=scorer_mode),
    ).fit(X[:240])
    direct = SEISScorer(n_components=0.9, matricization=mode).fit(A[:240], B[:240])
    for name in SCORES:
        assert getattr(pipe[-1].result_, name) == pytest.approx(
            getattr(direct.result_, name), abs=1e-10
        )
    held_pipe = pipe[-1].scores(pipe[0].transform(X[240:]))
    held_direct = direct.scores(A[240:], B[240:])
    for name in SCORES:
        assert getattr(held_pipe, name) == pytest.approx(getattr(held_direct, name), abs=1e-10)
    assert pipe.score(X[240:]) == pytest.approx(direct.score(A[240:], B[240:]), abs=1e-10)


def test_cross_val_score_and_grid_search_on_a_pipeline(views):
    A, B = views
    X = pair(A, B)
    pipe = make_pipeline(SubspaceDenoiser(0.9, paired=True), SEISScorer(n_components=None))
    scores = cross_val_score(pipe, X, cv=KFold(5))
    want = [
        SEISScorer(n_components=0.9, matricization="flatten")
        .fit(A[np.setdiff1d(np.arange(300), test)], B[np.setdiff1d(np.arange(300), test)])
        .score(A[test], B[test])
        for _, test in KFold(5).split(A)
    ]
    np.testing.assert_allclose(scores, want, atol=1e-10)
    grid = GridSearchCV(pipe, {"subspacedenoiser__n_components": [0.5, 0.9, 0.99]}, cv=3)
    grid.fit(X)
    assert grid.best_params_["subspacedenoiser__n_components"] in (0.5, 0.9, 0.99)


def test_scorer_takes_paired_and_orbit_stacks(views):
    A, B = views
    stacked = SEISScorer().fit(pair(A, B))
    assert stacked.result_.equivariance == SEISScorer().fit(A, B).result_.equivariance
    streamed = SEISScorer().partial_fit(pair(A[:150], B[:150])).partial_fit(pair(A[150:], B[150:]))
    assert streamed.result_.equivariance == pytest.approx(stacked.result_.equivariance, abs=1e-10)
    rotations = [np.rot90(A, k, axes=(2, 3)) for k in (1, 2, 3)]
    by_stack = SEISScorer(matricization="flatten").fit(orbit(A, *rotations))
    by_list = SEISScorer(matricization="flatten").fit(A, rotations)
    assert by_stack.result_.equivariance == pytest.approx(by_list.result_.equivariance)
    assert len(by_stack.result_.elements) == 3
    assert seis_score(A, B).equivariance == SEISScorer().fit(pair(A, B)).result_.equivariance
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
    full = SubspaceDenoiser(1.0, paired=True, matricization="spatial").fit(X)
    coords = full.transform(X)
    assert coords.shape == (300, 2, 3, full.n_components_)  # rows per sample: 3 channels
    np.testing.assert_allclose(full.inverse_transform(coords), X, atol=1e-10)
    flat = SubspaceDenoiser(1.0, paired=True).fit(X)
    assert flat.transform(X).shape == (300, 2, flat.n_components_)
    np.testing.assert_allclose(flat.inverse_transform(flat.transform(X)), X, atol=1e-10)
    with pytest.raises(ValueError, match=r"paired=True needs X of shape \(n_samples, G"):
        SubspaceDenoiser(paired=True).fit(A.reshape(300, -1))
    with pytest.raises(ValueError, match="fitted on"):
        flat.transform(X[:, :, :2])
    with pytest.raises(ValueError, match="to be inverse transformed"):
        flat.inverse_transform(np.zeros((3, 2, 5)))
