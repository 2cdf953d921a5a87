"""seis_sklearn.transforms: exact transforms are permutations, interpolated ones are consistent."""

from functools import partial

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage

from seis_sklearn import transforms as T

LAYOUT_AXES = {"NCHW": (2, 3), "NHWC": (1, 2), "NCDHW": (3, 4)}


def _to(x_nchw, layout):
    return np.ascontiguousarray(np.moveaxis(x_nchw, 1, -1)) if layout == "NHWC" else x_nchw


def _is_permutation_of(y, x):
    return y.dtype == x.dtype and np.array_equal(np.sort(y, axis=None), np.sort(x, axis=None))


@pytest.fixture
def img(rng):
    return rng.normal(size=(2, 3, 7, 7))


@pytest.mark.parametrize(
    "fn",
    [
        T.rot90,
        partial(T.rot90, k=3),
        T.hflip,
        T.vflip,
        partial(T.translate, shift=(2, -3)),
        partial(T.translate, shift=9),
    ],
)
def test_exact_transforms_are_permutations(fn, img):
    out = fn(img)
    assert _is_permutation_of(out, img) and out.flags.c_contiguous
    ints = (img * 100).astype(np.int32)
    assert fn(ints).dtype == np.int32


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_every_transform_acts_on_the_spatial_axes_of_any_layout(layout, img):
    x = _to(img, layout)
    for fn in (
        T.rot90,
        T.hflip,
        T.vflip,
        partial(T.translate, shift=(1.5, -0.25)),
        partial(T.rotate, angle=33),
        partial(T.scale, factor=1.3),
        partial(T.translate, shift=(2, 1), mode="zeros"),
    ):
        assert np.allclose(fn(x, layout=layout), _to(fn(img, layout="NCHW"), layout), atol=1e-12)


def test_conventions(img):
    h_ax, w_ax = 2, 3
    assert np.array_equal(T.rot90(img), np.rot90(img, 1, axes=(h_ax, w_ax)))
    assert np.array_equal(T.hflip(img), img[..., ::-1])
    assert np.array_equal(T.vflip(img), img[:, :, ::-1, :])
    assert np.array_equal(T.translate(img, (1, 2)), np.roll(img, (1, 2), axis=(2, 3)))
    shifted = T.translate(img, (1, 2), mode="zeros")
    assert np.array_equal(shifted[:, :, 1:, 2:], img[:, :, :-1, :-2])
    assert not shifted[:, :, 0, :].any() and not shifted[:, :, :, :2].any()
    assert not T.translate(img, (0, 7), mode="zeros").any()


def test_rotate_by_quarter_turns_is_rot90(img):
    for k in range(-2, 6):
        assert np.array_equal(T.rotate(img, 90 * k), T.rot90(img, k % 4))
    # and the interpolating path agrees with it as the angle approaches 90°
    assert np.abs(T.rotate(img, 90 + 1e-7) - T.rot90(img)).max() < 1e-6
    assert np.allclose(
        T.rotate(img, 30),
        ndimage.rotate(img, 30, axes=(2, 3), reshape=False, order=1, mode="grid-constant"),
    )


def test_rotations_compose(img):
    # four 90° steps and two 180° steps are the identity, exactly
    assert np.array_equal(T.rotate(T.rotate(img, 180), 180), img)
    assert np.array_equal(T.rot90(T.rot90(img, 2), 2), img)


@pytest.mark.parametrize("mode", ["circular", "zeros"])
def test_subpixel_shift_is_continuous_with_integer_shift(mode, img):
    exact = T.translate(img, (1, -2), mode=mode)
    for order in (1, 3):
        near = T.translate(img, (1 + 1e-7, -2 - 1e-7), mode=mode, order=order)
        assert np.abs(near - exact).max() < 1e-5


def test_subpixel_circular_shift_of_a_ramp_is_linear():
    x = np.tile(np.sin(2 * np.pi * np.arange(16) / 16), (1, 1, 1, 1)).reshape(1, 1, 1, 16)
    half = T.translate(x, (0, 0.5))
    expected = 0.5 * (x + np.roll(x, 1, axis=3))  # linear interpolation halfway
    assert np.allclose(half, expected, atol=1e-12)
    twice = T.translate(T.translate(x, (0, 0.25), order=3), (0, -0.25), order=3)
    assert np.abs(twice - x).max() < 2e-2  # cubic round trip of a smooth signal


