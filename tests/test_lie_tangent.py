"""The input's tangent at every image size (docs/metrics.rst, "The Lie derivative"):
``tangent="grid"`` is the velocity times the difference towards the next pixel at
every pixel, so an exactly invariant network reads 0 at any size and in any dtype;
``tangent="reference"`` follows the reference code's rounded coordinates; and the
signed layerwise shares add up to the output's LEE."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters.torch import layerwise_lie_derivative, lie_derivative  # noqa: E402
from seis_sklearn.adapters.torch._lie import GENERATORS, warp_tangent  # noqa: E402

SIZES = (16, 17, 32, 33, 224)
DTYPES = (torch.float32, torch.float64)
SHIFTS = ["translate_x", "translate_y"]


def _velocity(generator, h, w):
    """d/dt of the warp's sampling point of each pixel, in pixels (x along the width):
    the affine maps of the module docstring differentiated at t = 0."""
    px = np.linspace(-1, 1, w)[None, :] * np.ones((h, 1))  # normalised coordinates
    py = np.linspace(-1, 1, h)[:, None] * np.ones((1, w))
    vx, vy = {
        "translate_x": (np.ones((h, w)), np.zeros((h, w))),
        "translate_y": (np.zeros((h, w)), np.ones((h, w))),
        "rotate": (py, -px),  # (cos t·px + sin t·py, −sin t·px + cos t·py)
        "scale": (-px, -py),  # (1 − t)·p
    }[generator]
    return vx * (w - 1) / 2, vy * (h - 1) / 2


def _neighbour(index, size, border):
    """Integer positions brought into the image: reflected (−1 → 1, size → size − 2) or
    wrapped."""
    if border == "wrap":
        return np.mod(index, size)
    last = size - 1
    return last - np.abs(last - np.abs(index))


def _bilinear_tangent(x, x_coord, y_coord, vx, vy, border):
    """d/dt of bilinear sampling of ``x`` (n, c, h, w) at the points ``(x_coord + t·vx,
    y_coord + t·vy)`` at t = 0, from the interpolant's formula: the floor of each
    coordinate picks the cell, its fraction the weights (float64)."""
    h, w = x.shape[-2:]
    x0, y0 = np.floor(x_coord), np.floor(y_coord)
    fx, fy = x_coord - x0, y_coord - y0
    ix0, ix1 = (_neighbour(x0 + k, w, border).astype(int) for k in (0, 1))
    iy0, iy1 = (_neighbour(y0 + k, h, border).astype(int) for k in (0, 1))
    x = np.asarray(x, dtype=np.float64)

    def at(iy, ix):
        return x[:, :, iy, ix]

    along_x = (at(iy0, ix1) - at(iy0, ix0)) * (1 - fy) + (at(iy1, ix1) - at(iy1, ix0)) * fy
    along_y = (at(iy1, ix0) - at(iy0, ix0)) * (1 - fx) + (at(iy1, ix1) - at(iy0, ix1)) * fx
    return vx * along_x + vy * along_y


def _pixels(h, w):
    return np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))


def _reference_coordinates(h, w, dtype):
    """The reference code's sampling points at t = 0: the normalised coordinates of
    ``affine_grid`` (``align_corners=True``) scaled to pixels, rounded in ``dtype``."""
    theta = torch.eye(2, 3, dtype=dtype)[None]
    grid = torch.nn.functional.affine_grid(theta, [1, 1, h, w], align_corners=True)[0]
    x = (grid[..., 0] + 1) / 2 * (w - 1)
    y = (grid[..., 1] + 1) / 2 * (h - 1)
    return x.double().numpy(), y.double().numpy()


def _images(shape, dtype, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 16), (224, 224), (17, 23), (32, 20)])
@pytest.mark.parametrize("border", ["reflect", "wrap"])
def test_grid_tangent_is_one_difference_at_every_pixel(shape, dtype, border):
    """At every size the default tangent is the velocity times the difference towards
    the next pixel (the interpolant's derivative at the pixels themselves), for every
    generator. float32: the tangent's entries are differences of the images' entries
    times velocities up to (size − 1)/2, each rounded once or twice in float32."""
    h, w = shape
    x = _images((2, 2, h, w), dtype)
    pixels_x, pixels_y = _pixels(h, w)
    unit = np.finfo(np.float32 if dtype == torch.float32 else np.float64).eps
    for generator in GENERATORS:
        vx, vy = _velocity(generator, h, w)
        want = _bilinear_tangent(x.numpy(), pixels_x, pixels_y, vx, vy, border)
        got = warp_tangent(x, generator, border).double().numpy()
        scale = (np.abs(vx).max() + np.abs(vy).max()) * np.abs(x.numpy()).max()
        assert np.abs(got - want).max() <= 8 * unit * scale, generator


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [16, 224])
def test_reference_tangent_follows_the_rounded_coordinates(size, dtype):
    """``tangent="reference"`` is the interpolant's derivative at the reference's
    rounded coordinates: where a pixel's coordinate rounds to just below its integer
    (at these sizes, some do — checked) the difference is towards the previous pixel,
    so there it differs from the default; the Lie derivative of a linear model is its
    weights applied to that tangent."""
    h = w = size
    x = _images((2, 2, h, w), dtype, seed=1)
    ref_x, ref_y = _reference_coordinates(h, w, dtype)
    pixels_x, pixels_y = _pixels(h, w)
    flipped_x, flipped_y = np.floor(ref_x) != pixels_x, np.floor(ref_y) != pixels_y
    unit = np.finfo(np.float32 if dtype == torch.float32 else np.float64).eps
    for generator in GENERATORS:
        vx, vy = _velocity(generator, h, w)
        want = _bilinear_tangent(x.numpy(), ref_x, ref_y, vx, vy, "reflect")
        got = warp_tangent(x, generator, "reflect", "reference").double().numpy()
        scale = (np.abs(vx).max() + np.abs(vy).max()) * np.abs(x.numpy()).max()
        assert np.abs(got - want).max() <= 8 * unit * scale, generator
        grid = warp_tangent(x, generator, "reflect", "grid").double().numpy()
        # where a moving pixel's coordinate rounds below its integer, the other side
        differs = (flipped_x & (np.abs(vx) > 0)) | (flipped_y & (np.abs(vy) > 0))
        assert differs.any() and np.abs(grid - got)[..., differs].max() > 1e3 * unit * scale
        # elsewhere the rounded coordinates are within ~u·size of their integers, and
        # the weights move by as much
        assert np.abs(grid - got)[..., ~differs].max() <= 4 * unit * size * scale
    if dtype == torch.float64:  # a linear model: its weights applied to the tangent
        linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * h * w, 3)).double()
        weight = linear[1].weight.detach().numpy()
        for generator in ("translate_x", "rotate"):
            vx, vy = _velocity(generator, h, w)
            tangent = _bilinear_tangent(x.numpy(), ref_x, ref_y, vx, vy, "reflect")
            want = np.abs(tangent.reshape(2, -1) @ weight.T).mean(axis=1)
            got = lie_derivative(linear, x, [generator], output="logits", tangent="reference",
                                 progress=False)[generator]  # fmt: skip
            assert np.allclose(got.to_numpy(), want, rtol=1e-10)


@pytest.mark.parametrize("size", [17, 33])
def test_the_two_tangents_agree_where_the_coordinates_are_exact(size):
    """Where the side less one is a power of two the pixels' normalised coordinates
    are exact in binary, and the reference's tangent is the default's."""
    x = _images((2, 3, size, size), torch.float64, seed=2)
    for generator in GENERATORS:
        grid = warp_tangent(x, generator)
        reference = warp_tangent(x, generator, tangent="reference")
        assert torch.allclose(grid, reference, rtol=0, atol=1e-13 * size * x.abs().max())


def _circular_cnn(relu, dtype):
    """Linear circular convolutions and global average pooling (exactly invariant to
    wrapped translations), or the same weights with a ReLU between the convolutions."""
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")]
    layers += [torch.nn.ReLU()] if relu else []
    layers += [torch.nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular"),
               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
               torch.nn.Linear(3, 4)]  # fmt: skip
    return torch.nn.Sequential(*layers).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
def test_an_exactly_invariant_network_reads_zero_at_every_size(size, dtype):
    """Warping with wrap-around is a shift of the torus; circular convolutions commute
    with the grid tangent's difference (the same at every pixel) and global average
    pooling sums it to 0, so the linear network's translation LEE is rounding: for the
    forward-mode pass of a few hundred terms per entry, ~1e-7 of the ReLU network's in
    float32 at most, 1e-6 required. The reference's tangent differs at some pixels at
    16, 224 (both dtypes) and 32 px (float64), and there the exact case reads more than
    0.1 % of the ReLU network's."""
    x = _images((2, 2, size, size), dtype, seed=3)
    kwargs = dict(output="logits", border="wrap", progress=False)
    linear, relu = _circular_cnn(False, dtype), _circular_cnn(True, dtype)
    exact = lie_derivative(linear, x, SHIFTS, **kwargs).mean()
    aliased = lie_derivative(relu, x, SHIFTS, **kwargs).mean()
    assert (aliased > 0).all()
    assert (exact < 1e-6 * aliased).all(), (exact / aliased).to_dict()
    ref_x, _ = _reference_coordinates(size, size, dtype)
    if (np.floor(ref_x) != _pixels(size, size)[0]).any():
        exact = lie_derivative(linear, x, SHIFTS, tangent="reference", **kwargs).mean()
        aliased = lie_derivative(relu, x, SHIFTS, tangent="reference", **kwargs).mean()
        assert (exact > 1e-3 * aliased).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [16, 32])
