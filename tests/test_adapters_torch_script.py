"""TorchScript models (no hooks) and ``seis report`` straight from a model file."""

import csv
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters.torch import (  # noqa: E402
    extract_activations,
    find_layers,
    layerwise_seis,
)
from seis_sklearn.adapters.torch import transforms as TT  # noqa: E402

from seis_sklearn import transforms  # noqa: E402
from seis_sklearn.io import list_pairs  # noqa: E402

SEIS = Path(sys.executable).with_name("seis")
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

MODEL_SOURCE = """
import torch


class Block(torch.nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = torch.nn.Conv2d(width, width, 3, padding=1)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x)) + self.act(x)  # act called twice


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), Block(4), Block(4), torch.nn.Flatten(),
        torch.nn.Linear(4 * 9 * 9, 5),
    )
"""


@pytest.fixture
def netfile(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(MODEL_SOURCE)
    namespace = {}
    exec(compile(MODEL_SOURCE, str(path), "exec"), namespace)  # noqa: S102 - our own source
    return path, namespace["build"]


@pytest.fixture
def inputs(rng):
    return rng.normal(size=(30, 1, 9, 9)).astype(np.float32)


def _compiled(model, how, x):
    if how == "trace":
        return torch.jit.trace(model, torch.from_numpy(x[:2]))
    return torch.jit.script(model)


@pytest.mark.parametrize("how", ["script", "trace"])
def test_script_activations_equal_the_eager_hooks(netfile, inputs, how):
    _, build = netfile
    model = build().eval()
    compiled = _compiled(model, how, inputs)
    layers = ["0", "1.conv", "2", "2.conv", "4"]
    want = extract_activations(model, inputs, layers, progress=False)
    got = extract_activations(compiled, inputs, layers, batch_size=7, progress=False)
    assert list(got) == list(want)  # execution order: a child before its parent
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_script_module_called_twice_gives_numbered_keys(netfile, inputs):
    _, build = netfile
    model = build().eval()
    got = extract_activations(torch.jit.script(model), inputs, ["1.act"], progress=False)
    want = extract_activations(model, inputs, ["1.act"], progress=False)
    assert list(got) == list(want) == ["1.act#1", "1.act#2"]
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6)


def test_callers_script_module_is_left_unchanged(netfile, inputs):
    _, build = netfile
    compiled = torch.jit.script(build().eval())
    graphs = {name: str(m.graph) for name, m in compiled.named_modules() if hasattr(m, "graph")}
    before = compiled(torch.from_numpy(inputs))
    extract_activations(compiled, inputs, ["1.conv", "0"], progress=False)
    after = {name: str(m.graph) for name, m in compiled.named_modules() if hasattr(m, "graph")}
    assert after == graphs
    assert not compiled._c.hasattr("_seis_capture_0_0")
    assert not dict(compiled.named_modules())["1"]._c.hasattr("_seis_capture_conv_0")
    assert torch.equal(compiled(torch.from_numpy(inputs)), before)


def test_script_find_layers_by_class_name_and_layerwise(netfile, inputs):
    _, build = netfile
    model = build().eval()
    compiled = torch.jit.script(model)
    assert find_layers(compiled, types="Conv2d") == find_layers(model, types=torch.nn.Conv2d)
    assert find_layers(model, types="Conv2d") == ["0", "1.conv", "2.conv"]
    assert find_layers(model, types="Module")[:1] == ["0"]  # base-class names match too
    transforms_ = {"rot90": partial(TT.rot90, k=1)}
    eager = layerwise_seis(model, inputs, transforms_, progress=False, n_components=0.9)
    script = layerwise_seis(compiled, inputs, transforms_, progress=False, n_components=0.9)
    # default layers: the blocks (by class name, also in TorchScript) and the head
    assert list(script["layer"]) == list(eager["layer"]) == ["1", "2", "4"]
    assert list(script["module"]) == ["Block", "Block", "Linear"]
    np.testing.assert_allclose(script["equivariance"], eager["equivariance"], atol=1e-5)


def test_script_layer_not_called_from_forward_is_a_clear_error(inputs):
    class Helper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3)

        def run(self, x):
            return self.conv(x)

        def forward(self, x):
            return self.run(x)

    compiled = torch.jit.script(Helper())
    with pytest.raises(ValueError, match=r"layers: 'conv' is not called from its parent's"):
        extract_activations(compiled, inputs, ["conv"], progress=False)


