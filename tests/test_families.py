"""Architectures out of the box: default layers per family, reports that run, exact blocks.

torchvision and timm do not install beside the CPU build of torch pinned here (see
``benchmarks/README.md``), so their families are represented by small networks with
their class names and layouts (torchvision's ``BasicBlock`` in ``layerN``
sequences, timm's ``Block``/``MixerBlock``/``ConvNeXtBlock`` in ``blocks``/``stages``
and ``num_prefix_tokens``); Hugging Face's ViT is the real library, built from a
config (no download).
"""

from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from seis_sklearn.adapters.torch import (  # noqa: E402
    default_layers,
    extract_activations,
    layerwise_seis,
    prefix_tokens,
    selector,
)
from seis_sklearn.adapters.torch import transforms as TT  # noqa: E402

from seis_sklearn.testing import assert_equivariant  # noqa: E402

SCORES = ["equivariance", "invariance", "equivariance_weighted", "invariance_weighted"]


class BasicBlock(nn.Module):  # torchvision's name and shape
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout))

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + skip)


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 8))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.layer2(self.layer1(self.conv1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):  # timm's ViT block
    def __init__(self, dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 2 * dim)

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    num_prefix_tokens = 1

    def __init__(self, dim=16):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, 17, dim))
        self.blocks = nn.Sequential(Block(dim), Block(dim), Block(dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class MixerBlock(nn.Module):  # timm's MLP-Mixer block
    def __init__(self, tokens, dim):
        super().__init__()
        self.norm1, self.mlp_tokens = nn.LayerNorm(dim), Mlp(tokens, 2 * tokens)
        self.norm2, self.mlp_channels = nn.LayerNorm(dim), Mlp(dim, 2 * dim)

    def forward(self, x):
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class Mixer(nn.Module):
    num_prefix_tokens = 0

    def __init__(self, dim=16):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, 4)
        self.blocks = nn.Sequential(MixerBlock(16, dim), MixerBlock(16, dim))
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.blocks(self.stem(x).flatten(2).transpose(1, 2))
        return self.head(x.mean(1))


class ConvNeXtBlock(nn.Module):  # timm's ConvNeXt block
    def __init__(self, dim):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.BatchNorm2d(dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 4 * dim, 1), nn.GELU(), nn.Conv2d(4 * dim, dim, 1))

    def forward(self, x):
        return x + self.mlp(self.norm(self.conv_dw(x)))


class ConvNeXt(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, 2)
        self.stages = nn.Sequential(
            nn.Sequential(ConvNeXtBlock(8), ConvNeXtBlock(8)),
            nn.Sequential(nn.Conv2d(8, 16, 2, 2), ConvNeXtBlock(16), ConvNeXtBlock(16)),
        )
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


