"""Torch transforms equal seis_sklearn.transforms: exact ones bit for bit, interpolated ones
within 1e-5 (float32 data)."""

from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters.torch import transforms as T  # noqa: E402

from seis_sklearn import transforms as N  # noqa: E402

EXACT = [
    ("rot90", partial(N.rot90, k=1), partial(T.rot90, k=1)),
    ("rot90 k=3", partial(N.rot90, k=3), partial(T.rot90, k=3)),
    ("hflip", N.hflip, T.hflip),
    ("vflip", N.vflip, T.vflip),
    ("shift circular", partial(N.translate, shift=(2, -3)), partial(T.translate, shift=(2, -3))),
    (
        "shift zeros",
        partial(N.translate, shift=(1, 4), mode="zeros"),
        partial(T.translate, shift=(1, 4), mode="zeros"),
    ),
    ("rotate 270", partial(N.rotate, angle=270), partial(T.rotate, angle=270)),
]
INTERPOLATED = [
    (
        "sub-pixel circular",
        partial(N.translate, shift=(0.5, -1.25)),
        partial(T.translate, shift=(0.5, -1.25)),
    ),
    (
        "sub-pixel zeros",
        partial(N.translate, shift=(1.5, 0.25), mode="zeros"),
        partial(T.translate, shift=(1.5, 0.25), mode="zeros"),
    ),
    ("rotate 15", partial(N.rotate, angle=15), partial(T.rotate, angle=15)),
    ("rotate -40", partial(N.rotate, angle=-40), partial(T.rotate, angle=-40)),
    ("scale 1.3", partial(N.scale, factor=1.3), partial(T.scale, factor=1.3)),
    ("scale (0.7, 1.2)", partial(N.scale, factor=(0.7, 1.2)), partial(T.scale, factor=(0.7, 1.2))),
]


def _data(layout, square=True):
    rng = np.random.default_rng(0)
    h, w = (9, 9) if square else (7, 10)
    shape = {"NCHW": (2, 3, h, w), "NHWC": (2, h, w, 3), "NCDHW": (2, 3, 2, h, w)}[layout]
    return rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "NCDHW"])
@pytest.mark.parametrize("name, numpy_fn, torch_fn", EXACT, ids=[e[0] for e in EXACT])
def test_exact_transforms_are_bit_identical(layout, name, numpy_fn, torch_fn):
    x = _data(layout)
    if layout == "NCDHW" and "shift" in name:  # a volume takes (dz, dy, dx)
        numpy_fn, torch_fn = (
            partial(f.func, **{**f.keywords, "shift": (1, *f.keywords["shift"])})
            for f in (numpy_fn, torch_fn)
        )
    expected = numpy_fn(x, layout=layout)
    got = torch_fn(torch.from_numpy(x), layout=layout).numpy()
    assert got.dtype == expected.dtype and np.array_equal(got, expected)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("square", [True, False])
@pytest.mark.parametrize(
    "name, numpy_fn, torch_fn", INTERPOLATED, ids=[e[0] for e in INTERPOLATED]
)
def test_interpolated_transforms_agree_within_1e5(layout, square, name, numpy_fn, torch_fn):
    x = _data(layout, square)
    expected = numpy_fn(x, layout=layout)
    got = torch_fn(torch.from_numpy(x), layout=layout).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5


def test_tokens_compose_and_errors():
    x = torch.arange(10.0).reshape(1, 5, 2)  # NLD
    assert torch.equal(T.translate(x, 2), torch.roll(x, 2, dims=1))
    f = T.compose(T.hflip, partial(T.translate, shift=1))
    assert torch.equal(f(x), torch.roll(torch.flip(x, (1,)), 1, dims=1))
    with pytest.raises(ValueError, match="needs a 2-D spatial grid"):
        T.rot90(x)
    with pytest.raises(ValueError, match="mode must be 'circular' or 'zeros'"):
        T.translate(x, 1, mode="reflect")
    with pytest.raises(ValueError, match="factor must be positive"):
        T.scale(torch.zeros(1, 1, 3, 3), -1.0)
    with pytest.raises(TypeError, match="k must be an int"):
        T.rot90(torch.zeros(1, 1, 3, 3), 0.5)
