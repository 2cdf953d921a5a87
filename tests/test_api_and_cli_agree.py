"""Issue 38: the Python API takes what the command line takes (transform specs, layer
globs under one rule), plots return Figures and save to a path, token layers read the
patch grid the model declares, and the torch adapter's smaller refusals (a 0-d output,
NaN images, (label, image) loaders, MultiheadAttention's out_proj)."""

import textwrap
from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters._layout import auto_prefix, read_layers  # noqa: E402
from seis_sklearn.adapters._names import glob_regex, match_names  # noqa: E402
from seis_sklearn.adapters.torch import (  # noqa: E402
    SEISMonitor,
    default_layers,
    extract_activations,
    find_layers,
    layerwise_lie_derivative,
    layerwise_seis,
    lie_derivative,
    stream_scores,
)
from seis_sklearn.adapters.torch import transforms as TT  # noqa: E402

from seis_sklearn.cli import main  # noqa: E402

# the module names of a torchvision-style ResNet with two stages of two blocks
RESNET_NAMES = [
    "conv1", "layer1", "layer1.0", "layer1.0.conv1", "layer1.0.conv2", "layer1.1",
    "layer1.1.conv1", "layer1.1.conv2", "layer2", "layer2.0", "layer2.0.conv1",
    "layer2.0.conv2", "layer2.0.downsample", "layer2.0.downsample.0",
    "layer2.0.downsample.1", "layer2.1", "layer2.1.conv1", "layer2.1.conv2", "fc",
]  # fmt: skip


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("layer*.1", ["layer1.1", "layer2.1"]),  # not layer2.0.downsample.1
        ("layer1.*", ["layer1.0", "layer1.1"]),  # the blocks, not their convolutions
        ("layer1.**", [n for n in RESNET_NAMES if n.startswith("layer1.")]),
        ("**.downsample.1", ["layer2.0.downsample.1"]),
        ("layer?.0", ["layer1.0", "layer2.0"]),
        ("layer[2].?", ["layer2.0", "layer2.1"]),
        ("layer[!1].*.conv1", ["layer2.0.conv1", "layer2.1.conv1"]),
        ("*", ["conv1", "layer1", "layer2", "fc"]),
        ("**", RESNET_NAMES),
        ("fc", ["fc"]),
    ],
)
def test_the_glob_rule(pattern, expected):
    """``*``, ``?`` and sets stay within one dotted part; ``**`` crosses parts."""
    assert match_names(RESNET_NAMES, pattern) == expected


def test_names_globs_order_and_errors():
    # a name that exists is taken as it is, even with glob characters in it
    assert match_names(["a[0]", "a0"], ["a[0]"]) == ["a[0]"]
    # per pattern in the order given, each pattern's names in the model's order, once
    assert match_names(RESNET_NAMES, ["fc", "layer*.1", "layer2.1"]) == [
        "fc", "layer1.1", "layer2.1",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"layers '\*\.downsample\.1' matches no module of "
                       r"the model \('\*' stays within one '\.'-separated part of a name; "
                       r"'\*\*\.downsample\.1' would cross parts and match 1"):  # fmt: skip
        match_names(RESNET_NAMES, "*.downsample.1")
    with pytest.raises(ValueError, match=r"layers: the model has no module named 'layer3'; "
                       r"did you mean"):  # fmt: skip
        match_names(RESNET_NAMES, ["layer3"])
    with pytest.raises(ValueError, match="layers names 'fc' twice"):
        match_names(RESNET_NAMES, ["fc", "fc"])
    with pytest.raises(ValueError, match="layers is empty"):
        match_names(RESNET_NAMES, [])
    with pytest.raises(TypeError, match="layers: names and globs are strings; got int"):
        match_names(RESNET_NAMES, [3])
    # '/' separates the parts of ONNX tensor names
    assert glob_regex("/block1/*", "/").fullmatch("/block1/Conv_output_0")
    assert not glob_regex("/block1/*", "/").fullmatch("/block1/block1.0/Conv_output_0")


class Block(torch.nn.Module):
    def __init__(self, c, downsample=False):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1)
        self.downsample = (
            torch.nn.Sequential(torch.nn.Conv2d(c, c, 1), torch.nn.BatchNorm2d(c))
            if downsample
            else None
        )

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        return torch.relu(skip + self.conv2(torch.relu(self.conv1(x))))


class ResNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.layer1 = torch.nn.Sequential(Block(4), Block(4))
        self.layer2 = torch.nn.Sequential(Block(4, downsample=True), Block(4))
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        h = self.layer2(self.layer1(torch.relu(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


MODEL_FILE = textwrap.dedent(
    """
    import torch
    from tests.test_api_and_cli_agree import ResNet, TinyViT

    def resnet():
        return ResNet().eval()

    def vit():
        return TinyViT().eval()
    """
)


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    path = tmp_path / "models_38.py"
    path.write_text(MODEL_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return path


def _report_csv(folder):
    import pandas as pd

    return pd.read_csv(folder / "report.csv")


def test_the_api_and_the_cli_choose_the_same_layers_and_transforms(tmp_path, model_file):
    """One glob rule and one spec parser: ``layerwise_seis(m, x, ["rot90", "hflip"],
    layers=["layer*.1"])`` is the report ``seis report --transform rot90 --transform
    hflip --layers 'layer*.1'`` writes — the same rows, the same numbers."""
    model = ResNet().eval()
    names = [n for n, _ in model.named_modules() if n]
    assert [n for n in RESNET_NAMES if n in names] == names  # the names the rule was tested on
    x = np.random.default_rng(0).normal(size=(60, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    api = layerwise_seis(model, x, ["rot90", "hflip"], layers=["layer*.1"], progress=False)
    assert sorted(set(api["layer"])) == ["layer1.1", "layer2.1"]
    assert sorted(set(api["transform"])) == ["hflip", "rot90"]
    out = tmp_path / "out"
    code = main(["report", "--model", f"{model_file}:resnet", "--inputs", str(tmp_path / "x.npy"),
                 "--transform", "rot90", "--transform", "hflip", "--layers", "layer*.1",
                 "--out", str(out), "-q"])  # fmt: skip
    assert code == 0
    cli = _report_csv(out)
    key = ["transform", "layer"]
    api, cli = api.sort_values(key).reset_index(drop=True), cli.sort_values(key)
    assert list(cli["layer"]) == list(api["layer"]) and list(cli["transform"]) == list(
        api["transform"]
    )
    np.testing.assert_allclose(cli["equivariance"], api["equivariance"], rtol=0, atol=2e-6)
    # a spec is the callable it names
    given = layerwise_seis(
        model, x, {"rot90": partial(TT.rot90, k=1), "hflip": TT.hflip}, layers=["layer*.1"],
        progress=False,
    ).sort_values(key).reset_index(drop=True)  # fmt: skip
    np.testing.assert_array_equal(given["equivariance"], api["equivariance"])
    # the CLI glob that matches nothing says what '**' would match
    code = main(["report", "--model", f"{model_file}:resnet", "--inputs", str(tmp_path / "x.npy"),
                 "--transform", "rot90", "--layers", "*.downsample.1", "--out",
                 str(tmp_path / "o2"), "-q"])  # fmt: skip
    assert code == 1 and not (tmp_path / "o2").exists()


def test_transform_specs_in_every_torch_function(tmp_path):
    model = ResNet().eval()
    x = np.random.default_rng(1).normal(size=(40, 1, 8, 8)).astype(np.float32)
    one = layerwise_seis(model, x, "rot90+shift:1", layers="layer1.*", progress=False)
    callable_ = layerwise_seis(
        model, x, {"rot90+shift:1": TT.compose(TT.rot90, partial(TT.translate, shift=1))},
        layers=["layer1.0", "layer1.1"], progress=False,
    )  # fmt: skip
    assert one.equals(callable_)
    mixed = layerwise_seis(model, x, {"turn": "rot90", "mirror": TT.hflip}, layers="fc",
                           progress=False)  # fmt: skip
    assert sorted(mixed["transform"]) == ["mirror", "turn"]
    with pytest.raises(ValueError, match="transforms names the same transform twice"):
        layerwise_seis(model, x, ["rot90", "rot90"], progress=False)
    with pytest.raises(ValueError, match=r"transforms\['rot9'\]: transform 'rot9': unknown step"):
        layerwise_seis(model, x, ["rot9"], progress=False)
    with pytest.raises(TypeError, match="transforms: a list holds transform specs"):
        layerwise_seis(model, x, [TT.hflip], progress=False)
    with pytest.raises(TypeError, match="transforms must be a non-empty dict"):
        layerwise_seis(model, x, {}, progress=False)
    # extract_activations: the spec's transform, and its name in a saved-pairs manifest
    pairs = extract_activations(model, x, "layer2.*", transform="vflip", progress=False,
                                out=tmp_path / "pairs")  # fmt: skip
    want = extract_activations(model, x, ["layer2.0", "layer2.1"], transform=TT.vflip,
                               progress=False)  # fmt: skip
    assert list(pairs) == ["layer2.0", "layer2.1"]
    assert np.array_equal(pairs["layer2.1"][1], want["layer2.1"][1])
    from seis_sklearn.io import list_pairs

    assert list_pairs(tmp_path / "pairs")[1]["transform"] == "vflip"
    streamed = stream_scores(model, x, "fc", "hflip", progress=False)
    assert (
        streamed["fc"].equivariance
        == stream_scores(model, x, "fc", TT.hflip, progress=False)["fc"].equivariance
    )
    monitor = SEISMonitor(x, ["hflip"], layers=["fc"])
    assert list(monitor.update(model, 0)["transform"]) == ["hflip"]
    # the 'lee' column finds the generator of a spec from its function, not its name
    from seis_sklearn.adapters.torch._lie_layers import generator_for

    assert [generator_for("g", TT.from_spec(s)) for s in ("rot90", "shift:2,0", "hflip")] == [
        "rotate", "translate_y", None,
    ]  # fmt: skip


def test_plots_return_figures_and_save_to_a_path(tmp_path):
    from matplotlib.figure import Figure

    from seis_sklearn.report import plot_layerwise, plot_measures

    model = ResNet().eval()
    x = np.random.default_rng(2).normal(size=(40, 1, 8, 8)).astype(np.float32)
    frame = layerwise_seis(model, x, ["rot90"], layers=["layer1.*"], progress=False)
    png = b"\x89PNG\r\n\x1a\n"
    fig = plot_layerwise(frame, path=tmp_path / "layers.png")
    assert isinstance(fig, Figure) and (tmp_path / "layers.png").read_bytes()[:8] == png
    fig = plot_measures(frame, path=tmp_path / "measures.svg")
    assert isinstance(fig, Figure) and b"<svg" in (tmp_path / "measures.svg").read_bytes()
    monitor = SEISMonitor(x, ["rot90"], layers=["fc"])
    monitor.update(model, 0)
    fig = monitor.plot(path=tmp_path / "epochs.pdf")
    assert isinstance(fig, Figure) and (tmp_path / "epochs.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match=r"path='.*layers': the suffix must name an image"):
        plot_layerwise(frame, path=tmp_path / "layers")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epochs.pdf", "layers.png", "measures.svg",
    ]  # fmt: skip


class TinyViT(torch.nn.Module):
    """timm's ViT in miniature: a class token before 16 patch tokens of an 8×8 input,
    declared by ``num_prefix_tokens``; blocks and the head act per token."""

    num_prefix_tokens = 1

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.Conv2d(1, 8, 1))
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.blocks = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (N, 16, 8)
        cls = self.cls + torch.tanh(tokens[:, :1].detach() * 3)  # not a patch of the grid
        t = self.blocks(torch.cat([cls, tokens], dim=1))
        return self.head(t[:, 0])


def test_token_layers_read_the_patch_grid_the_model_declares(tmp_path, model_file):
    """A model that declares its prefix tokens: spatial mode reads the patch grid by
    default (a permutation of patches: S_E 1), and the row says what it read; the
    class token is kept only when asked (tokens="all") or where the model says
    nothing — and then the row says how many would leave a grid."""
    vit = TinyViT().eval()
    x = np.random.default_rng(3).normal(size=(60, 1, 8, 8)).astype(np.float32)
    kwargs = dict(layers=["blocks.1"], progress=False)
    auto = layerwise_seis(vit, x, ["rot90"], **kwargs)
    assert auto["shape"][0] == "16×8" and auto["matricization"][0] == "spatial"
    assert (
        auto["layout_choice"][0]
        == "tokens: the model's 1 prefix token(s) dropped, 16 patches read"
    )
    assert auto["equivariance"][0] == pytest.approx(1.0, abs=1e-4)
    every = layerwise_seis(vit, x, ["rot90"], tokens="all", **kwargs)
    assert (
        every["shape"][0] == "17×8" and "all 17 kept (tokens='all')" in every["layout_choice"][0]
    )
    assert every["equivariance"][0] < auto["equivariance"][0] - 1e-3  # the class token moves
    patch = layerwise_seis(vit, x, ["rot90"], tokens="patch", **kwargs)
    assert patch["equivariance"][0] == auto["equivariance"][0]
    vit.num_prefix_tokens = None  # a model that does not say: every token kept, said so
    silent = layerwise_seis(vit, x, ["rot90"], **kwargs)
    assert silent["shape"][0] == "17×8"
    assert "does not say its prefix tokens; 1 would leave a grid" in silent["layout_choice"][0]
    given = layerwise_seis(vit, x, ["rot90"], n_prefix=1, **kwargs)  # n_prefix with "auto"
    assert given["shape"][0] == "16×8" and "n_prefix=1 given" in given["layout_choice"][0]
    with pytest.raises(ValueError, match="tokens must be 'auto', 'all' or 'patch'"):
        layerwise_seis(vit, x, ["rot90"], tokens="cls", **kwargs)
    with pytest.raises(ValueError, match="n_prefix goes with tokens='patch'"):
        layerwise_seis(vit, x, ["rot90"], tokens="all", n_prefix=1, **kwargs)
    # the command line reads it the same way by default
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    assert main(["report", "--model", f"{model_file}:vit", "--inputs", str(tmp_path / "x.npy"),
                 "--transform", "rot90", "--layers", "blocks.1", "--out", str(out),
                 "-q"]) == 0  # fmt: skip
    row = _report_csv(out).iloc[0]
    assert row["shape"] == "16×8" and "1 prefix token(s) dropped" in row["layout_choice"]


def test_auto_prefix_reads_the_declared_prefix_only_where_it_leaves_a_grid():
    assert auto_prefix(197, (224, 224), 1)[0] == 1  # ViT-B/16
    assert auto_prefix(201, (224, 224), 5)[0] == 5  # a class token and 4 registers
    assert auto_prefix(196, (224, 224), 1) == (0, "tokens: all 196 are patches")  # pooled away
    assert auto_prefix(10, None, 2)[0] == 2  # no image grid: the model's word
    kept = auto_prefix(50, (224, 224), 1)  # 49 = 7×7 patches (stride 32) after the class token
    assert kept[0] == 1
    none = auto_prefix(19, (224, 224), 1)  # 18 and 19 tile no grid of the input
    assert none[0] == 0 and "leave no grid of patches" in none[1]
    readings = read_layers({"t": (17, 8), "head": (8,)}, (8, 8), tokens="auto", model_prefix=1)
    assert readings["t"].n_prefix == 1 and readings["head"].n_prefix == 0


def test_a_hugging_face_vit_reads_its_patch_grid_by_default():
    """The prefix a Hugging Face config declares (ViT: one class token) is dropped by
    default, without tokens="patch" (a model built from its config, no weights)."""
    from tests.test_families import hf_vit

    vit = hf_vit()
    x = np.random.default_rng(4).normal(size=(40, 3, 16, 16)).astype(np.float32)
    frame = layerwise_seis(vit, x, ["hflip"], layers=["vit.layers.*"], progress=False)
    assert list(frame["shape"]) == ["16×16", "16×16"]
    assert (frame["layout_choice"] == "tokens: the model's 1 prefix token(s) dropped, "
            "16 patches read").all()  # fmt: skip
    every = layerwise_seis(vit, x, ["hflip"], layers=["vit.layers.*"], tokens="all",
                           progress=False)  # fmt: skip
    assert list(every["shape"]) == ["17×16", "17×16"]


class Attention(torch.nn.Module):
    """MultiheadAttention never calls its out_proj module (it applies its weights)."""

    def __init__(self, head=True):
        super().__init__()
        self.embed = torch.nn.Linear(3, 8)
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = torch.nn.Linear(8, 2) if head else None

    def forward(self, x):
        tokens = self.embed(x.flatten(2).transpose(1, 2))
        out = self.attn(tokens, tokens, tokens)[0]
        return self.head(out) if self.head is not None else out


def test_modules_that_never_run_are_no_default_layers():
    model = Attention().eval()
    assert "attn.out_proj" not in find_layers(model, types="Linear")
    assert find_layers(model, types="Linear") == ["embed", "head"]
    assert default_layers(model) == ["embed", "head"]
    assert "attn.out_proj" not in default_layers(Attention(head=False))
    # the reports that default to them: no row, and no warning, for out_proj
    import warnings

    x = np.random.default_rng(6).normal(size=(24, 3, 6, 6)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = layerwise_seis(model, x, ["hflip"], progress=False, held_out=None)
    assert list(frame["layer"]) == ["embed", "head"]


class Skips(torch.nn.Module):
    """A module its forward does not call on these inputs (a branch not taken)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.unused = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x).mean(dim=(2, 3))
        return self.head(self.unused(h) if x.shape[-1] > 100 else h)


def test_a_default_layer_that_did_not_run_is_said():
    x = np.random.default_rng(7).normal(size=(24, 1, 6, 6)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"default layers 'unused' left out: their forward "
                      r"did not run"):  # fmt: skip
        frame = layerwise_seis(Skips().eval(), x, ["hflip"], progress=False, held_out=None)
    assert list(frame["layer"]) == ["conv", "head"]


class DictOutput(torch.nn.Module):
    def __init__(self, first="loss"):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, 5)
        self.first = first

    def forward(self, x):
        logits = self.head(self.conv(x).mean(dim=(2, 3)))
        loss = logits.square().mean()
        if self.first == "tuple":
            return loss, logits
        return {self.first: loss, "scores": logits}


def test_lie_derivative_names_a_scalar_output_and_refuses_nan_images():
    x = torch.randn(8, 3, 9, 9)
    with pytest.raises(ValueError, match=r"output='probabilities': the model's output is a dict "
                       r"with keys 'loss', 'scores'; read at its first tensor, of shape \(\) — "
                       r"not one row per sample of the batch of 8"):  # fmt: skip
        lie_derivative(DictOutput(), x, progress=False)
    with pytest.raises(ValueError, match=r"output='logits': the model's output is a tuple of 2"):
        lie_derivative(DictOutput("tuple"), x, output="logits", progress=False)
    with pytest.raises(ValueError, match=r"output='logits': .*keys 'loss', 'scores'"):
        layerwise_lie_derivative(DictOutput(), x, output="logits", progress=False)
    # a dict whose first tensor has one row per sample is read as before
    lee = lie_derivative(DictOutput("scores"), x, progress=False)
    assert lee.shape == (8, 4) and np.isfinite(lee.to_numpy()).all()
    net = _small_net()
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[5, 1, 2, 3] = bad
        y[6, 0, 0, 0] = bad
        with pytest.raises(ValueError, match=r"inputs: 2 of 8 samples hold NaN or infinite "
                           r"values \(the first is sample 5\)"):  # fmt: skip
            lie_derivative(net, y, progress=False)
        with pytest.raises(ValueError, match=r"inputs: 2 of 8 samples hold NaN"):
            layerwise_lie_derivative(net, y.numpy(), progress=False)


def _small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(196, 3)
    ).eval()


def test_a_loader_of_label_image_pairs_is_named():
    net = _small_net()
    images = torch.randn(24, 3, 9, 9)
    labels = torch.arange(24) % 3
    dataset = torch.utils.data.TensorDataset(labels, images)  # (label, image): the wrong order
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    with pytest.raises(ValueError, match=r"inputs: a batch is a list of shapes \(8,\), "
                       r"\(8, 3, 9, 9\) whose first element looks like integer labels; batches "
                       r"are read as tensors or arrays, or as \(inputs, targets\) pairs whose "
                       r"FIRST element is the input"):  # fmt: skip
        layerwise_seis(net, loader, ["rot90"], progress=False)
    with pytest.raises(ValueError, match="inputs: a batch is a list of shapes"):
        extract_activations(net, loader, ["0"], progress=False)
    # labels that are no tensors, and one-hot labels first: the rule is said too
    strings = [(["cat"] * 8, images[:8])]
    with pytest.raises(TypeError, match=r"inputs: a batch is a tuple of \(list, Tensor\) whose "
                       r"first element is no tensor; batches are read as"):  # fmt: skip
        extract_activations(net, strings, ["0"], progress=False)
    one_hot = [(torch.eye(3)[labels[:8]], images[:8])] * 2
    read = r"\(inputs is an iterable: batches are read as tensors or arrays, or as \(inputs, "
    with pytest.raises(RuntimeError, match=r"forward failed .*" + read):
        layerwise_seis(net, one_hot, ["rot90"], progress=False)
    # the right order is read
    right = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=8
    )
    got = extract_activations(net, right, ["0"], progress=False)["0"]
    assert np.allclose(got, net[0](images).detach().numpy(), atol=1e-6)
