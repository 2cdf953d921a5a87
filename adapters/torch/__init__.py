"""Pull layer activations out of PyTorch modules with forward hooks.

Importable as ``seis_sklearn.adapters.torch`` (the source lives in the top-level
``adapters/`` folder). Needs the ``torch`` extra: ``pip install 'seis-sklearn[torch]'``
(bring your own torch build; the extra only states a lower bound).

>>> import numpy as np, torch
>>> from seis_sklearn.adapters.torch import extract_activations
>>> from seis_sklearn import seis_score, transforms
>>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
>>> x = np.random.default_rng(0).normal(size=(16, 1, 9, 9)).astype(np.float32)
>>> pairs = extract_activations(model, x, ["0"], transform=lambda b: torch.rot90(b, 1, (2, 3)),
...                             progress=False)
>>> original, rotated = pairs["0"]
>>> original.shape, original.dtype
((16, 4, 9, 9), dtype('float32'))
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import warnings
from collections.abc import Iterable, Iterator

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
from .._layout import check_layout_argument, manifest_layouts
from .._names import as_transform, as_transforms, match_names
from ._families import default_layers, prefix_tokens
from ._lie import lie_derivative
from ._lie_layers import layerwise_lie_derivative, lee_columns
from ._monitor import SEISMonitor
from ._script import ScriptRecorder
from ._similarity import plot_similarity_map, similarity_map

__all__ = [
    "SEISMonitor",
    "default_layers",
    "default_select",
    "extract_activations",
    "find_layers",
    "layerwise_seis",
    "layerwise_lie_derivative",
    "lie_derivative",
    "plot_similarity_map",
    "prefix_tokens",
    "selector",
    "similarity_map",
    "stream_scores",
]


DEFAULT_LAYER_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")


def _import_torch():
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "seis_sklearn.adapters.torch needs PyTorch: pip install 'seis-sklearn[torch]' "
            "(or install the torch build for your machine first)"
        ) from None
    return torch


def _from_spec(spec):
    """The torch transform of a text spec (:func:`seis_sklearn.transforms.parse_spec`)."""
    from .transforms import from_spec

    return from_spec(spec)


def _transform_name(given, transform):
    """A transform's name in a manifest: the spec given as text, else the callable's."""
    return given if isinstance(given, str) else describe(transform)


def default_select(output):
    """The tensor to record from a module's output.

    A tensor is taken as is; for a tuple or list, its first tensor; for a dict
    (or any mapping), its first tensor value in insertion order.

    Parameters
    ----------
    output : tensor, tuple, list or dict
        What the module's ``forward`` returned.

    Returns
    -------
    torch.Tensor
    """
    torch = _import_torch()
    if isinstance(output, torch.Tensor):
        return output
    values = output.values() if hasattr(output, "values") else output
    if isinstance(values, Iterable):
        for value in values:
            if isinstance(value, torch.Tensor):
                return value
    raise TypeError(
        f"cannot find a tensor in a module output of type {type(output).__name__}; "
        "pass select= to say which part to record"
    )


def selector(select):
    """The function that picks the tensor to record from a module's output.

    Parameters
    ----------
    select : None, callable, str or int
        ``None``: :func:`default_select`. A callable is used as is. A string
        names a part of a structured output — a key of a dict or of a Hugging
        Face ``ModelOutput`` (``"last_hidden_state"``), or an attribute of a
        dataclass or named tuple; an int indexes a tuple or list
        (``hidden_states`` tuples: ``-1`` for the last).

    Returns
    -------
    callable
    """
    if select is None:
        return default_select
    if callable(select):
        return select
    if isinstance(select, int) and not isinstance(select, bool):
        return lambda output: output[select]
    if isinstance(select, str):

        def by_name(output):
            if hasattr(output, "keys") and select in output.keys():
                return output[select]
            if hasattr(output, select):
                return getattr(output, select)
            have = list(output.keys()) if hasattr(output, "keys") else type(output).__name__
            raise ValueError(f"select={select!r}: the module's output has no such part ({have})")

        return by_name
    raise TypeError(
        f"select must be None, a callable, a str or an int; got {type(select).__name__}"
    )


def find_layers(model, *, types=None, pattern=None, leaves_only=False):
    """Names of the submodules of ``model`` to record, by type and/or name pattern.

    Parameters
    ----------
    model : torch.nn.Module
    types : type, str or tuple of them, optional
        Keep modules that are instances of these classes (e.g.
        ``torch.nn.Conv2d``), or whose class (or a base class) has one of these
        names (e.g. ``"Conv2d"``) — names also work for TorchScript models,
        whose submodules keep their original class names.
    pattern : str, optional
        Keep modules whose name matches this regular expression (``re.search``).
    leaves_only : bool, default=False
        Keep only modules without children.

    Returns
    -------
    list of str
        Names in ``model.named_modules()`` order (the root, named ``""``, excluded).
        Modules whose ``forward`` is known never to run are left out
        (:func:`~seis_sklearn.adapters.torch._families.never_called`: the
        ``out_proj`` of a ``torch.nn.MultiheadAttention``, whose weights the
        attention applies without calling it — hooks on it record nothing); name
        such a module yourself and its report row says that it never ran.

    Notes
    -----
    ``pattern`` is a regular expression searched in the name; ``layers=`` of the
    report functions and the command line's ``--layers`` take names and globs
    instead (``*`` within one dotted part, ``**`` across parts).

    Examples
    --------
    >>> import torch
    >>> from seis_sklearn.adapters.torch import find_layers
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(),
    ...                           torch.nn.Conv2d(2, 2, 3))
    >>> find_layers(net, types=torch.nn.Conv2d)
    ['0', '2']
    >>> find_layers(net, pattern=r"^[01]$")
    ['0', '1']
    """
    from ._families import never_called

    regex = re.compile(pattern) if pattern is not None else None
    if types is not None and not isinstance(types, tuple):
        types = (types,)
    names = []
    skipped = never_called(model.named_modules())
    for name, module in model.named_modules():
        if not name or name in skipped:
            continue
        if types is not None and not any(_is_kind(module, t) for t in types):
            continue
        if regex is not None and not regex.search(name):
            continue
        if leaves_only and any(True for _ in module.children()):
            continue
        names.append(name)
    return names


def module_type(module):
    """The class name of a module (the original one for a TorchScript submodule)."""
    return getattr(module, "original_name", None) or type(module).__name__


def _is_kind(module, kind):
    if isinstance(kind, str):
        if hasattr(module, "original_name"):  # TorchScript: only the class name survives
            return module.original_name == kind
        return any(cls.__name__ == kind for cls in type(module).__mro__)
    return isinstance(module, kind)


def _numpy_action(transform):
    """The transform, applied to numpy activations through torch (for ``channel_eed``)."""

    def action(array):
        torch = _import_torch()
        return transform(torch.from_numpy(np.ascontiguousarray(array))).numpy()

    return action


def _check_layers(model, layers, argument="layers"):
    """The modules ``layers`` names — module names or globs (``*`` within one dotted
    part, ``**`` across parts: :mod:`seis_sklearn.adapters._names`, the command line's
    rule) — as (names, modules) in the order named."""
    modules = dict(model.named_modules())
    if not isinstance(layers, str) and not isinstance(layers, Iterable):
        raise TypeError(
            f"{argument} must be a module name, a glob or a sequence of them; got "
            f"{type(layers).__name__}"
        )
    names = match_names(list(modules), layers, argument=argument, what="module",
                        where="the model")  # fmt: skip
    return names, [modules[n] for n in names]


def _batches(inputs, batch_size, torch):
    """(batches, n_samples or None): tensors, arrays, or an iterable of batches."""
    if isinstance(inputs, np.ndarray):  # also a read-only memory map: one batch at a time
        n = inputs.shape[0]
        return (
            torch.from_numpy(np.array(inputs[i : i + batch_size], order="C"))
            for i in range(0, n, batch_size)
        ), n
    if isinstance(inputs, torch.Tensor):
        n = inputs.shape[0]
        return (inputs[i : i + batch_size] for i in range(0, n, batch_size)), n
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(
            "inputs must be a tensor, a numpy array or an iterable of batches; "
            f"got {type(inputs).__name__}"
        )
    dataset = getattr(inputs, "dataset", None)
    try:
        n = len(dataset) if dataset is not None else None
    except TypeError:
        n = None

    def unpack():
        for batch in inputs:
            if isinstance(batch, (tuple, list)):  # (inputs, targets) from a DataLoader
                batch = _first_of_pair(batch, torch)
            if isinstance(batch, np.ndarray):
                batch = torch.from_numpy(np.ascontiguousarray(batch))
            if not isinstance(batch, torch.Tensor):
                raise TypeError(
                    f"inputs: a batch is a {type(batch).__name__}, not a tensor; {BATCHES_READ}"
                )
            yield batch

    return unpack(), n


#: How the batches of an iterable ``inputs`` are read, for errors.
BATCHES_READ = (
    "batches are read as tensors or arrays, or as (inputs, targets) pairs whose FIRST "
    "element is the input"
)


@contextlib.contextmanager
def _read_from(inputs):
    """A forward pass over samples taken from ``inputs`` (the report's probe): a failure
    of an iterable's batch says how its batches are read."""
    try:
        yield
    except ForwardError as exc:
        if isinstance(inputs, np.ndarray) or hasattr(inputs, "dim") or BATCHES_READ in str(exc):
            raise
        raise ForwardError(f"{exc} (inputs is an iterable: {BATCHES_READ})") from exc.__cause__


def _first_of_pair(batch, torch):
    """The inputs of an ``(inputs, targets, …)`` batch: its first element — refused
    where it looks like the targets of a ``(targets, inputs)`` pair (integer labels,
    one per sample, before floating-point samples of more axes)."""
    if not batch:
        raise TypeError(f"inputs: a batch is an empty {type(batch).__name__}; {BATCHES_READ}")
    first = batch[0]
    if not isinstance(first, (torch.Tensor, np.ndarray)):
        kinds = ", ".join(type(b).__name__ for b in batch)
        raise TypeError(
            f"inputs: a batch is a {type(batch).__name__} of ({kinds}) whose first element is "
            f"no tensor; {BATCHES_READ}"
        )

    def integer(a):
        if isinstance(a, torch.Tensor):
            return not (a.is_floating_point() or a.is_complex())
        return a.dtype.kind in "biu"

    later = [b for b in batch[1:] if isinstance(b, (torch.Tensor, np.ndarray))]
    if (
        first.ndim <= 1
        and integer(first)
        and any(b.ndim > first.ndim and not integer(b) for b in later)
    ):
        shapes = ", ".join(str(tuple(b.shape)) for b in batch if hasattr(b, "shape"))
        raise ValueError(
            f"inputs: a batch is a {type(batch).__name__} of shapes {shapes} whose first "
            "element looks like integer labels; "
            f"{BATCHES_READ}: yield (images, labels), e.g. a Dataset whose __getitem__ returns "
            "(image, label)"
        )
    return first


class ForwardError(RuntimeError):
    """The model's own ``forward`` raised (the original exception is the cause)."""


class _SelectFailed(Exception):
    """Picking the tensor to record from a layer's output failed (in a forward hook):
    re-raised after the forward as the original type, the layer named."""

    def __init__(self, error, layer):
        super().__init__(error)
        self.error, self.layer = error, layer

    def reraise(self):
        error = self.error
        text = error.args[0] if isinstance(error, KeyError) and error.args else first_line(error)
        kind = TypeError if isinstance(error, TypeError) else ValueError
        raise kind(f"layer {self.layer!r}: {text}") from error


def call_keys(names):
    """Keys of the module calls ``names`` (in execution order): the module's name, or
    ``name#1``, ``name#2``, … (in call order) for a module called several times."""
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    seen, keys = {}, []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if counts[name] == 1 else f"{name}#{seen[name]}")
    return keys


