"""Matricization (SPEC §2.1): shapes, row correspondence, views instead of copies."""

import numpy as np
import pytest

from seis_sklearn import matricize
from seis_sklearn._matricize import matrix_shape, resolve_layout
from tests.reference import reference_matricize

SHAPES = {
    "NCHW": (3, 4, 5, 6),
    "NHWC": (3, 5, 6, 4),
    "NCDHW": (3, 4, 2, 5, 6),
    "NLD": (3, 7, 4),
    "ND": (3, 9),
}
EXPECTED = {  # (rows, columns) per mode, N = 3
    "NCHW": {"spatial": (12, 30), "flatten": (3, 120), "channel": (90, 4)},
    "NHWC": {"spatial": (12, 30), "flatten": (3, 120), "channel": (90, 4)},
    "NCDHW": {"spatial": (12, 60), "flatten": (3, 240), "channel": (180, 4)},
    "NLD": {"spatial": (12, 7), "flatten": (3, 28), "channel": (21, 4)},
    "ND": {"spatial": (3, 9), "flatten": (3, 9), "channel": (3, 9)},
}


@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("mode", ["spatial", "flatten", "channel"])
def test_shapes_and_values_match_the_definition(layout, mode, rng):
    A = rng.normal(size=SHAPES[layout])
    P = matricize(A, layout, mode)
    assert P.shape == EXPECTED[layout][mode]
    assert P.shape == (
        3 * matrix_shape(A.shape, layout, mode)[0],
        matrix_shape(A.shape, layout, mode)[1],
    )
    ref = reference_matricize(A, layout, mode)
    if mode == "flatten" and layout in ("NHWC", "NLD"):
        # flatten keeps the memory order of the features: same columns, permuted
        assert np.allclose(np.sort(P, axis=1), np.sort(ref, axis=1))
    else:
        assert np.array_equal(P, ref)


@pytest.mark.parametrize(
    "layout, mode",
    [
        ("NCHW", "spatial"),
        ("NCHW", "flatten"),
        ("NHWC", "channel"),
        ("NHWC", "flatten"),
        ("NCDHW", "spatial"),
        ("NLD", "channel"),
        ("NLD", "flatten"),
        ("ND", "spatial"),
    ],
)
def test_contiguous_input_gives_a_view(layout, mode, rng):
    A = rng.normal(size=SHAPES[layout])
    assert np.shares_memory(matricize(A, layout, mode), A)


def test_spatial_rows_are_sample_channel_pairs(rng):
    A = rng.normal(size=(2, 3, 4, 4))
    P = matricize(A)
    assert np.array_equal(P[1 * 3 + 2], A[1, 2].ravel())
    Ph = matricize(np.ascontiguousarray(A.transpose(0, 2, 3, 1)), "NHWC")
    assert np.array_equal(P, Ph)


def test_auto_layout_by_ndim():
    assert [resolve_layout("auto", n) for n in (2, 3, 4, 5)] == ["ND", "NLD", "NCHW", "NCDHW"]


@pytest.mark.parametrize(
    "layout, shape, message",
    [
        ("NHWC", (2, 3, 4), r"layout='NHWC' needs a 4-D array, but A is 3-D"),
        ("auto", (2, 3, 4, 5, 6, 7), r"layout='auto' cannot interpret the 6-D array A"),
        ("NCWH", (2, 3, 4, 5), r"layout must be one of"),
    ],
)
def test_layout_errors(layout, shape, message):
    with pytest.raises(ValueError, match=message):
        matricize(np.zeros(shape), layout)


def test_unknown_mode():
    with pytest.raises(ValueError, match="matricization must be one of"):
        matricize(np.zeros((2, 3)), "ND", "rows")
