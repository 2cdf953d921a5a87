"""The scores agree with a direct implementation of the SPEC, and with trusted libraries."""

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA

from seis_sklearn import SEISScorer, SubspaceDenoiser, seis_score
from seis_sklearn._result import SCORE_NAMES
from tests.conftest import smooth_fields, to_layout
from tests.reference import reference_fit, reference_held_out, reference_scores
from tests.tolerance import score_tolerance, scorer_tolerance

SHAPES = {
    "NCHW": (24, 5, 4, 4),
    "NHWC": (24, 4, 4, 5),
    "NCDHW": (16, 3, 2, 3, 3),
    "NLD": (24, 6, 5),
    "ND": (60, 12),
}


def _pair(rng, shape, mixing=0.6):
    A = rng.normal(size=shape)
    A = A + 0.5 * np.roll(A, 1, axis=-1)  # some correlation between columns
    B = mixing * np.flip(A, axis=-1) + (1 - mixing) * rng.normal(size=shape)
    return A, B


@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("mode", ["spatial", "flatten", "channel"])
@pytest.mark.parametrize("n_components", [0.9, 0.99, 3])
def test_in_sample_scores_match_the_spec_to_1e8(layout, mode, n_components, rng):
    A, B = _pair(rng, SHAPES[layout])
    result = seis_score(
        A, B, layout=layout, matricization=mode, n_components=n_components, cv=None
    )
    fit = reference_fit(A, B, layout, mode, n_components)
    expected = reference_scores(fit)
    assert result.n_components == fit["k"]
    # 1e-8, or the rounding bound of the case where its conditioning allows less
    tol = max(
        1e-8, score_tolerance(A, B, layout=layout, matricization=mode, n_components=n_components)
    )
    for name in SCORE_NAMES:
        assert getattr(result, name) == pytest.approx(expected[name], abs=tol), name
    assert np.allclose(result.canonical_correlations, fit["rho"], atol=tol)
    # Single pairs (u_i, w_i) are only defined where ρ_i stands apart from its neighbours.
    rho = fit["rho"]
    gaps = np.minimum(np.abs(np.diff(rho, prepend=np.inf)), np.abs(np.diff(rho, append=-np.inf)))
    separated = gaps > 1e-2
    assert np.allclose(result.alignments[separated], fit["alpha"][separated], atol=1e-7)
    assert np.allclose(result.weights[separated], fit["omega"][separated], rtol=1e-7)


def test_abs_invariance_matches_the_spec_where_correlations_are_distinct(rng):
    A, B = _pair(rng, (400, 8))
    fit = reference_fit(A, B, "ND", "spatial", 8)
    assert np.diff(fit["rho"]).max() < -1e-3  # distinct ρ: single pairs are defined
    result = seis_score(A, B, n_components=8, invariance="abs", cv=None)
    assert result.invariance == pytest.approx(reference_scores(fit, "abs")["invariance"], abs=1e-8)


@pytest.mark.parametrize("layout", ["NCHW", "NLD", "ND"])
@pytest.mark.parametrize("invariance", ["trace", "abs"])
def test_held_out_scores_match_the_spec(layout, invariance, rng):
    A, B = _pair(rng, SHAPES[layout])
    A2, B2 = _pair(rng, SHAPES[layout])
    scorer = SEISScorer(n_components=0.95, layout=layout, invariance=invariance).fit(A, B)
    result = scorer.scores(A2, B2)
    expected, rho = reference_held_out(
        reference_fit(A, B, layout, "spatial", 0.95), A2, B2, invariance
    )
    # Held-out S_I′ is capped at S_E′ (see SEISScorer's notes).
    expected["invariance"] = min(expected["invariance"], expected["equivariance"])
    tol = max(1e-8, scorer_tolerance(scorer, held_out=True))
    for name in SCORE_NAMES:
        assert getattr(result, name) == pytest.approx(expected[name], abs=tol), name
    assert np.allclose(result.canonical_correlations, rho, atol=tol)


def test_held_out_on_the_fitting_data_gives_the_in_sample_scores(rng):
    A, B = _pair(rng, (60, 12))
    scorer = SEISScorer(n_components=12, reg=0.0).fit(A, B)
    held = scorer.scores(A, B)
    for name in SCORE_NAMES:
        assert getattr(held, name) == pytest.approx(getattr(scorer.result_, name), abs=1e-10)
    # with the default ridge they differ only at the ridge's order
    scorer = SEISScorer(n_components=12).fit(A, B)
    assert scorer.scores(A, B).equivariance == pytest.approx(scorer.result_.equivariance, abs=1e-5)