class _Recorder:
    """Forward hooks logging every call of the watched modules, in execution order."""

    def __init__(self, names, modules, select):
        self.select = select
        self.log = []
        self.handles = [
            m.register_forward_hook(self._hook(n)) for n, m in zip(names, modules, strict=True)
        ]

    def _hook(self, name):
        def hook(module, args, output):
            try:
                tensor = self.select(output)
            except Exception as exc:  # noqa: BLE001 - select is the user's too
                raise _SelectFailed(exc, name) from exc
            self.log.append((name, tensor))

        return hook

    def take(self):
        """Keys in execution order → tensors (:func:`call_keys`)."""
        out = dict(zip(call_keys([n for n, _ in self.log]), (t for _, t in self.log), strict=True))
        self.log = []
        return out

    def remove(self):
        for handle in self.handles:
            handle.remove()


def extract_activations(
    model,
    inputs,
    layers,
    *,
    transform=None,
    batch_size=256,
    device=None,
    out=None,
    select=None,
    dtype=np.float32,
    progress=True,
    layout="auto",
):
    """Record the activations of named layers of a PyTorch model.

    Parameters
    ----------
    model : torch.nn.Module
        Put in eval mode for the call (every submodule's mode is restored
        afterwards, also on error) and run under ``torch.inference_mode()``.
    inputs : torch.Tensor, ndarray or iterable of batches
        Samples first. An iterable (e.g. a ``DataLoader``) yields tensors or
        arrays, or ``(inputs, targets)`` pairs whose first element is used. An
        array (a memory map too) is read one batch at a time. Floating-point
        batches are cast to the dtype of the model's parameters.
    layers : str or sequence of str
        Names from ``model.named_modules()`` (see :func:`find_layers`), or globs:
        ``*`` matches within one dotted part of a name, ``**`` across parts
        (``"layer1.*"``: the blocks of ``layer1``, not their convolutions;
        ``"layer1.**"``: everything inside it) — the rule of the command line's
        ``--layers`` (:mod:`seis_sklearn.adapters._names`, docs/torch.rst).
    transform : callable or str, optional
        Maps a batch of inputs (a tensor on ``device``) to the transformed batch,
        or a text spec as the command line takes it (``"rot90"``, ``"hflip"``,
        ``"rot90+shift:2"``: :func:`seis_sklearn.transforms.parse_spec`, applied to
        channels-first inputs by :func:`seis_sklearn.adapters.torch.transforms.from_spec`).
        Then every layer gives a pair ``(original, transformed)``.
    batch_size : int, default=256
        Batch size when ``inputs`` is a tensor or an array.
    device : str or torch.device, optional
        Where to run; default CUDA when available, else CPU. The model is
        moved there for the call and moved back afterwards.
    out : str or path-like, optional
        A folder: activations go into ``.npy`` memory maps there
        (``<layer>.npy``, or ``<layer>.original.npy`` and
        ``<layer>.transformed.npy``) instead of memory. With ``transform``
        the folder is a saved-pairs folder (:mod:`seis_sklearn.io`, with its
        ``pairs.json`` manifest) that ``seis report --pairs`` reads. Needs the number of
        samples up front (a tensor, an array or a loader with a sized dataset).
    select : callable, str or int, optional
        Picks the tensor to record from a module's output (:func:`selector`):
        a function, the name of a part of a structured output
        (``"last_hidden_state"`` of a Hugging Face ``ModelOutput``, a dict key,
        an attribute) or a tuple index; default :func:`default_select`.
    dtype : numpy dtype, default=float32
        Dtype of the recorded arrays.
    progress : bool, default=True
        Show a tqdm progress bar (when tqdm is installed).
    layout : str or dict, default="auto"
        With ``out`` and ``transform``: the layout the saved-pairs manifest records
        for each layer, which ``seis report --pairs`` then reads it in — one layout
        for every layer with that many axes, or a dict layer → layout; layers not
        named are recognised from the input's grid as a layerwise report does
        (channels last where the map's axes say so), and left to the reader where
        that cannot tell.

    Returns
    -------
    dict
        Layer key → ndarray of shape (n_samples, ...), or → ``(original,
        transformed)`` with ``transform``, in the order the layers ran. A module
        called several times per forward gives the keys ``name#1``, ``name#2``,
        … instead of ``name``.
    """
    layout = check_layout_argument(layout)
    given, transform = transform, as_transform(transform, _from_spec)
    grid = (
        tuple(inputs.shape) if isinstance(inputs, np.ndarray) or hasattr(inputs, "dim") else None
    )
    check_finite_inputs(inputs)
    batches = _forward_batches(
        model, inputs, layers, transform, batch_size, device, select, progress,
        warned=_cast_said(model, inputs),
    )  # fmt: skip
    return collect(
        batches,
        out=out,
        dtype=dtype,
        paired=transform is not None,
        module_of=lambda key: module_type(dict(model.named_modules())[key.split("#")[0]]),
        transform_name=_transform_name(given, transform),
        layouts=lambda shapes: manifest_layouts(shapes, grid, layout),
    )


