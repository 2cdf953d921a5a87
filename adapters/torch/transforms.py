"""Geometric transforms of torch tensors, with the semantics of :mod:`seis_sklearn.transforms`.

``compose`` is the numpy module's own (it chains any callables).

They run where the tensor lives (GPU included) and accept the same layouts
(``"NCHW"``, ``"NHWC"``, ``"NCDHW"``, ``"NLD"``; ``"auto"`` by ndim) and the same
conventions: ``rot90`` is ``torch.rot90`` over (H, W); ``rotate(x, 90)`` equals
``rot90(x, 1)``; ``translate(x, (dy, dx))`` moves content down and right;
``mode="circular"`` wraps, ``mode="zeros"`` fills with zeros and interpolates
against them near the edge. Exact transforms (quarter turns, flips, whole-pixel
shifts) are permutations and equal the numpy ones bit for bit. Sub-pixel shifts
are linear interpolation (equal to the numpy ones up to float rounding); rotations
and scalings use ``affine_grid``/``grid_sample`` (bilinear, zero padding,
``align_corners=True``), equal to the numpy ones within 1e-5 on float32 data.

>>> import torch
>>> from seis_sklearn.adapters.torch import transforms as T
>>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
>>> bool(torch.equal(T.rotate(x, 90), T.rot90(x)))
True
"""

from __future__ import annotations

import math
import numbers

from seis_sklearn.transforms import (
    _plane_for,
    _shift_vector,
    _spatial_axes_for,
    compose,
    parse_spec,
)

from . import _import_torch

__all__ = [
    "compose",
    "flip",
    "from_spec",
    "hflip",
    "rot90",
    "rotate",
    "scale",
    "translate",
    "vflip",
]


def _axes(x, layout):
    return _spatial_axes_for(x.ndim, layout)


def _plane(x, layout):
    return _plane_for(x.ndim, layout)


def rot90(x, k=1, *, layout="auto"):
    """Quarter turns in the H-W plane (exact), as :func:`seis_sklearn.transforms.rot90`."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int; got {type(k).__name__}")
    return _import_torch().rot90(x, int(k), dims=_plane(x, layout))


def flip(x, axis="horizontal", *, layout="auto"):
    """Mirror the grid (exact), as :func:`seis_sklearn.transforms.flip`."""
    if axis == "horizontal":
        dim = _axes(x, layout)[-1]
    elif axis == "vertical":
        dim = _plane(x, layout)[0]
    else:
        raise ValueError(f"axis must be 'horizontal' or 'vertical'; got {axis!r}")
    return _import_torch().flip(x, (dim,))


def hflip(x, *, layout="auto"):
    """Mirror left-right."""
    return flip(x, "horizontal", layout=layout)


def vflip(x, *, layout="auto"):
    """Mirror top-bottom."""
    return flip(x, "vertical", layout=layout)


def _shift_integer(x, shift, dim, mode):
    torch = _import_torch()
    if mode == "circular":
        return torch.roll(x, shift, dims=dim)
    n = x.shape[dim]
    out = torch.zeros_like(x)
    if abs(shift) >= n:
        return out
    src = x.narrow(dim, max(0, -shift), n - abs(shift))
    out.narrow(dim, max(0, shift), n - abs(shift)).copy_(src)
    return out


def translate(x, shift, *, layout="auto", mode="circular"):
    """Translate by whole or fractional pixels (linear interpolation), per spatial axis.

    Parameters
    ----------
    x : torch.Tensor
    shift : float or sequence of float
        As in :func:`seis_sklearn.transforms.translate` (a scalar moves along the
        last spatial axis).
    layout : str, default="auto"
    mode : {"circular", "zeros"}, default="circular"

    Returns
    -------
    torch.Tensor
    """
    if mode not in ("circular", "zeros"):
        raise ValueError(f"mode must be 'circular' or 'zeros'; got {mode!r}")
    axes = _axes(x, layout)
    shifts = _shift_vector(shift, len(axes))
    out = x
    for dim, s in zip(axes, shifts, strict=True):
        whole = math.floor(s)
        frac = s - whole
        if frac == 0.0:
            out = _shift_integer(out, int(whole), dim, mode)
        else:  # linear interpolation between the two neighbouring whole shifts
            out = (1.0 - frac) * _shift_integer(out, int(whole), dim, mode) + frac * (
                _shift_integer(out, int(whole) + 1, dim, mode)
            )
    return out


def _affine(x, layout, plane_matrix):
    """Bilinear resampling of the H-W plane: output offset u reads input offset M·u."""
    torch = _import_torch()
    h_dim, w_dim = _plane(x, layout)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    moved = torch.movedim(x, (h_dim, w_dim), (-2, -1))
    lead = moved.shape[:-2]
    H, W = moved.shape[-2:]
    planes = moved.reshape(-1, 1, H, W)
    (a, b), (c, d) = plane_matrix  # rows: (row, col) of the input offset
    sh = (H - 1) / 2 if H > 1 else 1.0
    sw = (W - 1) / 2 if W > 1 else 1.0
    # normalised coordinates: x = col / sw, y = row / sh (align_corners=True)
    theta = torch.tensor(
        [[d, c * sh / sw, 0.0], [b * sw / sh, a, 0.0]], dtype=planes.dtype, device=planes.device
    )
    grid = torch.nn.functional.affine_grid(
        theta.expand(planes.shape[0], 2, 3), list(planes.shape), align_corners=True
    )
    out = torch.nn.functional.grid_sample(
        planes, grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return torch.movedim(out.reshape(*lead, H, W), (-2, -1), (h_dim, w_dim))


def rotate(x, angle, *, layout="auto"):
    """Rotate the H-W plane by ``angle`` degrees about its centre (bilinear, zero fill).

    Multiples of 90° on a square grid are done exactly by :func:`rot90`.
    """
    if not math.isfinite(angle):
        raise ValueError(f"angle must be finite; got {angle!r}")
    h_dim, w_dim = _plane(x, layout)
    if float(angle) % 90.0 == 0.0 and x.shape[h_dim] == x.shape[w_dim]:
        return rot90(x, int(round(float(angle) / 90.0)) % 4, layout=layout)
    t = math.radians(float(angle))
    c, s = math.cos(t), math.sin(t)
    return _affine(x, layout, ((c, s), (-s, c)))


def scale(x, factor, *, layout="auto"):
    """Zoom the H-W plane about its centre, same shape (bilinear, zero fill)."""
    factors = (factor, factor) if isinstance(factor, numbers.Real) else tuple(factor)
    if len(factors) != 2 or not all(math.isfinite(f) and f > 0 for f in factors):
        raise ValueError(f"factor must be positive and finite; got {factor!r}")
    return _affine(x, layout, ((1.0 / factors[0], 0.0), (0.0, 1.0 / factors[1])))


def from_spec(spec):
    """The torch transform a text spec describes (:func:`seis_sklearn.transforms.parse_spec`).

    Parameters
    ----------
    spec : str
        E.g. ``"rot90"``, ``"hflip"``, ``"shift:4"``, ``"rotate:15"``,
        ``"rot90+shift:2"``.

    Returns
    -------
    callable
        ``f(x, layout="auto")`` on tensors.
    """
    from functools import partial

    steps = [partial(globals()[name], **kwargs) for name, kwargs in parse_spec(spec)]
    return compose(*steps)
