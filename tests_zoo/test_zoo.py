"""Layerwise reports on the real model zoo: torchvision, timm and Hugging Face.

Run by ``make test-zoo`` in its own environment (``.venv-zoo``: torch 2.14.1 with
torchvision 0.29.1, timm and transformers; requirements/zoo.txt), never by the main
suite, whose CPU build of torch 2.13.0 cannot import PyPI's torchvision. Every model is
built with random weights (nothing is downloaded) at a small resolution, and scored
layer by layer with its default layers under the identity: every row is finite (or,
for a head whose weights are all zero, says why not), the identity scores 1, and
every layer is read in its true layout.
"""

import re
import warnings

import numpy as np
import pytest
import timm
import torch
import torchvision
import transformers
from seis_sklearn.adapters.torch import layerwise_seis

from seis_sklearn import seis_score

warnings.filterwarnings("ignore", category=UserWarning)  # libraries' own notices
warnings.filterwarnings("ignore", category=FutureWarning)


def tv(name, **kw):
    return getattr(torchvision.models, name)(weights=None, **kw)


def tm(name, **kw):
    return timm.create_model(name, pretrained=False, **kw)


def hf(kind):
    T = transformers
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    if kind == "vit":
        return T.ViTModel(T.ViTConfig(image_size=64, patch_size=16, **small))
    if kind == "deit":
        return T.DeiTModel(T.DeiTConfig(image_size=64, patch_size=16, **small))
    if kind == "dinov2_registers":
        config = T.Dinov2WithRegistersConfig(
            image_size=64, patch_size=16, num_register_tokens=4, **small
        )
        return T.Dinov2WithRegistersModel(config)
    if kind == "convnext":
        return T.ConvNextModel(
            T.ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 48, 64])
        )
    if kind == "swin":
        config = T.SwinConfig(
            image_size=64, patch_size=4, embed_dim=24, depths=[1, 1], num_heads=[2, 2],
            window_size=4,
        )  # fmt: skip
        return T.SwinModel(config)
    if kind == "mobilevit":
        return T.MobileViTModel(T.MobileViTConfig(image_size=64))
    raise ValueError(kind)


def tv_vit():
    return torchvision.models.VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128
    )


