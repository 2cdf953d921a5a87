"""seis_sklearn.testing: assert_equivariant and the hypothesis strategies users get."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings

from seis_sklearn import seis_score, transforms
from seis_sklearn._matricize import resolve_layout
from seis_sklearn.testing import assert_equivariant
from seis_sklearn.testing.strategies import (
    LAYOUTS,
    activation_arrays,
    exact_pairs,
    orbits,
    reencoded_pairs,
)


@pytest.fixture
def x(rng):
    return rng.normal(size=(60, 2, 7, 7))


def layers_fn(batch):
    """Two 'layers': pointwise (equivariant) and a crop (loses what a flip moves)."""
    return {"relu": np.maximum(batch, 0), "crop": batch[:, :, :, :3]}


def test_assert_equivariant_passes_and_fails_with_a_table(x):
    results = assert_equivariant(layers_fn, x, transforms.hflip, layers=["relu"])
    assert results["relu"].equivariance >= 0.99
    with pytest.raises(AssertionError) as info:
        assert_equivariant(layers_fn, x, transforms.hflip)
    message = str(info.value)
    assert message.startswith("1 of 2 layers fell short under the transform (held-out SEIS)")
    crop_line = next(line for line in message.splitlines() if line.startswith("crop"))
    assert crop_line.endswith("FELL SHORT") and "S_E ≥ 0.99" in crop_line
    relu_line = next(line for line in message.splitlines() if line.startswith("relu"))
    assert relu_line.endswith("ok")


def test_assert_equivariant_invariance_requirement_and_in_sample(x):
    pooled = lambda batch: batch.mean(axis=(2, 3))  # noqa: E731 - invariant to the flip
    assert_equivariant(pooled, x, transforms.hflip, min_invariance=0.99)
    with pytest.raises(AssertionError, match=r"S_I ≥ 0.9"):
        assert_equivariant(np.negative, x, transforms.hflip, min_invariance=0.9)
    result = assert_equivariant(np.negative, x, transforms.hflip, held_out=False)
    assert result["output"].evaluation == "in-sample"
    with pytest.raises(TypeError, match="must be a torch.nn.Module or a callable"):
        assert_equivariant(42, x, transforms.hflip)
    with pytest.raises(ValueError, match="no layer named 'conv9'"):
        assert_equivariant(layers_fn, x, transforms.hflip, layers=["conv9"])


def test_assert_equivariant_on_a_torch_module(rng):
    torch = pytest.importorskip("torch")
    from seis_sklearn.adapters.torch import transforms as TT

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 49, 3))  # fmt: skip
    x = rng.normal(size=(400, 1, 7, 7)).astype(np.float32)
    # spatial mode: a random filter bank does not map each flipped channel onto itself
    with pytest.raises(AssertionError, match=r"of 2 layers fell short") as info:
        assert_equivariant(model, x, TT.hflip, min_equivariance=0.9)
    conv_line = next(line for line in str(info.value).splitlines() if line.startswith("0 "))
    assert conv_line.endswith("FELL SHORT")
    # flatten mode: a convolution is linear in its input, so it keeps everything
    results = assert_equivariant(
        model, x, TT.hflip, layers=["0"], matricization="flatten", min_equivariance=0.9
    )
    assert set(results) == {"0"}


@settings(max_examples=40, deadline=None)
@given(activation_arrays())
def test_strategies_give_valid_arrays_of_every_layout(case):
    layout, A = case
    assert layout in LAYOUTS and resolve_layout(layout, A.ndim) == layout
    assert A.shape[0] >= 6 and np.isfinite(A).all()
    assert A.dtype in (np.float32, np.float64)


@settings(max_examples=25, deadline=None)
@given(exact_pairs())
def test_exact_pairs_are_permutations_and_keep_everything(case):
    layout, name, A, B = case
    assert B.shape == A.shape
    np.testing.assert_allclose(np.sort(A, axis=None), np.sort(B, axis=None))
    r = seis_score(
        A, B, layout=layout, matricization="flatten", n_components=1.0, reg=0.0, cv=None
    )
    assert r.equivariance > 0.99, name


@settings(max_examples=20, deadline=None)
@given(reencoded_pairs())
def test_reencoded_pairs_are_kept_but_moved(case):
    layout, A, B = case
    r = seis_score(A, B, layout=layout, n_components=A.shape[1], reg=0.0, cv=None)
    assert r.equivariance == pytest.approx(1.0, abs=1e-6)


@settings(max_examples=15, deadline=None)
@given(orbits())
def test_orbits_score_one_with_orbit_denoising(case):
    layout, A, Bs = case
    r = seis_score(
        A, Bs, layout=layout, matricization="flatten", n_components=1.0, reg=0.0, cv=None
    )
    assert r.equivariance == pytest.approx(1.0, abs=1e-6)
    assert len(r.elements) == len(Bs)


def test_importing_seis_sklearn_never_imports_hypothesis():
    code = (
        "import sys, seis_sklearn, seis_sklearn.testing; "
        "assert 'hypothesis' not in sys.modules, 'hypothesis was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_docs_example_test_file_passes_and_fails_as_documented():
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "test_my_model_equivariance.py"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(example), "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "1 failed, 2 passed" in proc.stdout, proc.stdout[-2000:]
    assert "pooled  0.0355  0.0022  S_E ≥ 0.99   FELL SHORT" in proc.stdout
