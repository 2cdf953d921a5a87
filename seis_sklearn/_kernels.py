"""Numba kernels for the steps of the moment pass that BLAS does not do.

Compiled on first use (``cache=True``), never at import: ``import seis_sklearn``
does not import numba. Which step uses a kernel and which uses numpy/BLAS was
decided by ``benchmarks/kernels.py``; the numbers are in ``benchmarks/README.md``.

The kernels read a 3-D view ``(n_samples, rows_per_sample, d)`` of the
activations — any strides, so transposing layouts (NHWC spatial, NCHW channel,
NLD spatial) need no copy — and write the matricized chunk ``(n·rows, d)``.
They accumulate in float64 and never use ``fastmath``. They are serial: a
parallel twin centred a chunk 2–3.7× faster on its own but gained nothing end to
end on 2 cores, where its threads contend with OpenBLAS's (benchmarks/README.md).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from ._matricize import _to_channels_first, _to_channels_last, matrix_shape


@cache
def _compiled():
    import numba

    @numba.njit(cache=True, nogil=True)
    def column_means(view):
        n, rows, d = view.shape
        total = np.zeros(d)
        for s in range(n):
            for r in range(rows):
                for j in range(d):
                    total[j] += view[s, r, j]
        return total / (n * rows)

    @numba.njit(cache=True, nogil=True)
    def centre_into(view, shift, out):
        """out[s·rows + r, j] = view[s, r, j] − shift[j]; returns (min, max) of out."""
        n, rows, d = view.shape
        lo = np.inf
        hi = -np.inf
        for s in range(n):
            for r in range(rows):
                i = s * rows + r
                for j in range(d):
                    v = view[s, r, j] - shift[j]
                    out[i, j] = v
                    if v < lo:
                        lo = v
                    if v > hi:
                        hi = v
        return lo, hi

    return column_means, centre_into


def sample_view(chunk, layout, matricization):
    """The chunk as a (n_samples, rows_per_sample, d) strided view, or None.

    ``None`` when the axes cannot be merged without a copy (e.g. an F-ordered
    array); the caller then matricizes with numpy instead.
    """
    n = chunk.shape[0]
    rows, d = matrix_shape(chunk.shape, layout, matricization)
    if layout == "ND" or matricization == "flatten":
        view = chunk.reshape(n, 1, d) if chunk.flags.c_contiguous else None
    elif matricization == "spatial":
        view = _reshaped_view(_to_channels_first(chunk, layout), rows, d)  # (N, C, *pos)
    else:
        view = _reshaped_view(_to_channels_last(chunk, layout), rows, d)  # (N, *pos, C)
    return view


def _reshaped_view(a, rows, d):
    """``a`` as (N, rows, d) without a copy, or None when its strides do not allow it."""
    out = a.view()
    try:
        out.shape = (a.shape[0], rows, d)
    except AttributeError:
        return None
    return out


def centre_into_view(view, out):
    """Column means (float64), rounded shift; ``out`` = centred rows; their (min, max)."""
    column_means, centre_into = _compiled()
    mu = column_means(view)
    if not np.isfinite(mu).all():
        return mu, mu.astype(out.dtype), np.nan, np.nan
    shift = mu.astype(out.dtype)
    lo, hi = centre_into(view, shift, out)
    return mu, shift, float(lo), float(hi)
