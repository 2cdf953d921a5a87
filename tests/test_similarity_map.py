"""Layer × layer similarity maps: known answers and an independent computation."""

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters.torch import (  # noqa: E402
    default_layers,
    extract_activations,
    plot_similarity_map,
    similarity_map,
)
from seis_sklearn.adapters.torch import transforms as TT  # noqa: E402

from seis_sklearn.metrics import linear_cka  # noqa: E402


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(6, 4, 3, padding=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()


LAYERS = ["0", "1", "2", "3", "5"]


def _centred(x, debiased):
    """A batch's Gram matrix, centred (biased HSIC, with 1/(b − 1)) or U-centred from
    its closed form (Song et al. 2012: row sums over b − 2, the total over (b − 1)(b −
    2), diagonal zero; with 1/sqrt(b(b − 3))), so that <K̃, L̃> is the HSIC estimate —
    written with centring matrices and sums, not as the module computes it."""
    b = len(x)
    x = x.reshape(b, -1).astype(np.float64)
    g = x @ x.T
    if not debiased:
        H = np.eye(b) - 1.0 / b
        return H @ g @ H / (b - 1)
    g = g - np.diag(np.diag(g))
    one = np.ones(b)
    rows = g @ one / (b - 2)
    total = one @ g @ one / ((b - 1) * (b - 2))
    u = g - rows[:, None] - rows[None, :] + total
    u -= np.diag(np.diag(u))
    return u / np.sqrt(b * (b - 3))


def _hsic_sums(acts_a, acts_b, batch, debiased):
    """CKA from the HSIC estimates of every batch summed (an independent form of the
    minibatch estimator)."""
    n = len(acts_a[0])
    cross = np.zeros((len(acts_a), len(acts_b)))
    self_a, self_b = np.zeros(len(acts_a)), np.zeros(len(acts_b))
    for start in range(0, n, batch):
        if min(start + batch, n) - start < (4 if debiased else 2):
            continue
        ga = [_centred(x[start : start + batch], debiased) for x in acts_a]
        gb = [_centred(y[start : start + batch], debiased) for y in acts_b]
        for i, x in enumerate(ga):
            self_a[i] += np.sum(x * x)
            for j, y in enumerate(gb):
                cross[i, j] += np.sum(x * y)
        for j, y in enumerate(gb):
            self_b[j] += np.sum(y * y)
    return cross / np.sqrt(np.outer(self_a, self_b))


@pytest.mark.parametrize("metric", ["cka_debiased", "cka"])
def test_one_batch_is_linear_cka_of_the_flattened_layers(metric):
    """With one batch of every sample the map is linear CKA of the flattened layers
    (``seis_sklearn.metrics.linear_cka``, from moments) wherever two layers have one
    shape, and the map of a model with itself has a unit diagonal and is symmetric."""
    net = _net()
    x = torch.randn(40, 3, 6, 6)
    frame = similarity_map(net, x, LAYERS, metric=metric, batch_size=40, progress=False)
    acts = extract_activations(net, x, LAYERS, progress=False)
    debiased = metric == "cka_debiased"
    assert frame.shape == (5, 5) and list(frame.index) == LAYERS
    assert np.allclose(np.diag(frame.to_numpy()), 1.0, atol=1e-12)
    assert np.allclose(frame.to_numpy(), frame.to_numpy().T, atol=1e-12)
    # float64 copies: linear_cka multiplies float32 activations in float32
    a0, a1 = acts["0"].astype(np.float64), acts["1"].astype(np.float64)
    want = linear_cka(a0, a1, matricization="flatten", debiased=debiased)
    assert frame.loc["0", "1"] == pytest.approx(want, abs=1e-9)
    independent = _hsic_sums([acts[k] for k in LAYERS], [acts[k] for k in LAYERS], 40, debiased)
    assert np.allclose(frame.to_numpy(), independent, atol=1e-9)
    assert frame.attrs["samples_used"] == 40 and frame.attrs["metric"] == metric


def test_batches_sum_their_estimates_and_a_small_last_batch_is_said():
    net = _net()
    x = torch.randn(70, 3, 6, 6)
    with pytest.warns(UserWarning, match="last 2 samples"):
        frame = similarity_map(net, x, LAYERS, batch_size=17, progress=False)
    acts = extract_activations(net, x, LAYERS, progress=False)
    independent = _hsic_sums([acts[k] for k in LAYERS], [acts[k] for k in LAYERS], 17, True)
    assert np.allclose(frame.to_numpy(), independent, atol=1e-9)
    assert frame.attrs["samples_used"] == 68


def test_two_models_and_a_transform():
    """A copy of the model with its channels permuted (an orthogonal map of every
    hidden layer's features: CKA is invariant to it) gives the model's own map; a
    transform that changes nothing gives the self map too; under rot90 the pooled
    layers are invariant (their entry with themselves is 1)."""
    net = _net()
    x = torch.randn(48, 3, 6, 6)
    own = similarity_map(net, x, LAYERS, batch_size=16, progress=False)
    other = copy.deepcopy(net)
    perm = torch.randperm(6)
    with torch.no_grad():
        other[0].weight.copy_(net[0].weight[perm])
        other[0].bias.copy_(net[0].bias[perm])
        other[2].weight.copy_(net[2].weight[:, perm])
    both = similarity_map(net, x, LAYERS, model_b=other, layers_b=LAYERS, batch_size=16,
                          progress=False)  # fmt: skip
    assert np.allclose(both.to_numpy(), own.to_numpy(), atol=1e-9)
    same = similarity_map(net, x, LAYERS, transform=lambda b: b.clone(), batch_size=16,
                          progress=False)  # fmt: skip
    assert np.allclose(same.to_numpy(), own.to_numpy(), atol=1e-9)

    class Head(torch.nn.Module):  # a 1×1 convolution (equivariant), a 3×3 one (not)
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.point = torch.nn.Conv2d(3, 5, 1)
            self.conv = torch.nn.Conv2d(5, 5, 3, padding=1)
            self.pool = torch.nn.AdaptiveAvgPool2d(1)

        def forward(self, b):
            return self.pool(self.conv(self.point(b)))

    head = Head().eval()
    names = ["point", "conv", "pool"]
    rot = similarity_map(head, x, names, transform=TT.rot90, batch_size=16, progress=False)
    # flattened features: rotating an equivariant map permutes them, to which CKA is
    # blind (1); a layer whose response changes under the rotation scores below 1
    assert rot.loc["point", "point"] == pytest.approx(1.0, abs=1e-6)
    assert rot.loc["conv", "conv"] < 0.99
    assert rot.attrs["transform"]
    fig = plot_similarity_map(rot)  # a Figure, as every plot function returns
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == names


def test_seis_map_is_seis_score_of_layers_of_equal_shapes():
    """``metric="seis"``: S_E (and S_I in attrs) of every two layers of equal shapes —
    the scores of the two layers' stored activations — and NaN between layers of
    other shapes; an equivariant 1×1 convolution scores 1 against itself."""
    from seis_sklearn import seis_score

    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 36, 5))  # fmt: skip
    x = torch.randn(50, 3, 6, 6)
    layers = ["0", "2", "4"]
    got = similarity_map(net, x, layers, transform=TT.hflip, metric="seis", batch_size=16,
                         progress=False)  # fmt: skip
    plain = extract_activations(net, x, layers, progress=False)
    moved = extract_activations(net, TT.hflip(x), layers, progress=False)
    for a in layers:
        for b in layers:
            if plain[a].shape != moved[b].shape:
                assert np.isnan(got.loc[a, b]) and np.isnan(got.attrs["invariance"].loc[a, b])
                continue
            want = seis_score(plain[a], moved[b], cv=None)
            assert got.loc[a, b] == pytest.approx(want.equivariance, abs=1e-5)
            assert got.attrs["invariance"].loc[a, b] == pytest.approx(want.invariance, abs=1e-5)
    assert got.loc["0", "0"] > 0.9999