def test_an_exactly_invariant_network_has_no_layer_share(size, dtype):
    """Layer by layer the same: every module of the linear network contributes
    rounding only, against the ReLU's share in the ReLU network."""
    x = _images((2, 2, size, size), dtype, seed=4)
    kwargs = dict(output="logits", border="wrap", progress=False)
    exact = layerwise_lie_derivative(_circular_cnn(False, dtype), x, SHIFTS, **kwargs)
    aliased = layerwise_lie_derivative(_circular_cnn(True, dtype), x, SHIFTS, **kwargs)
    assert aliased.loc["1", "module"] == "ReLU"
    assert exact[SHIFTS].to_numpy().max() < 1e-6 * aliased.loc["1", SHIFTS].min()


def test_the_default_does_not_depend_on_the_dtype():
    """The ReLU network's LEE at 16 px in float32 is its float64 LEE to float32
    rounding (amplified at most by ReLU kinks, which none of these pre-activations is
    near: 1e-4) with the default tangent; the reference's, whose operator changes with
    the dtype, does not agree."""
    x = _images((2, 2, 16, 16), torch.float64, seed=5)
    kwargs = dict(output="logits", border="wrap", progress=False)
    lee = {
        (dtype, tangent): lie_derivative(
            _circular_cnn(True, dtype), x.to(dtype), SHIFTS, tangent=tangent, **kwargs
        ).to_numpy()
        for dtype in DTYPES
        for tangent in ("grid", "reference")
    }
    f32, f64 = torch.float32, torch.float64
    assert np.allclose(lee[f32, "grid"], lee[f64, "grid"], rtol=1e-4)
    assert not np.allclose(lee[f32, "reference"], lee[f64, "reference"], rtol=1e-2)