def statistics_on_device(device):
    """Whether streamed statistics stay on ``device`` (torch) instead of the host (numpy).

    On a GPU the activations never cross to the host: the torch accumulator of
    :mod:`seis_sklearn._accumulate` sums them where they are and only the d × d
    statistics are copied. On the CPU the numpy path (BLAS SYRK, Numba centring)
    is used; the torch accumulator computes the same statistics there too
    (tested), and is faster only where the device is.
    """
    return device.type != "cpu"


def _forward_batches(
    model, inputs, layers, transform, batch_size, device, select, progress, tensors=False,
    check_rows=True, digests=None, warned=None,
):  # fmt: skip
    """Generator: first the number of samples (or None), then per batch
    ``((start, stop), {view: {layer key: ndarray}})`` — or, with ``tensors=True``
    and a device :func:`statistics_on_device` keeps statistics on, detached tensors
    left on that device.

    Sets the model up once (eval mode, device, hooks) and restores every
    submodule's mode, the device and the hooks in ``finally`` — also when the
    forward raises or the consumer stops early. ``check_rows=False`` (the report's
    probe) records layers whose outputs do not keep samples first instead of
    refusing them; ``digests`` (a list) receives a digest of every input batch, so
    that two passes can be checked to have read the same batches. Every batch is
    checked for non-finite values as it is read (:func:`check_finite_batch`: an
    iterable's are seen nowhere else); ``warned`` (a list) is shared by the passes of
    one report, so that the cast of integer inputs is said once.
    """
    torch = _import_torch()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    names, modules = _check_layers(model, layers)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    views = batch_views(transform)
    transform_names = {  # transform → its name in errors: the report's key, or the callable's
        id(f): view[1] if isinstance(view, tuple) else (describe(f) or "transform")
        for view, f in views.items()
        if f is not None
    }
    device = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    keep = tensors and statistics_on_device(device)
    direct = isinstance(inputs, (np.ndarray, torch.Tensor))  # else batches of an iterable
    batches, n_total = _batches(inputs, batch_size, torch)
    yield n_total
    if isinstance(model, torch.jit.ScriptModule):  # no hooks: record from a private copy
        recorder = ScriptRecorder(model, names, selector(select), torch)
        runner = recorder.model
    else:
        recorder = _Recorder(names, modules, selector(select))
        runner = model
    modes = {m: m.training for m in model.modules()}
    first_param = next(model.parameters(), None)
    home = first_param.device if first_param is not None else None
    bar = progress_bar(n_total, progress)
    try:
        runner.eval()
        runner.to(device)
        floating = next((p.dtype for p in runner.parameters() if p.is_floating_point()), None)
        warned = [] if warned is None else warned

        def record(function):  # the current batch, transformed by function
            fed = (
                batch
                if function is None
                else _transformed(function, batch, torch, transform_names)
            )
            try:
                runner(fed)
            except _SelectFailed as exc:  # the recording failed, not the model
                exc.reraise()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - the model's own code
                read = "" if direct else f" (inputs is an iterable: {BATCHES_READ})"
                raise ForwardError(
                    f"the model's forward failed on a batch of shape {tuple(fed.shape)} "
                    f"({type(exc).__name__}: {first_line(exc)}){read}"
                ) from exc
            recorded = {}
            for key, tensor in recorder.take().items():
                array = tensor.detach() if keep else _host(tensor)
                if check_rows and (array.ndim == 0 or array.shape[0] != batch.shape[0]):
                    rows = array.shape[0] if array.ndim else 0
                    raise ValueError(
                        f"layer {key!r} returned {rows} rows for a batch of "
                        f"{batch.shape[0]} samples: activations must keep samples first"
                    )
                recorded[key] = array
            return recorded

        start = 0
        with torch.inference_mode():
            for index, batch in enumerate(batches):
                check_finite_batch(batch, index, start)
                if digests is not None:
                    digests.append(_digest(batch))
                batch = _model_input(batch.to(device), floating, warned)
                stop = start + batch.shape[0]
                yield from batch_items((start, stop), views, record)
                start = stop
                if bar is not None:
                    bar.update(batch.shape[0])
    finally:
        recorder.remove()
        if home is not None:
            model.to(home)
        for module, training in modes.items():
            module.train(training)
        if bar is not None:
            bar.close()