# name → (builder, input size, tokens, {layer regex: layout} where not the default of
# the layer's number of axes: 4-D NCHW, 3-D NLD, 2-D ND)
CHANNELS_LAST = {r"^features\.\d+$": "NHWC"}  # torchvision Swin stages
ZOO = {
    # torchvision CNNs
    "tv/resnet18": (lambda: tv("resnet18"), 64, "all", {}),
    "tv/resnet50": (lambda: tv("resnet50"), 64, "all", {}),
    "tv/resnext50_32x4d": (lambda: tv("resnext50_32x4d"), 64, "all", {}),
    "tv/mobilenet_v2": (lambda: tv("mobilenet_v2"), 64, "all", {}),
    "tv/mobilenet_v3_small": (lambda: tv("mobilenet_v3_small"), 64, "all", {}),
    "tv/efficientnet_b0": (lambda: tv("efficientnet_b0"), 64, "all", {}),
    "tv/regnet_y_400mf": (lambda: tv("regnet_y_400mf"), 64, "all", {}),
    "tv/densenet121": (lambda: tv("densenet121"), 64, "all", {}),
    "tv/vgg11_bn": (lambda: tv("vgg11_bn"), 64, "all", {}),
    "tv/convnext_tiny": (lambda: tv("convnext_tiny"), 64, "all", {}),
    "tv/shufflenet_v2_x0_5": (lambda: tv("shufflenet_v2_x0_5"), 64, "all", {}),
    "tv/mnasnet0_5": (lambda: tv("mnasnet0_5"), 64, "all", {}),
    "tv/squeezenet1_0": (lambda: tv("squeezenet1_0"), 64, "all", {}),
    # torchvision transformers
    "tv/swin_t": (lambda: tv("swin_t"), 64, "all", CHANNELS_LAST),
    "tv/swin_v2_t": (lambda: tv("swin_v2_t"), 64, "all", CHANNELS_LAST),
    "tv/vit": (tv_vit, 64, "patch", {}),
    # timm CNNs and hybrids
    "timm/resnet18": (lambda: tm("resnet18"), 64, "all", {}),
    "timm/convnext_atto": (lambda: tm("convnext_atto"), 64, "all", {}),
    "timm/efficientnet_b0": (lambda: tm("efficientnet_b0"), 64, "all", {}),
    "timm/regnetx_002": (lambda: tm("regnetx_002"), 64, "all", {}),
    "timm/poolformer_s12": (lambda: tm("poolformer_s12"), 64, "all", {}),
    "timm/coatnet_0_rw_224": (lambda: tm("coatnet_0_rw_224", img_size=64), 64, "all", {}),
    "timm/levit_128s": (lambda: tm("levit_128s", img_size=64), 64, "all", {}),
    "timm/mobilevit_xxs": (lambda: tm("mobilevit_xxs"), 64, "all", {}),
    "timm/pvt_v2_b0": (lambda: tm("pvt_v2_b0"), 64, "all", {}),
    "timm/tiny_vit_5m": (lambda: tm("tiny_vit_5m_224"), 64, "all", {}),
    "timm/edgenext_xx_small": (lambda: tm("edgenext_xx_small"), 64, "all", {}),
    "timm/fastvit_t8": (lambda: tm("fastvit_t8"), 64, "all", {}),
    # timm transformers and MLPs
    "timm/vit_tiny": (lambda: tm("vit_tiny_patch16_224", img_size=64), 64, "patch", {}),
    "timm/deit_tiny_distilled": (
        lambda: tm("deit_tiny_distilled_patch16_224", img_size=64),
        64,
        "patch",
        {},
    ),  # fmt: skip
    "timm/vit_registers": (
        lambda: tm(
            "vit_base_patch16_reg4_gap_256", img_size=64, depth=2, embed_dim=64, num_heads=2
        ),
        64,
        "patch",
        {},
    ),  # fmt: skip
    "timm/mixer_s16": (lambda: tm("mixer_s16_224", img_size=64), 64, "patch", {}),
    "timm/resmlp_12": (lambda: tm("resmlp_12_224", img_size=64), 64, "patch", {}),
    "timm/swin_tiny": (
        lambda: tm("swin_tiny_patch4_window7_224", img_size=56),
        56,
        "all",
        {r"^layers\.": "NHWC"},
    ),  # fmt: skip
    "timm/swinv2_cr_tiny": (
        lambda: tm("swinv2_cr_tiny_224", img_size=64, window_size=4),
        64,
        "all",
        {},
    ),  # fmt: skip
    # Hugging Face
    "hf/vit": (lambda: hf("vit"), 64, "patch", {}),
    "hf/deit": (lambda: hf("deit"), 64, "patch", {}),
    "hf/dinov2_registers": (lambda: hf("dinov2_registers"), 64, "patch", {}),
    "hf/convnext": (lambda: hf("convnext"), 64, "all", {}),
    "hf/swin": (lambda: hf("swin"), 64, "patch", {}),
    "hf/mobilevit": (lambda: hf("mobilevit"), 64, "all", {}),
}

N_SAMPLES = 12
DEFAULT_BY_AXES = {4: "NCHW", 3: "NLD", 2: "ND", 1: "ND"}


def _expected_layout(layer, shape, rules):
    for pattern, layout in rules.items():
        if re.search(pattern, layer) and len(shape) == 3:
            return layout
    return DEFAULT_BY_AXES[len(shape) + 1]


def _zero_head(model, layer):
    """Whether the layer is a Linear whose weights are all zero (constant output)."""
    module = dict(model.named_modules())[layer.split("#")[0]]
    weight = getattr(module, "weight", None)
    return weight is not None and not bool(weight.detach().abs().sum())


@pytest.fixture(scope="module")
def images():
    return {size: torch.randn(N_SAMPLES, 3, size, size, generator=torch.Generator().manual_seed(0))
            for size in (56, 64)}  # fmt: skip


