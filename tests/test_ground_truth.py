"""Ground truth: an exactly C4-equivariant network (e2cnn) against an ordinary CNN.

Inputs are scikit-learn's 8×8 digits zero-padded to 9×9: an odd grid, so a
quarter turn maps pixels onto pixels about the centre pixel, and every layer
keeps the grid (3×3 convolutions, padding 1, no striding), so ``rot90`` of the
input is exactly ``rot90`` of every feature map, with the regular fields'
channels rolled by one (what e2cnn's ``Rot2dOnR2(4)`` regular representation
does). On an even grid, or after a stride-2 step, the rotation centre falls
between pixels and the equivariance is only approximate.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
e2cnn = pytest.importorskip("e2cnn")

from e2cnn import gspaces  # noqa: E402
from e2cnn import nn as enn  # noqa: E402
from seis_sklearn.adapters.torch import extract_activations  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from seis_sklearn import latent_action, seis_score  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # e2cnn: torch deprecations

N_FIELDS = 2  # regular fields per layer: 8 channels


class C4Net(torch.nn.Module):
    """Three C4-equivariant convolutions (regular fields), group pooling, global pooling."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        space = gspaces.Rot2dOnR2(N=4)
        self.input_type = enn.FieldType(space, [space.trivial_repr])
        regular = enn.FieldType(space, N_FIELDS * [space.regular_repr])
        self.conv1 = enn.R2Conv(self.input_type, regular, 3, padding=1)
        self.relu1 = enn.ReLU(regular)
        self.conv2 = enn.R2Conv(regular, regular, 3, padding=1)
        self.relu2 = enn.ReLU(regular)
        self.conv3 = enn.R2Conv(regular, regular, 3, padding=1)
        self.gpool = enn.GroupPooling(regular)
        self.avg = torch.nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        h = enn.GeometricTensor(x, self.input_type)
        h = self.relu1(self.conv1(h))
        h = self.relu2(self.conv2(h))
        h = self.gpool(self.conv3(h))
        return self.avg(h.tensor)


class PlainNet(torch.nn.Module):
    """The same shape with ordinary convolutions (as many channels)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        c = 4 * N_FIELDS
        self.conv1 = torch.nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


def select(output):
    return output.tensor if hasattr(output, "tensor") else output


@pytest.fixture(scope="module")
def digits():
    images = load_digits().images[:600].astype(np.float32) / 16.0
    return np.pad(images, ((0, 0), (0, 1), (0, 1)))[:, None]  # (600, 1, 9, 9)


def orbit_activations(model, x, layers):
    """Activations of ``layers`` on x and its 1, 2, 3 quarter turns."""
    model.eval()
    acts = [
        extract_activations(
            model, np.ascontiguousarray(np.rot90(x, k, axes=(2, 3))), layers,
            select=select, progress=False, device="cpu", dtype=np.float64,
        )
        for k in range(4)
    ]  # fmt: skip
    return {layer: [a[layer] for a in acts] for layer in layers}


@pytest.fixture(scope="module")
def gcnn(digits):
    return orbit_activations(C4Net(), digits, ["conv1", "conv2", "conv3", "avg"])


@pytest.fixture(scope="module")
def plain(digits):
    return orbit_activations(PlainNet(), digits, ["conv1", "conv2", "conv3"])


def test_the_network_is_exactly_equivariant(gcnn):
    """The premise: rotating the input rotates the maps and rolls each field's channels."""
    A, B = gcnn["conv2"][0], gcnn["conv2"][1]
    n = A.shape[0]
    moved = np.rot90(A, 1, axes=(2, 3)).reshape(n, N_FIELDS, 4, 9, 9)
    moved = np.roll(moved, 1, axis=2).reshape(A.shape)
    assert np.abs(B - moved).max() <= 1e-5 * np.abs(A).max()


@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3"])
def test_orbit_denoising_scores_the_gcnn_equivariant_held_out(gcnn, plain, layer):
    A, *Bs = gcnn[layer]
    result = seis_score(A, Bs, cv=3, matricization="flatten", n_components=0.99)
    assert result.equivariance >= 0.999
    assert all(e.equivariance >= 0.999 for e in result.elements)
    action = latent_action(A, Bs, matricization="flatten", n_components=0.99)
    assert action.homomorphism_defect < 1e-3
    assert action.order_defect < 1e-3
    assert action.orthogonality_defect < 1e-3
    if layer == "conv1":
        # a first convolution is linear in the input: for any invertible action on the
        # input it keeps everything and carries a representation — an ordinary one too
        return
    # after a ReLU, the ordinary CNN stays clearly below and carries no representation
    A, *Bs = plain[layer]
    result = seis_score(A, Bs, cv=3, matricization="flatten", n_components=0.99)
    assert result.equivariance < 0.95
    action = latent_action(A, Bs, matricization="flatten", n_components=0.99)
    assert action.homomorphism_defect > 0.1


def test_group_pooled_and_averaged_output_is_invariant(gcnn):
    A, *Bs = gcnn["avg"]
    result = seis_score(A, Bs, cv=3, matricization="flatten", n_components=0.99)
    assert result.invariance >= 0.999 and result.equivariance >= 0.999


def test_spatial_mode_is_blind_to_the_channel_permutation(gcnn):
    """Spatial rows are single channels: a rolled channel lands on another row."""
    A, *Bs = gcnn["conv2"]
    flatten = seis_score(A, Bs[0], cv=3, matricization="flatten", n_components=0.99)
    spatial = seis_score(A, Bs[0], cv=3, matricization="spatial", n_components=0.99)
    assert spatial.equivariance < flatten.equivariance - 0.05
