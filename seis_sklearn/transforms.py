"""Geometric transforms of activation and image arrays, on their spatial axes.

Every function takes an array with samples first in one of the layouts of
:func:`seis_sklearn.matricize` (``"NCHW"``, ``"NHWC"``, ``"NCDHW"``, ``"NLD"``;
``"auto"`` by default) and acts on its spatial axes only: H and W (the H-W plane
of a volume for the planar transforms), or the L token axis of ``"NLD"``.

Exact transforms — :func:`rot90`, :func:`flip`, and :func:`translate` by whole
pixels — are permutations (or, zero-filled, masked permutations) of the input:
they keep its dtype and never interpolate. :func:`rotate`, :func:`scale` and
sub-pixel :func:`translate` interpolate with :mod:`scipy.ndimage` (linear by
default, ``order=``) and return float arrays (float32 stays float32).

Conventions
-----------
* ``rot90(x, 1)`` is ``np.rot90(x, 1, axes=(H, W))``; ``rotate(x, angle)`` turns
  the same way, so ``rotate(x, 90)`` equals ``rot90(x, 1)``. Rotations and
  scalings are about the grid centre ``((H-1)/2, (W-1)/2)``; on an odd-sized grid
  the centre is a pixel, so 90° steps map pixels onto pixels.
* ``translate(x, (dy, dx))`` moves content by ``dy`` rows down and ``dx``
  columns right: ``out[..., i, j] = x[..., i - dy, j - dx]``; a scalar shift moves
  along the last spatial axis (W, or L for tokens).
* Fill: ``mode="circular"`` wraps around (periodic grid); ``mode="zeros"`` fills
  what comes in from outside with zeros, interpolating against them near the
  edge (scipy's ``"grid-constant"``). Rotation and scaling fill with zeros by
  default too.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

from ._matricize import resolve_layout

__all__ = [
    "compose",
    "flip",
    "from_spec",
    "hflip",
    "parse_spec",
    "rot90",
    "rotate",
    "scale",
    "spatial_axes",
    "translate",
    "vflip",
]

_SPATIAL_AXES = {
    "NCHW": (2, 3),
    "NHWC": (1, 2),
    "NCDHW": (2, 3, 4),
    "NLD": (1,),
    "ND": (),
}
_SCIPY_MODES = {"zeros": "grid-constant", "constant": "grid-constant", "circular": "grid-wrap"}


def spatial_axes(x, layout="auto"):
    """Axes of ``x`` that the transforms act on.

    Parameters
    ----------
    x : ndarray
        Array with samples first.
    layout : str, default="auto"
        Layout of ``x``.

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn.transforms import spatial_axes
    >>> spatial_axes(np.zeros((2, 8, 8, 3)), "NHWC")
    (1, 2)
    """
    return _spatial_axes_for(_as_array(x).ndim, layout)


def _spatial_axes_for(ndim, layout):
    """Spatial axes of an array of ``ndim`` dimensions in ``layout`` (any framework)."""
    axes = _SPATIAL_AXES[resolve_layout(layout, ndim, name="x")]
    if not axes:
        raise ValueError("x has layout 'ND', which has no spatial axes to transform")
    return axes


def _as_array(x):
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TypeError(f"x must be a numeric array; got dtype {x.dtype}")
    return x


def _plane(x, layout):
    """The (H, W) axes of ``x``: the last two spatial axes."""
    return _plane_for(np.ndim(x), layout)


def _plane_for(ndim, layout):
    """The (H, W) axes of an array of ``ndim`` dimensions (any framework)."""
    axes = _spatial_axes_for(ndim, layout)
    if len(axes) < 2:
        raise ValueError(
            f"this transform needs a 2-D spatial grid, but layout {layout!r} of x has a "
            "single spatial axis (tokens)"
        )
    return axes[-2:]


def _float_dtype(x):
    return x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _fill_mode(mode, name="mode"):
    if mode in _SCIPY_MODES:
        return _SCIPY_MODES[mode]
    allowed = ("grid-constant", "nearest", "reflect", "mirror", "grid-wrap", "wrap", "grid-mirror")
    if mode in allowed:
        return mode
    raise ValueError(
        f"{name} must be 'zeros', 'circular', 'constant' or a scipy.ndimage mode "
        f"{allowed}; got {mode!r}"
    )


def rot90(x, k=1, *, layout="auto"):
    """Rotate by ``k`` quarter turns in the H-W plane (exact).

    Parameters
    ----------
    x : ndarray
        Activations or images, samples first.
    k : int, default=1
        Number of quarter turns, in the direction of ``np.rot90``.
    layout : str, default="auto"
        Layout of ``x``.

    Returns
    -------
    ndarray
        A contiguous copy; same dtype. Shape has H and W swapped for odd ``k``.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn.transforms import rot90
    >>> x = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> rot90(x)[0, 0]
    array([[1., 3.],
           [0., 2.]])
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an int; got {type(k).__name__}")
    x = _as_array(x)
    return np.ascontiguousarray(np.rot90(x, int(k), axes=_plane(x, layout)))


