"""The choice of k (SPEC §2.2 step 3): thresholds, clusters of equal eigenvalues, caps."""

import numpy as np
import pytest

from seis_sklearn import SEISScorer, SubspaceDenoiser, seis_score
from seis_sklearn._cca import select_k
from tests.conftest import smooth_fields
from tests.reference import reference_k


def _exact_spectrum(rng, n, variances):
    """Centred data whose covariance (÷n) is exactly diag(variances) in a random basis."""
    d = len(variances)
    Z = rng.normal(size=(n, d))
    Z -= Z.mean(axis=0)
    Q, _ = np.linalg.qr(Z)  # orthonormal, centred columns
    O, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return np.sqrt(n) * Q * np.sqrt(variances) @ O


def test_a_threshold_never_cuts_a_cluster(rng):
    X = _exact_spectrum(rng, 200, [4.0, 2.0, 2.0, 1.0])
    # cumulative ratios 0.444, 0.667, 0.889, 1: 0.6 first reaches at k=2, inside the pair
    assert SubspaceDenoiser(n_components=0.6).fit(X).n_components_ == 3
    assert SubspaceDenoiser(n_components=0.4).fit(X).n_components_ == 1
    assert SubspaceDenoiser(n_components=2).fit(X).n_components_ == 2  # an int is used as is
    scorer = SEISScorer(n_components=0.6).fit(X, X)
    assert scorer.n_components_ == 3


def test_select_k_against_the_reference(rng):
    for _ in range(50):
        lam = np.sort(rng.choice([0.5, 1.0, 2.0, 3.0], size=8))[::-1]
        for threshold in (0.3, 0.5, 0.7, 0.9, 1.0):
            assert select_k(lam, threshold, dof=99) == reference_k(lam, threshold, 99)


def test_caps_on_k(rng):
    X = rng.normal(size=(5, 10))
    assert SubspaceDenoiser(n_components=10).fit(X).n_components_ == 4  # m - 1
    assert SubspaceDenoiser(n_components=1.0, max_components=2).fit(X).n_components_ == 2
    A = rng.normal(size=(40, 3, 4, 4))
    assert seis_score(A, A, max_components=5, cv=None).n_components == 5
    assert seis_score(A, A, n_components=100, cv=None).n_components == 16  # d
    lam = np.array([3.0, 1.0, 1e-20, 0.0])
    assert select_k(lam, 4, dof=99) == 2  # eigenvalues zero to machine precision


def test_exact_c4_symmetry_needs_whole_eigenvalue_clusters():
    fields = smooth_fields(3, n=16, c=4, size=9)
    A = np.concatenate([np.rot90(fields, r, axes=(2, 3)) for r in range(4)])  # closed under C4
    B = np.rot90(A, axes=(2, 3))
    whole = seis_score(A, B, n_components=0.9, cv=None)
    assert whole.equivariance == pytest.approx(1, abs=1e-5)  # SPEC §2.6: the ridge's cost
    eigenvalues = SEISScorer(n_components=0.9).fit(A, B).eigenvalues_
    k = whole.n_components
    assert eigenvalues[k - 1] > (1 + 1e-6) * eigenvalues[k]  # the cut sits in a gap
    # the same k minus one cuts through a pair of equal eigenvalues, if one ends there
    pairs = [j for j in range(1, k) if eigenvalues[j] >= (1 - 1e-6) * eigenvalues[j - 1]]
    assert pairs, "a C4-symmetric covariance has repeated eigenvalues"
    inside = pairs[-1]  # keep the first of a pair, drop its twin
    broken = seis_score(A, B, n_components=inside, cv=None)
    assert broken.equivariance < 0.9999


def test_refitting_starts_afresh(rng):
    A, B = rng.normal(size=(30, 6)), rng.normal(size=(30, 6))
    scorer = SEISScorer(n_components=6).fit(A, B)
    scorer.fit(A, A)
    assert scorer.n_rows_ == 30 and scorer.result_.equivariance == pytest.approx(1, abs=1e-5)
    denoiser = SubspaceDenoiser(n_components=2).fit(A)
    assert denoiser.fit(B).n_samples_seen_ == 30
    assert denoiser.get_feature_names_out().tolist() == ["subspacedenoiser0", "subspacedenoiser1"]


def test_cv_needs_two_folds(rng):
    A = rng.normal(size=(20, 4))
    with pytest.raises(ValueError, match="cv must give at least 2 folds; got 1"):
        seis_score(A, A, cv=[(np.arange(10), np.arange(10, 20))])


def test_low_rank_decomposition_equals_the_full_one(rng):
    """A matrix of known small rank is decomposed in its sketched range: the same
    eigenvalues and the same leading subspaces as a full eigh (rounding apart)."""
    from seis_sklearn._cca import LOW_RANK_FRACTION, SKETCH_OVERSAMPLING, descending_eigh

    d, r = 300, 60
    assert r + SKETCH_OVERSAMPLING <= LOW_RANK_FRACTION * d  # the sketch path is taken
    X = rng.normal(size=(r, d)) * np.geomspace(1, 1e-3, d)
    S = X.T @ X
    full_values, full_vectors = descending_eigh(S)
    values, vectors = descending_eigh(S, rank=r)
    assert vectors.shape == (d, r + SKETCH_OVERSAMPLING)
    np.testing.assert_allclose(values, full_values, rtol=0, atol=1e-12 * full_values[0])
    for k in (5, 30, r):  # leading subspaces (separated eigenvalues here)
        P = vectors[:, :k] @ vectors[:, :k].T
        Q = full_vectors[:, :k] @ full_vectors[:, :k].T
        assert np.abs(P - Q).max() < 1e-9
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(r + SKETCH_OVERSAMPLING), atol=1e-12)


def test_wide_streamed_fit_takes_the_low_rank_path_and_matches_the_reference(rng):
    """partial_fit cannot use the Gram solver; a wide flatten layer (d = 240, 20 samples)
    gets its basis from the sketch: the SPEC's scores to the reference's precision."""
    from tests.reference import reference_fit, reference_scores
    from tests.tolerance import scorer_tolerance

    A = rng.normal(size=(20, 6, 8, 5))
    B = np.flip(A, axis=3) + 0.3 * rng.normal(size=A.shape)
    scorer = SEISScorer(matricization="flatten", n_components=0.9)
    scorer.partial_fit(A[:12], B[:12]).partial_fit(A[12:], B[12:])
    fit = reference_fit(A, B, "NCHW", "flatten", 0.9)
    assert scorer.n_components_ == fit["k"]
    want = reference_scores(fit)
    tol = max(1e-8, scorer_tolerance(scorer))
    for name, value in want.items():
        assert getattr(scorer.result_, name) == pytest.approx(value, abs=tol)