def _host(tensor):
    """A recorded tensor as a numpy array (bfloat16, which numpy lacks, as float32)."""
    tensor = tensor.detach()
    if str(tensor.dtype) == "torch.bfloat16":
        tensor = tensor.float()
    return tensor.to("cpu").numpy()


def _model_input(batch, floating, warned):
    """A batch of inputs in the model's floating dtype: float64 arrays into a float32
    model, integer or boolean images (uint8 pixels) cast — said once —, complex refused."""
    if batch.is_complex():
        raise TypeError(f"inputs are complex ({batch.dtype}): the model takes real-valued inputs")
    if floating is None:
        return batch
    if not batch.is_floating_point():
        if not warned:
            warnings.warn(_cast_message(batch.dtype, floating), UserWarning, stacklevel=4)
            warned.append(True)
        return batch.to(floating)
    return batch.to(floating)


def _cast_said(model, inputs):
    """Say, from the caller's line, that integer inputs (an array, a tensor) are cast to
    the model's floating dtype; returns the list :func:`_forward_batches` shares, marked
    when said, so that none of the passes says it again (an iterable's batches are
    seen only as they are read: the first such batch says it)."""
    torch = _import_torch()
    if not isinstance(model, torch.nn.Module):
        return []  # refused by _forward_batches, naming model
    floating = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    dtype = getattr(inputs, "dtype", None)
    if isinstance(dtype, np.dtype):
        integer = dtype.kind in "biu"
    else:
        integer = isinstance(dtype, torch.dtype) and not (
            dtype.is_floating_point or dtype.is_complex
        )
    if floating is None or not integer:
        return []
    warnings.warn(_cast_message(dtype, floating), UserWarning, stacklevel=3)
    return [True]