@pytest.mark.parametrize("name", list(ZOO))
def test_default_report_reads_every_layer_right(name, images):
    build, size, tokens, rules = ZOO[name]
    torch.manual_seed(0)
    model = build().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = layerwise_seis(
            model, images[size], {"identity": lambda b: b.clone()}, held_out=None,
            batch_size=6, progress=False, tokens=tokens,
        )  # fmt: skip
    assert len(frame) >= 2, frame
    for row in frame.itertuples():
        shape = tuple(int(s) for s in str(row.shape).split("×"))
        expected = _expected_layout(row.layer, shape, rules)
        assert row.layout == expected, (row.layer, row.shape, row.layout, row.layout_choice)
        scores = [row.equivariance, row.invariance, row.equivariance_weighted]
        if not np.isfinite(scores).all():
            # only a head whose weights are all zero (timm's Mixer/ResMLP, torchvision's
            # ViT) has no variance; its row says so and the report goes on
            assert _zero_head(model, row.layer), (row.layer, row.degenerate_reason)
            assert "no variance" in row.degenerate_reason
            assert any(row.layer in str(w.message) for w in caught)
            continue
        # the identity: S_E^w within ε = 1e-6 of 1 (SPEC §2.3), S_E loses the ridge's
        # ε·mean(λ̄/λ_i), S_I = S_E
        assert row.equivariance_weighted == pytest.approx(1, abs=1e-5), row
        assert row.equivariance == pytest.approx(1, abs=1e-3), row
        assert row.invariance == pytest.approx(row.equivariance, abs=1e-9), row
    if tokens == "patch":  # the prefix found per layer leaves a grid of patches
        tokens_rows = frame[frame.layout == "NLD"]
        assert len(tokens_rows) and all(
            int(np.sqrt(int(s.split("×")[0]))) ** 2 == int(s.split("×")[0])
            for s in tokens_rows["shape"]
        ), tokens_rows[["layer", "shape", "layout_choice"]]


def _stage_activations(model, layer, x, transform):
    from seis_sklearn.adapters.torch import extract_activations

    pairs = extract_activations(model, x, [layer], transform=transform, progress=False)
    return pairs[layer]


@pytest.mark.parametrize(
    "name, layer", [("tv/swin_t", "features.1"), ("timm/swin_tiny", "layers.0")]
)
def test_swin_stage_equals_its_nchw_transpose(name, layer, images):
    """Issue 29's acceptance: a Swin stage's row equals seis_score on the same
    activations transposed to NCHW (it read 0.937 for 0.241 as NCHW)."""
    build, size, _, _ = ZOO[name]
    torch.manual_seed(0)
    model = build().eval()
    x = images[size]
    flip = lambda b: torch.flip(b, dims=(-1,))  # noqa: E731
    frame = layerwise_seis(
        model, x, {"hflip": flip}, layers=[layer], held_out=None, progress=False
    )
    original, flipped = _stage_activations(model, layer, x, flip)
    assert original.ndim == 4 and original.shape[-1] > original.shape[1]  # (N, H, W, C)
    want = seis_score(
        np.moveaxis(original, -1, 1), np.moveaxis(flipped, -1, 1), matricization="spatial", cv=None
    )
    row = frame.iloc[0]
    assert row.layout == "NHWC" and row.matricization == "spatial"
    assert row.equivariance == pytest.approx(want.equivariance, abs=1e-9)
    assert row.invariance == pytest.approx(want.invariance, abs=1e-9)


