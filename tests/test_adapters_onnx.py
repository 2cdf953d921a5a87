"""The ONNX adapter against the PyTorch adapter on the same models exported to ONNX."""

import csv
import io
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from seis_sklearn.adapters import onnx as OA  # noqa: E402
from seis_sklearn.adapters import torch as TA  # noqa: E402
from seis_sklearn.adapters.torch import transforms as TT  # noqa: E402
from seis_sklearn.adapters.torch.demo import digits_images, make_cnn  # noqa: E402

from seis_sklearn import SEISScorer, seis_score  # noqa: E402
from seis_sklearn import transforms as T  # noqa: E402
from seis_sklearn.io import list_pairs  # noqa: E402
from tests.tolerance import assert_scores_close, scorer_tolerance  # noqa: E402

SEIS = Path(sys.executable).with_name("seis")

# torch module of the demo CNN → the ONNX tensor holding its output
DEMO_TENSORS = {
    "block1": "/block1/block1.2/Relu_output_0",
    "block2": "/block2/block2.3/MaxPool_output_0",
    "block3": "/block3/block3.3/MaxPool_output_0",
    "block4": "/block4/block4.2/Relu_output_0",
    "head": "logits",
}


class Residual(torch.nn.Module):
    """A stem, a residual block (skip connection) and a linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.stem = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.conv1 = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.head = torch.nn.Linear(6, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.conv2(torch.relu(self.conv1(h))))
        return self.head(h.mean(dim=(2, 3)))


def export(model, example, dynamic=True):
    buffer = io.BytesIO()
    axes = {"images": {0: "batch"}, "out": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (example,),
            buffer,
            dynamo=False,
            input_names=["images"],
            output_names=["out"],
            dynamic_axes=axes,
            opset_version=17,
        )
    return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module")
def images():
    return digits_images()[0][:120]


@pytest.fixture(scope="module")
def cnn():
    model = make_cnn(seed=0).eval()
    return model, export(model, torch.zeros(2, 1, 32, 32))


@pytest.fixture(scope="module")
def residual():
    model = Residual().eval()
    return model, export(model, torch.zeros(2, 1, 9, 9))


def _tensor_of(proto, torch_name):
    """The ONNX tensor named like the torch module's output (demo CNN naming)."""
    return DEMO_TENSORS[torch_name].replace("logits", proto.graph.output[0].name)


def test_list_tensors_names_ops_and_inferred_shapes(cnn):
    _, proto = cnn
    tensors = OA.list_tensors(proto)
    by_name = {t.name: t for t in tensors}
    first = by_name["/block1/block1.0/Conv_output_0"]
    assert first.op_type == "Conv" and first.shape == ("batch", 16, 32, 32)
    assert first.dtype == np.float32
    assert by_name["/block3/block3.3/MaxPool_output_0"].shape == ("batch", 48, 8, 8)
    assert tensors[-1].name == "out" and tensors[-1].op_type == "Gemm"
    # graph order: each tensor is listed after the tensors it is computed from
    order = [t.name for t in tensors]
    assert order.index("/block1/block1.2/Relu_output_0") < order.index(
        "/block2/block2.0/Conv_output_0"
    )


def test_activations_equal_the_torch_adapter(cnn, images):
    model, proto = cnn
    want = TA.extract_activations(model, images, list(DEMO_TENSORS), progress=False)
    names = [_tensor_of(proto, k) for k in DEMO_TENSORS]
    got = OA.extract_activations(proto, images, names, batch_size=32, progress=False)
    assert list(got) == names
    for key, name in zip(DEMO_TENSORS, names, strict=True):
        scale = np.abs(want[key]).max()
        assert np.abs(got[name] - want[key]).max() <= 1e-4 * scale, key


def test_residual_model_scores_equal_torch(residual, rng):
    model, proto = residual
    x = rng.normal(size=(80, 1, 9, 9)).astype(np.float32)
    conv = [t.name for t in OA.list_tensors(proto) if t.op_type == "Conv"]
    assert len(conv) == 3
    adds = OA.find_tensors(proto, op_types="Add")
    assert adds  # the skip connection
    rot = partial(T.rot90, k=1)
    got = OA.extract_activations(proto, x, conv, transform=rot, progress=False)
    want = TA.extract_activations(
        model, x, ["stem", "conv1", "conv2"], transform=partial(TT.rot90, k=1), progress=False
    )
    for name, key in zip(conv, ["stem", "conv1", "conv2"], strict=True):
        for view in (0, 1):
            np.testing.assert_allclose(got[name][view], want[key][view], rtol=1e-4, atol=1e-5)
        a = seis_score(*(v.astype(np.float64) for v in got[name]))
        b = seis_score(*(v.astype(np.float64) for v in want[key]))
        for score in ("equivariance", "invariance"):
            assert abs(getattr(a, score) - getattr(b, score)) < 1e-5


