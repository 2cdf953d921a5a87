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


def _circular_cnn(relu):
    layers = [torch.nn.Conv2d(3, 6, 3, padding=1, padding_mode="circular")]
    layers += [torch.nn.ReLU()] if relu else []
    layers += [torch.nn.Conv2d(6, 6, 3, padding=1, padding_mode="circular"),
               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
               torch.nn.Linear(6, 5)]  # fmt: skip
    return torch.nn.Sequential(*layers).double()


def test_a_circular_cnn_without_nonlinearities_is_translation_invariant_on_the_torus():
    """Warping with wrap-around is a shift of the torus, which circular convolutions
    commute with and global average pooling ignores: translation LEE 0 to rounding.
    With a ReLU between the convolutions the sub-pixel shift no longer commutes (the
    aliasing the paper describes): a positive LEE, and all of it the ReLU's."""
    from seis_sklearn.adapters.torch import layerwise_lie_derivative

    torch.manual_seed(0)
    x = torch.randn(6, 3, SIZE, SIZE, dtype=torch.float64)
    shifts = ["translate_x", "translate_y"]
    linear = _circular_cnn(relu=False)
    scale = np.abs(linear(x).detach().numpy()).mean()
    lee = lie_derivative(linear, x, shifts, output="logits", border="wrap", progress=False)
    assert lee.to_numpy().max() < 1e-13 * scale
    relu = _circular_cnn(relu=True)
    lee = lie_derivative(relu, x, shifts, output="logits", border="wrap", progress=False)
    assert (lee.to_numpy() > 1e-3 * scale).all()
    # reflected borders break the invariance even without the ReLU
    lee = lie_derivative(linear, x, shifts, output="logits", progress=False)
    assert (lee.to_numpy() > 1e-3 * scale).all()
    parts = layerwise_lie_derivative(relu, x, shifts, output="logits", border="wrap",
                                     progress=False)  # fmt: skip
    assert parts.loc["1", "module"] == "ReLU"
    others = parts.drop(index="1")[shifts].to_numpy()
    assert others.max() < 1e-12 * parts.loc["1", shifts].min()


def _contribution_by_jacobians(net, x, i, generator):
    """``J_{f←m} L m`` for module i of a Sequential, written out: the module's JVP
    along the warp's tangent of its input, less the tangent of its output where it is
    a map, times the full Jacobian of the softmax of the modules after it."""
    with torch.no_grad():
        before = net[:i](x)
        out = net[i](before)
    if before.ndim != 4 or before.shape[-1] == 1:  # no image: the warp does not reach it
        return np.zeros(len(x))
    _, jv = torch.func.jvp(net[i], (before,), (warp_tangent(before, generator),))
    own = jv - warp_tangent(out, generator) if out.ndim == 4 and out.shape[-1] > 1 else jv
    rest = torch.nn.Sequential(*net[i + 1 :], torch.nn.Softmax(dim=-1))
    rows = []
    for k in range(len(x)):
        jac = torch.autograd.functional.jacobian(rest, out[k : k + 1])
        rows.append(jac.reshape(jac.shape[1], -1) @ own[k].reshape(-1))
    return torch.stack(rows).abs().mean(dim=1).detach().numpy()


@pytest.mark.parametrize("generator", GENERATORS)
def test_layerwise_contributions_are_the_jacobians_and_add_up(generator):
    """Each module's contribution equals the product written out with full Jacobians;
    in a chain of modules they add up to the output's Lie derivative; in-place
    activations change nothing."""
    from seis_sklearn.adapters.torch import layerwise_lie_derivative

    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(4, 4, 3, stride=2), torch.nn.Tanh(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 6),
    ).double()  # fmt: skip
    x = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64)
    got = layerwise_lie_derivative(net, x, [generator], batch_size=2, progress=False)
    assert list(got.index) == [str(i) for i in range(7)]
    assert list(got["module"]) == [type(m).__name__ for m in net]
    plain = torch.nn.Sequential(*[torch.nn.ReLU() if isinstance(m, torch.nn.ReLU) else m
                                  for m in net])  # fmt: skip
    for i in range(7):
        want = _contribution_by_jacobians(plain, x, i, generator).mean()
        assert np.isclose(got.loc[str(i), generator], want, rtol=1e-9, atol=1e-18)
    whole = lie_derivative(net, x, [generator], progress=False)[generator].mean()
    assert np.isclose(got.attrs["output_lee"][generator], whole, rtol=1e-12)
    assert got.attrs["unattributed"][generator] < 1e-12 * whole
    again = layerwise_lie_derivative(plain, x, [generator], progress=False)
    assert np.allclose(again[generator].to_numpy(), got[generator].to_numpy(), rtol=1e-12)