def test_extract_to_folder_writes_a_pairs_manifest(netfile, inputs, tmp_path):
    _, build = netfile
    extract_activations(
        build(),
        inputs,
        ["2.conv", "0"],
        transform=partial(TT.rot90, k=1),
        out=tmp_path,
        progress=False,
    )
    layers, manifest = list_pairs(tmp_path)
    assert [x.name for x in layers] == ["0", "2.conv"]  # execution order, not the given one
    assert [x.module for x in layers] == ["Conv2d", "Conv2d"]
    assert manifest["transform"] == "rot90(k=1)"
    a, b = layers[0].load()
    assert isinstance(a, np.memmap) and a.shape == (30, 4, 9, 9)


def test_torch_from_spec_equals_numpy_from_spec(inputs):
    for spec in ("rot90", "rot90:3", "hflip", "vflip", "shift:2", "shift:1,-2", "rot90+flip"):
        want = transforms.from_spec(spec)(inputs)
        got = TT.from_spec(spec)(torch.from_numpy(inputs)).numpy()
        assert np.array_equal(got, want), spec
    for spec in ("rotate:15", "scale:1.2", "shift:0.5"):
        want = transforms.from_spec(spec)(inputs)
        got = TT.from_spec(spec)(torch.from_numpy(inputs)).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=spec)


def _rows(folder):
    with open(Path(folder) / "report.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _seis(*args, cwd=None):
    return subprocess.run(
        [str(SEIS), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_report_from_torchscript_and_from_model_with_weights(netfile, inputs, tmp_path):
    path, build = netfile
    model = build().eval()
    with torch.no_grad():  # weights that differ from build()'s, to see them loaded
        for p in model.parameters():
            p.mul_(1.5)
    torch.jit.save(torch.jit.script(model), tmp_path / "net.pt")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    np.save(tmp_path / "x.npy", inputs.astype(np.float64))  # cast to the model's float32
    common = ("--inputs", tmp_path / "x.npy", "--transform", "rot90", "--transform", "shift:2")
    common += ("--n-components", "0.9", "-q")
    scripted = _seis(
        "report", "--torchscript", tmp_path / "net.pt", *common, "--out", "a", cwd=tmp_path
    )
    assert scripted.returncode == 0, scripted.stderr
    built = _seis(
        "report",
        "--model",
        f"{path}:build",
        "--weights",
        tmp_path / "weights.pt",
        *common,
        "--out",
        "b",
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stderr
    want = layerwise_seis(
        model,
        inputs,
        {"rot90": TT.from_spec("rot90"), "shift:2": TT.from_spec("shift:2")},
        progress=False,
        n_components=0.9,
    )
    for folder in ("a", "b"):
        rows = _rows(tmp_path / folder)
        assert [(r["transform"], r["layer"]) for r in rows] == list(
            zip(want["transform"], want["layer"], strict=True)
        )
        for row, (_, expected) in zip(rows, want.iterrows(), strict=True):
            assert row["evaluation"] == "held-out"
            assert float(row["equivariance"]) == pytest.approx(expected["equivariance"], abs=2e-6)
            assert float(row["invariance"]) == pytest.approx(expected["invariance"], abs=2e-6)


class _Payload:
    """Pickles to a call of ``os.mkdir`` — what an unsafe loader would execute."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os

        return (os.mkdir, (self.target,))


def test_weights_are_never_unpickled_as_code(netfile, inputs, tmp_path):
    path, _ = netfile
    marker = tmp_path / "pwned"
    torch.save({"weight": _Payload(str(marker))}, tmp_path / "evil.pt")
    np.save(tmp_path / "x.npy", inputs)
    proc = _seis(
        "report",
        "--model",
        f"{path}:build",
        "--weights",
        tmp_path / "evil.pt",
        "--inputs",
        tmp_path / "x.npy",
        "--transform",
        "rot90",
        "--out",
        tmp_path / "o",
    )
    assert proc.returncode == 1 and "weights_only=True" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


def test_model_errors_are_one_line(netfile, inputs, tmp_path):
    path, _ = netfile
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    np.save(tmp_path / "x.npy", inputs)
    cases = [
        (("--torchscript", tmp_path / "junk.pt"), "not a loadable TorchScript model"),
        (("--model", f"{path}:nothing"), "has no function 'nothing'"),
        (("--model", "no_such_module_xyz:build"), "cannot import no_such_module_xyz"),
        (("--model", f"{path}:build", "--layers", "9*"), "--layers '9*' matches no layer"),
    ]
    for source, message in cases:
        proc = _seis(
            "report",
            *source,
            "--inputs",
            tmp_path / "x.npy",
            "--transform",
            "rot90",
            "--out",
            tmp_path / "o",
        )
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "o").exists()