def _conv(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class UNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.down1, self.down2 = _conv(3, 8), _conv(8, 16)
        self.pool = nn.MaxPool2d(2)
        self.up1 = nn.ConvTranspose2d(16, 8, 2, 2)
        self.up2 = _conv(16, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        a = self.down1(x)
        b = self.down2(self.pool(a))
        return self.out(self.up2(torch.cat([self.up1(b), a], 1)))


def hf_vit():
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=5,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config).eval()


def hf_deit():
    transformers = pytest.importorskip("transformers")
    config = transformers.DeiTConfig(
        image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=5,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.DeiTForImageClassificationWithTeacher(config).eval()


FAMILIES = {
    "resnet": (ResNet, ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "fc"]),
    "vit": (ViT, ["blocks.0", "blocks.1", "blocks.2", "head"]),
    "mixer": (Mixer, ["blocks.0", "blocks.1", "head"]),
    "convnext": (ConvNeXt, ["stages.0.0", "stages.0.1", "stages.1.1", "stages.1.2", "head"]),
    "unet": (UNet, ["down1", "down2", "up1", "up2", "out"]),
    "hf-vit": (
        hf_vit,
        ["vit.layers.0", "vit.layers.1", "classifier"],
    ),
    "hf-deit": (  # a class and a distillation token before the patches
        hf_deit,
        ["deit.layers.0", "deit.layers.1", "distillation_classifier"],
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_default_layers_and_a_report_per_family(family):
    build, expected = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    assert default_layers(model) == expected
    x = np.random.default_rng(0).normal(size=(40, 3, 16, 16)).astype(np.float32)
    tokens = "patch" if prefix_tokens(model) else "all"
    frame = layerwise_seis(
        model, x, {"hflip": TT.hflip, "shift 4px": partial(TT.translate, shift=(0, 4))},
        batch_size=16, progress=False, tokens=tokens,
    )  # fmt: skip
    assert sorted(set(frame["layer"])) == sorted(expected)
    assert np.isfinite(frame[SCORES].to_numpy()).all()
    assert (
        (frame["invariance"] <= frame["equivariance"] + 1e-12) & (frame["equivariance"] <= 1)
    ).all()


def test_prefix_tokens_and_selection_by_name():
    model = hf_vit()
    assert (
        prefix_tokens(model) == 1 and prefix_tokens(ViT()) == 1 and prefix_tokens(ResNet()) is None
    )
    x = np.random.default_rng(1).normal(size=(6, 3, 16, 16)).astype(np.float32)
    # the whole model's ModelOutput, one part of it by name
    got = extract_activations(model, x, ["vit"], progress=False,
                              select="last_hidden_state")["vit"]  # fmt: skip
    assert got.shape == (6, 17, 16)
    by_index = selector(-1)((torch.zeros(1), torch.ones(2)))
    assert by_index.shape == (2,)
    with pytest.raises(
        ValueError, match="layer 'vit': select='logits': the module's output has no"
    ):
        extract_activations(model, x, ["vit"], progress=False, select="logits")
    with pytest.raises(TypeError, match="select must be None, a callable, a str or an int"):
        selector(1.5)


@pytest.mark.parametrize("family", ["resnet", "convnext", "unet"])
def test_an_exactly_equivariant_pointwise_block_scores_one_conv(family):
    """A 1×1 convolution and its activation commute with any permutation of the grid:
    SEIS says 1 for such a block of each convolutional family (the flip, an involution,
    maps the pair's pooled subspace onto itself)."""
    torch.manual_seed(0)
    pointwise = {
        "resnet": lambda: nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8).eval(), nn.ReLU()),
        "convnext": lambda: ConvNeXt().stages[0][0].mlp,
        "unet": lambda: nn.Sequential(UNet().out, nn.ReLU()),
    }[family]().eval()
    channels = next(pointwise.parameters()).shape[1]
    x = np.random.default_rng(2).normal(size=(60, channels, 8, 8)).astype(np.float32)
    results = assert_equivariant(pointwise, x, TT.hflip, layers=[_last(pointwise)])
    assert all(r.equivariance == pytest.approx(1.0, abs=1e-4) for r in results.values())


@pytest.mark.parametrize("family", ["vit", "mixer", "hf-vit"])
def test_an_exactly_equivariant_pointwise_block_scores_one_tokens(family):
    """The MLP of a transformer or mixer block acts token by token: it commutes with any
    permutation of the tokens, and SEIS says 1 (tokens reversed, an involution)."""
    torch.manual_seed(0)
    block = {
        "vit": lambda: ViT().blocks[0].mlp,
        "mixer": lambda: Mixer().blocks[0].mlp_channels,
        "hf-vit": lambda: _hf_mlp(hf_vit()),
    }[family]().eval()
    dim = next(block.parameters()).shape[1]
    x = np.random.default_rng(3).normal(size=(60, 16, dim)).astype(np.float32)
    reverse = lambda batch: torch.flip(batch, (1,))  # noqa: E731
    results = assert_equivariant(block, x, reverse, layers=[_last(block)])
    assert all(r.equivariance == pytest.approx(1.0, abs=1e-4) for r in results.values())


def _hf_mlp(model):
    return model.vit.layers[0].mlp


def _last(module):
    return [name for name, _ in module.named_modules() if name][-1]
