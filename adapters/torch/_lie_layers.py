"""The Lie derivative layer by layer: each module's share of the output's.

Gruver et al. (2023, §5 and ``lee/layerwise_lee.py``) attribute a model's local
equivariance error to its layers. A module ``m`` called on ``x_m`` has its own Lie
derivative ``L m = d/dt T_{−t} m(T_t x_m)|_{t=0}`` — the warp applied to its input and
undone on its output where that is an image (only the first where it is not; zero
where the input is not an image) — and contributes ``J_{f←m} L m`` to the output's,
the rest of the network's Jacobian applied to it. For a network that is a chain of
the modules, the contributions add up to the output's Lie derivative exactly (the
chain rule telescopes: the warp's tangent on each module's output is taken back by
the next module's); operations outside the modules (a functional ReLU, attention's
products, a residual sum — the last commutes with every warp) are in no module's.

The reference estimates ``‖J_{f←m} L m‖²`` from random projections of the output's
gradient (100 backward passes per image); here each contribution is computed exactly,
by forward-mode differentiation: one pass records the modules' inputs, then per
module ``L m`` (a JVP of the module alone) is injected at its output as the tangent of
a forward-mode pass of the rest of the network.

A module's tensors are images where their shape says so, read as the layerwise report
reads its layers (:mod:`seis_sklearn.adapters._layout`): 4-D with two axes that tile the
input's grid at some stride (NCHW, else NHWC — a Swin stage); 3-D tokens whose last
``L − p`` tokens tile it (``p`` prefix tokens: the model's class and register tokens where
it says, else 0, 1 or 2, as the reference allows) — their tangent is the warp's on the
grid of patches, zero on the prefix tokens.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ._lie import (
    GENERATORS,
    _check,
    _head,
    _jvp,
    _mean_abs,
    evaluating,
    output_tensor,
    progress_bar_of,
    resolve_device,
    warp_tangent,
)

#: Modules left out of the default sites: they are the identity at evaluation.
_IDENTITIES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "Identity",
               "DropPath")  # fmt: skip


def layerwise_lie_derivative(
    model,
    inputs,
    generators=GENERATORS,
    *,
    layers=None,
    output="probabilities",
    border="reflect",
    tangent="grid",
    batch_size=32,
    device=None,
    progress=True,
):
    """Each module's contribution to the Lie derivative of a model's output.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode (restored afterwards). In-place activations are fine.
    inputs : torch.Tensor or ndarray of shape (n_samples, channels, height, width)
    generators : sequence of str, default all four
        As in :func:`~seis_sklearn.adapters.torch.lie_derivative`.
    layers : sequence of str, optional
        Names of the modules to attribute to (any modules: blocks or leaves). Default:
        every leaf module (no children) that is not an identity at evaluation
        (dropout, ``Identity``).
    output, border, tangent : str
        As in :func:`~seis_sklearn.adapters.torch.lie_derivative` (``tangent="grid"``
        by default: the same tangent at every pixel, so that an exactly invariant
        network's contributions read 0 at every size; ``"reference"``: the reference
        code's).
    batch_size : int, default=32
    device : str or torch.device, optional
        Default CUDA when available, else CPU.
    progress : bool, default=True

    Returns
    -------
    pandas.DataFrame
        One row per call of a module, in the order of the calls (a module called
        several times gives ``name#1``, ``name#2``, … as the layerwise report does),
        with ``module`` (its class), ``depth`` and per generator ``g``:

        * ``g``: the mean over the samples of the mean absolute entry of the
          contribution ``J_{f←m} L m`` — the statistic
          :func:`~seis_sklearn.adapters.torch.lie_derivative` gives the output's. These
          do *not* add up to the output's: the mean absolute value of a sum is at most
          the sum of the mean absolute values (contributions of opposite signs cancel
          in the output), so in a chain of modules they add up to at least the
          output's LEE, often more.
        * ``g + "_signed"``: the same mean of ``sign(L f) · J_{f←m} L m``, entry by
          entry — the contribution's component along the signs of the output's Lie
          derivative. These add up: since ``Σ_m J_{f←m} L m`` plus what no module
          accounts for is ``L f`` and ``sign(L f) · L f = |L f|``, the column's sum plus
          ``attrs["unattributed_signed"]`` is the output's LEE exactly. A negative
          value is a module that cancels part of the others'.

        ``attrs["output_lee"]`` holds the output's LEE (per generator),
        ``attrs["unattributed"]`` the mean absolute entry of what no module's
        contribution accounts for (``L f − Σ_m J_{f←m} L m``: operations outside the
        modules) and ``attrs["unattributed_signed"]`` its signed share.

    Notes
    -----
    Cost per batch and generator: one forward pass, one JVP per module alone and one
    forward-mode pass of the network per module — for the leaves of a large network,
    many; name its blocks in ``layers`` instead.

    Examples
    --------
    >>> import torch
    >>> from seis_sklearn.adapters.torch import layerwise_lie_derivative
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
    ...                           torch.nn.Linear(4, 10))
    >>> lee = layerwise_lie_derivative(net, torch.randn(4, 3, 17, 17), ["rotate"],
    ...                                progress=False)
    >>> list(lee.index)
    ['0', '1', '2', '3', '4']
    >>> float(lee.loc["4", "rotate"])  # the linear head sees no image: nothing to add
    0.0
    >>> signed = lee["rotate_signed"].sum() + lee.attrs["unattributed_signed"]["rotate"]
    >>> bool(abs(signed - lee.attrs["output_lee"]["rotate"]) < 1e-6)  # the signed shares add up
    True
    """
    torch, x, generators, device = _check(
        model, inputs, generators, output, border, batch_size, device, tangent
    )
    batches = (x[start : start + batch_size] for start in range(0, len(x), batch_size))
    return attribute(model, batches, len(x), generators, layers, output, border, device,
                     progress, tangent)  # fmt: skip


def attribute(model, batches, n_samples, generators, layers, output, border, device, progress,
              tangent="grid"):  # fmt: skip
    """:func:`layerwise_lie_derivative` over batches of images (tensors), checked;
    ``output="auto"``: probabilities of a 2-D output, ``"map"`` of an image, else the
    output as it is (the layerwise report's choice)."""
    import torch

    from seis_sklearn.report import _pandas

    from . import _check_layers, prefix_tokens

    if layers is None:
        layers = [
            name
            for name, m in model.named_modules()
            if name and not any(True for _ in m.children()) and type(m).__name__ not in _IDENTITIES
        ]
        if not layers:
            raise ValueError("layers: the model has no module to attribute to; name the layers")
    layers, _ = _check_layers(model, layers)
    sites = sums = signed_sums = None
    counts, total = 0, dict.fromkeys(generators, 0.0)
    rest, rest_signed = dict.fromkeys(generators, 0.0), dict.fromkeys(generators, 0.0)
    try:
        label = "Lie derivative by layer"
        with evaluating(model), progress_bar_of(n_samples, progress, label) as bar:
            for batch in batches:
                batch = batch.to(device)
                if sites is None:  # the first batch says the grid and the output
                    sites = _Sites(model, layers, tuple(batch.shape[-2:]), prefix_tokens(model))
                    output = _auto_output(model, batch, sites) if output == "auto" else output
                    head, sums, signed_sums = _head(model, output, torch), {}, {}
                calls = sites.record(batch)
                for generator in generators:
                    whole, parts = _attribution(sites, calls, head, batch, generator, output,
                                                border, tangent, torch)  # fmt: skip
                    sign = torch.sign(whole)
                    total[generator] += float(_mean_abs(whole).double().sum())
                    unattributed = whole - sum(parts.values())
                    rest[generator] += float(_mean_abs(unattributed).double().sum())
                    rest_signed[generator] += float(_mean_signed(  # in float64: adds up
                        whole.double() - sum(part.double() for part in parts.values()), sign
                    ).sum())  # fmt: skip
                    for key, part in parts.items():
                        entry = sums.setdefault(key, dict.fromkeys(generators, 0.0))
                        entry[generator] += float(_mean_abs(part).double().sum())
                        entry = signed_sums.setdefault(key, dict.fromkeys(generators, 0.0))
                        entry[generator] += float(_mean_signed(part, sign).sum())
                counts += len(batch)
                del calls
                if bar is not None:
                    bar.update(len(batch))
    finally:
        if sites is not None:
            sites.remove()
    if not counts:
        raise ValueError("inputs gave no samples")
    frame = (
        _pandas()
        .DataFrame(
            [
                {
                    "layer": key,
                    "module": sites.module_type(key),
                    "depth": depth,
                    **{g: value / counts for g, value in entry.items()},
                    **{f"{g}_signed": v / counts for g, v in signed_sums[key].items()},
                }  # fmt: skip
                for depth, (key, entry) in enumerate(sums.items())
            ],
            columns=[
                "layer",
                "module",
                "depth",
                *generators,
                *(f"{g}_signed" for g in generators),
            ],
        )
        .set_index("layer")
    )
    frame.attrs.update(
        output=output, border=border, tangent=tangent,
        output_lee={g: v / counts for g, v in total.items()},
        unattributed={g: v / counts for g, v in rest.items()},
        unattributed_signed={g: v / counts for g, v in rest_signed.items()},
    )  # fmt: skip
    return frame


def _auto_output(model, batch, sites):
    import torch

    sites.busy = True
    try:
        with torch.no_grad():
            out = output_tensor(model(batch[:1]))
    finally:
        sites.busy = False
    if out.ndim == 2:
        return "probabilities"
    if out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1:
        return "map"
    return "logits"


def _mean_signed(part, sign):
    """Per sample, the mean of ``sign · part`` over the entries (float64, on the host):
    the part's component along the signs of the output's Lie derivative."""
    return (part.double() * sign.double()).flatten(1).mean(dim=1).detach().cpu()


def _attribution(sites, calls, head, x, generator, output, border, tangent, torch):
    """The output's Lie derivative and each call's contribution to it, for one batch."""
    v = warp_tangent(x, generator, border, tangent)
    out, whole = _jvp(head, x, v, torch)
    if output == "map":
        whole = whole - warp_tangent(out.detach(), generator, border, tangent)
    parts = {}
    for key, call in calls.items():
        own = sites.own_derivative(call, generator, border, tangent, torch)
        if own is None:  # its input is no image: the warp does not reach it
            parts[key] = torch.zeros_like(whole)
            continue
        zero = torch.zeros((), dtype=own.dtype, device=own.device)
        with sites.injecting(key, own):
            _, parts[key] = _jvp(lambda e: head(sites.scaled(x, e)), zero, torch.ones_like(zero),
                                 torch)  # fmt: skip
        parts[key] = parts[key].detach()
    return whole.detach(), parts


class _Sites:
    """Hooks on the attributed modules: record each call's arguments, or add ``e·L m``
    to one call's output (the tangent injected)."""

    def __init__(self, model, names, grid, model_prefix):
        self.model = model
        modules = dict(model.named_modules())
        self.grid, self.model_prefix = grid, model_prefix
        self.types = {n: type(modules[n]).__name__ for n in names}
        self.mode, self.busy = None, False
        self.log, self.target, self.eps = [], None, None
        self.handles = []
        for name in names:
            module = modules[name]
            self.handles.append(
                module.register_forward_pre_hook(self._before(name), with_kwargs=True)
            )
            self.handles.append(module.register_forward_hook(self._after(name)))

    def module_type(self, key):
        return self.types[key.split("#")[0]]

    def _before(self, name):
        def hook(module, args, kwargs):
            if self.busy or self.mode != "record":
                return None
            # a copy: an in-place module overwrites its input
            args = tuple(a.detach().clone() if _is_tensor(a) else a for a in args)
            self.log.append((name, module, args, dict(kwargs)))
            return None

        return hook

    def _after(self, name):
        def hook(module, args, output):
            if self.busy or self.mode != "inject":
                return None
            self.seen[name] = self.seen.get(name, 0) + 1
            key = name if self.counts[name] == 1 else f"{name}#{self.seen[name]}"
            if key != self.target:
                return None
            return _with_added(output, self.eps * self.tangent)

        return hook

    def record(self, x):
        """One forward pass: key (``name`` or ``name#k``) → (module, args, kwargs)."""
        self.mode, self.log = "record", []
        try:
            import torch

            with torch.no_grad():
                self.model(x)
        finally:
            self.mode = None
        from . import call_keys

        names = [name for name, *_ in self.log]
        self.counts = {name: names.count(name) for name in set(names)}
        calls = {key: call for key, (_, *call) in zip(call_keys(names), self.log, strict=True)}
        self.log = []
        return calls

    def own_derivative(self, call, generator, border, tangent, torch):
        """``L m = d/dt T_{−t} m(T_t x_m)`` of one recorded call, or None where its
        input is no image."""
        module, args, kwargs = call
        position = next((i for i, a in enumerate(args) if _is_tensor(a)), None)
        if position is None:
            return None
        x = args[position]
        moved = image_tangent(x, generator, border, self.grid, self.model_prefix, tangent)
        if moved is None:
            return None

        def f(inp):
            out = module(*args[:position], inp, *args[position + 1 :], **kwargs)
            return output_tensor(out)

        self.busy = True
        try:
            out, jv = _jvp(f, x.clone(), moved, torch)
        finally:
            self.busy = False
        back = image_tangent(out.detach(), generator, border, self.grid, self.model_prefix,
                             tangent)  # fmt: skip
        return (jv if back is None else jv - back).detach()

    @contextlib.contextmanager
    def injecting(self, key, tangent):
        """Within: a forward pass adds ``e·tangent`` to call ``key``'s output."""
        self.mode, self.target, self.tangent, self.seen = "inject", key, tangent, {}
        try:
            yield
        finally:
            self.mode, self.target, self.tangent = None, None, None

    def scaled(self, x, e):
        """The input unchanged; ``e`` becomes the factor of the injected tangent."""
        self.eps = e
        return x

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _with_added(output, delta):
    """The module's output with ``delta`` added to the tensor :func:`output_tensor` reads
    (the tensor itself, a dict's ``"logits"`` or first tensor, a tuple's first tensor)."""
    import copy

    if _is_tensor(output):
        return output + delta
    if isinstance(output, dict):
        key = next(k for k in ("logits", *output) if _is_tensor(output.get(k)))
        changed = copy.copy(output)
        changed[key] = output[key] + delta
        return changed
    items = list(output)
    i = next(i for i, v in enumerate(items) if _is_tensor(v))
    items[i] = items[i] + delta
    if isinstance(output, list):
        return items
    return type(output)(*items) if hasattr(output, "_fields") else tuple(items)


def _is_tensor(a):
    import torch

    return isinstance(a, torch.Tensor)


def image_tangent(t, generator, border, grid, model_prefix, tangent="grid"):
    """The warp's tangent on a module's tensor read as images (module docstring), or
    None where it is none."""
    from .._layout import fits_grid

    if not t.is_floating_point() or t.ndim not in (3, 4):
        return None
    if t.ndim == 4:
        if t.shape[2] * t.shape[3] > 1 and fits_grid(t.shape[2], t.shape[3], grid):
            return warp_tangent(t, generator, border, tangent)
        if t.shape[1] * t.shape[2] > 1 and fits_grid(t.shape[1], t.shape[2], grid):
            moved = warp_tangent(t.permute(0, 3, 1, 2), generator, border, tangent)
            return moved.permute(0, 2, 3, 1)
        return None
    prefixes = [model_prefix] if model_prefix is not None else [0, 1, 2]
    for prefix in prefixes:
        size = _patch_grid(t.shape[1] - prefix, grid)
        if size is not None:
            break
    else:
        return None
    n, _, d = t.shape
    patches = t[:, prefix:].reshape(n, *size, d).permute(0, 3, 1, 2)
    moved = warp_tangent(patches, generator, border, tangent)
    moved = moved.permute(0, 2, 3, 1).reshape(n, -1, d)
    return _with_prefix(moved, prefix)


def _with_prefix(moved, prefix):
    import torch

    if not prefix:
        return moved
    zeros = moved.new_zeros(moved.shape[0], prefix, moved.shape[2])
    return torch.cat([zeros, moved], dim=1)


def _patch_grid(n_patches, grid):
    """``(h, w)`` of ``n_patches`` patches tiling the input grid at a stride (both sides
    rounded down, or both up), at least 2 × 2; else None."""
    H, W = grid
    for stride in range(1, max(H, W) + 1):
        for h, w in ((H // stride, W // stride), (-(-H // stride), -(-W // stride))):
            if h * w == n_patches and min(h, w) >= 2:
                return h, w
    return None


def generator_for(name, transform):
    """The continuous generator a report's transform is a finite step of, or None.

    By the callable (``functools.partial`` unwrapped, and a one-step text spec's
    ``compose``): :func:`rot90` and :func:`rotate`
    of :mod:`seis_sklearn.adapters.torch.transforms` (and numpy's and torch's
    ``rot90``) → ``"rotate"``, ``scale`` → ``"scale"``, ``translate`` along one axis →
    ``"translate_x"`` (the last, width) or ``"translate_y"``; else by the transform's
    name (``"rot…"``, ``"scale"``/``"zoom"``, ``"shift"``/``"translate"`` with ``y`` or
    ``vertical`` for the height). Flips and anything else: None.
    """
    import functools

    steps = getattr(transform, "transforms", None)  # a text spec's compose() of one step
    if isinstance(steps, tuple) and len(steps) == 1:
        transform = steps[0]
    function, kwargs = transform, {}
    while isinstance(function, functools.partial):
        kwargs = {**function.keywords, **kwargs}
        function = function.func
    called = getattr(function, "__name__", "")
    if called in ("rot90", "rotate"):
        return "rotate"
    if called == "scale":
        return "scale"
    if called == "translate" and "shift" in kwargs:
        shift = np.atleast_1d(np.asarray(kwargs["shift"], dtype=float))
        moving = np.flatnonzero(shift)
        if len(shift) == 1 or list(moving) == [len(shift) - 1]:
            return "translate_x"
        return "translate_y" if list(moving) == [len(shift) - 2] else None
    text = str(name).lower()
    if "flip" in text or "mirror" in text:
        return None
    if text.startswith("rot") or "rotat" in text:
        return "rotate"
    if "scale" in text or "zoom" in text:
        return "scale"
    if "shift" in text or "translat" in text:
        return "translate_y" if ("vertical" in text or text.endswith("y")) else "translate_x"
    return None


def lee_columns(frame, model, inputs, transforms, batch_size, device, progress):
    """The layerwise report's ``lee`` and ``lee_generator`` columns: each row's layer's
    contribution to the output's Lie derivative under its transform's generator
    (:func:`generator_for`; NaN and ``""`` where none)."""
    import torch

    from . import _batches

    generator_of = {name: generator_for(name, t) for name, t in transforms.items()}
    generators = sorted({g for g in generator_of.values() if g is not None})
    frame = frame.copy()
    frame["lee_generator"] = [generator_of.get(t) or "" for t in frame["transform"]]
    frame["lee"] = np.nan
    if not generators:
        return frame
    names = list(dict.fromkeys(str(k).split("#")[0] for k in frame["layer"]))
    floating = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    batches, n = _batches(inputs, batch_size, torch)
    batches = (b.to(floating) if floating is not None else b for b in batches)
    table = attribute(model, batches, n, generators, names, "auto", "reflect",
                      resolve_device(device), progress)  # fmt: skip
    frame["lee"] = [
        table.loc[layer, g] if g and layer in table.index else np.nan
        for layer, g in zip(frame["layer"], frame["lee_generator"], strict=True)
    ]
    frame.attrs["lee_output"] = table.attrs["output"]
    return frame