def test_similarity_map_refuses_what_it_cannot_compute():
    net = _net()
    x = torch.randn(16, 3, 6, 6)
    with pytest.raises(ValueError, match="metric must be one of"):
        similarity_map(net, x, LAYERS, metric="svcca", progress=False)
    with pytest.raises(ValueError, match="batch_size must be an int >= 4"):
        similarity_map(net, x, LAYERS, batch_size=3, progress=False)
    with pytest.raises(ValueError, match="model_b or transform"):
        similarity_map(net, x, LAYERS, model_b=_net(), layers_b=LAYERS, transform=TT.rot90,
                       progress=False)  # fmt: skip
    # layers_b defaults to model_b's default layers (issue 38): no refusal any more
    other = _net()
    columns = similarity_map(net, x, LAYERS, model_b=other, batch_size=8, progress=False).columns
    assert list(columns) == default_layers(other)
    with pytest.raises(ValueError, match="layers_b: the model has no module named 'nope'"):
        similarity_map(net, x, LAYERS, model_b=_net(), layers_b=["nope"], progress=False)
    # the forward passes' inference mode ended with the map, error or not
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert not net[0]._forward_hooks


def test_two_models_see_the_same_batches_from_a_shuffling_loader():
    """Each batch goes through both models: a shuffling loader pairs them right (a
    model against its own copy gives its self map's unit diagonal), and grad mode is
    as it was afterwards."""
    net = _net()
    x = torch.randn(48, 3, 6, 6)
    loader = torch.utils.data.DataLoader(x, batch_size=16, shuffle=True)
    frame = similarity_map(net, loader, LAYERS, model_b=copy.deepcopy(net), layers_b=LAYERS,
                           progress=False)  # fmt: skip
    assert np.allclose(np.diag(frame.to_numpy()), 1.0, atol=1e-9)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


