"""Every layer read in its own layout (issue 29): replicas of the zoo's layouts here;
the real torchvision, timm and Hugging Face models in tests_zoo/ (make test-zoo)."""

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters._layout import (  # noqa: E402
    LayoutError,
    Reading,
    fits_grid,
    read_layers,
    token_prefix,
)
from seis_sklearn.adapters.torch import extract_activations, layerwise_seis  # noqa: E402

from seis_sklearn import seis_score  # noqa: E402


def test_the_grid_tells_channels_first_from_channels_last():
    grid = (64, 64)
    shapes = {"nchw": (96, 16, 16), "nhwc": (16, 16, 96), "head": (10,), "tokens": (17, 32)}
    readings = read_layers(shapes, grid)
    assert {k: r.layout for k, r in readings.items()} == {
        "nchw": "NCHW", "nhwc": "NHWC", "head": "ND", "tokens": "NLD",
    }  # fmt: skip
    assert readings["nhwc"].choice == "grid: channels last (a 16×16 map)"
    # valid-padding maps (64 → 13) and non-square grids fit at their stride
    assert fits_grid(13, 13, (64, 64)) and fits_grid(8, 16, (32, 64))
    assert not fits_grid(16, 96, (64, 64)) and not fits_grid(8, 8, (32, 64))
    # no image grid (other inputs): 4-D layers keep the default
    assert read_layers({"x": (3, 5, 7)}, None)["x"] == Reading(
        "NCHW", 0, "default for 4-D (no grid recognised)"
    )


def test_tokens_lose_the_prefix_that_leaves_a_grid():
    assert token_prefix(197, (224, 224), None)[0] == 1  # ViT-B/16: a class token
    assert token_prefix(198, (224, 224), 2)[0] == 2  # DeiT: class + distillation
    assert token_prefix(201, (224, 224), None)[0] == 5  # class + 4 registers
    assert token_prefix(196, (224, 224), 1)[0] == 0  # a layer without the class token
    assert token_prefix(10, None, None) is None  # a sequence: no grid to find
    readings = read_layers({"block": (17, 8), "head": (8,)}, (8, 8), tokens="patch")
    assert readings["block"].n_prefix == 1 and readings["head"].n_prefix == 0
    assert read_layers({"block": (17, 8)}, (8, 8), tokens="all")["block"].n_prefix == 0


def test_a_given_layout_applies_where_it_fits():
    shapes = {"stage": (16, 16, 16), "head": (10,)}
    readings = read_layers(shapes, (64, 64), layout="NHWC")  # one layout: 4-D layers only
    assert readings["stage"] == Reading("NHWC", 0, "given")
    assert readings["head"].layout == "ND"
    readings = read_layers(shapes, (64, 64), layout={"stage": "NCHW"})
    assert readings["stage"].layout == "NCHW" and readings["stage"].choice == "given"
    with pytest.raises(LayoutError, match=r"layout\['head'\] = 'NHWC' needs 4-D activations"):
        read_layers(shapes, (64, 64), layout={"head": "NHWC"})  # named: must fit


class ChannelsLast(torch.nn.Module):
    """A conv stage whose output is permuted to (N, H, W, C), as Swin's stages are."""

    def __init__(self, channels, last=True, pool=False):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, channels, 3, padding=1)
        self.stage = torch.nn.Identity()
        self.head = torch.nn.Linear(channels, 5)
        self.last, self.pool = last, pool

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if self.pool:  # every position the same: no axis tells where the change was
            y = y.mean(dim=(2, 3), keepdim=True).expand_as(y).contiguous()
        y = y.permute(0, 2, 3, 1) if self.last else y
        y = self.stage(y)
        pooled = y.mean(dim=(1, 2)) if self.last else y.mean(dim=(2, 3))
        return self.head(pooled)


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(size=(60, 3, 16, 16)).astype(np.float32)


def _flip(b):
    return torch.flip(b, dims=(-1,))


def test_a_channels_last_stage_scores_as_its_nchw_transpose(images):
    """Issue 29: (N, 16, 16, 96) was read as C=16, H=16, W=96 (S_E 0.17 for 0.85)."""
    torch.manual_seed(0)
    model = ChannelsLast(24).eval()
    frame = layerwise_seis(
        model, images, {"hflip": _flip}, layers=["stage", "head"], held_out=None, progress=False
    )
    row = frame.set_index("layer").loc["stage"]
    assert row["layout"] == "NHWC" and row["layout_choice"].startswith("grid: channels last")
    original, flipped = extract_activations(model, images, ["stage"], transform=_flip,
                                            progress=False)["stage"]  # fmt: skip
    want = seis_score(np.moveaxis(original, -1, 1), np.moveaxis(flipped, -1, 1), cv=None)
    assert row["equivariance"] == pytest.approx(want.equivariance, abs=1e-12)
    wrong = seis_score(original, flipped, layout="NCHW", cv=None)  # the NCHW misreading
    assert abs(wrong.equivariance - want.equivariance) > 0.05
    # the streamed (held-out) report reads it the same way
    held = layerwise_seis(model, images, {"hflip": _flip}, layers=["stage"], progress=False)
    assert held["layout"][0] == "NHWC"