def _cast_message(dtype, floating):
    return (
        f"inputs are {str(dtype).replace('torch.', '')}: cast to the model's "
        f"{str(floating).replace('torch.', '')} as they are (no rescaling; scale them as "
        "the model expects, e.g. images / 255)"
    )


def _digest(batch):
    """A digest of an input batch's values and shape."""
    data = np.ascontiguousarray(batch.detach().cpu().numpy())
    return hashlib.blake2b(data.tobytes() + repr(data.shape).encode(), digest_size=16).digest()


def _transformed(function, batch, torch, names):
    """``function`` applied to a copy of the batch (it may work in place: the caller's
    inputs and the other views never see it), its output checked — a tensor of the
    batch's shape, cast to the batch's dtype — with errors that name the transform
    (``names``: id of the function → name)."""
    out = function(batch.clone())
    name = names.get(id(function), "transform")
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"transform {name!r} returned {type(out).__name__}, not a tensor: a transform "
            "maps a batch of inputs (a torch tensor) to the transformed batch"
        )
    if out.shape != batch.shape:
        what = "samples" if out.ndim and out.shape[0] != batch.shape[0] else "shape"
        raise ValueError(
            f"transform {name!r} changed the batch's {what}: {tuple(batch.shape)} → "
            f"{tuple(out.shape)}; a transform must keep every sample and the input's shape"
        )
    if out.dtype != batch.dtype:
        if out.is_complex():
            raise TypeError(f"transform {name!r} returned {out.dtype} (complex) values")
        out = out.to(batch.dtype)  # e.g. float64 arithmetic on a float32 batch
    return out.to(batch.device)


def stream_scores(
    model,
    inputs,
    layers,
    transform,
    *,
    held_out=0.2,
    batch_size=256,
    device=None,
    select=None,
    dtype=None,
    progress=True,
    **seis_params,
):
    """Held-out SEIS scores of layers without ever storing their activations.

    Each batch's activations (original and transformed inputs) go straight into
    the statistics: every ``round(1 / held_out)``-th sample (by its index in
    ``inputs``, whatever the batches) is held out; the kept and the held-out
    samples' moments are accumulated batch by batch, the basis and the CCA are
    fitted once on the kept ones, and the held-out ones are scored under that
    fit. On a GPU the statistics are accumulated there (torch, float64 sums, TF32
    off) and only the d × d results reach the host
    (:func:`statistics_on_device`). Memory: the statistics (d × d per view) and
    one batch.

    Parameters
    ----------
    model, inputs, layers, batch_size, device, select, progress
        As in :func:`extract_activations`.
    transform : callable or str
        Maps a batch of inputs to the transformed batch, or a text spec (as in
        :func:`extract_activations`).
    held_out : float, default=0.2
        Fraction of samples held out, in (0, 0.5].
    dtype : numpy dtype, optional
        Convert each batch's activations to this before they enter the
        statistics. Default: as recorded — float32 activations give float32
        products summed in float64 over chunks of at most 4,096 rows, the rule of
        the numpy path (scores within 1e-4 of float64).
    **seis_params
        Parameters of :class:`~seis_sklearn.SEISScorer` (``n_components``,
        ``matricization``, ``layout``, …); the moment solver is used.

    Returns
    -------
    dict
        Layer key → held-out :class:`~seis_sklearn.SEISResult`. The same
        numbers as storing the activations, fitting on the kept samples and
        scoring the held-out ones.
    """
    transform = as_transform(transform, _from_spec)
    check_stream_args(held_out, transform)
    check_finite_inputs(inputs)
    batches = _forward_batches(
        model, inputs, layers, transform, batch_size, device, select, progress, tensors=True,
        warned=_cast_said(model, inputs),
    )  # fmt: skip
    return stream(batches, held_out, seis_params, dtype=dtype)[0]