def test_layerwise_report_equals_torch_within_1e5(cnn, images):
    model, proto = cnn
    names = [_tensor_of(proto, k) for k in DEMO_TENSORS]
    onnx_frame = OA.layerwise_seis(
        proto, images, {"rot90": partial(T.rot90, k=1)}, layers=names, progress=False
    )
    torch_frame = TA.layerwise_seis(
        model,
        images,
        {"rot90": partial(TT.rot90, k=1)},
        layers=list(DEMO_TENSORS),
        progress=False,
    )
    assert list(onnx_frame["layer"]) == names
    assert list(onnx_frame["module"]) == ["Relu", "MaxPool", "MaxPool", "Relu", "Gemm"]
    for score in ("equivariance", "invariance", "equivariance_weighted"):
        np.testing.assert_allclose(onnx_frame[score], torch_frame[score], atol=1e-5)


def test_transforms_share_the_original_run(cnn, images, monkeypatch):
    """As in the torch adapter: T transforms cost T + 1 session runs per batch (not
    2T), streamed or stored, with the same table as one transform at a time."""
    _, proto = cnn
    chosen = {"rot90": partial(T.rot90, k=1), "flip": T.hflip, "vflip": T.vflip}
    kwargs = dict(layers=[_tensor_of(proto, k) for k in ("block2", "head")], batch_size=40,
                  progress=False)  # fmt: skip
    sizes = []
    real_run = OA._Runner.run

    def counted(self, feeds, on_device=False):
        sizes.append(next(iter(feeds.values())).shape[0])
        return real_run(self, feeds, on_device=on_device)

    monkeypatch.setattr(OA._Runner, "run", counted)
    for held_out in (0.2, None):
        sizes.clear()
        alone = OA.layerwise_seis(proto, images, chosen, held_out=held_out,
                                  transforms_per_pass=1, **kwargs)  # fmt: skip
        runs_alone = sizes.count(40)
        sizes.clear()
        shared = OA.layerwise_seis(proto, images, chosen, held_out=held_out, **kwargs)
        # 3 batches; stored: the original activations once, whatever transforms_per_pass
        expected = (3 * 6, 3 * 4) if held_out else (3 * 4, 3 * 4)
        assert (runs_alone, sizes.count(40)) == expected
        assert shared.equals(alone)
    with pytest.raises(ValueError, match="transforms_per_pass must be 'auto' or an int >= 1"):
        OA.layerwise_seis(proto, images, chosen, transforms_per_pass=0, **kwargs)


