"""Permutation null and bootstrap intervals of SEIS scores."""

import numpy as np
import pytest
from scipy import stats

from seis_sklearn import seis_score

SCORES = ("equivariance", "invariance", "equivariance_weighted", "invariance_weighted")


def test_permutation_p_values_are_uniform_under_the_null():
    """Independent views: the p-values of S_E over repeated seeds look uniform (KS)."""
    p_values = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        A, B = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
        r = seis_score(A, B, n_components=3, n_permutations=19, random_state=seed, cv=None)
        p_values.append(r.p_values["equivariance"])
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    assert 0.3 < np.mean(p_values) < 0.7


def test_permutation_p_value_is_the_smallest_possible_for_a_real_pairing(rng):
    A = rng.normal(size=(50, 4, 5, 5))
    r = seis_score(A, np.rot90(A, axes=(2, 3)), n_permutations=29, random_state=0, cv=None)
    assert r.p_values["equivariance"] == pytest.approx(1 / 30)
    assert r.null_means["equivariance"] < r.equivariance
    assert r.n_permutations == 29 and set(r.p_values) == set(SCORES)


def test_bootstrap_intervals_cover_the_population_value_at_about_the_nominal_rate():
    """B = A + noise, d = 2, no truncation: the population S_E is 1/sqrt(1 + σ²)."""
    sigma, truth, covered, sims = 1.0, 1 / np.sqrt(2.0), 0, 80
    for seed in range(sims):
        rng = np.random.default_rng(seed)
        A = rng.normal(size=(300, 2))
        B = A + sigma * rng.normal(size=A.shape)
        r = seis_score(A, B, n_components=2, reg=0.0, n_bootstrap=150, random_state=seed, cv=None)
        covered += r.ci_low["equivariance"] <= truth <= r.ci_high["equivariance"]
    assert 0.85 <= covered / sims <= 1.0  # nominal 0.95


def test_replicates_are_reproducible_and_independent_of_n_jobs(rng):
    A = rng.normal(size=(40, 3, 4, 4))
    B = np.flip(A, axis=3) + rng.normal(size=A.shape)
    kw = dict(n_permutations=9, n_bootstrap=9, random_state=7, cv=2)
    one = seis_score(A, B, **kw)
    two = seis_score(A, B, n_jobs=2, **kw)
    assert one.p_values == two.p_values and one.ci_low == two.ci_low
    assert one.ci_high == two.ci_high and one.null_means == two.null_means
    assert one.confidence == 0.95 and one.n_bootstrap == 9
    assert one.ci_low["equivariance"] <= one.ci_high["equivariance"]
    text = repr(one)
    assert "permutation null (9)" in text and "95% bootstrap intervals (9)" in text
    assert one.as_dict()["p_values"] == one.p_values
    plain = seis_score(A, B, cv=2)
    assert plain.p_values is None and plain.ci_low is None
    assert plain.equivariance == one.equivariance  # the statistics do not move the estimate


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(n_permutations=-1), "n_permutations must be an int >= 0"),
        (dict(n_bootstrap=2.5), "n_bootstrap must be an int >= 0"),
        (dict(n_bootstrap=5, confidence=1.0), r"confidence must be a float in \(0, 1\)"),
    ],
)
def test_bad_statistics_arguments(rng, kw, message):
    A = rng.normal(size=(20, 3))
    with pytest.raises(ValueError, match=message):
        seis_score(A, A, **kw, cv=None)
