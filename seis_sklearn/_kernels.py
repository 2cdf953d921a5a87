"""Numba kernels for the steps of the moment pass that BLAS does not do.

Compiled on first use (``cache=True``), never at import: ``import seis_sklearn``
does not import numba. Which step uses a kernel and which uses numpy/BLAS was
decided by ``benchmarks/kernels.py``; the numbers are in ``benchmarks/README.md``.

The kernels read a 3-D view ``(n_samples, rows_per_sample, d)`` of the
activations — any strides, so transposing layouts (NHWC spatial, NCHW channel,
NLD spatial) need no copy — and write the matricized chunk ``(n·rows, d)``.
They subtract a per-feature shift (one value per (row of a sample, column): SPEC
§2.1 centres every feature over the samples), accumulate in float64 and never use
``fastmath``. They are serial: a
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
    def feature_means(view):
        """Mean over the samples of every (row, column) feature, in float64."""
        n, rows, d = view.shape
        total = np.zeros((rows, d))
        for s in range(n):
            for r in range(rows):
                for j in range(d):
                    total[r, j] += view[s, r, j]
        return total / n

    @numba.njit(cache=True, nogil=True)
    def centre_into(view, shift, out):
        """out[s·rows + r, j] = view[s, r, j] − shift[r, j].

        Returns the float64 sums of ``out`` per (r, j) and the (min, max) of ``out``.
        """
        n, rows, d = view.shape
        sums = np.zeros((rows, d))
        lo = np.inf
        hi = -np.inf
        for s in range(n):
            for r in range(rows):
                i = s * rows + r
                for j in range(d):
                    v = view[s, r, j] - shift[r, j]
                    out[i, j] = v
                    # the exact float64 difference, so the means are those of the input
                    sums[r, j] += np.float64(view[s, r, j]) - np.float64(shift[r, j])
                    if v < lo:
                        lo = v
                    if v > hi:
                        hi = v
        return sums, lo, hi

    return feature_means, centre_into


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


def feature_means_of_view(view):
    """Numba: the float64 mean over samples of every feature of a (n, rows, d) view."""
    return _compiled()[0](view)


def centre_into_view(view, shift, out):
    """Numba: ``out`` = the rows of ``view`` minus ``shift`` (rows, d), matricized.

    Returns the float64 sums of the centred values per feature and their (min, max).
    """
    sums, lo, hi = _compiled()[1](view, shift, out)
    return sums, float(lo), float(hi)