def test_default_layers_globs_specs_and_a_saved_figure(tmp_path):
    """Issue 38 (4): similarity_map defaults to the report's default layers (for each
    model), takes globs and text specs as every other function does, and its plot
    returns a Figure — as plot_layerwise and plot_measures do — saved with path=."""
    from matplotlib.figure import Figure

    net = _net()
    x = torch.randn(32, 3, 6, 6)
    default = similarity_map(net, x, batch_size=16, progress=False)
    assert list(default.index) == list(default.columns) == default_layers(net) == ["0", "2", "5"]
    named = similarity_map(net, x, ["0", "2", "5"], batch_size=16, progress=False)
    assert default.equals(named)
    # a glob is expanded against the model's module names (here: every top-level module)
    globbed = similarity_map(net, x, "*", batch_size=16, progress=False)
    assert list(globbed.index) == [str(i) for i in range(6)]
    # a text spec is the transform the callable gives
    spec = similarity_map(net, x, LAYERS, transform="rot90", batch_size=16, progress=False)
    given = similarity_map(net, x, LAYERS, transform=TT.rot90, batch_size=16, progress=False)
    assert np.array_equal(spec.to_numpy(), given.to_numpy(), equal_nan=True)
    assert spec.attrs["transform"] == "rot90"
    with pytest.raises(ValueError, match=r"transform: transform 'rot9': unknown step"):
        similarity_map(net, x, LAYERS, transform="rot9", progress=False)
    # the figure, saved where asked, nothing written for a path it cannot write
    fig = plot_similarity_map(spec, path=tmp_path / "map.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # the heatmap and its colour bar
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"path='.*map\.txt': the suffix must name an image"):
        plot_similarity_map(spec, path=tmp_path / "map.txt")
    with pytest.raises(ValueError, match=r"path=.*the folder .* does not exist"):
        plot_similarity_map(spec, path=tmp_path / "nowhere" / "map.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png"]
