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
        """out[s·rows + r, j] = view[s, r, j] − shift[r, j]; returns the float64 sums of
        ``out`` per (r, j). No range is tracked here (a running min/max kept the loop
        from vectorising: 0.36 → 0.27 s per 1 GiB view): the products check their own
        diagonal instead (``_moments.MomentAccumulator._flush``)."""
        n, rows, d = view.shape
        sums = np.zeros((rows, d))
        for s in range(n):
            for r in range(rows):
                i = s * rows + r
                for j in range(d):
                    out[i, j] = view[s, r, j] - shift[r, j]
                    # the exact float64 difference, so the means are those of the input
                    sums[r, j] += np.float64(view[s, r, j]) - np.float64(shift[r, j])
        return sums

    @numba.njit(cache=True, nogil=True)
    def add_lower(total, part):
        """total[i, j] += part[i, j] for j ≤ i (float64 total, any real part)."""
        for i in range(total.shape[0]):
            for j in range(i + 1):
                total[i, j] += part[i, j]

    return feature_means, centre_into, add_lower


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

    Returns the float64 sums of the centred values per feature, shape (rows, d).
    """
    return _compiled()[1](view, shift, out)


def add_lower_triangle(total, part):
    """Numba: ``total += part`` on and below the diagonal only (square matrices).

    The moment products fill only the lower triangle (SYRK), so adding the upper
    one too would read and write twice the memory for nothing (measured: 64 adds of
    a 2,048² float32 product into float64, 0.25 s in full, 0.09 s lower only).
    """
    _compiled()[2](total, part)
