"""The uniform pair counts only the canonical pairs the views can have (docs/math.rst,
"Counting the pairs a view can have"): ``S_E = Σρ / k_eff``, ``k_eff`` the larger of the
two views' effective numbers of directions in the shared basis.

Regression for issue 37, item 2: an exactly rot90-equivariant e2cnn layer with dead
units scored 0.75 on its orbit, held-out, because directions that only one view fills
were counted as lost pairs."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seis_sklearn import SEISScorer, seis_score
from seis_sklearn.testing.strategies import ill_conditioned_pairs, modes
from tests.conftest import smooth_fields

STABLE = 1e-7  # the stability bound of docs/math.rst, section 6


def _dof(sigma, reg=1e-6):
    """``tr(Σ(Σ + rI)⁻¹)``, r = reg·tr Σ/k, from a dense inverse (independent of the
    package's eigenvalue route)."""
    k = len(sigma)
    ridge = reg * np.trace(sigma) / k
    return float(np.trace(sigma @ np.linalg.inv(sigma + ridge * np.eye(k))))


def _fitted_covariances(A, B, **kw):
    """Σ_xx, Σ_yy of the fitted pair in its basis, computed from the rows here."""
    scorer = SEISScorer(solver="moments", **kw).fit(A, B)
    V = scorer.components_
    P = (A - A.mean(0)).reshape(len(A), -1) @ V
    Q = (B - B.mean(0)).reshape(len(B), -1) @ V
    return scorer, P.T @ P / len(P), Q.T @ Q / len(Q)


def test_the_divisor_is_the_larger_dof_of_the_two_views(rng):
    """k_eff against a dense-inverse computation of each view's dof, with dead units
    in different places in A and B."""
    A = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    A[:, :3] = 0.0
    B = np.roll(A, 5, axis=1) + 0.1 * rng.normal(size=A.shape) * (np.arange(12) >= 8)
    scorer, sxx, syy = _fitted_covariances(A, B, matricization="flatten", n_components=1.0)
    cca = scorer._fitted.ccas[0]
    assert cca.effective_pairs == pytest.approx(max(_dof(sxx), _dof(syy)), rel=1e-9)
    assert cca.effective_pairs < scorer.n_components_ - 2  # the dead ones are not counted
    in_sample = seis_score(A, B, cv=None, matricization="flatten", n_components=1.0)
    assert in_sample.equivariance == pytest.approx(
        cca.canonical_correlations.sum() / cca.effective_pairs, rel=1e-12
    )


def _c8_network():
    torch = pytest.importorskip("torch")
    pytest.importorskip("e2cnn")
    from e2cnn import gspaces
    from e2cnn import nn as enn

    torch.manual_seed(0)
    space = gspaces.Rot2dOnR2(N=8)
    plain = enn.FieldType(space, [space.trivial_repr])
    regular = enn.FieldType(space, 2 * [space.regular_repr])
    net = enn.SequentialModule(
        enn.R2Conv(plain, regular, 5, stride=2),
        enn.ReLU(regular),
        enn.R2Conv(regular, regular, 3),
        enn.ReLU(regular),
        enn.R2Conv(regular, regular, 5),
        enn.ReLU(regular),
        enn.GroupPooling(regular),
    ).eval()

    def run(x):
        with torch.no_grad():
            t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            return net(enn.GeometricTensor(t, plain)).tensor.double().numpy()

    return run


@pytest.mark.filterwarnings("ignore::UserWarning")  # e2cnn: torch deprecations
def test_exactly_equivariant_layer_with_dead_units_scores_one_held_out():
    """The issue's case: a C8-steerable e2cnn network (R2Conv → ReLU ×3 →
    GroupPooling) on 64 inputs of 33×33, its group-pooled 2×9×9 layer exactly
    rot90-equivariant, many features constant over the samples in places rot90 does
    not keep (digits off-centre). Dividing by the pooled k read 0.75."""
    from sklearn.datasets import load_digits

    run = _c8_network()
    x = np.zeros((64, 1, 33, 33), np.float32)
    x[:, 0, 2:10, 3:11] = load_digits().images[:64] / 16.0  # off-centre
    A = run(x)
    orbit = [run(np.rot90(x, k, axes=(2, 3))) for k in (1, 2, 3)]
    np.testing.assert_allclose(orbit[0], np.rot90(A, 1, axes=(2, 3)), atol=1e-5)
    dead = A.std(axis=0) == 0
    assert dead.sum() > 20 and (dead != np.rot90(dead, 1, axes=(1, 2))).any()
    result = seis_score(A, orbit, cv=5)
    assert result.evaluation == "cross-fitted"
    assert result.equivariance >= 0.999
    assert result.equivariance_weighted >= 0.999
    for element in result.elements:  # each pair (A, B_g) in the orbit's basis
        assert element.equivariance >= 0.999
    # the views fill fewer directions than the pooled basis holds
    cca = SEISScorer().fit(A, orbit)._fitted.ccas[0]
    assert cca.effective_pairs < result.n_components - 1


def test_unrelated_views_still_score_near_zero_held_out(rng):
    A = rng.normal(size=(600, 10)) @ rng.normal(size=(10, 20))
    A[:, :4] = 0.0  # dead units, different ones in B
    B = rng.normal(size=(600, 10)) @ rng.normal(size=(10, 20))
    B[:, -4:] = 0.0
    result = seis_score(A, B, cv=5)
    assert result.equivariance < 0.08
    assert result.invariance < 0.03


@pytest.mark.parametrize("cv", [None, 5])
def test_lost_information_still_counts(rng, cv):
    """B = A projected onto 10 of A's 78 directions reads 10/78: the larger count,
    not the smaller (which would read 1)."""
    A = rng.normal(size=(800, 78)) @ (np.eye(78) + 0.2 * rng.normal(size=(78, 78)))
    basis = np.linalg.qr(rng.normal(size=(78, 10)))[0]
    B = A @ basis @ basis.T
    result = seis_score(A, B, n_components=1.0, cv=cv)
    assert result.n_components == 78
    assert result.equivariance == pytest.approx(10 / 78, abs=2e-3)


def test_an_exact_shift_with_dead_positions_scores_one_on_its_orbit():
    """Smooth fields with a fixed dead region that a circular shift moves: the orbit's
    pooled basis is shift-invariant, so the pairs the views can have all correlate."""
    A = smooth_fields(0, n=64, c=2, size=9)
    mask = np.ones((9, 9))
    mask[:4] = 0.0
    mask[:, :2] = 0.0
    A = A * mask
    orbit = [np.roll(A, j, axis=3) for j in range(1, 9)]
    for cv in (None, 4):
        assert seis_score(A, orbit, cv=cv).equivariance == pytest.approx(1, abs=1e-6)


@settings(max_examples=150)
@given(ill_conditioned_pairs(min_samples=12), modes, st.floats(-6, 6), st.integers(0, 2**32 - 1))
def test_the_count_is_symmetric_scale_free_and_stable(pair, mode, exponent, seed):
    """Symmetric, one view rescaled and rounding: continuous in the data, so no rank
    cut that rounding flips — at the defaults, on dead units in different places."""
    layout, A, B = pair
    kw = dict(layout=layout, matricization=mode)
    base = seis_score(A, B, cv=None, **kw)
    swapped = seis_score(B, A, cv=None, **kw)
    scaled = seis_score(10.0**exponent * A, B, cv=None, **kw)
    rounded = seis_score(A, B * (1 + 1e-15), cv=None, **kw)
    for other, tol in ((swapped, 1e-9), (scaled, STABLE), (rounded, STABLE)):
        assert other.n_components == base.n_components
        assert other.equivariance == pytest.approx(base.equivariance, abs=tol)
        assert other.invariance == pytest.approx(base.invariance, abs=tol)