def test_op_type_and_glob_selection(cnn):
    _, proto = cnn
    chosen = OA.find_tensors(proto, op_types=["Conv", "Relu"])
    assert len(chosen) == 8
    assert [n.rsplit("/", 1)[1].split("_")[0] for n in chosen] == ["Conv", "Relu"] * 4
    # '*' stays within one '/'-separated part of a name, '**' crosses parts (issue 38)
    block2 = [
        "/block2/block2.0/Conv_output_0",
        "/block2/block2.2/Relu_output_0",
        "/block2/block2.3/MaxPool_output_0",
    ]
    assert OA.find_tensors(proto, pattern="/block2/**") == block2
    assert OA.find_tensors(proto, pattern="/block2/*/*") == block2
    assert OA.find_tensors(proto, pattern="/block*/*/Relu_output_0")[:2] == [
        "/block1/block1.2/Relu_output_0", block2[1],
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no tensor of the model matches"):
        OA.find_tensors(proto, pattern="/block2/*")
    # layers= and the command line take the same rule, and say what '**' would match
    assert OA.extract_activations(
        proto, np.zeros((2, 1, 32, 32), np.float32), layers="/block2/**", progress=False
    ).keys() == set(block2)
    with pytest.raises(ValueError, match=r"layers '/block2/\*' matches no tensor of the model "
                       r"\('\*' stays within one '/'-separated part.*would cross parts and "
                       r"match 3"):  # fmt: skip
        OA.extract_activations(proto, np.zeros((2, 1, 32, 32), np.float32), layers="/block2/*",
                               progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"op_types: the model has no 'Softmax' node \(it has"):
        OA.find_tensors(proto, op_types="Softmax")


def test_fixed_batch_of_one_is_looped(residual, rng):
    model, _ = residual
    fixed = export(model, torch.zeros(1, 1, 9, 9), dynamic=False)
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    x = rng.normal(size=(7, 1, 9, 9)).astype(np.float32)
    got = OA.extract_activations(fixed, x, ["out"], batch_size=4, progress=False)["out"]
    want = model(torch.from_numpy(x)).detach().numpy()
    assert got.shape == (7, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fixed_batch_larger_than_one_pads_the_last_batch(residual, rng):
    model, _ = residual
    fixed = export(model, torch.zeros(3, 1, 9, 9), dynamic=False)
    x = rng.normal(size=(7, 1, 9, 9)).astype(np.float32)
    got = OA.extract_activations(fixed, x, ["out"], progress=False)["out"]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_callers_model_proto_and_file_are_unchanged(cnn, images, tmp_path):
    _, proto = cnn
    before = proto.SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(before)
    OA.extract_activations(proto, images[:8], ["/block1/**"], progress=False)
    OA.extract_activations(path, images[:8], op_types="Relu", progress=False)
    OA.extract_activations(before, images[:8], op_types="Conv", progress=False)
    assert proto.SerializeToString() == before
    assert path.read_bytes() == before
    assert len(proto.graph.output) == 1


def test_pair_mode_memory_maps_and_manifest(cnn, images, tmp_path):
    _, proto = cnn
    names = [DEMO_TENSORS["block1"], DEMO_TENSORS["block2"]]
    pairs = OA.extract_activations(
        proto, images, names, transform=partial(T.rot90, k=1), out=tmp_path, progress=False
    )
    layers, manifest = list_pairs(tmp_path)
    assert [x.name for x in layers] == names
    assert [x.module for x in layers] == ["Relu", "MaxPool"]
    assert manifest["transform"] == "rot90(k=1)"
    original, rotated = layers[1].load()
    assert isinstance(original, np.memmap)
    assert np.array_equal(original, pairs[names[1]][0])
    assert np.array_equal(rotated, pairs[names[1]][1])


def test_streaming_equals_fitting_on_kept_and_scoring_held_out(cnn, images):
    _, proto = cnn
    name = DEMO_TENSORS["block3"]
    rot = partial(T.rot90, k=1)
    results = OA.stream_scores(
        proto,
        images,
        [name],
        rot,
        held_out=0.25,
        batch_size=25,
        progress=False,
        n_components=0.95,
    )
    A, B = OA.extract_activations(
        proto, images, [name], transform=rot, dtype=np.float64, progress=False
    )[name]
    test = np.arange(len(images)) % 4 == 0
    scorer = SEISScorer(n_components=0.95, solver="moments").fit(A[~test], B[~test])
    want = scorer.scores(A[test], B[test])
    # the graph's float32 outputs stream as float32 products summed in float64
    tol = scorer_tolerance(scorer, dtype=np.float32, held_out=True)
    assert results[name].equivariance == pytest.approx(want.equivariance, abs=tol)
    assert results[name].invariance == pytest.approx(want.invariance, abs=tol)
    exact = OA.stream_scores(
        proto, images, [name], rot, held_out=0.25, batch_size=25, progress=False,
        n_components=0.95, dtype=np.float64,
    )[name]  # fmt: skip
    assert_scores_close(exact, want, scorer_tolerance(scorer, held_out=True), correlations=False)


def test_errors_name_the_problem(cnn, images, rng):
    _, proto = cnn
    with pytest.raises(ValueError, match=r"no tensor named '/block1/Relu'; did you mean"):
        OA.extract_activations(proto, images, ["/block1/Relu"], progress=False)
    with pytest.raises(
        ValueError, match=r"graph input 'images' expects shape \(batch, 1, 32, 32\)"
    ):
        OA.extract_activations(proto, images[:, :, :28, :28], ["out"], progress=False)
    with pytest.raises(ValueError, match=r"graph input 'images' expects float32 .* got int64"):
        OA.extract_activations(proto, images.astype(np.int64), ["out"], progress=False)
    with pytest.raises(ValueError, match=r"model: cannot be read as an ONNX model"):
        OA.extract_activations(b"not a model", images, ["out"], progress=False)
    broken = onnx.ModelProto()
    broken.CopyFrom(proto)
    broken.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(ValueError, match=r"^model: onnxruntime cannot load it \(") as info:
        OA.extract_activations(broken, images, ["out"], progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="name the tensors to record"):
        OA.extract_activations(proto, images, progress=False)
    # float64 inputs are cast to the graph's float32, batch by batch
    got = OA.extract_activations(proto, images[:4].astype(np.float64), ["out"], progress=False)
    want = OA.extract_activations(proto, images[:4], ["out"], progress=False)
    assert np.array_equal(got["out"], want["out"])


def test_cli_report_from_onnx_equals_the_api(cnn, images, tmp_path):
    _, proto = cnn
    (tmp_path / "cnn.onnx").write_bytes(proto.SerializeToString())
    np.save(tmp_path / "x.npy", images)
    proc = subprocess.run(
        [
            str(SEIS), "report", "--onnx", str(tmp_path / "cnn.onnx"),
            "--inputs", str(tmp_path / "x.npy"), "--transform", "rot90", "--transform", "hflip",
            "--op-type", "MaxPool", "--layers", "out", "--out", str(tmp_path / "r"), "-q",
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "r" / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    want = OA.layerwise_seis(
        proto,
        images,
        {"hflip": T.from_spec("hflip"), "rot90": T.from_spec("rot90")},
        layers=["out"],
        op_types=["MaxPool"],
        progress=False,
    )
    assert [(r["transform"], r["layer"], r["module"]) for r in rows] == list(
        zip(want["transform"], want["layer"], want["module"], strict=True)
    )
    for row, (_, expected) in zip(rows, want.iterrows(), strict=True):
        assert float(row["equivariance"]) == pytest.approx(expected["equivariance"], abs=1e-6)
        assert float(row["invariance"]) == pytest.approx(expected["invariance"], abs=1e-6)


def test_bound_outputs_equal_the_session_outputs(cnn, images, monkeypatch):
    """The I/O binding path (what a CUDA session streams through, outputs left on the
    device) bound to the CPU here: the same tensors as ``session.run``, in the same
    order, and the streamed report of a layerwise run identical to the host path."""
    _, proto = cnn
    runner = OA._Runner(proto, [DEMO_TENSORS["block1"], DEMO_TENSORS["block4"]], None, None)
    assert runner.output_device is None  # no CUDA provider: outputs come as numpy arrays
    feeds = {runner.inputs[0].name: images[:9]}
    host = runner.run(feeds, on_device=True)
    runner.output_device = "cpu"
    bound = runner.run(feeds, on_device=True)
    assert list(bound) == list(host) == runner.names
    for name in runner.names:
        assert isinstance(bound[name], np.ndarray)
        assert np.array_equal(bound[name], host[name])

    transforms = {"rot90": partial(T.rot90, k=1)}
    kwargs = dict(batch_size=40, progress=False, metrics=["cka"])
    want = OA.layerwise_seis(proto, images, transforms, **kwargs)
    calls = []
    real_run = OA._Runner.run

    def bound_run(self, feeds, on_device=False):
        calls.append((len(next(iter(feeds.values()))), on_device))
        self.output_device = "cpu"
        return real_run(self, feeds, on_device=on_device)

    monkeypatch.setattr(OA._Runner, "run", bound_run)
    got = OA.layerwise_seis(proto, images, transforms, **kwargs)
    # the streamed report asks for outputs on the device; only the probe of two samples
    # that reads every layer's layout before the pass takes them on the host
    report = [device for rows, device in calls if rows != 2]
    assert report and all(report)
    assert all(not device for rows, device in calls if rows == 2)
    columns = ["layer", "equivariance", "invariance", "cka", "n_components"]
    assert got[columns].equals(want[columns])


def test_device_buffer_describes_the_output_it_holds():
    """What torch reads through ``__cuda_array_interface__`` to wrap a CUDA output without
    a copy: shape, dtype and address of the OrtValue, which the buffer keeps alive."""
    import onnxruntime as ort

    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    value = ort.OrtValue.ortvalue_from_numpy(array)
    buffer = OA._DeviceBuffer(value)
    interface = buffer.__cuda_array_interface__
    assert interface["shape"] == (2, 3, 4) and interface["typestr"] == "<f4"
    assert interface["data"] == (value.data_ptr(), False) and interface["version"] == 2
    assert buffer.value is value
    assert np.array_equal(OA._from_ort(value), array)  # a CPU value comes back as numpy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_outputs_stay_on_the_device(cnn, images):  # pragma: no cover - GPU machines
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA provider")
    _, proto = cnn
    runner = OA._Runner(proto, [DEMO_TENSORS["block2"]], None, None)
    assert runner.output_device == "cuda"
    feeds = {runner.inputs[0].name: images[:16]}
    bound = runner.run(feeds, on_device=True)[DEMO_TENSORS["block2"]]
    assert isinstance(bound, torch.Tensor) and bound.is_cuda
    host = runner.run(feeds)[DEMO_TENSORS["block2"]]
    np.testing.assert_allclose(bound.cpu().numpy(), host, rtol=0, atol=0)
    transforms = {"rot90": partial(T.rot90, k=1)}
    on_gpu = OA.layerwise_seis(proto, images, transforms, batch_size=40, progress=False)
    on_cpu = OA.layerwise_seis(
        proto, images, transforms, batch_size=40, progress=False,
        providers=["CPUExecutionProvider"],
    )  # fmt: skip
    assert np.allclose(on_gpu["equivariance"], on_cpu["equivariance"], atol=1e-4)


def test_complex_inputs_and_bad_transforms_are_named(cnn, images):
    """Issue 31: complex inputs, and a transform that returns no array, name their cause."""
    _, proto = cnn
    with pytest.raises(TypeError, match="inputs: .* holds complex128 values"):
        OA.layerwise_seis(proto, images.astype(np.complex128), {"r": T.rot90}, progress=False)
    with pytest.raises(TypeError, match="returned NoneType, not a real-valued array"):
        OA.layerwise_seis(proto, images, {"none": lambda b: None}, progress=False)
    before = images.copy()
    OA.layerwise_seis(proto, images, {"neg": lambda b: np.negative(b, out=b)}, progress=False)
    assert np.array_equal(images, before)  # the transform worked on a copy


def test_transforms_as_text_specs(residual, rng):
    """Issue 38 (4): the ONNX adapter takes the command line's transform specs as the
    torch one does — a list of specs, each its own name, the numpy transform of the
    spec — and gives the numbers of the callables."""
    _, proto = residual
    x = rng.normal(size=(40, 1, 9, 9)).astype(np.float32)
    kwargs = dict(layers=["out"], progress=False, batch_size=16)
    specs = OA.layerwise_seis(proto, x, ["rot90", "hflip+shift:1"], **kwargs)
    given = OA.layerwise_seis(
        proto, x, {"rot90": partial(T.rot90, k=1),
                   "hflip+shift:1": T.compose(T.hflip, partial(T.translate, shift=1))},
        **kwargs,
    )  # fmt: skip
    assert sorted(specs["transform"]) == ["hflip+shift:1", "rot90"]
    assert specs.equals(given)
    pairs = OA.extract_activations(proto, x, ["out"], transform="vflip", progress=False)
    want = OA.extract_activations(proto, x, ["out"], transform=T.vflip, progress=False)
    assert np.array_equal(pairs["out"][1], want["out"][1])
    with pytest.raises(ValueError, match=r"transform: transform 'vflop': unknown step"):
        OA.extract_activations(proto, x, ["out"], transform="vflop", progress=False)
    with pytest.raises(TypeError, match=r"transforms: a list holds transform specs"):
        OA.layerwise_seis(proto, x, [T.hflip], **kwargs)


def test_the_onnx_extra_exports_with_torchs_default_exporter(residual):
    """Issue 38 (3): torch.onnx.export's default (dynamo) exporter imports onnxscript and
    onnx_ir, which the onnx extra installs; what it writes is read like the rest."""
    model, _ = residual
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, 1, 9, 9),), buffer, verbose=False)
    proto = onnx.load_from_string(buffer.getvalue())
    x = np.random.default_rng(0).normal(size=(2, 1, 9, 9)).astype(np.float32)
    out = proto.graph.output[0].name
    pairs = OA.extract_activations(proto, x, [out], progress=False)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(pairs[out], want, rtol=1e-5, atol=1e-5)