@pytest.mark.parametrize("last", [True, False])
def test_the_probe_decides_where_channels_equal_the_map(images, last):
    """16 channels on a 16×16 map: both layouts fit the grid; the probe tells them."""
    torch.manual_seed(0)
    model = ChannelsLast(16, last=last).eval()
    frame = layerwise_seis(
        model, images, {"hflip": _flip}, layers=["stage"], held_out=None, progress=False
    )
    assert frame["layout"][0] == ("NHWC" if last else "NCHW")
    assert frame["layout_choice"][0].startswith("probe: channels " + ("last" if last else "first"))


def test_an_undecidable_layer_stops_the_report_before_the_pass(images):
    torch.manual_seed(0)
    model = ChannelsLast(16, pool=True).eval()
    calls = []
    model.conv.register_forward_hook(lambda *_: calls.append(1))
    with pytest.raises(LayoutError, match=r"layer 'stage': .*layout=\{'stage': 'NCHW'\}"):
        layerwise_seis(model, images, {"hflip": _flip}, layers=["stage"], progress=False)
    assert len(calls) <= 4  # the two-sample probes only
    frame = layerwise_seis(
        model, images, {"hflip": _flip}, layers=["stage"], progress=False,
        layout={"stage": "NHWC"}, held_out=None,
    )  # fmt: skip
    assert frame["layout"][0] == "NHWC" and frame["layout_choice"][0] == "given"


def test_a_layout_string_no_longer_refuses_the_head(images):
    model = ChannelsLast(24).eval()
    frame = layerwise_seis(
        model, images, {"hflip": _flip}, layers=["stage", "head"], held_out=None,
        progress=False, layout="NHWC",
    )  # fmt: skip
    assert frame.set_index("layer")["layout"].to_dict() == {"stage": "NHWC", "head": "ND"}
    with pytest.raises(ValueError, match="layout names 'nope'"):
        layerwise_seis(model, images, {"f": _flip}, layers=["stage"], layout={"nope": "NHWC"})


