"""An example test file for your own project: ``pytest examples/test_my_model_equivariance.py``.

The first test passes (a pointwise nonlinearity commutes with any permutation of
the grid); the second fails on purpose, to show the message you get when a
layer does not keep what the transformation moves.
"""

import numpy as np
import pytest
from hypothesis import given, settings

from seis_sklearn import transforms
from seis_sklearn.testing import assert_equivariant
from seis_sklearn.testing.strategies import activation_arrays


def my_model(batch):
    """Stand-in for your network: two 'layers' as a dict of activations."""
    hidden = np.tanh(batch)  # pointwise: equivariant to any grid transform
    pooled = hidden[:, :, ::2, ::2]  # subsampling: keeps only every other pixel
    return {"hidden": hidden, "pooled": pooled}


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(size=(80, 3, 8, 8))


def test_hidden_layer_is_flip_equivariant(images):
    assert_equivariant(my_model, images, transforms.hflip, layers=["hidden"])


def test_every_layer_is_flip_equivariant(images):
    # fails: the subsampled grid of a flipped image is not the flip of the subsampled grid
    assert_equivariant(my_model, images, transforms.hflip)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(activation_arrays(layouts=("NCHW",), min_samples=30))
def test_tanh_is_flip_equivariant_on_any_activations(case):
    layout, A = case  # drawn shapes and dtypes, the project's own strategy
    # at the defaults: held-out, on the flip's orbit (x, flip x)
    assert_equivariant(np.tanh, A, lambda batch: transforms.hflip(batch, layout=layout),
                       layout=layout)  # fmt: skip


def test_tanh_is_rot90_equivariant(images):
    # a quarter turn has order 4: scored on its orbit, exact code scores 1 held-out
    assert_equivariant(my_model, images, transforms.rot90, layers=["hidden"])
