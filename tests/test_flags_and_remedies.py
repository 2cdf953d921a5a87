"""Results that should not be read at face value say so, and memory errors give a remedy
that works (issue 37, item 8)."""

import numpy as np
import pytest

from seis_sklearn import SEISScorer, latent_action
from seis_sklearn._moments import check_moment_memory


def _orbit(A):
    return [np.rot90(A, k, axes=(2, 3)) for k in (1, 2, 3)]


@pytest.mark.filterwarnings("ignore:the variance share")
def test_a_latent_action_fitted_on_too_few_rows_is_flagged(rng):
    """64 samples of a 1,296-feature layer (flatten): k is capped at the rows, a
    least-squares map of that size fits anything, and the defects read 37–593 on a
    noisy orbit with nothing said."""
    A = rng.normal(size=(64, 4, 18, 18))
    A = A + 0.5 * np.roll(A, 1, axis=3)
    noisy = [b + 0.3 * rng.normal(size=b.shape) for b in _orbit(A)]
    action = latent_action(A, noisy, matricization="flatten")
    assert action.degenerate
    assert "at least half of the m=64 rows" in action.degenerate_reason
    assert "capped by m − R = 63" in action.degenerate_reason
    assert "DEGENERATE" in repr(action)


def test_a_well_sampled_latent_action_is_not_flagged(rng):
    A = rng.normal(size=(300, 2, 5, 5))
    action = latent_action(A, _orbit(A), matricization="flatten", n_components=40)
    assert not action.degenerate and action.degenerate_reason == ""
    assert action.homomorphism_defect < 1e-8 and "DEGENERATE" not in repr(action)


def test_the_memory_remedy_of_an_orbit_is_one_an_orbit_can_take():
    """Orbits refuse solver='gram', so their remedy is fewer columns."""
    d = 400_000  # 4 views: 7·d²·8 bytes, far beyond any machine
    with pytest.raises(ValueError, match="an orbit is scored from its d × d moments") as info:
        check_moment_memory(4, d)
    assert "average-pool" in str(info.value) and "use fit with solver" not in str(info.value)
    with pytest.raises(ValueError, match="use fit with solver='gram'"):
        check_moment_memory(2, d)


def test_an_orbit_refuses_the_gram_solver_with_a_pointer_to_moments(rng):
    A = rng.normal(size=(20, 2, 4, 4))
    with pytest.raises(ValueError, match="solver='moments'"):
        SEISScorer(solver="gram").fit(A, _orbit(A))
