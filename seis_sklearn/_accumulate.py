"""The accumulator protocol: SEIS statistics from wherever the activations live.

Every statistic of SEIS (and of the metrics computed from its moments) is a
:class:`~seis_sklearn._moments.Moments`: per-feature means and centred auto- and
cross-products of row-aligned views (SPEC §2.1–2.4). One protocol produces it —
``add`` a batch of views (optionally a subset of its samples), ``result`` — and
:meth:`Moments.merge <seis_sklearn._moments.Moments.merge>` combines results
exactly. The implementation is chosen by the type of the arrays:

* numpy arrays and memory maps: :class:`~seis_sklearn._moments.ArrayAccumulator`
  (BLAS SYRK products, Numba centring of wide rows);
* torch tensors, on the CPU or a GPU: :class:`~seis_sklearn._torch.TorchAccumulator`
  (torch products on the tensors' device; only the d × d results reach the host);
* dask arrays: per-block numpy accumulators merged in a tree where the blocks live
  (:mod:`seis_sklearn._dask`).

This module is the only one that knows all three; the implementations do not know
each other.
"""

from __future__ import annotations

import numpy as np

from ._moments import ArrayAccumulator
from ._validation import is_dask_array, is_torch_tensor


def backend_of(arrays):
    """``"dask"``, ``"torch"`` or ``"numpy"``: what holds the views."""
    if any(is_dask_array(a) for a in arrays):
        return "dask"
    if any(is_torch_tensor(a) for a in arrays):
        return "torch"
    return "numpy"


def accumulator(arrays, layout, matricization, *, names, projection=None):
    """An empty accumulator for views like ``arrays`` (their type, dtype and shape).

    Parameters
    ----------
    arrays : sequence of ndarray or torch.Tensor
        A first batch of the views (not added).
    layout, matricization : str
        Concrete layout and matricization mode.
    names : sequence of str or None
        Argument names for errors.
    projection : ndarray of shape (d, k), optional

    Returns
    -------
    An object with ``add(arrays, indices=None)`` and ``result() -> Moments``.
    """
    kind = backend_of(arrays)
    first = arrays[0]
    if kind == "dask":
        raise TypeError("dask arrays are accumulated by accumulate(), block by block")
    if kind == "torch":
        from ._torch import TorchAccumulator

        return TorchAccumulator(
            len(arrays), tuple(first.shape[1:]), first.dtype, layout, matricization,
            names=names, projection=projection, device=first.device,
        )  # fmt: skip
    return ArrayAccumulator(
        len(arrays), tuple(first.shape[1:]), np.result_type(*arrays), layout, matricization,
        names=names, projection=projection,
    )  # fmt: skip


def accumulate(arrays, layout, matricization, *, names, indices=None, projection=None):
    """The :class:`~seis_sklearn._moments.Moments` of views, in one pass over their samples.

    Parameters
    ----------
    arrays : sequence of ndarray, dask arrays or torch tensors
        Validated activation arrays of one shape (samples first).
    layout, matricization : str
        Concrete layout and matricization mode.
    names : sequence of str or None
        Argument names, for the error raised on NaN/inf (``None``: raise
        :class:`~seis_sklearn._moments.NonFiniteError` with the view's index).
    indices : ndarray of int, optional
        Samples to use (in this order of chunks); all samples by default.
    projection : ndarray of shape (d, k), optional
        Accumulate the moments of ``P_g @ projection`` (k columns) instead.

    Returns
    -------
    Moments
    """
    if backend_of(arrays) == "dask":
        from ._dask import accumulate_dask

        return accumulate_dask(
            arrays, layout, matricization, names=names, index_sets=(indices,),
            projection=projection,
        )[0]  # fmt: skip
    acc = accumulator(arrays, layout, matricization, names=names, projection=projection)
    return acc.add(arrays, indices).result()


def accumulate_folds(arrays, layout, matricization, *, names, index_sets):
    """The moments of several sets of samples; one pass over dask inputs.

    Returns
    -------
    list of Moments
        One per entry of ``index_sets``.
    """
    if backend_of(arrays) == "dask":
        from ._dask import accumulate_dask

        return accumulate_dask(arrays, layout, matricization, names=names, index_sets=index_sets)
    return [
        accumulate(arrays, layout, matricization, names=names, indices=indices)
        for indices in index_sets
    ]