def flip(x, axis="horizontal", *, layout="auto"):
    """Mirror the grid (exact).

    Parameters
    ----------
    x : ndarray
        Activations or images, samples first.
    axis : {"horizontal", "vertical"}, default="horizontal"
        ``"horizontal"`` mirrors left-right (reverses W, or L for tokens);
        ``"vertical"`` mirrors top-bottom (reverses H).
    layout : str, default="auto"
        Layout of ``x``.

    Returns
    -------
    ndarray
        A contiguous copy; same dtype.
    """
    x = _as_array(x)
    if axis == "horizontal":
        ax = spatial_axes(x, layout)[-1]
    elif axis == "vertical":
        ax = _plane(x, layout)[0]
    else:
        raise ValueError(f"axis must be 'horizontal' or 'vertical'; got {axis!r}")
    return np.ascontiguousarray(np.flip(x, axis=ax))


def hflip(x, *, layout="auto"):
    """Mirror left-right: ``flip(x, "horizontal")``.

    Parameters
    ----------
    x : ndarray
        Activations or images, samples first.
    layout : str, default="auto"
        Layout of ``x``.

    Returns
    -------
    ndarray
    """
    return flip(x, "horizontal", layout=layout)


def vflip(x, *, layout="auto"):
    """Mirror top-bottom: ``flip(x, "vertical")``.

    Parameters
    ----------
    x : ndarray
        Activations or images, samples first.
    layout : str, default="auto"
        Layout of ``x``.

    Returns
    -------
    ndarray
    """
    return flip(x, "vertical", layout=layout)


def _shift_vector(shift, n_axes):
    if isinstance(shift, numbers.Real) and not isinstance(shift, bool):
        vec = [0.0] * (n_axes - 1) + [float(shift)]
    else:
        try:
            if isinstance(shift, (str, bytes)):
                raise TypeError
            vec = [float(s) for s in shift]
        except (TypeError, ValueError):
            raise TypeError(
                f"shift must be a number or a sequence of numbers; got {shift!r}"
            ) from None
        if len(vec) != n_axes:
            raise ValueError(
                f"shift must have one entry per spatial axis ({n_axes}); got {len(vec)}"
            )
    if not all(np.isfinite(vec)):
        raise ValueError(f"shift must be finite; got {shift!r}")
    return vec