def test_dict_and_tuple_outputs_and_blocks_called_twice():
    """A dict output is read at its logits, a tuple at its first tensor; a module called
    twice gets a row per call; blocks (not leaves) can be named."""
    from seis_sklearn.adapters.torch import layerwise_lie_derivative

    torch.manual_seed(2)

    class Net(torch.nn.Module):
        def __init__(self, wrap):
            super().__init__()
            self.wrap = wrap
            self.block = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Tanh())
            self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE**2, 4))

        def forward(self, x):
            logits = self.head(self.block(self.block(x)))
            return {"hidden": x, "logits": logits} if self.wrap == "dict" else (
                (logits, x) if self.wrap == "tuple" else logits)  # fmt: skip

    x = torch.randn(4, 3, SIZE, SIZE)
    plain = Net(None)
    want = lie_derivative(plain, x, progress=False).to_numpy()
    for wrap in ("dict", "tuple"):
        model = Net(wrap)
        model.load_state_dict(plain.state_dict())
        assert np.allclose(lie_derivative(model, x, progress=False).to_numpy(), want, rtol=1e-6)
    parts = layerwise_lie_derivative(Net("dict"), x, ["rotate"], layers=["block", "head"],
                                     progress=False)  # fmt: skip
    assert list(parts.index) == ["block#1", "block#2", "head"]
    assert list(parts["module"]) == ["Sequential"] * 3
    assert parts.attrs["unattributed"]["rotate"] < 1e-5 * parts.attrs["output_lee"]["rotate"]


def test_modules_with_tuple_and_dict_outputs_get_their_share():
    """A module that returns a tuple (attention's output and weights) or a dict has its
    share injected into the tensor it is read at: the shares still add up."""
    from seis_sklearn.adapters.torch import layerwise_lie_derivative

    class Pair(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return torch.tanh(self.conv(x)), None

    class Named(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return {"extra": None, "logits": torch.relu(self.conv(x))}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.named = Pair(), Named()
            self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE**2, 4))

        def forward(self, x):
            return self.head(self.named(self.pair(x)[0])["logits"])

    torch.manual_seed(4)
    net = Net().double()
    x = torch.randn(3, 3, SIZE, SIZE, dtype=torch.float64)
    parts = layerwise_lie_derivative(net, x, ["rotate"], layers=["pair", "named", "head"],
                                     progress=False)  # fmt: skip
    assert (parts.loc[["pair", "named"], "rotate"] > 0).all()
    assert parts.attrs["unattributed"]["rotate"] < 1e-12 * parts.attrs["output_lee"]["rotate"]


def test_tensors_read_as_images_channels_last_and_tokens():
    """An NHWC tensor's tangent is the NCHW one's, transposed; tokens after a class
    token that tile the grid get the tangent of their grid, the class token none; a
    tensor that tiles nothing gets none."""
    from seis_sklearn.adapters.torch._lie_layers import image_tangent

    x = torch.randn(2, 5, 8, 8)
    want = warp_tangent(x, "rotate")
    got = image_tangent(x.permute(0, 2, 3, 1), "rotate", "reflect", (32, 32), None)
    assert torch.allclose(got, want.permute(0, 2, 3, 1))
    tokens = torch.cat([torch.randn(2, 1, 5), x.flatten(2).transpose(1, 2)], dim=1)
    got = image_tangent(tokens, "rotate", "reflect", (32, 32), 1)
    assert torch.equal(got[:, 0], torch.zeros(2, 5))
    assert torch.allclose(got[:, 1:], want.flatten(2).transpose(1, 2))
    assert image_tangent(torch.randn(2, 7, 5), "rotate", "reflect", (32, 32), 0) is None
    assert image_tangent(torch.randn(2, 10), "rotate", "reflect", (32, 32), 0) is None