def layerwise_seis(
    model,
    inputs,
    transforms,
    *,
    layers=None,
    held_out=0.2,
    batch_size=256,
    device=None,
    progress=True,
    metrics=None,
    matricization="auto",
    tokens="auto",
    n_prefix=None,
    transforms_per_pass="auto",
    layout="auto",
    select=None,
    on_rows=None,
    checkpoint=None,
    budget="auto",
    over_budget="pool",
    **seis_params,
):
    """SEIS of every chosen layer under every transform, as one table.

    Parameters
    ----------
    model : torch.nn.Module
    inputs : torch.Tensor, ndarray or iterable of batches
        As in :func:`extract_activations`. With several transforms the report
        reads them more than once (a first sample to size the passes, one pass
        per group of transforms), so an iterable must be one that can be
        iterated again (a ``DataLoader``, a list of batches), not a generator.
        NaN or infinite values are refused before the pass (a ``ValueError``
        naming ``inputs`` with their count and samples); an iterable's batches
        are checked as they are read, before any row is given to ``on_rows``.
    transforms : dict of str → callable or spec, list of specs, or one spec
        Name → a function of a batch of inputs (a tensor) giving the transformed
        batch, e.g. ``{"rot90": partial(transforms.rot90, k=1)}`` with
        :mod:`seis_sklearn.adapters.torch.transforms`; or text specs as the command
        line's ``--transform`` takes them, each its own name (``["rot90", "hflip",
        "shift:4"]``; :func:`seis_sklearn.transforms.parse_spec`), applied to
        channels-first inputs (for channels-last images pass
        ``partial(transforms.from_spec("rot90"), layout="NHWC")``).
    layers : str or sequence of str, optional
        Module names or globs, as in :func:`extract_activations` (``"layer*.1"``
        is the second block of every stage, not ``layer2.0.downsample.1``).
        Default: the network's blocks and head (:func:`default_layers`: residual,
        transformer, mixer or ConvNeXt blocks, decoder stages), or every
        ``Conv*d`` and ``Linear`` module when it has no blocks.
    held_out : float or None, default=0.2
        Fraction of samples held out for honest scores (:func:`stream_scores`;
        activations are never stored). ``None``: in-sample scores of all samples
        (activations are held in memory, one layer at a time per transform).
    batch_size, device, progress
        As in :func:`extract_activations`.
    metrics : sequence of str, optional
        Further columns from :mod:`seis_sklearn.metrics`: ``"cka"`` and
        ``"cka_debiased"``, the standard linear CKA (biased; with the unbiased
        HSIC) of the layer's flattened activations on ``x`` and ``g·x``, whatever
        its matricization — with ``held_out=None`` exactly
        :func:`seis_sklearn.metrics.linear_cka` over all samples, streamed the
        minibatch estimator over the report's batches
        (:class:`seis_sklearn.metrics.MinibatchCKA`: the diagonal of
        :func:`similarity_map` under the transform with this ``batch_size``; equal
        to ``linear_cka`` when one batch holds every sample); ``"svcca"``,
        ``"pwcca"``, computed on all samples' activations with the same
        matricization as SEIS (streamed too); ``"channel_eed"``, the
        channelwise G-EED term of the transform (−mean cosine between the
        channels of ``f(gx)`` and the transform applied to ``f(x)``; −1 =
        exactly equivariant; NaN for layers without spatial axes);
        ``"lee"``, the layer's share of the Lie derivative of the model's
        output (:func:`layerwise_lie_derivative`: the softmax of a 2-D output, a
        map output warped back) under the continuous generator its transform is a
        step of (``lee_generator``: ``rot90``/``rotate`` → rotation, ``translate``
        → translation along its axis, ``scale``; NaN for flips), computed in passes
        of its own after the report's.
    matricization : {"auto", "spatial", "flatten", "channel"}, default="auto"
        As in :class:`~seis_sklearn.SEISScorer`, per layer; ``"auto"`` takes
        spatial where a layer has a map (or token axis) of more than 2×2
        positions and flatten where it has not (a 2×2 map gives spatial mode 4
        columns: SPEC §2.1), and says so in the row.
    tokens : {"auto", "all", "patch"}, default="auto"
        For token activations ``(N, L, D)``: the prefix tokens (class,
        distillation, register tokens) sit outside the patch grid the transform
        permutes. ``"auto"``: each layer loses the prefix the model declares
        (timm's ``num_prefix_tokens``, torchvision's ``class_token``, a Hugging
        Face config: :func:`prefix_tokens`) where the rest tiles the input's grid,
        so that spatial mode reads the patch grid; a model that declares none
        keeps every token. ``"patch"``: drops each layer's prefix also where the
        model does not say (the count that leaves a grid). ``"all"``: keeps every
        token. Each row's ``layout_choice`` says what was read (``tokens: the
        model's 1 prefix token(s) dropped, 16 patches read``) and ``shape`` the
        shape scored.
    n_prefix : int, optional
        Tokens before the patches (with ``"auto"`` or ``"patch"``); default: what
        the model says, else (``"patch"``), per layer, the count that leaves a
        grid of patches of the input.
    layout : str or dict, default="auto"
        How each layer's activations are laid out. ``"auto"``: recognised per layer
        before the pass from a forward pass of two samples — channels first or last
        by which axes form the input's grid at some stride, a probe where both do,
        NLD tokens, ND vectors (the ``layout`` and ``layout_choice`` columns say
        which and why; a layer that cannot be told stops the report before its pass,
        naming it). One layout applies to every layer with that many axes; a dict
        layer → layout to the layers it names.
    select : callable, str or int, optional
        Which part of a layer's structured output to record (:func:`selector`), as
        in :func:`extract_activations`; default: the first tensor.
    on_rows : callable, optional
        Called with the rows of each transform (``held_out=None``) or of each
        pass of transforms (streamed) as soon as they are scored — what the
        command line writes to ``--out`` at once.
    budget : "auto", None or dict, default="auto"
        What one layer may take, checked before the pass from its shape
        (:mod:`seis_sklearn.adapters._budget`): ``"auto"`` is half the memory
        available now and 15 minutes of algebra per layer; a dict gives
        ``memory`` (bytes) and/or ``seconds``; None checks nothing.
    over_budget : {"pool", "skip", "error"}, default="pool"
        A layer beyond the budget: its map average-pooled over the smallest
        ``p × p`` blocks that fit (exact for quarter turns, flips and shifts by
        multiples of ``p``), else not scored; ``"skip"``: not scored; ``"error"``:
        stop before the pass. Its row's ``remedy`` column says what and why, and a
        warning says it before the pass.
    checkpoint : Checkpoint, optional
        Where a streamed pass saves its statistics when a stop is asked for, and
        resumes from (:mod:`seis_sklearn.adapters._checkpoint`; the command line's
        ``--resume``); ``inputs`` must then be an array or a tensor.
    transforms_per_pass : "auto" or int, default="auto"
        How many transforms share one pass over the inputs (streamed reports):
        each batch's original forward pass then serves all of them — T + 1
        forward passes per batch instead of 2T — while their statistics are held
        at once. ``"auto"``: as many as keep those statistics within 2 GiB
        (estimated from a forward pass of two samples: per layer, its rows or its
        moments, whichever are smaller), at least one; ``1``: one transform at a
        time (the least memory). The scores do not depend on it. With
        ``held_out=None`` the original activations are computed once and kept
        while each transform's are computed beside them.
    **seis_params
        Parameters of :class:`~seis_sklearn.SEISScorer`; with ``held_out=None``
        also the statistics of :func:`~seis_sklearn.seis_score`
        (``n_permutations``, ``n_bootstrap``, ``random_state``, …), which add
        p-value and interval columns.

    Returns
    -------
    pandas.DataFrame
        One row per (layer, transform): ``layer``, ``depth`` (the order in which
        the layers ran in the forward pass), ``module`` (its class), ``shape`` (per sample),
        ``transform``, the four scores, ``n_components``, ``n_rows``,
        ``evaluation``, ``matricization`` (the mode used) and
        ``matricization_choice`` (``"given"`` or why auto chose it), ``layout``
        and ``layout_choice`` (the layer's reading), ``degenerate`` and
        ``degenerate_reason`` (scores not to read at face value: SPEC §2.1). A layer
        that cannot be scored — no variance (a zero-initialised head), NaN
        activations, a ``forward`` that never ran — has NaN scores, the reason
        (``"not scored: …"``) and a warning; the report goes on. Draw it with
        :func:`seis_sklearn.report.plot_layerwise`, save it with
        :func:`seis_sklearn.report.save_report`.
    """
    from seis_sklearn.report import report_frame

    torch = _import_torch()
    metrics = check_report_metrics(metrics, lee=True)
    lee = "lee" in metrics
    metrics = [m for m in metrics if m != "lee"]
    transforms = as_transforms(transforms, _from_spec)
    if lee and isinstance(inputs, Iterator):
        raise TypeError(
            f"inputs is a one-shot iterator ({type(inputs).__name__}), and the 'lee' column "
            "reads the inputs again after the report's pass: pass a tensor, an array, a "
            "list of batches or a DataLoader"
        )
    if len(transforms) > 1 and isinstance(inputs, Iterator):
        raise TypeError(
            f"inputs is a one-shot iterator ({type(inputs).__name__}), and a report of "
            f"{len(transforms)} transforms reads the inputs more than once: pass a "
            "tensor, an array, a list of batches or a DataLoader"
        )
    model_prefix = check_tokens(tokens, n_prefix, prefix_tokens(model))
    layout = check_layout_argument(layout)
    seis_params = {**seis_params, "matricization": matricization}
    default = layers is None
    if default:
        layers = default_layers(model)
        if not layers:
            raise ValueError(
                "layers: found no block and no Conv1d/2d/3d or Linear module; name the layers"
            )
    layers, _ = _check_layers(model, layers)
    if isinstance(layout, dict):
        check_layout_argument(layout, layers)
    modules = dict(model.named_modules())
    per_pass = check_transforms_per_pass(transforms_per_pass)
    check_finite_inputs(inputs)  # before the pass; an iterable's batches as they are read
    first, inputs = _probe_inputs(inputs, torch)
    cast_warned = _cast_said(model, first)  # said once for all the report's passes

    def run(
        views, streamed=False, inputs=inputs, progress=progress, check_rows=True, at=None,
        digests=None, skip=0,
    ):  # fmt: skip
        if skip:  # resumed after a stop: the samples streamed before it are left out
            inputs = inputs[skip:]
        return _forward_batches(
            model, inputs, at or layers, views, batch_size, device, select, progress, streamed,
            check_rows, digests, cast_warned,
        )  # fmt: skip

    def probe(views, at=None):
        batches = run(views, inputs=first, progress=False, check_rows=False, at=at)
        next(batches)
        with contextlib.closing(batches), _read_from(inputs):
            return next(batches)[1]

    if default and first is not None:
        layers = _sample_first_layers(model, layers, probe)
    n_total = _batches(inputs, batch_size, torch)[1]
    shapes, readings = probe_readings(
        lambda views: probe(views, layers) if first is not None else None,
        None if first is None else first.shape, _change_quadrant,
        layout=layout, tokens=tokens, model_prefix=model_prefix,
        prefix_given=n_prefix is not None,
    )  # fmt: skip
    readings = within_budget(shapes, readings, seis_params, n_total, len(transforms), budget,
                             over_budget)  # fmt: skip
    rows = report_rows(
        transforms, run, held_out=held_out, per_pass=per_pass,
        n_samples=n_total, layer_shapes=lambda: shapes, progress=progress,
        module_of=lambda key: module_type(modules[key.split("#")[0]]),
        action=_numpy_action, seis_params=seis_params, metrics=metrics, readings=readings,
        expected=layers, on_rows=on_rows, checkpoint=checkpoint,
    )  # fmt: skip
    frame = report_frame(rows)
    if lee:
        frame = lee_columns(frame, model, inputs, transforms, batch_size, device, progress)
    return frame


