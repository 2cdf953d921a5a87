"""Layouts and matricizations of activation arrays (SPEC §2.1).

An activation array has a *layout* that names its axes (``"NCHW"``, ``"NHWC"``,
``"NCDHW"``, ``"NLD"``, ``"ND"``) and a *matricization* turns it into a matrix
``P`` whose rows are observations and whose columns are variables. Everything
here returns a view of the input whenever the memory layout allows one.
"""

from __future__ import annotations

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