def _chain():
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, stride=2), torch.nn.Tanh(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 6),
    ).double()  # fmt: skip


@pytest.mark.parametrize("generator", GENERATORS)
def test_signed_shares_add_up_to_the_output_lee(generator):
    """The signed shares add up to the output's LEE; the absolute ones add up to at
    least it (triangle inequality). Independently of the injection: in a chain, the
    contributions of modules 0..i telescope to ``L f − J_{rest} v_{i+1}`` (the output's
    Lie derivative less the rest of the network applied to the tangent of module i's
    output), so the running sum of the signed column is that vector's mean along
    ``sign(L f)``. float64, a few hundred terms per entry: 1e-10."""
    net = _chain()
    x = _images((3, 3, 20, 20), torch.float64, seed=6)
    parts = layerwise_lie_derivative(net, x, [generator], batch_size=2, progress=False)
    assert list(parts.columns) == ["module", "depth", generator, f"{generator}_signed"]
    total = parts.attrs["output_lee"][generator]
    signed = parts[f"{generator}_signed"].to_numpy()
    rest = parts.attrs["unattributed_signed"][generator]
    assert abs(rest) < 1e-12 * total
    assert np.isclose(signed.sum() + rest, total, rtol=1e-12)
    assert parts[generator].sum() >= total * (1 - 1e-12)

    softmax = torch.nn.Softmax(dim=-1)
    whole = torch.func.jvp(lambda e: softmax(net(e)), (x,), (warp_tangent(x, generator),))[1]
    sign = torch.sign(whole)
    running = []
    for i in range(len(net)):
        hidden = net[: i + 1](x).detach()
        image = hidden.ndim == 4 and hidden.shape[-1] > 1
        moved = warp_tangent(hidden, generator) if image else torch.zeros_like(hidden)
        rest_of_net = torch.nn.Sequential(*net[i + 1 :], softmax)
        partial = whole - torch.func.jvp(rest_of_net, (hidden,), (moved,))[1]
        running.append(float((sign * partial).mean().detach()))
    assert np.allclose(np.cumsum(signed), running, rtol=1e-10, atol=1e-12 * total)


def test_tangent_refuses_an_unknown_convention():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    x = torch.randn(2, 3, 8, 8)
    for function in (lie_derivative, layerwise_lie_derivative):
        with pytest.raises(ValueError, match="tangent must be one of 'grid', 'reference'"):
            function(net, x, tangent="floor", progress=False)


def test_the_lie_derivative_raises_no_torchscript_deprecation():
    """torch.func.jvp scripts a helper and torch >= 2.10 deprecates TorchScript at each
    call: a suite run with -W error::DeprecationWarning broke (a first user's trial)."""
    import warnings

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        frame = lie_derivative(model, torch.randn(2, 3, 8, 8), border="wrap", progress=False)
    # a circular conv + global pooling is invariant to wrapped translations
    assert frame[["translate_x", "translate_y"]].to_numpy().max() < 1e-5