def translate(x, shift, *, layout="auto", mode="circular", order=1):
    """Translate the grid by whole or fractional pixels.

    Parameters
    ----------
    x : ndarray
        Activations or images, samples first.
    shift : float or sequence of float
        Displacement per spatial axis, e.g. ``(dy, dx)``; a scalar moves along
        the last spatial axis. ``out[..., i, j] = x[..., i - dy, j - dx]``.
    layout : str, default="auto"
        Layout of ``x``.
    mode : {"circular", "zeros"} or a scipy.ndimage mode, default="circular"
        What enters from outside the grid: wrapped-around content or zeros.
    order : int, default=1
        Spline order for fractional shifts (1 = linear); whole-pixel shifts are
        exact whatever the order.

    Returns
    -------
    ndarray
        Same dtype for whole-pixel shifts; float for fractional ones.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn.transforms import translate
    >>> x = np.arange(5.0).reshape(1, 5, 1)  # NLD: 5 tokens
    >>> translate(x, 2)[0, :, 0]
    array([3., 4., 0., 1., 2.])
    >>> translate(x, 2, mode="zeros")[0, :, 0]
    array([0., 0., 0., 1., 2.])
    >>> translate(x, 0.5)[0, :, 0]
    array([2. , 0.5, 1.5, 2.5, 3.5])
    """
    x = _as_array(x)
    axes = spatial_axes(x, layout)
    vec = _shift_vector(shift, len(axes))
    scipy_mode = _fill_mode(mode)
    if all(float(s).is_integer() for s in vec):
        ints = [int(s) for s in vec]
        if scipy_mode in ("grid-wrap", "wrap"):
            return np.ascontiguousarray(np.roll(x, ints, axis=axes))
        if scipy_mode == "grid-constant":
            return _integer_shift_zero(x, ints, axes)

    def apply(a, ax):
        vector = np.zeros(a.ndim)
        vector[list(ax)] = vec
        return ndimage.shift(
            a, vector, order=order, mode=scipy_mode, cval=0.0, prefilter=order > 1
        )

    return _interpolate(x, axes, apply, order)


def _integer_shift_zero(x, shifts, axes):
    out = np.zeros_like(x, order="C")
    src = [slice(None)] * x.ndim
    dst = [slice(None)] * x.ndim
    for ax, s in zip(axes, shifts, strict=True):
        n = x.shape[ax]
        if abs(s) >= n:
            return out
        src[ax] = slice(max(0, -s), n - max(0, s))
        dst[ax] = slice(max(0, s), n - max(0, -s))
    out[tuple(dst)] = x[tuple(src)]
    return out


def _interpolate(x, axes, apply, order):
    """Run ``apply(array, spatial_axes)`` in float, one slice at a time when it prefilters.

    Linear (order ≤ 1) interpolation never mixes values along the axes it does
    not move, so the whole stack is done in one call; a spline prefilter would
    run along every axis, so higher orders go slice by slice.
    """
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or not 0 <= order <= 5:
        raise ValueError(f"order must be an int in [0, 5]; got {order!r}")
    dtype = _float_dtype(x)
    xf = x.astype(dtype, copy=False)
    if order <= 1:
        return np.ascontiguousarray(apply(xf, axes))
    moved = np.moveaxis(xf, axes, range(x.ndim - len(axes), x.ndim))
    lead = moved.shape[: x.ndim - len(axes)]
    stack = moved.reshape((-1,) + moved.shape[len(lead) :])
    spatial = tuple(range(len(axes)))
    out = np.stack([apply(plane, spatial) for plane in stack]).reshape(moved.shape)
    return np.ascontiguousarray(np.moveaxis(out, range(x.ndim - len(axes), x.ndim), axes))


def _affine_in_plane(x, axes, plane_matrix, *, order, mode, cval):
    """Affine map of the spatial grid about its centre, acting in the H-W plane.

    ``plane_matrix`` maps output offsets from the centre to input offsets.
    """
    scipy_mode = _fill_mode(mode)

    def apply(a, ax):
        matrix = np.eye(a.ndim)
        hh, ww = ax[-2], ax[-1]
        matrix[np.ix_([hh, ww], [hh, ww])] = plane_matrix
        centre = (np.array(a.shape, dtype=float) - 1) / 2
        mask = np.zeros(a.ndim, dtype=bool)
        mask[[hh, ww]] = True
        c = np.where(mask, centre, 0.0)
        offset = c - matrix @ c
        return ndimage.affine_transform(
            a,
            matrix,
            offset=offset,
            order=order,
            mode=scipy_mode,
            cval=cval,
            prefilter=order > 1,
        )

    return _interpolate(x, axes, apply, order)