def test_streamed_report_reads_swin_channels_last():
    """The held-out (streamed) report reads the same layouts as the stored one."""
    torch.manual_seed(0)
    model = tv("swin_t").eval()
    x = torch.randn(20, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    frame = layerwise_seis(
        model, x, {"identity": lambda b: b.clone(), "hflip": lambda b: torch.flip(b, (-1,))},
        batch_size=10, progress=False,
    )  # fmt: skip
    stages = frame[frame.layer.str.match(r"^features\.\d+$")]
    assert len(stages) and set(stages.layout) == {"NHWC"}
    assert np.isfinite(frame.equivariance).all()


def test_torchvision_vit_patch_tokens_need_no_prefix_count(images):
    """torchvision's VisionTransformer has a class token: tokens='patch' alone drops it."""
    model = tv_vit().eval()
    frame = layerwise_seis(
        model, images[64], {"identity": lambda b: b.clone()}, held_out=None,
        progress=False, tokens="patch",
    )  # fmt: skip
    blocks = frame[frame.layout == "NLD"]
    assert set(blocks["shape"]) == {"16×64"}  # 17 tokens less the class token
    assert all("1 prefix" in c for c in blocks["layout_choice"])


def test_timm_vit_reads_its_patch_grid_by_default():
    """timm's ViT declares num_prefix_tokens: the default tokens="auto" reads the patch
    grid, without tokens="patch", and the row says so (issue 38, item 6)."""
    torch.manual_seed(0)
    vit = tm("vit_tiny_patch16_224", img_size=64).eval()
    x = np.random.default_rng(5).normal(size=(24, 3, 64, 64)).astype(np.float32)
    frame = layerwise_seis(vit, x, ["hflip"], layers=["blocks.0"], progress=False)
    assert frame["shape"][0] == "16×192"
    assert "1 prefix token(s) dropped" in frame["layout_choice"][0]


def test_mixer_with_zero_head_reports_every_block(images):
    model = tm("mixer_s16_224", img_size=64).eval()
    with pytest.warns(UserWarning, match="not scored"):
        frame = layerwise_seis(
            model, images[64], {"identity": lambda b: b.clone()}, held_out=None, progress=False
        )
    blocks = frame[frame.layer.str.startswith("blocks.")]
    assert len(blocks) == len(model.blocks) and np.isfinite(blocks.equivariance).all()
    head = frame[frame.layer == "head"].iloc[0]
    assert np.isnan(head.equivariance) and "no variance" in head.degenerate_reason


def test_mobilevit_default_layers_keep_samples_first(images):
    """timm's MobileViT folds patches into the batch axis inside its transformers: the
    default layers take the blocks around them."""
    model = tm("mobilevit_xxs").eval()
    frame = layerwise_seis(
        model, images[64], {"identity": lambda b: b.clone()}, held_out=None, progress=False
    )
    assert not frame.layer.str.contains("transformer").any()
    assert {"stages.2.1", "stages.3.1", "stages.4.1"} <= set(frame.layer)
    assert np.isfinite(frame.equivariance).all()


def _resnet18_files(tmp_path):
    """torchvision's resnet18 (random weights), traced, exported and as ONNX; inputs."""
    torch.manual_seed(0)
    model = tv("resnet18").eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, x), tmp_path / "r18.pt")
        batch = torch.export.Dim("batch", min=1, max=4096)
        torch.export.save(
            torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), tmp_path / "r18.pt2"
        )
        torch.onnx.export(
            model, (x,), str(tmp_path / "r18.onnx"), input_names=["x"], dynamo=False,
            dynamic_axes={"x": {0: "n"}},
        )  # fmt: skip
    images = torch.randn(24, 3, 64, 64, generator=torch.Generator().manual_seed(3)).numpy()
    np.save(tmp_path / "x.npy", images)
    return model, images


