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

The Gram solver's pass over columns (:func:`accumulate_gram`, :func:`gram_components`)
is chosen the same way: numpy arrays in :mod:`seis_sklearn._gram`, torch tensors on
their device in :mod:`seis_sklearn._torch`.

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
    An object with ``add(arrays, indices=None)`` and ``result(final=False) -> Moments``
    (``final=True``: the moments may be built in the accumulator's own arrays, and
    nothing is added afterwards).
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
    return acc.add(arrays, indices).result(final=True)


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


def _gram_module(arrays):
    """The module of the Gram passes for ``arrays``: torch tensors on their device in
    :mod:`seis_sklearn._torch`, anything in memory on the host in :mod:`seis_sklearn._gram`."""
    if backend_of(arrays) == "torch":
        from . import _torch as module
    else:
        from . import _gram as module
    return module


def accumulate_gram(arrays, layout, matricization, *, names):
    """The :class:`~seis_sklearn._gram.GramMoments` of views held in memory (only the
    Gram matrix and the means of torch tensors reach the host)."""
    return _gram_module(arrays).accumulate_gram(arrays, layout, matricization, names=names)


def gram_components(arrays, layout, matricization, basis, *, names):
    """``V_k`` (d × k) of a :class:`~seis_sklearn._gram.GramBasis`: one more pass over
    the views, where they are (as :func:`accumulate_gram`)."""
    return _gram_module(arrays).gram_components(arrays, layout, matricization, basis, names=names)


class RowsFirst:
    """Keeps the added samples while they take less memory than their moments would.

    A streamed layer whose moments are larger than its rows — few samples of a
    wide flatten layer, e.g. 512 ResNet samples of 2,048 features: 8 MB of rows
    against 100 MB of moment sums (three d × d float64) — is better scored from the rows
    themselves, where the Gram solver may be far cheaper (``solver="auto"``
    decides, as for stored activations). Samples are copied (the selected rows
    only) until their bytes would pass ``budget`` (default: the bytes of the
    moment accumulator's float64 sums, ``(2G − 1)·d²·8`` — ``(G·d)²·8`` for torch
    tensors); then everything kept so far goes
    into an ordinary accumulator (:func:`accumulator`) and so does every later
    batch. Memory: min(rows, moments). numpy arrays are kept on the host, torch
    tensors on their device (where the Gram solver then runs:
    :func:`accumulate_gram`); other array types go straight to their accumulator.

    Parameters
    ----------
    arrays : sequence of ndarray
        A first batch of the views (not added).
    layout, matricization : str
        Concrete layout and matricization mode.
    names : sequence of str or None
        Argument names for errors.
    budget : int, optional
        Bytes of rows to keep at most.
    """

    def __init__(self, arrays, layout, matricization, *, names, budget=None):
        from ._matricize import matrix_shape

        self.layout, self.matricization, self.names = layout, matricization, names
        if budget is None:
            _, d = matrix_shape((1, *arrays[0].shape[1:]), layout, matricization)
            G = len(arrays)
            # numpy's accumulator keeps 2G − 1 d × d float64 sums; torch's the (G·d)² Gram
            blocks = G * G if backend_of(arrays) == "torch" else 2 * G - 1
            budget = blocks * d**2 * 8
        self.budget = budget
        self._parts, self._nbytes, self._n = [], 0, 0
        self._acc = None
        if backend_of(arrays) not in ("numpy", "torch"):
            self._switch(arrays)

    @property
    def n_samples(self):
        """Samples added so far."""
        return self._n if self._acc is None else self._acc.n_samples

    @property
    def kept(self):
        """Whether the rows are still kept (no moments accumulated yet)."""
        return self._acc is None

    def _switch(self, arrays):
        self._acc = accumulator(arrays, self.layout, self.matricization, names=self.names)
        for part in self._parts:
            self._acc.add(part)
        self._parts = None

    def add(self, arrays, indices=None):
        """Add the samples of a batch (all of them, or ``indices``, in that order)."""
        if self._acc is None:
            n = arrays[0].shape[0] if indices is None else len(indices)
            size = n * sum(a[:1].nbytes for a in arrays)  # numpy arrays and torch tensors
            if self._nbytes + size <= self.budget:
                taken = [_taken(a, indices) for a in arrays]
                self._parts.append(taken)
                self._nbytes += size
                self._n += n
                return self
            self._switch(arrays)
        self._acc.add(arrays, indices)
        return self

    def rows(self):
        """The kept samples, one array per view (None once moments are accumulated)."""
        if self._acc is not None:
            return None
        return [_concatenate([p[g] for p in self._parts]) for g in range(len(self._parts[0]))]

    def result(self, final=False):
        """The :class:`~seis_sklearn._moments.Moments` of every sample added
        (``final=True``: nothing is added afterwards)."""
        if self._acc is not None:
            return self._acc.result(final=final)
        views = self.rows()
        return accumulate(views, self.layout, self.matricization, names=self.names)


def _taken(a, indices):
    """A copy of the selected samples (all of them for ``None``), where ``a`` lives."""
    if isinstance(a, np.ndarray):
        return np.array(a, copy=True) if indices is None else a[np.asarray(indices)]
    from ._torch import device_indices

    a = a.detach()
    if indices is None:
        return a.clone()
    return a.index_select(0, device_indices(indices, a.device))


def _concatenate(parts):
    """The parts joined along the samples, where they live."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    import torch

    return torch.cat(parts)