def test_scale(img):
    assert np.allclose(T.scale(img, 1.0), img)
    big = T.scale(img, 2.0)
    c = 3  # centre pixel of the 7×7 grid stays put
    assert np.allclose(big[:, :, c, c], img[:, :, c, c])
    assert np.allclose(big[:, :, c, c + 2], img[:, :, c, c + 1])  # out[c+2u] = x[c+u]
    assert np.allclose(T.scale(img, (1.0, 2.0))[:, :, :, c], img[:, :, :, c])
    small = T.scale(img, 0.5)
    assert np.allclose(small[:, :, c, c + 1], 0.5 * (img[:, :, c, c + 2] + img[:, :, c, c + 2]))


def test_tokens_and_volumes(rng):
    tokens = rng.normal(size=(2, 9, 4))  # NLD: transforms act on L
    assert np.array_equal(T.translate(tokens, 2), np.roll(tokens, 2, axis=1))
    assert np.array_equal(T.hflip(tokens), tokens[:, ::-1])
    assert np.allclose(T.scale(tokens, 1.0), tokens)
    with pytest.raises(ValueError, match="needs a 2-D spatial grid"):
        T.rot90(tokens)
    volume = rng.normal(size=(2, 3, 4, 5, 5))  # NCDHW: planar transforms in H-W
    assert np.array_equal(T.rot90(volume), np.rot90(volume, axes=(3, 4)))
    assert np.array_equal(
        T.translate(volume, (1, 2, 3)), np.roll(volume, (1, 2, 3), axis=(2, 3, 4))
    )


def test_compose_applies_left_to_right(img):
    f = T.compose(partial(T.translate, shift=(0, 1)), T.rot90)
    assert np.array_equal(f(img), T.rot90(T.translate(img, (0, 1))))
    g = T.compose(T.hflip, T.vflip)
    assert np.array_equal(g(_to(img, "NHWC"), layout="NHWC"), _to(T.rot90(img, 2), "NHWC"))


def test_float_dtypes(img):
    f32 = img.astype(np.float32)
    assert T.rotate(f32, 20).dtype == np.float32
    assert T.translate(f32, 0.5).dtype == np.float32
    assert T.scale(img.astype(np.int16), 1.5).dtype == np.float64


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x: T.rot90(x, 1.5), TypeError, "k must be an int"),
        (lambda x: T.flip(x, "diagonal"), ValueError, "axis must be 'horizontal' or 'vertical'"),
        (lambda x: T.translate(x, (1, 2, 3)), ValueError, "one entry per spatial axis"),
        (lambda x: T.translate(x, "up"), TypeError, "shift must be a number or a sequence"),
        (lambda x: T.translate(x, np.inf), ValueError, "shift must be finite"),
        (lambda x: T.translate(x, 0.5, mode="wrapping"), ValueError, "mode must be 'zeros'"),
        (lambda x: T.rotate(x, 10, order=7), ValueError, r"order must be an int in \[0, 5\]"),
        (lambda x: T.rotate(x, np.nan), ValueError, "angle must be finite"),
        (lambda x: T.scale(x, 0), ValueError, "factor must be positive"),
        (
            lambda x: T.rot90(x[0, 0]),
            ValueError,
            "layout='auto' cannot interpret the 2-D|no spatial axes",
        ),
        (lambda x: T.hflip(x.astype(str)), TypeError, "x must be a numeric array"),
        (lambda x: T.compose(T.rot90, 3), TypeError, "compose takes callables"),
    ],
)
def test_errors(call, error, message, img):
    with pytest.raises(error, match=message):
        call(img)


@given(
    st.integers(-20, 20),
    st.integers(-20, 20),
    st.integers(1, 4),
    st.integers(1, 4),
    st.sampled_from(["NCHW", "NHWC"]),
)
def test_circular_shifts_compose_and_invert(dy, dx, h, w, layout):
    x = np.arange(2 * 3 * h * w, dtype=float).reshape(2, 3, h, w)
    x = _to(x, layout)
    there = T.translate(x, (dy, dx), layout=layout)
    assert np.array_equal(T.translate(there, (-dy, -dx), layout=layout), x)
    assert _is_permutation_of(there, x)
