"""Pull intermediate activations out of ONNX models with onnxruntime.

Importable as ``seis_sklearn.adapters.onnx`` (the source lives in the top-level
``adapters/`` folder). Needs the ``onnx`` extra: ``pip install 'seis-sklearn[onnx]'``
(``onnxruntime-gpu`` instead of ``onnxruntime`` for CUDA).

The chosen intermediate tensors are exposed as extra graph outputs of a *copy*
of the model (the caller's file, bytes or ``ModelProto`` are never modified) and
the copy runs in an onnxruntime session — on ``CUDAExecutionProvider`` when it is
available, else on the CPU — batch by batch. The functions mirror
:mod:`seis_sklearn.adapters.torch`: the same return types, pair mode
(``transform=``), memory-mapped output (``out=``), held-out streaming into
:class:`~seis_sklearn.SEISScorer` and the layerwise report.

>>> import numpy as np, onnx
>>> from onnx import helper, TensorProto
>>> from seis_sklearn.adapters.onnx import extract_activations, list_tensors
>>> graph = helper.make_graph(
...     [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"])],
...     "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
>>> model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
>>> [(t.name, t.op_type, t.shape) for t in list_tensors(model)]
[('r', 'Relu', ('n', 3)), ('y', 'Neg', ('n', 3))]
>>> x = np.array([[-1.0, 0.5, 2.0], [3.0, -4.0, 0.0]], dtype=np.float32)
>>> extract_activations(model, x, ["r"], progress=False)["r"]
array([[0. , 0.5, 2. ],
       [3. , 0. , 0. ]], dtype=float32)
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from seis_sklearn._validation import first_line
from seis_sklearn.metrics import check_report_metrics

from .._common import (
    batch_items,
    batch_views,
    check_finite_batch,
    check_finite_inputs,
    check_stream_args,
    check_tokens,
    check_transforms_per_pass,
    collect,
    describe,
    probe_readings,
    progress_bar,
    report_rows,
    stream,
    within_budget,
)
from .._layout import check_layout_argument
from .._names import as_transform, as_transforms, glob_regex, match_names

__all__ = [
    "DEFAULT_OP_TYPES",
    "TensorInfo",
    "default_providers",
    "extract_activations",
    "find_tensors",
    "layerwise_seis",
    "list_tensors",
    "load_model",
    "stream_scores",
]

DEFAULT_OP_TYPES = ("Conv", "Gemm", "MatMul")


def _import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "seis_sklearn.adapters.onnx needs onnx and onnxruntime: "
            "pip install 'seis-sklearn[onnx]' (or onnxruntime-gpu for CUDA)"
        ) from None
    return onnx, onnxruntime


class TensorInfo(NamedTuple):
    """An intermediate tensor of an ONNX graph.

    Attributes
    ----------
    name : str
        The tensor's name in the graph.
    op_type : str
        Type of the node that produces it (``"Conv"``, ``"Relu"``, …).
    shape : tuple or None
        Dimensions where shape inference knows them: an int, the name of a
        symbolic dimension (``"batch"``), or ``None``; ``None`` when the rank is
        unknown.
    dtype : numpy.dtype or None
        Element type, where known.
    """

    name: str
    op_type: str
    shape: tuple | None
    dtype: np.dtype | None


def load_model(model):
    """An independent copy of an ONNX model as an ``onnx.ModelProto``.

    Parameters
    ----------
    model : str, path-like, bytes or onnx.ModelProto
        A file, its serialized bytes, or a model object (copied, never changed).

    Returns
    -------
    onnx.ModelProto
    """
    onnx, _ = _import_onnx()
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    try:
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(model))
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.is_file():
                raise ValueError(f"model: no such file {path}")
            return onnx.load(str(path))
    except ValueError:
        raise
    except Exception as exc:  # protobuf raises its own DecodeError, and others
        raise ValueError(f"model: cannot be read as an ONNX model ({first_line(exc)})") from None
    raise TypeError(
        f"model must be a path, bytes or an onnx.ModelProto; got {type(model).__name__}"
    )


def _dtype(elem_type):
    onnx, _ = _import_onnx()
    if not elem_type:
        return None
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):  # pragma: no cover - exotic element types
        return None


def _shape(value_type):
    tensor = value_type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim
    )


def _inferred(model):
    """Shape-inferred copy of ``model`` (the original when inference fails)."""
    onnx, _ = _import_onnx()
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # pragma: no cover - models with custom ops inference cannot read
        return model


def list_tensors(model):
    """The intermediate tensors that can be recorded, in graph order.

    Parameters
    ----------
    model : str, path-like, bytes or onnx.ModelProto

    Returns
    -------
    list of TensorInfo
        Every node output (the graph's own outputs included), with the producing
        op type, and shape and dtype where ``onnx.shape_inference`` knows them.
    """
    return _tensors_of(_inferred(load_model(model)))


def _tensors_of(inferred):
    """The node outputs of a shape-inferred model (see :func:`list_tensors`)."""
    graph = inferred.graph
    types = {v.name: v.type for v in (*graph.value_info, *graph.output, *graph.input)}
    tensors = []
    for node in graph.node:
        for name in node.output:
            if not name:
                continue
            kind = types.get(name)
            tensors.append(
                TensorInfo(
                    name,
                    node.op_type,
                    _shape(kind) if kind is not None else None,
                    _dtype(kind.tensor_type.elem_type) if kind is not None else None,
                )
            )
    return tensors


def find_tensors(model, *, op_types=None, pattern=None):
    """Names of intermediate tensors by producing op type and/or name glob.

    Parameters
    ----------
    model : str, path-like, bytes or onnx.ModelProto
    op_types : str or sequence of str, optional
        Keep outputs of nodes of these types (e.g. ``("Conv", "Relu")``).
    pattern : str, optional
        Keep tensors whose name matches this glob: ``*`` within one ``/``-separated
        part of the name, ``**`` across parts (``"/block1/*"``: the tensors directly
        under ``/block1``; ``"/block1/**"``: every tensor inside it) — the rule of
        ``layers=`` and of the command line's ``--layers``
        (:mod:`seis_sklearn.adapters._names`).

    Returns
    -------
    list of str
        In graph order.
    """
    tensors = list_tensors(model)
    return _select(tensors, None, op_types, pattern)


def _select(tensors, layers, op_types, pattern=None, argument="layers"):
    names = [t.name for t in tensors]
    if isinstance(op_types, str):
        op_types = [op_types]
    if op_types is not None:
        op_types = list(op_types)
        present = sorted({t.op_type for t in tensors})
        missing = [o for o in op_types if o not in present]
        if missing:
            raise ValueError(
                f"op_types: the model has no {missing[0]!r} node (it has {', '.join(present)})"
            )
    chosen = set()
    if layers is not None:
        chosen.update(match_names(names, layers, argument=argument, what="tensor",
                                  where="the model", separator="/"))  # fmt: skip
    regex = glob_regex(pattern, "/") if pattern is not None else None
    for t in tensors:
        if op_types is not None and t.op_type in op_types:
            chosen.add(t.name)
        if regex is not None and (t.name == pattern or regex.fullmatch(t.name)):
            chosen.add(t.name)
    if layers is None and op_types is None and pattern is None:
        raise ValueError("name the tensors to record: layers= (names or globs) or op_types=")
    ordered = [n for n in names if n in chosen]
    if not ordered:
        raise ValueError("no tensor of the model matches the selection")
    return ordered


def default_providers():
    """``["CUDAExecutionProvider", "CPUExecutionProvider"]`` when CUDA is available,
    else ``["CPUExecutionProvider"]``."""
    _, ort = _import_onnx()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class _Runner:
    """An onnxruntime session over a copy of the model with extra outputs."""

    def __init__(self, model, layers, op_types, providers, default_op_types=None):
        onnx, ort = _import_onnx()
        proto = load_model(model)
        inferred = _inferred(proto)
        tensors = _tensors_of(inferred)
        if layers is None and op_types is None and default_op_types is not None:
            present = {t.op_type for t in tensors}
            op_types = [o for o in default_op_types if o in present]
            if not op_types:
                raise ValueError(
                    "layers: the model has no Conv, Gemm or MatMul node; name tensors"
                )
        self.names = _select(tensors, layers, op_types)
        self.op_type = {t.name: t.op_type for t in tensors}
        known = {v.name: v for v in inferred.graph.value_info}
        outputs = {o.name for o in proto.graph.output}
        for name in self.names:
            if name in outputs:
                continue
            info = known.get(name)
            if info is None:
                info = onnx.helper.make_empty_tensor_value_info(name)
            proto.graph.output.append(info)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                proto.SerializeToString(),
                sess_options=options,
                providers=list(providers) if providers is not None else default_providers(),
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"model: onnxruntime cannot load it ({first_line(exc)})") from None
        initializers = {i.name for i in proto.graph.initializer}
        self.inputs = [i for i in self.session.get_inputs() if i.name not in initializers]
        self.output_index = {o.name: i for i, o in enumerate(self.session.get_outputs())}
        self.output_device, self.device_id = _output_device(self.session)

    def run(self, feeds, on_device=False):
        """The recorded tensors of one batch: numpy arrays, or with ``on_device`` and a
        session on CUDA, tensors left where onnxruntime computed them (I/O binding)."""
        if not on_device or self.output_device is None:
            values = self.session.run([*self.output_index], feeds)
            return {name: values[self.output_index[name]] for name in self.names}
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.names:
            binding.bind_output(name, self.output_device, self.device_id)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()  # in the order bound
        return {name: _from_ort(value) for name, value in zip(self.names, values, strict=True)}

    def check(self, feeds):
        """Validate the arrays fed to the graph inputs; return the batch size rule."""
        fixed = set()
        for spec in self.inputs:
            array = feeds[spec.name]
            want = _input_dtype(spec)
            if want is not None and array.dtype != want:
                both_float = array.dtype.kind == "f" and want.kind == "f"
                if not both_float:
                    raise ValueError(
                        f"inputs: graph input {spec.name!r} expects {want} of shape "
                        f"{_shape_text(spec.shape)}; got {array.dtype} of shape {array.shape}"
                    )
            shape = spec.shape
            if len(shape) != array.ndim or any(
                isinstance(d, int) and d != a
                for d, a in zip(shape[1:], array.shape[1:], strict=False)
            ):
                raise ValueError(
                    f"inputs: graph input {spec.name!r} expects shape {_shape_text(shape)} "
                    f"({want}); got {array.shape}"
                )
            if shape and isinstance(shape[0], int):
                fixed.add(shape[0])
        if len(fixed) > 1:  # pragma: no cover - inconsistent models
            raise ValueError(f"the graph inputs fix different batch sizes: {sorted(fixed)}")
        return fixed.pop() if fixed else None


def _output_device(session):
    """``("cuda", device id)`` where streamed outputs may stay: a session running on
    the CUDA provider, with torch (which the moments are then computed with) seeing
    CUDA; else ``(None, 0)``: outputs come to the host as numpy arrays."""
    if "CUDAExecutionProvider" not in session.get_providers():
        return None, 0
    try:
        import torch
    except ImportError:
        return None, 0
    if not torch.cuda.is_available():  # pragma: no cover - onnxruntime-gpu without torch CUDA
        return None, 0
    options = session.get_provider_options().get("CUDAExecutionProvider", {})
    return "cuda", int(options.get("device_id", 0))


class _DeviceBuffer:
    """An onnxruntime output on a CUDA device seen through ``__cuda_array_interface__``,
    so that torch wraps it without a copy; holding the OrtValue keeps its memory."""

    def __init__(self, value):
        self.value = value
        self.__cuda_array_interface__ = {
            "shape": tuple(value.shape()),
            "typestr": np.dtype(_ORT_DTYPES[value.data_type()]).str,
            "data": (value.data_ptr(), False),
            "strides": None,
            "version": 2,
        }


def _from_ort(value):
    """A bound output: a torch tensor on its CUDA device (no copy), or a numpy array."""
    if value.device_name().lower() == "cpu":
        return value.numpy()
    import torch

    return torch.as_tensor(_DeviceBuffer(value))  # the device of the pointer


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def _input_dtype(spec):
    kind = _ORT_DTYPES.get(spec.type)
    return None if kind is None else np.dtype(kind)


def _shape_text(shape):
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _feeds(runner, inputs):
    if isinstance(inputs, dict):
        feeds = {k: v for k, v in inputs.items()}
    else:
        if len(runner.inputs) != 1:
            names = ", ".join(repr(i.name) for i in runner.inputs)
            raise ValueError(
                f"inputs: the model takes {len(runner.inputs)} inputs ({names}); "
                "pass a dict of name → array"
            )
        feeds = {runner.inputs[0].name: inputs}
    expected = {i.name for i in runner.inputs}
    if set(feeds) != expected:
        raise ValueError(f"inputs: expected arrays for {sorted(expected)}; got {sorted(feeds)}")
    for name, value in feeds.items():
        if not isinstance(value, np.ndarray):
            feeds[name] = np.asarray(value)
        if feeds[name].dtype.kind not in "biuf":
            raise TypeError(
                f"inputs: {name!r} holds {feeds[name].dtype} values; the model takes real "
                "numbers (complex and object arrays are refused)"
            )
    sizes = {v.shape[0] if v.ndim else 0 for v in feeds.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError("inputs: every input needs the same number of samples, samples first")
    return feeds, sizes.pop()


def _forward_batches(
    model, inputs, layers, op_types, transform, batch_size, providers, progress, on_device=False
):
    """Batch generator (see :mod:`seis_sklearn.adapters._common`) over an ONNX session;
    ``on_device``: outputs may stay on the session's CUDA device (:meth:`_Runner.run`)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    views = batch_views(transform)
    # a prepared session (layerwise_seis reuses one across transforms)
    runner = model if isinstance(model, _Runner) else _Runner(model, layers, op_types, providers)
    feeds, n_total = _feeds(runner, inputs)
    fixed = runner.check(feeds)
    step = fixed if fixed is not None else batch_size
    yield runner, n_total
    wanted = {spec.name: _input_dtype(spec) for spec in runner.inputs}

    def record(function):  # the current batch, transformed by function
        fed = batch
        if function is not None:
            # a copy: a transform may work in place; the other views must not see it
            fed = {k: function(v.copy()) for k, v in batch.items()}
            for k, v in fed.items():
                if not isinstance(v, np.ndarray) or v.dtype.kind not in "biuf":
                    raise TypeError(
                        f"transform {describe(function) or 'transform'!r} returned "
                        f"{type(v).__name__}, not a real-valued array, for input {k!r}"
                    )
                if v.shape != batch[k].shape:
                    raise ValueError(
                        f"transform changed the shape of input {k!r}: {batch[k].shape} → {v.shape}"
                    )
        fed = {
            k: v if wanted[k] is None else v.astype(wanted[k], copy=False) for k, v in fed.items()
        }
        if stop - start < step and fixed is not None:  # pad a fixed-size last batch
            fed = {k: _pad(v, step) for k, v in fed.items()}
        recorded = {k: v[: stop - start] for k, v in runner.run(fed, on_device=on_device).items()}
        for key, array in recorded.items():
            if array.ndim == 0 or array.shape[0] != stop - start:
                raise ValueError(
                    f"tensor {key!r} does not keep samples first (shape "
                    f"{array.shape} for a batch of {stop - start})"
                )
        return recorded

    bar = progress_bar(n_total, progress)
    try:
        for start in range(0, n_total, step):
            stop = min(start + step, n_total)
            batch = {k: np.array(v[start:stop], order="C") for k, v in feeds.items()}
            for k, v in batch.items():  # what a check of the whole inputs has not seen
                check_finite_batch(v, start // step, start, name=_input_name(inputs, k))
            yield from batch_items((start, stop), views, record)
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()


def _input_name(inputs, key):
    return f"inputs[{key!r}]" if isinstance(inputs, dict) else "inputs"


def _pad(array, size):
    pad = np.zeros((size - array.shape[0],) + array.shape[1:], dtype=array.dtype)
    return np.concatenate([array, pad])


def _started(
    model, inputs, layers, op_types, transform, batch_size, providers, progress, on_device=False
):
    """The batch generator, primed: (generator yielding n_total next, runner)."""
    batches = _forward_batches(
        model, inputs, layers, op_types, transform, batch_size, providers, progress,
        on_device=on_device,
    )  # fmt: skip
    runner, n_total = next(batches)

    def restarted():
        yield n_total
        yield from batches

    return restarted(), runner


def extract_activations(
    model,
    inputs,
    layers=None,
    *,
    op_types=None,
    transform=None,
    batch_size=256,
    providers=None,
    out=None,
    dtype=np.float32,
    progress=True,
):
    """Record intermediate tensors of an ONNX model.

    Parameters
    ----------
    model : str, path-like, bytes or onnx.ModelProto
        Never modified: the extra outputs go into a copy.
    inputs : ndarray or dict of str → ndarray
        Samples first (a memory map is read one batch at a time); a dict for a
        model with several inputs. Floating-point arrays are cast to the graph
        input's float type batch by batch; other dtype or shape mismatches are
        errors naming the graph input and what it expects.
    layers : str or sequence of str, optional
        Tensor names or globs (:func:`list_tensors` lists them): ``*`` matches
        within one ``/``-separated part of a name, ``**`` across parts
        (``"/block1/*/Relu_output_0"``, ``"/block1/**"``) — the command line's rule
        (:mod:`seis_sklearn.adapters._names`).
    op_types : str or sequence of str, optional
        Also record every output of nodes of these types (e.g.
        ``("Conv", "Relu")``).
    transform : callable or str, optional
        Maps a batch of inputs (an ndarray, e.g. with :mod:`seis_sklearn.transforms`)
        to the transformed batch of the same shape, or a text spec as the command
        line takes it (``"rot90"``, ``"hflip"``, ``"rot90+shift:2"``:
        :func:`seis_sklearn.transforms.from_spec`, channels-first inputs). Then every
        tensor gives a pair ``(original, transformed)``.
    batch_size : int, default=256
        Used when the batch axis is dynamic; a model with a fixed batch size
        (e.g. 1) is run with that size, looping over the samples (a short last
        batch is zero-padded and the padding dropped).
    providers : sequence of str, optional
        onnxruntime execution providers; default :func:`default_providers`.
    out : str or path-like, optional
        A folder for ``.npy`` memory maps, as in
        :func:`seis_sklearn.adapters.torch.extract_activations` (with
        ``transform``, a saved-pairs folder for ``seis report --pairs``).
    dtype : numpy dtype, default=float32
    progress : bool, default=True

    Returns
    -------
    dict
        Tensor name → ndarray of shape (n_samples, ...), or → ``(original,
        transformed)`` with ``transform``, in graph order.
    """
    given, transform = transform, as_transform(transform, _from_spec)
    check_finite_inputs(inputs)
    batches, runner = _started(
        model, inputs, layers, op_types, transform, batch_size, providers, progress
    )
    return collect(
        batches,
        out=out,
        dtype=dtype,
        paired=transform is not None,
        module_of=runner.op_type.__getitem__,
        transform_name=given if isinstance(given, str) else describe(transform),
    )


def _from_spec(spec):
    from seis_sklearn.transforms import from_spec

    return from_spec(spec)


def stream_scores(
    model,
    inputs,
    layers=None,
    transform=None,
    *,
    op_types=None,
    held_out=0.2,
    batch_size=256,
    providers=None,
    dtype=None,
    progress=True,
    **seis_params,
):
    """Held-out SEIS of intermediate tensors without storing them.

    As :func:`seis_sklearn.adapters.torch.stream_scores`: every
    ``round(1 / held_out)``-th sample is held out, the others' moments are
    accumulated batch by batch and fitted once; ``dtype`` (default: as the
    graph outputs them) converts each batch first.

    Returns
    -------
    dict
        Tensor name → held-out :class:`~seis_sklearn.SEISResult`.
    """
    transform = as_transform(transform, _from_spec)
    check_stream_args(held_out, transform)
    check_finite_inputs(inputs)
    batches, _ = _started(
        model, inputs, layers, op_types, transform, batch_size, providers, progress, on_device=True
    )
    return stream(batches, held_out, seis_params, dtype=dtype)[0]


def layerwise_seis(
    model,
    inputs,
    transforms,
    *,
    layers=None,
    op_types=None,
    held_out=0.2,
    batch_size=256,
    providers=None,
    progress=True,
    metrics=None,
    matricization="auto",
    tokens="auto",
    n_prefix=None,
    transforms_per_pass="auto",
    layout="auto",
    on_rows=None,
    checkpoint=None,
    budget="auto",
    over_budget="pool",
    **seis_params,
):
    """SEIS of every chosen tensor under every transform, as one table.

    Parameters
    ----------
    model, inputs, batch_size, providers, progress
        As in :func:`extract_activations`; inputs with NaN or infinite values are
        refused before the pass (a ``ValueError`` naming ``inputs``).
    transforms : dict of str → callable or spec, list of specs, or one spec
        Name → a function of a batch of inputs (ndarray), or text specs as the
        command line's ``--transform`` takes them (``["rot90", "hflip"]``, each its
        own name; :func:`seis_sklearn.transforms.from_spec`, channels-first inputs).
    layers, op_types
        As in :func:`extract_activations`; default: the outputs of every
        ``Conv``, ``Gemm`` and ``MatMul`` node (:data:`DEFAULT_OP_TYPES`).
    held_out : float or None, default=0.2
        As in :func:`seis_sklearn.adapters.torch.layerwise_seis`.
    metrics : sequence of str, optional
        ``"cka"``, ``"cka_debiased"``, ``"svcca"``, ``"pwcca"``, ``"channel_eed"``
        columns, as in :func:`seis_sklearn.adapters.torch.layerwise_seis`.
    matricization, tokens
        As in :func:`seis_sklearn.adapters.torch.layerwise_seis`. An ONNX graph
        does not declare prefix tokens: with ``tokens="auto"`` every token is kept
        unless ``n_prefix`` is given (the ``layout_choice`` column names a count
        that would leave a grid of patches).
    n_prefix : int, optional
        Tokens before the patches, for ``tokens="patch"`` or ``"auto"`` (an ONNX
        graph does not say: give it, or with ``"patch"`` each layer's is the count
        that leaves a grid of patches of the input).
    layout : str or dict, default="auto"
        As in :func:`seis_sklearn.adapters.torch.layerwise_seis`: recognised per
        tensor from the input's grid, or given (one layout, or a dict tensor →
        layout).
    on_rows, checkpoint, budget, over_budget
        As in :func:`seis_sklearn.adapters.torch.layerwise_seis`.
    transforms_per_pass : "auto" or int, default="auto"
        As in :func:`seis_sklearn.adapters.torch.layerwise_seis`: transforms that
        share each batch's original run (T + 1 runs per batch instead of 2T).
    **seis_params
        Parameters of :class:`~seis_sklearn.SEISScorer` (and, with
        ``held_out=None``, the statistics of :func:`~seis_sklearn.seis_score`).

    Returns
    -------
    pandas.DataFrame
        The report table of :func:`seis_sklearn.report.report_frame`; ``module``
        holds the producing op type.
    """
    from seis_sklearn.report import report_frame

    metrics = check_report_metrics(metrics)
    check_finite_inputs(inputs)  # before the pass, naming inputs
    transforms = as_transforms(transforms, _from_spec)
    model_prefix = check_tokens(tokens, n_prefix, None)
    layout = check_layout_argument(layout)
    seis_params = {**seis_params, "matricization": matricization}
    per_pass = check_transforms_per_pass(transforms_per_pass)
    # one session for every pass
    model = _Runner(model, layers, op_types, providers, default_op_types=DEFAULT_OP_TYPES)

    def run(views, streamed=False, inputs=inputs, progress=progress, digests=None, skip=0):
        # digests: arrays are read the same on every pass; nothing to check
        if skip:  # resumed after a stop: the samples streamed before it are left out
            inputs = (
                {k: v[skip:] for k, v in inputs.items()}
                if isinstance(inputs, dict)
                else (inputs[skip:])
            )
        return _started(
            model, inputs, layers, op_types, views, batch_size, providers, progress,
            on_device=streamed,
        )[0]  # fmt: skip

    first = {k: v[:2] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[:2]

    def probe(views):
        batches = run(views, inputs=first, progress=False)
        next(batches)
        with contextlib.closing(batches):
            return next(batches)[1]

    image = next(iter(first.values())) if isinstance(first, dict) else first
    shapes, readings = probe_readings(
        probe, tuple(np.shape(image)) if len(image) else None, _change_quadrant,
        layout=layout, tokens=tokens, model_prefix=model_prefix,
        prefix_given=n_prefix is not None,
    )  # fmt: skip
    if isinstance(layout, dict):
        check_layout_argument(layout, list(shapes))
    n_total = _feeds(model, inputs)[1]
    readings = within_budget(shapes, readings, seis_params, n_total, len(transforms), budget,
                             over_budget)  # fmt: skip
    rows = report_rows(
        transforms, run, held_out=held_out, per_pass=per_pass, progress=progress,
        n_samples=n_total, layer_shapes=lambda: shapes,
        module_of=model.op_type.__getitem__, action=lambda transform: transform,
        seis_params=seis_params, metrics=metrics, readings=readings, on_rows=on_rows,
        checkpoint=checkpoint,
    )  # fmt: skip
    return report_frame(rows)


def _change_quadrant(batch):
    """The batch (an array, or a dict of them: the first is changed) with the
    lower-right quadrant of its last two axes replaced by fixed noise of its scale."""
    if isinstance(batch, dict):
        name = next(iter(batch))
        return {**batch, name: _change_quadrant(batch[name])}
    changed = np.array(batch, copy=True)
    h, w = changed.shape[-2] // 2, changed.shape[-1] // 2
    region = changed[..., h:, w:]
    scale = float(np.std(batch)) or 1.0
    noise = np.random.default_rng(0).standard_normal(region.shape) * scale
    region[...] = noise.astype(changed.dtype)
    return changed