class ZeroHead(torch.nn.Module):
    """A conv block and a zero-initialised head (timm's Mixer and ResMLP)."""

    def __init__(self):
        super().__init__()
        self.block = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 4)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(torch.relu(self.block(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("held_out", [None, 0.2])
def test_a_layer_without_variance_does_not_stop_the_others(images, held_out):
    with pytest.warns(UserWarning, match="layer 'head' not scored: .*no variance"):
        frame = layerwise_seis(
            ZeroHead().eval(), images, {"hflip": _flip}, layers=["block", "head"],
            held_out=held_out, progress=False, metrics=["cka"],
        )  # fmt: skip
    rows = frame.set_index("layer")
    assert np.isfinite(rows.loc["block", "equivariance"]) and np.isfinite(rows.loc["block", "cka"])
    assert np.isnan(rows.loc["head", ["equivariance", "invariance", "cka"]].astype(float)).all()
    assert rows.loc["head", "degenerate"] and "not scored" in rows.loc["head", "degenerate_reason"]


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(3, 8)
        self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        tokens = self.embed(x.flatten(2).transpose(1, 2))
        return self.attn(tokens, tokens, tokens)[0]


def test_a_layer_whose_forward_never_runs_gets_a_row(images):
    """MultiheadAttention never calls out_proj.forward: asked for, it gets a row that
    says so; the default layers do not propose it."""
    model = Attention().eval()
    with pytest.warns(UserWarning, match="'attn.out_proj' not scored: its forward never ran"):
        frame = layerwise_seis(
            model, images, {"hflip": _flip}, layers=["embed", "attn.out_proj"], held_out=None,
            progress=False,
        )  # fmt: skip
    rows = frame.set_index("layer")
    assert np.isnan(rows.loc["attn.out_proj", "equivariance"])
    assert "never ran" in rows.loc["attn.out_proj", "degenerate_reason"]
    assert np.isfinite(rows.loc["embed", "equivariance"])
    default = layerwise_seis(model, images, {"hflip": _flip}, held_out=None, progress=False)
    assert "attn.out_proj" not in set(default["layer"])


class Folding(torch.nn.Module):
    """A block whose inner layer folds patches into the batch axis (MobileViT)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = torch.nn.Sequential(_FoldBlock(), _FoldBlock())
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class Block(torch.nn.Sequential):
    """Named like timm's transformer blocks, so that the default layers find it."""


class _FoldBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Sequential(
            Block(torch.nn.Linear(8, 8), torch.nn.GELU()), Block(torch.nn.Linear(8, 8))
        )
        self.out = torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        n, c, h, w = x.shape
        folded = x.reshape(n, c, 2, h // 2, 2, w // 2).permute(0, 2, 4, 3, 5, 1)
        folded = self.inner(folded.reshape(n * 4, (h // 2) * (w // 2), c))
        y = folded.reshape(n, 2, 2, h // 2, w // 2, c).permute(0, 5, 1, 3, 2, 4)
        return self.out(y.reshape(n, c, h, w)) + x


def test_default_layers_take_the_block_around_a_folding_layer(images):
    from seis_sklearn.adapters.torch import default_layers

    model = Folding().eval()
    assert "blocks.0.inner.0" in default_layers(model)  # the static rule proposes it: a Block
    frame = layerwise_seis(model, images, {"hflip": _flip}, held_out=None, progress=False)
    assert not frame["layer"].str.contains("inner").any()
    assert {"blocks.0", "blocks.1"} <= set(frame["layer"])
    assert np.isfinite(frame["equivariance"]).all()


def _seis(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "seis_sklearn", *args], capture_output=True, text=True, cwd=cwd
    )


MODEL_FILE = """
import torch
from tests.test_layouts import ChannelsLast, ZeroHead

def channels_last():
    torch.manual_seed(0)
    return ChannelsLast(16)

def zero_head():
    return ZeroHead()
"""


def test_cli_reads_layouts_and_reports_unscored_layers(tmp_path, images):
    """--layout LAYER=NHWC (and recognised layouts otherwise); a layer without variance
    gives a row with the reason, on stderr too, and exit 0."""
    import os
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    (tmp_path / "nets.py").write_text(MODEL_FILE)
    np.save(tmp_path / "x.npy", images[:24])
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{tmp_path}"}

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "seis_sklearn", "report", "--inputs", "x.npy",
             "--transform", "hflip", "--in-sample", "-q", *args],
            capture_output=True, text=True, cwd=tmp_path, env=env,
        )  # fmt: skip

    done = run("--model", "nets.py:channels_last", "--layers", "stage", "--layout",
               "stage=NHWC", "--out", "given")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [
        json.loads(p.read_text()) for p in sorted((tmp_path / "given" / "rows").glob("*.json"))
    ]
    assert rows[0]["layout"] == "NHWC" and rows[0]["layout_choice"] == "given"
    bad = run("--model", "nets.py:channels_last", "--layout", "stage=NHWC", "--layout", "NCHW",
              "--out", "bad")  # fmt: skip
    assert bad.returncode != 0 and "--layout: give one layout for every layer" in bad.stderr
    zero = run("--model", "nets.py:zero_head", "--layers", "block", "--layers", "head",
               "--out", "zero")  # fmt: skip
    assert zero.returncode == 0, zero.stderr
    assert "layer 'head' not scored" in zero.stderr
    report = (tmp_path / "zero" / "report.csv").read_text()
    assert "not scored: " in report


def test_cli_reports_an_exported_program(tmp_path, images):
    """seis report --exported: a torch.export program, its layers named as in the model
    it came from (default layers by their original classes)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
        torch.nn.Flatten(), torch.nn.Linear(8 * 14 * 14, 5),
    ).eval()  # fmt: skip
    x = torch.from_numpy(images[:4])
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "net.pt2")
    fixed = torch.export.export(model, (x,))
    torch.export.save(fixed, tmp_path / "fixed.pt2")
    np.save(tmp_path / "x.npy", images[:24])
    done = _seis("report", "--exported", "net.pt2", "--inputs", "x.npy", "--transform",
                 "hflip", "--in-sample", "-q", "--out", "out", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "out" / "report.csv").read_text()
    for layer in ("\n0,", "\n2,", "\n4,"):  # the Conv2d and Linear modules, by their names
        assert layer in report
    want = layerwise_seis(
        model, images[:24], {"hflip": _flip}, held_out=None, progress=False, batch_size=256
    )
    import pandas as pd

    got = pd.read_csv(tmp_path / "out" / "report.csv")
    assert got["equivariance"].to_numpy() == pytest.approx(
        want["equivariance"].to_numpy(), abs=1e-6
    )
    refused = _seis("report", "--exported", "fixed.pt2", "--inputs", "x.npy", "--transform",
                    "hflip", "-q", "--out", "out2", cwd=tmp_path)  # fmt: skip
    assert refused.returncode != 0 and "fixed batch size of 4" in refused.stderr


def test_saved_pairs_remember_each_layers_layout(tmp_path, images):
    """extract_activations records the layout it was given or recognised in the
    manifest; seis report --pairs reads each layer in it (--layout overrides)."""
    torch.manual_seed(0)
    model = ChannelsLast(24).eval()
    extract_activations(
        model, images[:30], ["conv", "stage", "head"], transform=_flip, out=tmp_path / "p",
        progress=False,
    )  # fmt: skip
    manifest = json.loads((tmp_path / "p" / "pairs.json").read_text())
    layouts = {layer["name"]: layer.get("layout") for layer in manifest["layers"]}
    assert layouts == {"conv": "NCHW", "stage": "NHWC", "head": None}
    done = _seis("report", "--pairs", "p", "--in-sample", "-q", "--out", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    import pandas as pd

    rows = pd.read_csv(tmp_path / "r" / "report.csv").set_index("layer")
    assert rows.loc["stage", "layout"] == "NHWC"
    original, flipped = extract_activations(model, images[:30], ["stage"], transform=_flip,
                                            progress=False)["stage"]  # fmt: skip
    want = seis_score(np.moveaxis(original, -1, 1), np.moveaxis(flipped, -1, 1), cv=None)
    assert rows.loc["stage", "equivariance"] == pytest.approx(want.equivariance, abs=1e-6)
    forced = _seis("report", "--pairs", "p", "--in-sample", "-q", "--out", "f", "--layout",
                   "stage=NCHW", cwd=tmp_path)  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert (
        pd.read_csv(tmp_path / "f" / "report.csv").set_index("layer").loc["stage", "layout"]
        == "NCHW"
    )


class _Images(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = torch.from_numpy(images)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], 0


def test_a_shuffling_loader_pairs_every_sample_with_its_own_original(images):
    """Issue 31: the originals came from one pass over the loader and each transform's
    views from another, which a shuffling loader reorders: the identity scored S_E
    0.57 and S_I 0. Each pass's input batches are compared by digest; a transform whose
    pass read other batches is paired within its own batches."""
    torch.manual_seed(0)
    model = ChannelsLast(24, last=False).eval()
    loader = torch.utils.data.DataLoader(_Images(images), batch_size=16, shuffle=True)
    chosen = {"id": lambda b: b.clone(), "hflip": _flip}
    for held_out in (None, 0.2):
        frame = layerwise_seis(
            model, loader, chosen, layers=["conv", "head"], held_out=held_out, progress=False
        )
        identity = frame[frame["transform"] == "id"]
        assert (identity["equivariance_weighted"] > 1 - 1e-5).all(), identity
        assert (identity["invariance"] > 1 - 1e-3).all(), identity
        # every score clipped to [0, 1] (a held-out identity gave 1.0000000000000002)
        scores = frame[["equivariance", "invariance", "equivariance_weighted",
                        "invariance_weighted"]].to_numpy()  # fmt: skip
        assert ((scores >= 0) & (scores <= 1)).all()


def test_a_transform_works_on_a_copy_and_its_output_is_checked(images):
    """Issue 31: an in-place transform negated the caller's inputs (and the identity's
    views after it); a transform's output is checked, naming the transform."""
    model = ChannelsLast(24, last=False).eval()
    x = torch.from_numpy(images[:32].copy())
    before = x.clone()
    frame = layerwise_seis(
        model, x, {"neg": lambda b: b.neg_(), "id": lambda b: b.clone()}, layers=["conv"],
        held_out=None, progress=False,
    )  # fmt: skip
    assert torch.equal(x, before)
    assert frame.set_index("transform").loc["id", "equivariance_weighted"] > 1 - 1e-5
    doubled = layerwise_seis(model, x, {"f64": lambda b: b.double() * 2}, layers=["conv"],
                             held_out=None, progress=False)  # fmt: skip
    assert np.isfinite(doubled["equivariance"]).all()  # float64 output cast to the batch's
    for transform, error, match in (
        (lambda b: b.numpy(), TypeError, "transform 't' returned ndarray, not a tensor"),
        (lambda b: None, TypeError, "returned NoneType, not a tensor"),
        (lambda b: b[:, :, 1:], ValueError, "changed the batch's shape"),
        (lambda b: b[1:], ValueError, "changed the batch's samples"),
    ):
        with pytest.raises(error, match=match):
            layerwise_seis(model, x, {"t": transform}, layers=["conv"], progress=False)