def test_compiled_resnet18_reports_through_the_command_line(tmp_path):
    """seis report of the same real resnet18 as TorchScript, as a torch.export program
    and (through onnxruntime) as ONNX: the identity scores 1 on every layer, and the
    TorchScript and exported reports equal the module's own."""
    import subprocess
    import sys

    import pandas as pd

    model, images = _resnet18_files(tmp_path)
    want = layerwise_seis(
        model, images, {"rot90": lambda b: torch.rot90(b, 1, (2, 3))}, held_out=None,
        progress=False,
    ).set_index("layer")  # fmt: skip
    for source in (["--torchscript", "r18.pt"], ["--exported", "r18.pt2"], ["--onnx", "r18.onnx"]):
        out = f"out-{source[0][2:]}"
        done = subprocess.run(
            [sys.executable, "-m", "seis_sklearn", "report", *source, "--inputs", "x.npy",
             "--transform", "rot90", "--transform", "rot90:4", "--in-sample", "-q",
             "--out", out],
            capture_output=True, text=True, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, (source, done.stderr)
        frame = pd.read_csv(tmp_path / out / "report.csv")
        assert len(frame) >= 10 and np.isfinite(frame["equivariance"]).all(), frame
        identity = frame[frame["transform"] == "rot90:4"]  # four quarter turns
        assert (identity["equivariance_weighted"] > 1 - 1e-5).all(), (source, identity)
        if source[0] != "--onnx":  # the same module names: the same rows
            got = frame[frame["transform"] == "rot90"].set_index("layer")
            assert got.index.tolist() == want.index.tolist()
            assert got["equivariance"].to_numpy() == pytest.approx(
                want["equivariance"].to_numpy(), abs=1e-6
            )


def test_similarity_map_of_real_models(images):
    """Layer × layer maps between two real libraries' networks: a torchvision ResNet-18
    against a timm ResNet-18 (different module names, the same stage shapes) and a
    torchvision model against itself — unit diagonal, symmetric, finite; the timm copy
    given the torchvision weights (the same network) gives the self map."""
    from seis_sklearn.adapters.torch import similarity_map

    tv = torchvision.models.resnet18(weights=None).eval()
    stages = ["layer1", "layer2", "layer3", "layer4", "fc"]
    own = similarity_map(tv, images[64], stages, batch_size=8, progress=False)
    values = own.to_numpy()
    assert np.isfinite(values).all() and np.allclose(np.diag(values), 1.0, atol=1e-9)
    assert np.allclose(values, values.T, atol=1e-9)
    twin = tm("resnet18").eval()
    twin.load_state_dict(tv.state_dict())  # the same architecture, the same names
    both = similarity_map(tv, images[64], stages, model_b=twin, layers_b=stages, batch_size=8,
                          progress=False)  # fmt: skip
    assert np.allclose(both.to_numpy(), values, atol=1e-5)


def test_lie_derivative_of_real_models(monkeypatch):
    """The Lie derivative runs through real networks — a timm ViT (scaled dot-product
    attention: its fused kernel has no forward-mode formula, its plain composition
    has) and a torchvision ResNet-18 — and forward mode agrees with the two reverse
    passes the reference code uses."""
    from seis_sklearn.adapters.torch import lie_derivative

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    models = [tm("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10),
              torchvision.models.resnet18(weights=None, num_classes=10)]  # fmt: skip
    forward = [lie_derivative(m.eval(), x, progress=False) for m in models]
    for frame in forward:
        values = frame.to_numpy()
        assert np.isfinite(values).all() and (values > 0).all()
    real = torch.func.jvp

    def no_forward_mode(f, primals, tangents):
        if primals[0].ndim == 4:  # the model, not the warp
            raise NotImplementedError("Trying to use forward AD with an operation")
        return real(f, primals, tangents)

    monkeypatch.setattr(torch.func, "jvp", no_forward_mode)
    for m, want in zip(models, forward, strict=True):
        got = lie_derivative(m.eval(), x, progress=False)
        assert np.allclose(got.to_numpy(), want.to_numpy(), rtol=1e-4, atol=1e-9)


def test_layerwise_lie_derivative_of_real_models():
    """Each block's share of the output's Lie derivative in real networks: the stem,
    the stages, the pooling and the head of a torchvision ResNet-18 (in-place ReLUs,
    a ReLU module called twice per block) are a chain whose shares add up to the
    output's; a timm ViT's blocks read as a class token before a grid of patches,
    where the position embedding added outside every module is what stays
    unattributed; a Hugging Face ViT's dict output is read at its logits."""
    from seis_sklearn.adapters.torch import layerwise_lie_derivative, lie_derivative

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    resnet = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    chain = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
             "avgpool", "fc"]  # fmt: skip
    parts = layerwise_lie_derivative(resnet, x, ["rotate"], layers=chain, progress=False)
    assert list(parts.index) == chain
    whole = lie_derivative(resnet, x, ["rotate"], progress=False)["rotate"].mean()
    assert np.isclose(parts.attrs["output_lee"]["rotate"], whole, rtol=1e-4)
    assert parts.attrs["unattributed"]["rotate"] < 1e-3 * whole
    assert (parts.loc[chain[:-2], "rotate"] > 0).all() and parts.loc["fc", "rotate"] == 0
    vit = tm("vit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10).eval()
    blocks = [f"blocks.{i}" for i in range(len(vit.blocks))]
    parts = layerwise_lie_derivative(vit, x, ["translate_x"], layers=["patch_embed", *blocks],
                                     progress=False)  # fmt: skip
    assert (parts["translate_x"] > 0).all()
    assert parts.attrs["unattributed"]["translate_x"] > 0  # the position embedding's share
    hf = transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=5)).eval()  # fmt: skip
    lee = lie_derivative(hf, x, ["scale"], progress=False)
    assert lee.shape == (3, 1) and (lee.to_numpy() > 0).all()
    parts = layerwise_lie_derivative(hf, x, ["scale"], layers=["vit.layers.0"],
                                     progress=False)  # fmt: skip
    assert parts.loc["vit.layers.0", "scale"] > 0