@pytest.mark.parametrize("n, d", [(200, 5), (500, 20), (80, 40)])
def test_canonical_correlations_are_cosines_of_subspace_angles(n, d, rng):
    A = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    B = A @ rng.normal(size=(d, d)) * 0.3 + rng.normal(size=(n, d))
    result = seis_score(A, B, n_components=d, reg=0.0, cv=None)
    Ac, Bc = A - A.mean(0), B - B.mean(0)
    expected = np.sort(np.cos(subspace_angles(Ac, Bc)))[::-1]
    assert np.allclose(result.canonical_correlations, expected, atol=1e-10)


def test_denoiser_matches_pca(rng):
    X = (
        rng.normal(size=(300, 8))
        @ np.diag([9, 7, 5, 4, 3, 2, 1, 0.5])
        @ np.linalg.qr(rng.normal(size=(8, 8)))[0]
    )
    for n_components in (3, 0.9, 0.999):
        ours = SubspaceDenoiser(n_components=n_components).fit(X)
        pca = PCA(n_components=n_components, svd_solver="full").fit(X)
        assert ours.n_components_ == pca.n_components_
        signs = np.sign(np.sum(ours.components_ * pca.components_, axis=1))
        assert np.allclose(ours.components_, signs[:, None] * pca.components_, atol=1e-10)
        assert np.allclose(ours.explained_variance_, pca.explained_variance_, rtol=1e-10)
        assert np.allclose(
            ours.explained_variance_ratio_, pca.explained_variance_ratio_, rtol=1e-10
        )
        assert np.allclose(ours.transform(X) * signs, pca.transform(X), atol=1e-9)
        assert np.allclose(
            ours.inverse_transform(ours.transform(X)),
            pca.inverse_transform(pca.transform(X)),
            atol=1e-9,
        )


# -- the reference behaviour of SPEC §2.6 on smooth random fields --------------------


@pytest.fixture(scope="module")
def fields():
    return smooth_fields(0), smooth_fields(1)


def test_reference_identity_and_negation(fields):
    A, _ = fields
    same = seis_score(A, A, cv=None)
    neg = seis_score(A, -A, cv=None)
    assert (same.equivariance, same.invariance) == pytest.approx((1, 1), abs=1e-5)
    assert (neg.equivariance, neg.invariance) == pytest.approx((1, 0), abs=1e-5)
    assert (neg.equivariance_weighted, neg.invariance_weighted) == pytest.approx((1, 0), abs=1e-5)


def test_reference_shift_and_rotation(fields):
    A, _ = fields
    shift = seis_score(A, np.roll(A, 4, axis=3), cv=None)
    assert shift.equivariance > 0.95 and shift.invariance < 0.05
    rot = seis_score(A, np.rot90(A, axes=(2, 3)), cv=None)
    assert rot.equivariance > 0.95 and rot.invariance < 0.1
    # the weighted pair on exact cases (SPEC §2.3 step 9)
    assert rot.equivariance_weighted > 0.99 and 0.05 < rot.invariance_weighted < 0.2
    shift6 = seis_score(A, np.roll(A, 6, axis=3), cv=None)
    assert shift6.equivariance_weighted > 0.99 and shift6.invariance_weighted < 0.05


def test_reference_independent_fields(fields):
    A, B = fields
    result = seis_score(A, B, cv=None)
    assert result.equivariance < 0.2 and result.invariance < 0.02


def test_reference_flatten_sees_channel_permutations_spatial_does_not(fields):
    A, _ = fields
    rotated = np.rot90(A, axes=(2, 3)).reshape(64, 4, 4, 16, 16)
    B = np.roll(rotated, 1, axis=2).reshape(A.shape)  # C4 regular fields: roll 4 channels
    assert seis_score(A, B, matricization="flatten", cv=None).equivariance > 0.95
    assert seis_score(A, B, matricization="spatial", cv=None).equivariance < 0.2


def test_weighted_pair_is_stable_against_the_threshold(fields):
    A, _ = fields
    noise = np.random.default_rng(5).normal(size=A.shape) * 0.3 * A.std()
    B = np.roll(A, 2, axis=3) + noise
    low, high = (seis_score(A, B, n_components=t, cv=None) for t in (0.9, 0.999))
    assert abs(low.equivariance_weighted - high.equivariance_weighted) < 0.03
    assert abs(low.equivariance - high.equivariance) > 0.3  # what the weights fix


@pytest.mark.parametrize("layout", ["NHWC", "NLD"])
def test_layouts_agree_on_the_reference_fields(layout, fields):
    A, _ = fields
    B = np.roll(A, 3, axis=3)
    if layout == "NLD":
        A, B = A[:, :, 0, :], B[:, :, 0, :]
        expected = seis_score(A[:, :, None, :], B[:, :, None, :], cv=None)
    else:
        expected = seis_score(A, B, cv=None)
    got = seis_score(to_layout(A, layout), to_layout(B, layout), layout=layout, cv=None)
    assert got.equivariance == pytest.approx(expected.equivariance, abs=1e-10)
    assert got.invariance == pytest.approx(expected.invariance, abs=1e-10)
