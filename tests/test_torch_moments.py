"""The torch accumulator gives the numpy path's statistics, on every device torch has
here: CPU tensors always, CUDA tensors where a GPU is present (the device check of
``benchmarks/device_check.sh`` runs these there)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn import SEISScorer  # noqa: E402
from seis_sklearn._accumulate import accumulate, accumulator, backend_of  # noqa: E402
from tests.test_moments import SHAPES, _pair  # noqa: E402
from tests.tolerance import assert_scores_close, scorer_tolerance  # noqa: E402

# CUDA only where there is one: no parameter stands in for a device that is absent
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("mode", ["spatial", "flatten", "channel"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_torch_moments_equal_the_numpy_path(layout, mode, dtype, device, rng):
    A, B = _pair(rng, SHAPES[layout], dtype, "C")
    want = accumulate([A, B], layout, mode, names=("A", "B"))
    tensors = [torch.from_numpy(A).to(device), torch.from_numpy(B).to(device)]
    assert backend_of(tensors) == "torch"
    got = accumulate(tensors, layout, mode, names=("A", "B"))
    # the same sums in another order: float64 to 1e-12, float32 products to their rounding
    tol = 1e-12 if dtype == np.float64 else 2e-6
    scale = np.abs(want.auto).max()
    assert got.n_samples == want.n_samples and got.mean.shape == want.mean.shape
    np.testing.assert_allclose(
        got.mean, want.mean, rtol=1e-12, atol=1e-12 * np.abs(want.mean).max()
    )
    assert np.abs(got.auto - want.auto).max() <= tol * scale
    assert np.abs(got.cross - want.cross).max() <= tol * scale


@pytest.mark.parametrize("device", DEVICES)
def test_batches_indices_projection_and_errors(device, rng):
    A, B = _pair(rng, (60, 3, 6, 6), np.float64, "C")
    tensors = [torch.from_numpy(A).to(device), torch.from_numpy(B).to(device)]
    acc = accumulator(tensors, "NCHW", "spatial", names=("A", "B"))
    for lo, hi in ((0, 7), (7, 8), (8, 60)):  # batches of any size, merged exactly
        acc.add([t[lo:hi] for t in tensors])
    want = accumulate([A, B], "NCHW", "spatial", names=("A", "B"))
    np.testing.assert_allclose(acc.result().auto, want.auto, rtol=1e-12, atol=1e-12)
    take = np.arange(0, 60, 3)
    sub = accumulate(tensors, "NCHW", "spatial", names=("A", "B"), indices=take)
    np.testing.assert_allclose(
        sub.cross, accumulate([A, B], "NCHW", "spatial", names=None, indices=take).cross,
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    V = np.linalg.qr(rng.normal(size=(36, 5)))[0]
    proj = accumulate(tensors, "NCHW", "spatial", names=("A", "B"), projection=V)
    np.testing.assert_allclose(
        proj.auto, accumulate([A, B], "NCHW", "spatial", names=None, projection=V).auto,
        rtol=1e-12, atol=1e-12,
    )  # fmt: skip
    bad = A.copy()
    bad[5, 1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=r"B contains 1 NaN and 0 infinite"):
        accumulate([tensors[0], torch.from_numpy(bad).to(device)], "NCHW", "spatial",
                   names=("A", "B"))  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_scores_from_torch_moments_equal_numpy_scores(dtype, device, rng):
    """≤ the case's rounding bound in float64; float32 scores within 1e-4 (SPEC §2.6)."""
    A = rng.normal(size=(200, 8, 6, 6))
    B = np.rot90(A, axes=(2, 3)) + 0.5 * rng.normal(size=A.shape)
    A, B = A.astype(dtype), B.astype(dtype)
    want = SEISScorer(n_components=0.95).fit(A, B)
    tensors = [torch.from_numpy(A).to(device), torch.from_numpy(B).to(device)]
    moments = accumulate(tensors, "NCHW", "spatial", names=("A", "B"))
    got = SEISScorer(n_components=0.95)._fit_from_moments(moments, "NCHW", A.shape[1:])
    tol = scorer_tolerance(want, dtype=dtype) if dtype == np.float64 else 1e-4
    assert_scores_close(got.result_, want.result_, tol)
