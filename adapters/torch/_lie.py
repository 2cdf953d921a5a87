"""The Lie derivative of a model's output under continuous image transformations.

Gruver, Finzi, Goldblum & Wilson (2023), "The Lie derivative for measuring learned
equivariance": for a one-parameter family of warps ``T_t`` of the input (translation
along x or y, rotation, isotropic scaling), ``L f(x) = d/dt f(T_t x)|_{t=0}`` — zero
for a model invariant to the family, and its size the local equivariance error (LEE).
For a map-valued output the warp is undone on the output, ``d/dt T_{−t} f(T_t x)``.

The warp follows the conventions of that paper's code, so that the numbers compare:
``T_t`` is an affine warp of the normalised coordinates (the image spans [−1, 1],
``align_corners=True``), sampled bilinearly with the coordinates reflected at the
border; translation moves by ``t`` in those units (the image is 2 wide), rotation is
by ``t`` radians about the centre, scaling multiplies the sampling grid by ``1 − t``.
At ``t = 0`` the sampling points are the pixels themselves, where bilinear
interpolation has a kink: its derivative there is the one-sided difference towards
the neighbour above the sampling coordinate (``floor``), times the velocity of the
pixel.

``tangent="grid"`` (the default) samples at the pixel plus the warp's displacement,
``j + (T_t p − p) · (size − 1)/2`` (``p`` the pixel's normalised coordinate), which is
exactly ``j`` at ``t = 0``: the tangent is the velocity times the difference towards
the next pixel at *every* pixel — one operator, the same at any size and in any dtype.
``tangent="reference"`` samples at the reference's ``(T_t p + 1)/2 · (size − 1)``: a
pixel's normalised coordinate is not exact in binary unless the side less one is a
power of two, and where it rounds to just below its integer ``floor`` takes the
difference towards the *other* neighbour (at 224 px, 36 of the columns and rows in
float32, 34 in float64). Both agree where the side less one is a power of two (17, 33,
65 px); docs/metrics.rst shows what the difference does to an exactly invariant
network.

``border="wrap"`` takes the neighbours outside the image from its other side instead
(the image is a torus): a translation is then a shift of the torus, which a circular
convolution commutes with.

The input's tangent ``v = d/dt T_t x`` comes from forward-mode differentiation of the
warp; ``L f = J_f(x) v`` from forward-mode differentiation of the model
(``torch.func.jvp``), or — for an operation without a forward-mode formula — from two
reverse passes (``(vᵀJ)`` differentiated in ``v``), as the reference computes it.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ._script import torchscript_deprecations

GENERATORS = ("translate_x", "translate_y", "rotate", "scale")
OUTPUTS = ("probabilities", "logits", "map")
BORDERS = ("reflect", "wrap")
TANGENTS = ("grid", "reference")


def lie_derivative(
    model,
    inputs,
    generators=GENERATORS,
    *,
    output="probabilities",
    border="reflect",
    tangent="grid",
    batch_size=64,
    device=None,
    progress=True,
):
    """Local equivariance error of a model under continuous warps of its input images.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode (restored afterwards).
    inputs : torch.Tensor or ndarray of shape (n_samples, channels, height, width)
        Images.
    generators : sequence of str, default all
        ``"translate_x"``, ``"translate_y"``, ``"rotate"``, ``"scale"``
        (module docstring: units of ``t``).
    output : {"probabilities", "logits", "map"}, default="probabilities"
        ``"probabilities"``: the softmax of the output's last axis (the reference's
        end-to-end LEE of a classifier); ``"logits"``: the output as it is;
        ``"map"``: an ``(n, c, h, w)`` output, warped back (equivariance). A dict
        output (Hugging Face's) is read at its ``"logits"`` (else its first tensor),
        a tuple at its first tensor.
    border : {"reflect", "wrap"}, default="reflect"
        Where the warp's neighbours outside the image come from (module docstring).
    tangent : {"grid", "reference"}, default="grid"
        How the sampling points of the warp are computed (module docstring; the
        input's tangent at ``t = 0``). ``"grid"``: the pixel plus the warp's
        displacement, so that the tangent is the velocity times the difference towards
        the next pixel at every pixel, at every size and in every dtype — an exactly
        invariant model reads 0 to rounding. ``"reference"``: the reference code's
        coordinates, whose rounding takes the difference towards the previous pixel at
        some pixels, depending on the size and the dtype (docs/metrics.rst: an exactly
        invariant circular linear CNN then reads, at 16, 32 or 224 px, from 1 % to all
        of the LEE of the same CNN with a ReLU, instead of 0). The two agree where the
        image's side less one is a power of two (17, 33, 65 px). ``"grid"`` is the
        default because its tangent is one operator whatever the size and dtype;
        ``"reference"`` reproduces the published code's numbers at the other sizes.
    batch_size : int, default=64
    device : str or torch.device, optional
        Default CUDA when available, else CPU.
    progress : bool, default=True

    Returns
    -------
    pandas.DataFrame
        One row per sample, one column per generator: the mean absolute Lie
        derivative over the output's entries (``|L f|`` averaged over classes, as the
        reference reports it). ``frame.mean()`` is the model's LEE per generator.

    Examples
    --------
    >>> import torch
    >>> from seis_sklearn.adapters.torch import lie_derivative
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
    ...                           torch.nn.LazyLinear(10))
    >>> x = torch.randn(8, 3, 17, 17)
    >>> _ = net(x)
    >>> lee = lie_derivative(net, x, progress=False)
    >>> list(lee.columns), bool((lee.mean() > 0).all())
    (['translate_x', 'translate_y', 'rotate', 'scale'], True)
    """
    from seis_sklearn.report import _pandas

    torch, x, generators, device = _check(
        model, inputs, generators, output, border, batch_size, device, tangent
    )
    rows = {name: [] for name in generators}
    with evaluating(model), progress_bar_of(len(x), progress) as bar:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device)
            for name in generators:
                derivative = _lie_derivative(model, batch, name, output, border, tangent,
                                             torch)  # fmt: skip
                rows[name].append(_mean_abs(derivative))
            if bar is not None:
                bar.update(len(batch))
    frame = _pandas().DataFrame({k: torch.cat(v).double().numpy() for k, v in rows.items()})
    frame.index.name = "sample"
    frame.attrs.update(output=output, border=border, tangent=tangent)
    return frame


@contextlib.contextmanager
def progress_bar_of(total, enabled, desc="Lie derivative"):
    """A progress bar over samples (None when disabled), closed afterwards."""
    from .._common import progress_bar

    bar = progress_bar(total, enabled, desc=desc)
    try:
        yield bar
    finally:
        if bar is not None:
            bar.close()


@contextlib.contextmanager
def evaluating(model):
    """The model in eval mode, every module's mode restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield model
    finally:
        for module, training in modes.items():
            module.train(training)