def _probe_inputs(inputs, torch):
    """The inputs' first two samples as a tensor (None for no inputs), and the inputs
    to run the report on: an array's or tensor's first two samples only are read; a
    one-shot iterator's first batch is read and put back in front."""
    if isinstance(inputs, Iterator):
        head = next(inputs, None)
        if head is None:
            return None, inputs
        inputs = itertools.chain([head], inputs)
        source = [head]
    else:
        source = inputs
    batches, _ = _batches(source, 2, torch)
    with contextlib.closing(batches):
        first = next(batches, None)
    return (None if first is None else first[:2]), inputs


def _running_default_layers(model, inputs, batch_size, device, select, argument="layers"):
    """A model's default layers as a layerwise report takes them (:func:`default_layers`,
    then :func:`_sample_first_layers` on the first two inputs), and the inputs to run
    (a one-shot iterator's first batch put back)."""
    torch = _import_torch()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    layers = default_layers(model)
    if not layers:
        raise ValueError(
            f"{argument}: found no block and no Conv1d/2d/3d or Linear module; name the layers"
        )
    first, inputs = _probe_inputs(inputs, torch)
    if first is None:
        return layers, inputs

    def probe(views, at):
        batches = _forward_batches(model, first, at, views, batch_size, device, select, False,
                                   check_rows=False)  # fmt: skip
        next(batches)
        with contextlib.closing(batches), _read_from(inputs):
            return next(batches)[1]

    return _sample_first_layers(model, layers, probe), inputs


