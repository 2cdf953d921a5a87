"""Layouts and matricizations of activation arrays (SPEC §2.1).

An activation array has a *layout* that names its axes (``"NCHW"``, ``"NHWC"``,
``"NCDHW"``, ``"NLD"``, ``"ND"``) and a *matricization* turns it into a matrix
``P`` whose rows are observations and whose columns are variables. Everything
here returns a view of the input whenever the memory layout allows one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYOUTS = ("auto", "NCHW", "NHWC", "NCDHW", "NLD", "ND")
MATRICIZATIONS = ("spatial", "flatten", "channel")

_AUTO_BY_NDIM = {2: "ND", 3: "NLD", 4: "NCHW", 5: "NCDHW"}
_NDIM_BY_LAYOUT = {"ND": 2, "NLD": 3, "NCHW": 4, "NHWC": 4, "NCDHW": 5}


def resolve_layout(layout, ndim, *, name="A"):
    """Return the concrete layout for an array of ``ndim`` dimensions.

    Parameters
    ----------
    layout : str
        One of :data:`LAYOUTS`; ``"auto"`` maps 2-D → ND, 3-D → NLD, 4-D → NCHW,
        5-D → NCDHW.
    ndim : int
        Number of dimensions of the activation array.
    name : str, default="A"
        Name of the array, used in error messages.

    Returns
    -------
    layout : str
        The concrete layout.
    """
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}; got {layout!r}")
    if layout == "auto":
        try:
            return _AUTO_BY_NDIM[ndim]
        except KeyError:
            raise ValueError(
                f"layout='auto' cannot interpret the {ndim}-D array {name}: activations must "
                "be 2-D (ND), 3-D (NLD), 4-D (NCHW) or 5-D (NCDHW)"
            ) from None
    expected = _NDIM_BY_LAYOUT[layout]
    if ndim != expected:
        raise ValueError(f"layout={layout!r} needs a {expected}-D array, but {name} is {ndim}-D")
    return layout


class LayoutWarning(UserWarning):
    """``layout="auto"`` read an array in a layout its shape only suggests (channels
    last), or could not tell the layout from the shape and kept the default."""


@dataclass(frozen=True)
class AutoLayout:
    """What ``layout="auto"`` makes of an array's shape (:func:`auto_layout`).

    Attributes
    ----------
    layout : str
        The concrete layout read.
    choice : str
        How it was chosen, in words (results' ``layout_choice``).
    warning : str
        A message for a reading the shape only suggests, or cannot decide
        (``""`` when the shape is clear).
    error : str
        A message for a shape that is clearly in a layout there is no name for
        (5-D channels last), ``""`` otherwise.
    """

    layout: str
    choice: str
    warning: str = ""
    error: str = ""


def _dims(sizes):
    return "×".join(map(str, sizes))


def auto_layout(shape, *, name="A", square_grid=None):
    """The layout ``layout="auto"`` reads an array of ``shape`` in (samples first).

    2-D → ND, 3-D → NLD. A 4-D array ``(N, a, b, c)`` read channels first
    (NCHW) has an ``b × c`` grid of ``a`` channels; read channels last (NHWC), an
    ``a × b`` grid of ``c`` channels. Feature maps are nearly always square, so:

    * ``b == c`` and ``a != b`` — only the channels-first grid is square: NCHW;
    * ``a == b`` and ``b != c`` — only the channels-last grid is square: read as
      **NHWC**, with a :class:`LayoutWarning` that says how to confirm it
      (``layout="NHWC"``) or to say otherwise (``layout="NCHW"``);
    * ``a == b == c`` — both readings are square: the shape cannot tell; NCHW is
      kept, with a warning that says so;
    * neither grid square — nothing suggests channels last: NCHW, no warning.

    A 5-D array ``(N, a, b, c, d)`` is NCDHW; where only the channels-last reading
    ``(N, D, H, W, C)`` has a square ``H × W`` (``b == c != d``), there is no layout
    to read it in (NDHWC): the ``error`` says how to move its channels first.

    Parameters
    ----------
    shape : tuple of int
        The array's shape, samples first.
    name : str, default="A"
        The array's name in messages.
    square_grid : str, optional
        A transform known to have produced the pair that keeps the shape only on a
        square grid (``"rot90"``): a reading whose grid is not square is then
        impossible, which decides the 4-D cases above except ``a == b == c``.

    Returns
    -------
    AutoLayout

    Examples
    --------
    >>> from seis_sklearn._matricize import auto_layout
    >>> auto_layout((64, 16, 12, 12)).layout
    'NCHW'
    >>> found = auto_layout((64, 12, 12, 16))
    >>> found.layout, found.choice
    ('NHWC', 'auto: channels last (a 12×12 grid of 16 channels; channels first would be a 12×16 grid)')
    >>> auto_layout((64, 8, 8, 8)).warning != ""
    True
    """  # noqa: E501
    ndim = len(shape)
    layout = resolve_layout("auto", ndim, name=name)
    if ndim == 5:
        return _auto_5d(shape, name)
    if ndim != 4:
        return AutoLayout(layout, f"auto: {ndim}-D is {layout}")
    a, b, c = shape[1:]
    first, last = b == c, a == b  # is the grid square, read channels first / last
    fix = f"pass layout='NHWC' if {name} is channels last, layout='NCHW' if channels first"
    if square_grid:
        if first and not last:
            return AutoLayout("NCHW", f"auto: channels first ({square_grid} needs a square grid; "
                              f"channels last would be {_dims((a, b))})")  # fmt: skip
        if last and not first:
            choice = (
                f"auto: channels last ({square_grid} needs a square grid; channels first "
                f"would be {_dims((b, c))})"
            )
            return AutoLayout("NHWC", choice)
        if not first:
            return AutoLayout(
                "NCHW", "auto: channels first (default; no square grid either way)",
                warning=(
                    f"{name} of shape {tuple(shape)} came from {square_grid}, which keeps the "
                    f"shape only on a square grid, but neither reading has one (channels first "
                    f"{_dims((b, c))}, channels last {_dims((a, b))}): read as NCHW; check "
                    f"the layout — {fix}"
                ),
            )  # fmt: skip
    if first and last:
        return AutoLayout(
            "NCHW",
            f"auto: channels first (default; {_dims(shape[1:])} could be either)",
            warning=(
                f"layout='auto' cannot tell whether {name} of shape {tuple(shape)} is channels "
                f"first or channels last (both give a {a}×{a} grid of {a} channels): read as "
                f"NCHW; {fix}"
            ),
        )
    if last:
        return AutoLayout(
            "NHWC",
            f"auto: channels last (a {_dims((a, b))} grid of {c} channels; channels first "
            f"would be a {_dims((b, c))} grid)",
            warning=(
                f"layout='auto' read {name} of shape {tuple(shape)} as channels last (NHWC: a "
                f"{_dims((a, b))} grid of {c} channels), since channels first (NCHW) would make "
                f"it a non-square {_dims((b, c))} grid of {a} channels; pass layout='NHWC' to "
                f"confirm, or layout='NCHW' if it is channels first"
            ),
        )
    if first:
        return AutoLayout("NCHW", f"auto: channels first (a {_dims((b, c))} grid of {a} channels)")
    return AutoLayout(
        "NCHW", f"auto: channels first (default; a {_dims((b, c))} grid of {a} channels)"
    )


def _auto_5d(shape, name):
    a, b, c, d = shape[1:]
    first, last = c == d, b == c  # is H × W square, read NCDHW / read (N, D, H, W, C)
    if last and not first:
        return AutoLayout(
            "NCDHW", "",
            error=(
                f"{name} of shape {tuple(shape)} looks channels last, (N, D, H, W, C): a "
                f"{_dims((a, b, c))} grid of {d} channels (read channels first, NCDHW, its "
                f"H×W would be {c}×{d}); there is no channels-last 5-D layout: move the "
                f"channels first (numpy.moveaxis({name}, -1, 1), the same for every view) and "
                f"pass layout='NCDHW', or pass layout='NCDHW' if it is channels first already"
            ),
        )  # fmt: skip
    if first and last and a == b:
        return AutoLayout(
            "NCDHW",
            f"auto: channels first (default; {_dims(shape[1:])} could be either)",
            warning=(
                f"layout='auto' cannot tell whether {name} of shape {tuple(shape)} is channels "
                "first (NCDHW) or channels last: read as NCDHW; pass layout='NCDHW' to say "
                "so, or move a channels-last array's channels first"
            ),
        )
    return AutoLayout("NCDHW", f"auto: channels first (a {_dims((b, c, d))} grid of {a} channels)")


def grid_of(shape, layout):
    """The spatial grid (or the token count) of activations of ``shape`` in ``layout``.

    Returns
    -------
    tuple of int
        ``(H, W)``, ``(D, H, W)``, ``(L,)`` or ``()`` for vectors.
    """
    if layout == "ND":
        return ()
    if layout in ("NHWC", "NLD"):
        return tuple(int(s) for s in shape[1:-1])
    return tuple(int(s) for s in shape[2:])


def check_matricization(matricization):
    """Validate a matricization mode name and return it."""
    if not isinstance(matricization, str) or matricization not in MATRICIZATIONS:
        raise ValueError(
            "matricization must be one of "
            f"{', '.join(map(repr, MATRICIZATIONS))}; got {matricization!r}"
        )
    return matricization


def _to_channels_first(A, layout):
    """Return ``A`` as (N, C, *spatial) without copying (a transposed view)."""
    if layout == "NHWC":
        return A.transpose(0, 3, 1, 2)
    if layout == "NLD":  # tokens: D features play the channels, L tokens the positions
        return A.transpose(0, 2, 1)
    return A


def _to_channels_last(A, layout):
    """Return ``A`` as (N, *spatial, C) without copying (a transposed view)."""
    if layout in ("NCHW", "NCDHW"):
        return np.moveaxis(A, 1, -1)
    return A


def matrix_shape(shape, layout, matricization):
    """Rows and columns of the matricized array of the given shape.

    Parameters
    ----------
    shape : tuple of int
        Shape of the activation array, samples first.
    layout : str
        Concrete layout (not ``"auto"``).
    matricization : {"spatial", "flatten", "channel"}
        Matricization mode.

    Returns
    -------
    rows_per_sample, n_columns : int
        Rows contributed by each sample and number of columns ``d``.
    """
    n_feat = int(np.prod(shape[1:]))
    if layout == "ND" or matricization == "flatten":
        return 1, n_feat
    channels = shape[-1] if layout in ("NHWC", "NLD") else shape[1]
    positions = n_feat // channels
    if matricization == "spatial":
        return channels, positions
    return positions, channels


def matricize(A, layout="auto", matricization="spatial"):
    """Turn an activation array into the observation × variable matrix of SPEC §2.1.

    Parameters
    ----------
    A : ndarray of shape (n_samples, ...)
        Activations, samples first.
    layout : {"auto", "NCHW", "NHWC", "NCDHW", "NLD", "ND"}, default="auto"
        Axis order of ``A``.
    matricization : {"spatial", "flatten", "channel"}, default="spatial"
        ``"spatial"``: one row per (sample, channel), one column per spatial
        position; ``"flatten"``: one row per sample, one column per feature;
        ``"channel"``: one row per (sample, position), one column per channel.

    Returns
    -------
    P : ndarray of shape (m, d)
        A view of ``A`` when its memory layout allows one, else a copy.
        Rows of two arrays of the same shape correspond one to one.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn import matricize
    >>> A = np.zeros((8, 3, 5, 5))
    >>> matricize(A).shape, matricize(A, matricization="flatten").shape
    ((24, 25), (8, 75))
    >>> matricize(A, matricization="channel").shape
    (200, 3)
    """
    A = np.asarray(A)
    layout = resolve_layout(layout, A.ndim)
    check_matricization(matricization)
    n = A.shape[0]
    if layout == "ND":
        return A
    if matricization == "flatten":
        return A.reshape(n, -1)
    rows, cols = matrix_shape(A.shape, layout, matricization)
    if matricization == "spatial":
        return _to_channels_first(A, layout).reshape(n * rows, cols)
    return _to_channels_last(A, layout).reshape(n * rows, cols)


#: The smallest spatial map spatial mode reads: on 2×2 (4 positions) or fewer, the
#: columns are too few to say anything (SPEC §2.1), and reports use flatten instead.
AUTO_MIN_POSITIONS = 5


def auto_matricization(shape, layout="auto"):
    """The matricization a layerwise report uses for activations of ``shape``.

    ``"spatial"`` when the activations have a spatial map (or token axis) of more
    than 2×2 = 4 positions, else ``"flatten"`` (which is also what any mode
    means for ``"ND"`` vectors).

    Parameters
    ----------
    shape : tuple of int
        Shape of the activation array, samples first.
    layout : str, default="auto"

    Returns
    -------
    matricization : str
    note : str
        Why, in words, for the report row.

    Examples
    --------
    >>> from seis_sklearn._matricize import auto_matricization
    >>> auto_matricization((10, 64, 7, 7))
    ('spatial', 'auto: 7×7 map')
    >>> auto_matricization((10, 512, 2, 2))
    ('flatten', 'auto: 2×2 map is too small for spatial')
    >>> auto_matricization((10, 197, 768))  # NLD: the tokens are the positions
    ('spatial', 'auto: 197 tokens')
    """
    layout = resolve_layout(layout, len(shape))
    if layout == "ND":
        return "flatten", "auto: vectors"
    channels_first = _to_channels_first(np.empty((0, *shape[1:]), dtype=np.uint8), layout)
    grid = channels_first.shape[2:]
    size = f"{grid[0]} tokens" if layout == "NLD" else "×".join(map(str, grid)) + " map"
    if int(np.prod(grid)) < AUTO_MIN_POSITIONS:
        return "flatten", f"auto: {size} is too small for spatial"
    return "spatial", f"auto: {size}"
