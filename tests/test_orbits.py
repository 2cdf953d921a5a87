"""Orbits (SPEC §2.5): the pooled basis over a whole group orbit, and the latent action."""

import numpy as np
import pytest

from seis_sklearn import SEISScorer, latent_action, seis_score
from tests.tolerance import assert_scores_close, score_tolerance, scorer_tolerance

SCORES = ("equivariance", "invariance", "equivariance_weighted", "invariance_weighted")


@pytest.fixture
def rot_orbit(rng):
    A = rng.normal(size=(160, 3, 5, 5))
    return A, [np.ascontiguousarray(np.rot90(A, k, axes=(2, 3))) for k in (1, 2, 3)]


def test_an_orbit_of_one_element_is_the_pair(rng):
    A = rng.normal(size=(80, 4, 6, 6))
    B = np.flip(A, axis=3) + 0.5 * rng.normal(size=A.shape)
    for cv in (None, 4):
        pair, orbit = seis_score(A, B, cv=cv), seis_score(A, [B], cv=cv)
        for name in SCORES:
            assert getattr(orbit, name) == pytest.approx(getattr(pair, name), abs=1e-12)
            assert getattr(orbit.elements[0], name) == pytest.approx(
                getattr(pair, name), abs=1e-12
            )


def test_orbit_denoising_makes_an_exact_action_score_one_held_out(rot_orbit):
    A, Bs = rot_orbit
    params = dict(matricization="flatten", n_components=0.9)
    orbit = seis_score(A, Bs, cv=4, **params)
    assert len(orbit.elements) == 3 and orbit.evaluation == "cross-fitted"
    assert orbit.equivariance == pytest.approx(1.0, abs=1e-9)
    assert all(e.equivariance == pytest.approx(1.0, abs=1e-9) for e in orbit.elements)
    assert orbit.equivariance == pytest.approx(np.mean([e.equivariance for e in orbit.elements]))
    assert orbit.equivariance_std is not None and orbit.elements[0].n_folds == 4
    pair = seis_score(A, Bs[0], cv=4, **params)  # the pair's subspace is not rot90-invariant
    assert pair.equivariance < orbit.equivariance - 0.05
    assert "orbit of 3 transformed views" in repr(orbit)


def test_scorer_fit_partial_fit_and_held_out_scores_on_orbits(rot_orbit):
    A, Bs = rot_orbit
    whole = SEISScorer(matricization="flatten", n_components=0.9).fit(
        A[:120], [b[:120] for b in Bs]
    )
    parts = SEISScorer(matricization="flatten", n_components=0.9)
    parts.partial_fit(A[:60], [b[:60] for b in Bs]).partial_fit(A[60:120], [b[60:120] for b in Bs])
    assert_scores_close(parts.result_, whole.result_, scorer_tolerance(whole))
    assert whole.n_views_ == 4
    held = whole.scores(A[120:], [b[120:] for b in Bs])
    assert held.evaluation == "held-out" and len(held.elements) == 3
    assert whole.score(A[120:], [b[120:] for b in Bs]) == pytest.approx(held.equivariance)
    with pytest.raises(ValueError, match="y has 1 transformed view"):
        whole.scores(A[120:], Bs[0][120:])
    with pytest.raises(ValueError, match="fitted on 3"):
        whole.partial_fit(A[:10], [Bs[0][:10]])


def test_orbit_errors(rot_orbit):
    A, Bs = rot_orbit
    with pytest.raises(ValueError, match="empty list"):
        seis_score(A, [], cv=None)
    with pytest.raises(ValueError, match="use solver='moments'"):
        seis_score(A, Bs, solver="gram", cv=None)
    with pytest.raises(ValueError, match=r"B\[1\] must have the same shape|same shape"):
        seis_score(A, [Bs[0], Bs[1][:, :2]], cv=None)
    with pytest.raises(ValueError, match="take a pair"):
        seis_score(A, Bs, n_permutations=5, cv=None)
    with pytest.raises(TypeError, match="non-empty list"):
        latent_action(A, Bs[0])


def test_latent_action_of_a_permutation_representation(rng):
    n, d = 5, 10
    P = np.eye(d)[np.roll(np.arange(d), 2)]  # a cyclic shift of the features: order 5
    X = rng.normal(size=(400, d))
    Bs = [X @ np.linalg.matrix_power(P, k) for k in range(1, n)]
    action = latent_action(X, Bs, n_components=d)
    assert action.maps.shape == (n - 1, d, d)
    V = SEISScorer(n_components=d).fit(X, Bs).components_.T  # the pooled basis
    np.testing.assert_allclose(action.maps[0], V.T @ P @ V, atol=1e-8)  # P, in that basis
    assert action.homomorphism_defect < 1e-8 and action.order_defect < 1e-8
    assert action.orthogonality_defect < 1e-8
    assert action.homomorphism_defects.shape == (n - 1, n - 1)
    random_maps = [X @ rng.normal(size=(d, d)) for _ in range(n - 1)]
    broken = latent_action(X, random_maps, n_components=d)
    assert broken.homomorphism_defect > 0.5 and broken.orthogonality_defect > 0.5
    loose = latent_action(X, random_maps, n_components=d, cyclic=False)
    assert loose.order_defect is None and loose.homomorphism_defect is None
    assert "orthogonality defect" in repr(loose)


def test_latent_action_needs_the_moment_solver(rng):
    A = rng.normal(size=(10, 50))
    scorer = SEISScorer(solver="gram").fit(A, A[:, ::-1])
    with pytest.raises(ValueError, match="needs the moment solver"):
        _ = scorer.latent_action_


def test_orbits_on_dask_arrays(rot_orbit):
    da = pytest.importorskip("dask.array")
    import dask

    A, Bs = rot_orbit
    lazy = [da.from_array(x, chunks=(40, 3, 5, 5)) for x in (A, *Bs)]
    with dask.config.set(scheduler="sync"):
        got = seis_score(lazy[0], lazy[1:], cv=4, matricization="flatten", n_components=0.9)
    want = seis_score(A, Bs, cv=4, matricization="flatten", n_components=0.9)
    tol = score_tolerance(A, Bs, cv=4, matricization="flatten", n_components=0.9)
    assert_scores_close(got, want, tol)