def _change_quadrant(batch):
    """The batch with its lower-right quadrant (of the last two axes) replaced by fixed
    noise of the batch's scale: the report's layout probe."""
    torch = _import_torch()
    changed = batch.clone()
    h, w = batch.shape[-2] // 2, batch.shape[-1] // 2
    region = changed[..., h:, w:]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(region.shape, generator=generator).to(region.device, region.dtype)
    scale = batch.float().std() if batch.numel() > 1 else 1.0
    region.copy_(noise * (scale if float(scale) > 0 else 1.0))
    return changed


def _sample_first_layers(model, layers, probe):
    """Default layers whose outputs keep samples first and that run at all.

    A module that folds patches into the batch axis (MobileViT's inner
    transformers) is replaced by the nearest enclosing module that keeps samples
    first (its block); a module whose ``forward`` did not run on the first two
    samples is left out, said in a warning (modules known never to run, as
    ``MultiheadAttention.out_proj``, are no default layers: :func:`find_layers`).
    """
    recorded = probe(None, layers)["original"]
    ran = {key.split("#")[0] for key in recorded}
    folded = {key.split("#")[0] for key, a in recorded.items() if a.ndim == 0 or a.shape[0] != 2}
    if not folded and ran >= set(layers):
        return layers
    idle = [name for name in layers if name not in ran]
    if idle:
        warnings.warn(
            f"default layers {', '.join(map(repr, idle))} left out: their forward did not "
            "run on the first two inputs (name them in layers= to get rows that say so)",
            UserWarning,
            stacklevel=3,
        )
    kept = [name for name in layers if name in ran and name not in folded]
    ancestors = {}
    for name in layers:
        if name in folded:
            parts = name.split(".")
            ancestors[name] = [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
    candidates = list(dict.fromkeys(a for chain in ancestors.values() for a in chain))
    if candidates:
        found = probe(None, candidates)["original"]
        good = {k for k, a in found.items() if "#" not in k and a.ndim and a.shape[0] == 2}
        for chain in ancestors.values():
            parent = next((a for a in chain if a in good), None)
            if parent is not None:
                kept.append(parent)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(dict.fromkeys(kept), key=order.__getitem__)
