"""Dask arrays: SEIS moments as a tree reduction over blocks of samples.

The moments of SEIS are sums over samples. For dask arrays chunked along the
sample axis, every block's moments are computed by the same kernels as for numpy
arrays (:func:`seis_sklearn._moments.accumulate`, run where the block lives) and
the blocks' moments are merged pairwise, in a tree, with the exact update of
Chan, Golub & LeVeque (:meth:`Moments.merge`); only the d × d results travel, and
only the root comes back to the client. Nothing here imports dask unless a dask
array was given, and nothing is cluster-specific: the active scheduler (a
``dask.distributed.Client``, or the default threads) runs the graph.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np


def is_dask_array(x):
    """True for a ``dask.array.Array`` (without importing dask when it is not loaded)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(x, module.Array)


def check_dask_chunks(A, name):
    """Check a dask array's chunks (its dtype and shape are checked like numpy's).

    Returns the array, rechunked (lazily, with a warning) so that every axis but
    the samples axis is one chunk: the moments are accumulated block by block
    of whole samples. Nothing is computed.
    """
    if any(np.isnan(c) for chunks in A.chunks for c in chunks):
        raise ValueError(
            f"{name} has unknown chunk sizes (e.g. after boolean indexing); call "
            f"{name}.compute_chunk_sizes() first"
        )
    split = [axis for axis in range(1, A.ndim) if len(A.chunks[axis]) > 1]
    if split:
        warnings.warn(
            f"{name} is chunked along feature axis {split[0]} (chunks {A.chunks[split[0]]}); "
            "SEIS streams whole samples, so it is rechunked to one chunk along every axis "
            "but the first. Chunk along the samples axis only to avoid the rechunk.",
            UserWarning,
            stacklevel=4,
        )
        A = A.rechunk({axis: -1 for axis in range(1, A.ndim)})
    return A


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
    from ._moments import accumulate

    if local is not None and len(local) == 0:
        return None
    return accumulate(
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

    from ._moments import NonFiniteError

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

    from ._validation import _nonfinite_error

    if A.dtype.kind == "f":
        n_nan, n_inf = dask.compute(da.isnan(A).sum(), da.isinf(A).sum())
        if n_nan or n_inf:
            raise _nonfinite_error(name, int(n_nan), int(n_inf), A.size)
    largest = float(da.abs(A).max().compute())
    raise ValueError(
        f"{name} has finite values whose sums overflow float64 (largest |value| "
        f"{largest:.3g}); rescale it"
    )