def _mean_abs(t):
    """Per sample, the mean absolute entry (on the host)."""
    return t.abs().flatten(1).mean(dim=1).detach().cpu()


def _check(model, inputs, generators, output, border, batch_size, device, tangent="grid"):
    """torch, the inputs as a tensor, the generators as a list and the device, checked."""
    from . import _import_torch

    torch = _import_torch()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if isinstance(generators, str):
        generators = [generators]
    generators = list(generators)
    for name in generators:
        if name not in GENERATORS:
            raise ValueError(
                f"generators: unknown generator {name!r}; choose from "
                f"{', '.join(map(repr, GENERATORS))}"
            )
    if not generators:
        raise ValueError("generators is empty: name at least one")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUTS))}; got {output!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
    x = (
        torch.from_numpy(np.ascontiguousarray(inputs))
        if isinstance(inputs, np.ndarray)
        else inputs
    )
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(
            "inputs must be images of shape (n_samples, channels, height, width); got "
            f"{getattr(inputs, 'shape', type(inputs).__name__)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"inputs must be floating point; got {x.dtype}")
    check_finite_images(x)
    if border not in BORDERS:
        raise ValueError(f"border must be one of {', '.join(map(repr, BORDERS))}; got {border!r}")
    if not isinstance(tangent, str) or tangent not in TANGENTS:
        raise ValueError(
            f"tangent must be one of {', '.join(map(repr, TANGENTS))}; got {tangent!r}"
        )
    return torch, x, generators, resolve_device(device)


def check_finite_images(x):
    """Refuse images holding NaN or infinite values: their Lie derivative is NaN, and a
    mean over samples would silently leave them out or be NaN itself."""
    import torch

    if x.numel() == 0:
        return
    bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
    count = int(bad.sum())
    if count:
        first = int(torch.nonzero(bad)[0, 0])
        raise ValueError(
            f"inputs: {count} of {len(x)} samples hold NaN or infinite values (the first is "
            f"sample {first}); their Lie derivative is undefined — drop or repair them first"
        )


def resolve_device(device):
    """The device asked for, else CUDA when available, else the CPU."""
    import torch

    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _lie_derivative(model, x, generator, output, border, tangent, torch):
    """``L f(x)`` for one batch: the input's tangent, then the model's JVP along it."""
    v = warp_tangent(x, generator, border, tangent)
    out, derivative = _jvp(_head(model, output, torch), x, v, torch)
    if output == "map":  # d/dt T_{-t} f(T_t x) = J v − (d/ds T_s f(x))
        derivative = derivative - warp_tangent(out.detach(), generator, border, tangent)
    return derivative


def _head(model, output, torch):
    """The function of the inputs whose derivative is taken: the model's output tensor,
    its softmax for ``"probabilities"``."""

    def f(inp):
        out = per_sample_output(model(inp), len(inp), output)
        if output == "probabilities":
            return torch.softmax(out, dim=-1)
        if output == "map" and out.ndim != 4:
            raise ValueError(
                f"output='map' needs an (n, c, h, w) output; the model gives {tuple(out.shape)}"
            )
        return out

    return f


def output_tensor(out):
    """A model's output as one tensor: a dict's ``"logits"`` (else its first tensor
    value; Hugging Face's outputs are dicts), a tuple's or list's first tensor."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        if isinstance(out.get("logits"), torch.Tensor):
            return out["logits"]
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"the model's output holds no tensor: {type(out).__name__}")


def per_sample_output(raw, n_samples, output):
    """:func:`output_tensor` of a model's output, checked to hold one row per sample.

    Raises
    ------
    ValueError
        Naming ``output`` and, for a dict, its keys: the tensor read is a scalar (a
        loss) or has another first axis.
    """
    out = output_tensor(raw)
    if out.ndim and out.shape[0] == n_samples:
        return out
    if isinstance(raw, dict):
        keys = ", ".join(map(repr, raw.keys()))
        read = "'logits'" if "logits" in raw else "its first tensor"
        what = f"a dict with keys {keys}; read at {read}"
        fix = "return the per-sample output under the key 'logits' (or first)"
    elif isinstance(raw, (tuple, list)):
        what = f"a {type(raw).__name__} of {len(raw)}; read at its first tensor"
        fix = "return the per-sample output first"
    else:
        what, fix = "a tensor", "return one row per sample"
    raise ValueError(
        f"output={output!r}: the model's output is {what}, of shape {tuple(out.shape)} — "
        f"not one row per sample of the batch of {n_samples}; {fix}, or wrap the model in a "
        "module that returns that tensor"
    )


def _jvp(f, x, v, torch):
    """``(f(x), J_f(x) v)``: forward mode, or two reverse passes where an operation has
    no forward-mode formula."""
    # attention by its plain composition of products and a softmax: fused kernels
    # (flash attention) have neither a forward-mode formula nor a double backward
    # torch.func.jvp scripts a helper, and torch >= 2.10 warns that TorchScript is
    # deprecated at each call: not the user's to act on
    with _math_attention(torch), torchscript_deprecations():
        try:
            return torch.func.jvp(f, (x,), (v,))
        except (NotImplementedError, RuntimeError) as exc:
            if "forward AD" not in str(exc) and "forward-mode" not in str(exc):
                raise
            return _jvp_by_two_vjps(f, x, v, torch)


def _math_attention(torch):
    """A context in which scaled dot-product attention is computed by its plain
    composition of products and a softmax (torch ≥ 2.3; elsewhere nothing changes)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


def _jvp_by_two_vjps(f, x, v, torch):
    """``(f(x), J_f(x) v)`` from reverse mode only: ``J v = d/du (uᵀJ)ᵀ v``."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = f(x)
        u = torch.zeros_like(out, requires_grad=True)
        (vjp,) = torch.autograd.grad(out, x, u, create_graph=True)
        (jvp,) = torch.autograd.grad(vjp, u, v)
    return out.detach(), jvp.detach()


def warp_tangent(images, generator, border="reflect", tangent="grid"):
    """``d/dt T_t x`` at ``t = 0`` for images ``(n, c, h, w)`` (module docstring)."""
    import torch

    t = torch.zeros((), dtype=images.dtype, device=images.device)
    one = torch.ones_like(t)
    images = images.detach()

    def moved(s):
        return warp(images, s, generator, border, tangent)

    with torchscript_deprecations():
        return torch.func.jvp(moved, (t,), (one,))[1]


def warp(images, t, generator, border="reflect", tangent="grid"):
    """The images warped by ``T_t`` (bilinear; the neighbours beyond the border
    reflected back, or taken from the other side with ``border="wrap"``; the sampling
    points as ``tangent`` says, module docstring)."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = images.shape
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    if generator == "translate_x":
        rows = [one, zero, t, zero, one, zero]
    elif generator == "translate_y":
        rows = [one, zero, zero, zero, one, t]
    elif generator == "rotate":
        c, s = torch.cos(t), torch.sin(t)
        rows = [c, s, zero, -s, c, zero]
    else:  # scale: the sampling grid shrinks by 1 − t (the image grows)
        rows = [one - t, zero, zero, zero, one - t, zero]
    theta = torch.stack(rows).reshape(1, 2, 3)
    if tangent == "reference":  # the normalised coordinates T_t p, scaled to pixels
        grid = F.affine_grid(theta.expand(n, 2, 3), list(images.shape), align_corners=True)
        x = (grid[..., 0] + 1) / 2 * (w - 1)
        y = (grid[..., 1] + 1) / 2 * (h - 1)
    else:  # the pixel plus the displacement T_t p − p: exactly the pixel at t = 0
        identity = torch.eye(2, 3, dtype=theta.dtype, device=theta.device)
        moved = F.affine_grid((theta - identity).expand(n, 2, 3), list(images.shape),
                              align_corners=True)  # fmt: skip
        x = torch.arange(w, dtype=t.dtype, device=t.device) + moved[..., 0] * ((w - 1) / 2)
        y = torch.arange(h, dtype=t.dtype, device=t.device)[:, None] + moved[..., 1] * (
            (h - 1) / 2
        )
    return bilinear(images, x, y, border)


def bilinear(images, x, y, border="reflect"):
    """Bilinear sampling of ``images`` (n, c, h, w) at pixel coordinates ``x`` (along the
    width) and ``y`` (n, h', w'), neighbours outside the image reflected back into it
    (``border="wrap"``: taken modulo its size); written with gathers, so that
    forward-mode differentiation runs through it (``torch.nn.functional.grid_sample``
    has none)."""
    import torch

    n, c, h, w = images.shape
    x0, y0 = torch.floor(x).detach(), torch.floor(y).detach()
    fx, fy = x - x0, y - y0  # the weights carry the derivative in the coordinates
    flat = images.reshape(n, c, h * w)
    inside = _reflect if border == "reflect" else (lambda index, size: index.remainder(size))

    def at(ix, iy):
        ix = inside(ix, w).long()
        iy = inside(iy, h).long()
        index = (iy * w + ix).reshape(n, 1, -1).expand(n, c, -1)
        return torch.gather(flat, 2, index).reshape(n, c, *x.shape[1:3])

    fx, fy = fx.unsqueeze(1), fy.unsqueeze(1)
    return (
        at(x0, y0) * (1 - fx) * (1 - fy)
        + at(x0 + 1, y0) * fx * (1 - fy)
        + at(x0, y0 + 1) * (1 - fx) * fy
        + at(x0 + 1, y0 + 1) * fx * fy
    )


def _reflect(index, size):
    """Integer positions reflected into ``[0, size − 1]`` (−1 → 1, size → size − 2)."""
    last = size - 1
    if last == 0:
        return index * 0
    return last - (last - index.abs()).abs()
