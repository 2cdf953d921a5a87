"""The Lie derivative: the input's tangent from its definition, known answers for the
model's derivative, and the reverse-mode fallback."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters.torch import lie_derivative  # noqa: E402
from seis_sklearn.adapters.torch._lie import GENERATORS, warp, warp_tangent  # noqa: E402

# 17 pixels: the normalised coordinates of the pixels, -1 + 2j/16, are exact in binary,
# so at t = 0 every sampling point is exactly its pixel (module docstring)
SIZE = 17


def _expected_tangent(x, generator):
    """d/dt T_t x at t = 0 from the bilinear interpolant's one-sided derivative at the
    pixels: velocity (in pixels) times the difference towards the next pixel, the
    border's neighbour reflected back (index size → size − 2)."""
    n, c, h, w = x.shape
    right = np.concatenate([x[..., 1:], x[..., -2:-1]], axis=-1) - x  # along x (width)
    down = np.concatenate([x[..., 1:, :], x[..., -2:-1, :]], axis=-2) - x  # along y
    px = np.linspace(-1, 1, w)[None, :]  # normalised coordinates of the pixels
    py = np.linspace(-1, 1, h)[:, None]
    if generator == "translate_x":
        vx, vy = np.ones((h, w)), np.zeros((h, w))
    elif generator == "translate_y":
        vx, vy = np.zeros((h, w)), np.ones((h, w))
    elif generator == "rotate":  # (cos t·px + sin t·py, −sin t·px + cos t·py)
        vx, vy = np.broadcast_to(py, (h, w)), np.broadcast_to(-px, (h, w))
    else:  # scale: (1 − t)·p
        vx, vy = np.broadcast_to(-px, (h, w)), np.broadcast_to(-py, (h, w))
    return vx * (w - 1) / 2 * right + vy * (h - 1) / 2 * down


@pytest.mark.parametrize("generator", GENERATORS)
def test_tangent_is_the_interpolants_derivative(generator):
    x = torch.randn(3, 2, SIZE, SIZE, dtype=torch.float64)
    got = warp_tangent(x, generator).numpy()
    assert np.allclose(got, _expected_tangent(x.numpy(), generator), atol=1e-12)
    # and the warp at t = 0 is the identity
    assert torch.allclose(warp(x, torch.zeros((), dtype=x.dtype), generator), x, atol=1e-14)


@pytest.mark.parametrize("generator", ["translate_x", "translate_y"])
def test_lie_derivative_is_the_right_derivative_of_the_warped_model(generator):
    """For translations every pixel moves the same way, so the derivative at t = 0 is
    the derivative from the right: a one-sided finite difference of t ↦ f(T_t x)
    (float64, h = 1e-7) agrees to O(h)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 15 * 15, 5),
    ).double()
    x = torch.randn(4, 2, SIZE, SIZE, dtype=torch.float64)
    h = 1e-7
    with torch.no_grad():
        step = (net(warp(x, torch.tensor(h, dtype=x.dtype), generator)) - net(x)) / h
    want = step.abs().mean(dim=1).numpy()
    got = lie_derivative(net, x, [generator], output="logits", progress=False)[generator]
    assert np.allclose(got.to_numpy(), want, rtol=1e-5)


def test_known_answers():
    """A pointwise (1×1) convolution commutes with every warp — bilinear sampling is
    linear and acts on each channel alike — so its map output has Lie derivative 0;
    a constant output has 0; a linear model's is its weights applied to the tangent."""
    torch.manual_seed(0)
    x = torch.randn(5, 3, SIZE, SIZE, dtype=torch.float64)
    point = torch.nn.Conv2d(3, 4, 1).double()
    zero = lie_derivative(point, x, output="map", progress=False)
    assert np.abs(zero.to_numpy()).max() < 1e-12
    bias = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))

    class Constant(torch.nn.Module):
        def forward(self, b):
            return bias.expand(len(b), 6) + 0 * b.sum()

    assert np.abs(lie_derivative(Constant(), x, progress=False).to_numpy()).max() == 0.0
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, 7)).double()
    weight = linear[1].weight.detach().numpy()
    for generator in GENERATORS:
        tangent = _expected_tangent(x.numpy(), generator).reshape(5, -1)
        want = np.abs(tangent @ weight.T).mean(axis=1)
        got = lie_derivative(linear, x, [generator], output="logits", progress=False)
        assert np.allclose(got[generator].to_numpy(), want, rtol=1e-10)
    # a 3×3 convolution does not commute with the warps
    conv = torch.nn.Conv2d(3, 4, 3, padding=1).double()
    assert (lie_derivative(conv, x, output="map", progress=False).to_numpy() > 1e-3).all()


def test_reverse_mode_fallback_gives_the_same(monkeypatch):
    """Where an operation has no forward-mode formula, two reverse passes give J v."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 15 * 15, 10))  # fmt: skip
    x = torch.randn(4, 3, SIZE, SIZE)
    want = lie_derivative(net, x, progress=False)
    real = torch.func.jvp
    calls = []

    def no_forward_mode(f, primals, tangents):
        if any(p.requires_grad or p.ndim == 4 for p in primals):  # the model, not the warp
            calls.append(1)
            raise NotImplementedError("Trying to use forward AD with conv2d")
        return real(f, primals, tangents)

    monkeypatch.setattr(torch.func, "jvp", no_forward_mode)
    got = lie_derivative(net, x, progress=False)
    assert calls and np.allclose(got.to_numpy(), want.to_numpy(), rtol=1e-5)


def test_lie_derivative_refuses_bad_input():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown generator 'shear'"):
        lie_derivative(net, x, ["shear"], progress=False)
    with pytest.raises(ValueError, match="output must be one of"):
        lie_derivative(net, x, output="probs", progress=False)
    with pytest.raises(ValueError, match=r"output='map' needs an \(n, c, h, w\) output"):
        lie_derivative(net, x, output="map", progress=False)
    with pytest.raises(ValueError, match="inputs must be images"):
        lie_derivative(net, torch.randn(2, 192), progress=False)
    with pytest.raises(TypeError, match="floating point"):
        lie_derivative(net, torch.zeros(2, 3, 8, 8, dtype=torch.int64), progress=False)
