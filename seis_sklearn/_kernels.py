"""Numba kernels for the steps of the moment pass that BLAS does not do.

Compiled on first use (``cache=True``), never at import: ``import seis_sklearn``
does not import numba. Which step uses a kernel and which uses numpy/BLAS was
decided by ``benchmarks/kernels.py``; the numbers are in ``benchmarks/README.md``.

All kernels read a 3-D view ``(n_samples, rows_per_sample, d)`` of the
activations — any strides, so transposing layouts (NHWC spatial, NCHW channel,
NLD spatial) need no copy — and write the matricized chunk ``(n·rows, d)``.
They accumulate in float64 and never use ``fastmath``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=None)
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

    @numba.njit(cache=True, nogil=True)
    def outer_products(z0, z1, auto0, auto1, cross):
        """Lower triangles of z0ᵀz0, z1ᵀz1 and all of z0ᵀz1, added in float64."""
        m, d = z0.shape
        for i in range(m):
            for a in range(d):
                x0 = np.float64(z0[i, a])
                x1 = np.float64(z1[i, a])
                for b in range(a + 1):
                    auto0[a, b] += x0 * z0[i, b]
                    auto1[a, b] += x1 * z1[i, b]
                for b in range(d):
                    cross[b, a] += z0[i, b] * x1

    return column_means, centre_into, outer_products


def sample_view(chunk, layout, matricization):
    """The chunk as a (n_samples, rows_per_sample, d) strided view, or None.

    ``None`` when the axes cannot be merged without a copy (e.g. an F-ordered
    array); the caller then matricizes with numpy instead.
    """
    from ._matricize import _to_channels_first, _to_channels_last, matrix_shape

    n = chunk.shape[0]
    rows, d = matrix_shape(chunk.shape, layout, matricization)
    if layout == "ND" or matricization == "flatten":
        view = chunk.reshape(n, 1, d) if chunk.flags.c_contiguous else None
    elif matricization == "spatial":
        cf = _to_channels_first(chunk, layout)  # (N, C, *positions)
        view = _merge_trailing(cf, rows, d)
    else:
        cl = _to_channels_last(chunk, layout)  # (N, *positions, C)
        view = _merge_middle(cl, rows, d)
    return view


def _merge_trailing(a, rows, d):
    """(N, C, p1, p2, …) → (N, C, p1·p2·…) as a view when the positions merge."""
    try:
        out = a.view()
        out.shape = (a.shape[0], rows, d)
        return out
    except AttributeError:
        return None


def _merge_middle(a, rows, d):
    """(N, p1, p2, …, C) → (N, p1·p2·…, C) as a view when the positions merge."""
    try:
        out = a.view()
        out.shape = (a.shape[0], rows, d)
        return out
    except AttributeError:
        return None


def centre_into_view(view, out):
    """Column means (float64), rounded shift; ``out`` = centred rows; their (min, max)."""
    column_means, centre_into, _ = _compiled()
    mu = column_means(view)
    if not np.isfinite(mu).all():
        return mu, mu.astype(out.dtype), np.nan, np.nan
    shift = mu.astype(out.dtype)
    lo, hi = centre_into(view, shift, out)
    return mu, shift, float(lo), float(hi)


def centre_chunk(view, dtype):
    """Column means, rounded shift, the centred rows (a new array) and their range."""
    out = np.empty((view.shape[0] * view.shape[1], view.shape[2]), dtype=dtype)
    mu, shift, lo, hi = centre_into_view(view, out)
    return mu, shift, out, lo, hi


def outer_products(z0, z1, auto0, auto1, cross):
    """Accumulate small-d products directly (see benchmarks/kernels.py)."""
    _compiled()[2](z0, z1, auto0, auto1, cross)
