"""Shared fixtures and data generators for the test suite."""

import os

# scikit-learn's check_array_api_input runs (on numpy) only with this set before
# scipy is imported; without it the check is skipped.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from scipy import ndimage  # noqa: E402

settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
    print_blob=True,
)
settings.load_profile("default")


@pytest.fixture
def rng():
    """A seeded generator; every test that needs randomness takes it from here."""
    return np.random.default_rng(12345)


def smooth_fields(seed, n=64, c=16, size=16, sigma=1.5):
    """Smooth random fields on a periodic grid, NCHW (SPEC §2.6 reference data)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c, size, size))
    return ndimage.gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="wrap")


def to_layout(A_nchw, layout):
    """Rearrange an array generated channels-first into ``layout`` (a contiguous copy)."""
    if layout == "NHWC":
        return np.ascontiguousarray(np.moveaxis(A_nchw, 1, -1))
    if layout == "NLD":  # (N, C, L) -> (N, L, C)
        return np.ascontiguousarray(np.moveaxis(A_nchw, 1, -1))
    return A_nchw
