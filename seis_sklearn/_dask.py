"""Dask arrays: SEIS moments as a tree reduction over blocks of samples.

The moments of SEIS are sums over samples. For dask arrays chunked along the
sample axis, every block's moments are computed by the same kernels as for numpy
arrays (:func:`seis_sklearn._moments.accumulate`, run where the block lives) and
the blocks' moments are merged pairwise, in a tree, with the exact update of
Chan, Golub & LeVeque (:meth:`Moments.merge`); only the d × d results travel, and
only the root comes back to the client. :mod:`seis_sklearn._accumulate` sends
dask arrays here. Nothing here imports dask unless a dask
array was given, and nothing is cluster-specific: the active scheduler (a
``dask.distributed.Client``, or the default threads) runs the graph.
"""

from __future__ import annotations

import numpy as np

from ._moments import NonFiniteError, accumulate_numpy
from ._validation import _nonfinite_error, is_dask_array


def _aligned(arrays):
    """The arrays as dask arrays with the first dask array's sample chunks."""
    import dask.array as da

    reference = next(a for a in arrays if is_dask_array(a))
    chunks0 = reference.chunks[0]
    out = []
    for a in arrays:
        if not is_dask_array(a):
            a = da.from_array(a, chunks=(chunks0,) + tuple(-1 for _ in a.shape[1:]))
        elif a.chunks[0] != chunks0:
            a = a.rechunk({0: chunks0})
        out.append(a)
    return out, chunks0


def _block_moments(layout, matricization, projection, local, *blocks):
    """Moments of one block of samples (or None when ``local`` selects none of them)."""
    if local is not None and len(local) == 0:
        return None
    return accumulate_numpy(
        [np.asarray(b) for b in blocks],
        layout,
        matricization,
        names=None,
        indices=local,
        projection=projection,
    )


def _merge(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return a.merge(b)


def accumulate_dask(arrays, layout, matricization, *, names, index_sets=(None,), projection=None):
    """Moments of dask views, one result per set of sample indices, in one computation.

    Parameters
    ----------
    arrays : sequence of dask arrays (or ndarrays, aligned to the dask ones)
    layout, matricization : str
    names : sequence of str
        Argument names, for the error raised on NaN/inf.
    index_sets : sequence of (ndarray of int or None)
        Samples of each result (``None``: all). Every set shares one pass over
        the blocks: ``dask.compute`` reads each block once.
    projection : ndarray of shape (d, k), optional

    Returns
    -------
    list of Moments
    """
    import dask
    from dask import delayed

    arrays, chunks0 = _aligned(arrays)
    bounds = np.concatenate([[0], np.cumsum(chunks0)]).astype(np.int64)
    blocks = [a.to_delayed().ravel() for a in arrays]
    step = delayed(_block_moments, pure=True)
    merge = delayed(_merge, pure=True)
    roots = []
    for indices in index_sets:
        parts = []
        if indices is not None:
            indices = np.sort(np.asarray(indices, dtype=np.int64))
        for b, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            local = None
            if indices is not None:
                lo, hi = np.searchsorted(indices, [start, stop])
                if lo == hi:
                    continue
                local = indices[lo:hi] - start
            parts.append(
                step(layout, matricization, projection, local, *(view[b] for view in blocks))
            )
        if not parts:
            raise ValueError("no samples selected")
        while len(parts) > 1:  # a balanced tree of exact pairwise merges
            parts = [
                merge(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
                for i in range(0, len(parts), 2)
            ]
        roots.append(parts[0])
    try:
        return list(dask.compute(*roots))
    except NonFiniteError as exc:
        raise_nonfinite_dask(arrays[exc.view], names[exc.view])


def raise_nonfinite_dask(A, name):
    """The error of :func:`seis_sklearn._validation.raise_nonfinite`, counted by dask."""
    import dask
    import dask.array as da

    if A.dtype.kind == "f":
        n_nan, n_inf = dask.compute(da.isnan(A).sum(), da.isinf(A).sum())
        if n_nan or n_inf:
            raise _nonfinite_error(name, int(n_nan), int(n_inf), A.size)
    largest = float(da.abs(A).max().compute())
    raise ValueError(
        f"{name} has finite values whose sums overflow float64 (largest |value| "
        f"{largest:.3g}); rescale it"
    )