def rotate(x, angle, *, layout="auto", order=1, mode="zeros", cval=0.0):
    """Rotate the H-W plane by any angle about the grid centre.

    Parameters
    ----------
    x : ndarray
        Activations or images, samples first.
    angle : float
        Degrees, in the direction of :func:`rot90` (``rotate(x, 90)`` equals
        ``rot90(x, 1)``). Multiples of 90° on a square grid are done exactly by
        :func:`rot90`.
    layout : str, default="auto"
        Layout of ``x``.
    order : int, default=1
        Spline order of the interpolation (1 = bilinear).
    mode : str, default="zeros"
        Fill outside the grid: ``"zeros"``, ``"constant"`` (``cval``),
        ``"circular"``, or another scipy.ndimage mode. Values near the edge are
        interpolated against the fill (scipy's ``"grid-constant"``).
    cval : float, default=0.0
        Fill value for ``mode="constant"``.

    Returns
    -------
    ndarray
        Float, same shape as ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn.transforms import rot90, rotate
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 7, 7))
    >>> bool(np.array_equal(rotate(x, 90), rot90(x)))
    True
    """
    x = _as_array(x)
    axes = _plane(x, layout)
    if not np.isfinite(angle):
        raise ValueError(f"angle must be finite; got {angle!r}")
    if float(angle) % 90.0 == 0.0 and x.shape[axes[0]] == x.shape[axes[1]]:
        return rot90(x, int(round(float(angle) / 90.0)) % 4, layout=layout).astype(
            _float_dtype(x), copy=False
        )
    theta = np.deg2rad(float(angle))
    c, s = np.cos(theta), np.sin(theta)
    # output offset (i, j) from the centre reads input offset R·(i, j).
    matrix = np.array([[c, s], [-s, c]])
    return _affine_in_plane(x, axes, matrix, order=order, mode=mode, cval=cval)


def scale(x, factor, *, layout="auto", order=1, mode="zeros", cval=0.0):
    """Zoom the grid about its centre, keeping the array's shape.

    Parameters
    ----------
    x : ndarray
        Activations or images, samples first.
    factor : float or (float, float)
        Magnification (> 1 enlarges content, < 1 shrinks it), for H and W or
        both; ``out[c + f·u] = x[c + u]``.
    layout : str, default="auto"
        Layout of ``x``. Token arrays (``"NLD"``) scale along L.
    order : int, default=1
        Spline order of the interpolation.
    mode : str, default="zeros"
        Fill for what comes from outside the grid, as in :func:`rotate`.
    cval : float, default=0.0
        Fill value for ``mode="constant"``.

    Returns
    -------
    ndarray
        Float, same shape as ``x``.
    """
    x = _as_array(x)
    axes = spatial_axes(x, layout)
    factors = np.broadcast_to(np.asarray(factor, dtype=float), (min(2, len(axes)),))
    if not (np.isfinite(factors).all() and (factors > 0).all()):
        raise ValueError(f"factor must be positive and finite; got {factor!r}")
    if len(axes) == 1:
        scipy_mode = _fill_mode(mode)
        f = float(factors[0])

        def apply(a, ax):
            centre = (a.shape[ax[0]] - 1) / 2
            diag = np.ones(a.ndim)
            diag[ax[0]] = 1.0 / f
            offset = np.zeros(a.ndim)
            offset[ax[0]] = centre - centre / f
            return ndimage.affine_transform(
                a,
                np.diag(diag),
                offset=offset,
                order=order,
                mode=scipy_mode,
                cval=cval,
                prefilter=order > 1,
            )

        return _interpolate(x, axes, apply, order)
    return _affine_in_plane(x, axes, np.diag(1.0 / factors), order=order, mode=mode, cval=cval)


def compose(*transforms):
    """Chain transforms, applied left to right.

    Parameters
    ----------
    *transforms : callable
        Each maps an array to an array; keyword arguments given to the composed
        function (e.g. ``layout=``) are passed to every one of them.

    Returns
    -------
    callable
        ``f(x, **kwargs) = transforms[-1](... transforms[0](x, **kwargs) ..., **kwargs)``.

    Examples
    --------
    >>> import numpy as np
    >>> from functools import partial
    >>> from seis_sklearn.transforms import compose, hflip, rot90
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 5, 5))
    >>> f = compose(partial(rot90, k=1), hflip)
    >>> bool(np.array_equal(f(x), hflip(rot90(x))))
    True
    """
    for t in transforms:
        if not callable(t):
            raise TypeError(f"compose takes callables; got {t!r}")

    def composed(x, **kwargs):
        for t in transforms:
            x = t(x, **kwargs)
        return x

    composed.transforms = transforms
    return composed


_SPEC_NAMES = ("rot90", "flip", "hflip", "vflip", "shift", "rotate", "scale")
_SPEC_EXAMPLES = "e.g. rot90, rot90:2, hflip, vflip, shift:4, shift:2,-3, rotate:15, scale:1.2"


def parse_spec(spec):
    """Parse a transform written as text (as the ``seis`` command line takes it).

    Parameters
    ----------
    spec : str
        Steps joined by ``+`` (applied left to right), each ``name`` or
        ``name:arguments``:

        ==================  ===============================================
        ``rot90[:k]``       quarter turns (default 1)
        ``flip``/``hflip``  mirror left–right; ``vflip`` top–bottom
        ``shift:dx``        circular shift along the last spatial axis;
                            ``shift:dy,dx`` per axis (fractions interpolate)
        ``rotate:degrees``  rotation about the grid centre, zero fill
        ``scale:factor``    zoom about the grid centre, zero fill
        ==================  ===============================================

    Returns
    -------
    list of (str, dict)
        The function of this module and its keyword arguments, per step.

    Examples
    --------
    >>> from seis_sklearn.transforms import parse_spec
    >>> parse_spec("rot90+shift:2,-3")
    [('rot90', {'k': 1}), ('translate', {'shift': (2.0, -3.0)})]
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"transform must be a non-empty string ({_SPEC_EXAMPLES}); got {spec!r}")
    steps = []
    for step in spec.replace(" ", "").split("+"):
        name, _, args = step.partition(":")
        try:
            steps.append(_parse_step(name, args))
        except ValueError:
            if name not in _SPEC_NAMES:
                raise ValueError(
                    f"transform {spec!r}: unknown step {name!r}; expected one of "
                    f"{', '.join(_SPEC_NAMES)} ({_SPEC_EXAMPLES})"
                ) from None
            raise ValueError(
                f"transform {spec!r}: bad arguments {args!r} for {name!r} ({_SPEC_EXAMPLES})"
            ) from None
    return steps


def _parse_step(name, args):
    numbers_ = [float(a) for a in args.split(",")] if args else []
    if name == "rot90" and len(numbers_) <= 1:
        k = numbers_[0] if numbers_ else 1.0
        if k != int(k):
            raise ValueError
        return "rot90", {"k": int(k)}
    if name in ("flip", "hflip", "vflip") and not numbers_:
        return ("vflip" if name == "vflip" else "hflip"), {}
    if name == "shift" and len(numbers_) in (1, 2) and all(np.isfinite(numbers_)):
        return "translate", {"shift": numbers_[0] if len(numbers_) == 1 else tuple(numbers_)}
    if name == "rotate" and len(numbers_) == 1 and np.isfinite(numbers_[0]):
        return "rotate", {"angle": numbers_[0]}
    if name == "scale" and len(numbers_) == 1 and np.isfinite(numbers_[0]) and numbers_[0] > 0:
        return "scale", {"factor": numbers_[0]}
    raise ValueError


def from_spec(spec):
    """The transform a text spec describes (see :func:`parse_spec`), as a function.

    Parameters
    ----------
    spec : str

    Returns
    -------
    callable
        ``f(x, layout="auto")`` on numpy arrays.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn.transforms import from_spec, rot90, translate
    >>> x = np.random.default_rng(0).normal(size=(2, 3, 5, 5))
    >>> f = from_spec("rot90+shift:1")
    >>> bool(np.array_equal(f(x), translate(rot90(x), 1)))
    True
    """
    from functools import partial

    steps = [partial(globals()[name], **kwargs) for name, kwargs in parse_spec(spec)]
    return compose(*steps)
