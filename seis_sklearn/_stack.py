"""Paired and orbit stacks: the single array a scikit-learn Pipeline can carry."""

from __future__ import annotations

import numpy as np

from ._validation import is_dask_array


class PairedStack(np.ndarray):
    """Views of one layer stacked along axis 1 by :func:`pair` or :func:`orbit`.

    An ordinary ndarray of shape ``(n_samples, G, ...)`` that says what it is:
    with ``y=None`` the estimators take only such a stack (or a
    :class:`DenoisedStack`, or a dask array), because a plain array of that shape
    — an NCHW activation, say — could as well be a single view.
    """


class DenoisedStack(np.ndarray):
    """Coordinates of a paired or orbit stack in a shared denoising basis.

    What :meth:`SubspaceDenoiser.transform <seis_sklearn.SubspaceDenoiser.transform>`
    returns with ``paired=True``: an ordinary ndarray of shape
    ``(n_samples, G, k)`` or ``(n_samples, G, rows, k)`` that remembers it holds
    denoised coordinates (rows = the matricization's rows per sample, k
    columns), so that :class:`~seis_sklearn.SEISScorer` reads it as such
    whatever its own ``matricization`` and ``layout`` say.

    Attributes
    ----------
    matricization : str or None
        The matricization the denoiser used (``None`` once the array no longer
        has the stack's shape, e.g. after a reduction).
    """

    def __array_finalize__(self, obj):
        self.matricization = getattr(obj, "matricization", None)


def is_stack(X):
    """True for what the estimators take as views stacked on axis 1 when y is None."""
    return isinstance(X, PairedStack | DenoisedStack) or is_dask_array(X)


def denoised_reading(views):
    """``(layout, matricization, label)`` of denoised views, or None for other arrays.

    Each view of a :class:`DenoisedStack` is ``(n, rows, k)`` — read as NLD
    "channel": one row per (sample, row), one column per coordinate — or
    ``(n, k)`` (ND).
    """
    first = views[0]
    if not isinstance(first, DenoisedStack) or first.matricization is None:
        return None
    if first.ndim == 3:
        return "NLD", "channel", first.matricization
    if first.ndim == 2:
        return "ND", "flatten", first.matricization
    return None


def _root(a):
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a


def orbit(A, *Bs):
    """Stack views along a new axis 1: ``(n_samples, 1 + len(Bs), ...)``.

    The array every estimator of the toolkit accepts with ``y=None`` (what a
    :class:`sklearn.pipeline.Pipeline` passes, since its steps transform X
    only). When the views already lie in one buffer at a constant distance
    from each other (e.g. ``S[:, 0]`` and ``S[:, 1]`` of a stack ``S``), the
    result is a read-only view of that buffer, not a copy; dask arrays are
    stacked lazily.

    Parameters
    ----------
    A : array-like of shape (n_samples, ...)
        Activations on the original inputs.
    *Bs : array-like of the same shape
        Activations on the transformed inputs (one per group element but e).

    Returns
    -------
    PairedStack or dask array of shape (n_samples, 1 + len(Bs), ...)

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn import pair
    >>> S = np.zeros((4, 2, 3))
    >>> view = pair(S[:, 0], S[:, 1])
    >>> view.shape, np.shares_memory(view, S)
    ((4, 2, 3), True)
    """
    arrays = [A, *Bs]
    if not Bs:
        raise ValueError("orbit needs at least one transformed view besides A")
    if any(is_dask_array(a) for a in arrays):
        import dask.array as da

        return da.stack(arrays, axis=1)
    arrays = [np.asarray(a) for a in arrays]
    shape = arrays[0].shape
    for i, a in enumerate(arrays[1:], start=1):
        if a.shape != shape:
            raise ValueError(f"every view must have A's shape {shape}; view {i} has {a.shape}")
    view = _as_view(arrays)
    if view is None:
        view = np.stack([a.astype(np.result_type(*arrays), copy=False) for a in arrays], axis=1)
    return view.view(PairedStack)


def pair(A, B):
    """``(n_samples, 2, ...)``: the paired stack of ``A`` and ``B`` (see :func:`orbit`).

    Parameters
    ----------
    A, B : array-like of the same shape (n_samples, ...)

    Returns
    -------
    PairedStack or dask array of shape (n_samples, 2, ...)
    """
    return orbit(A, B)


def _as_view(arrays):
    first = arrays[0]
    root = _root(first)
    if not isinstance(root, np.ndarray) or first.ndim < 1:
        return None
    if any(a.dtype != first.dtype or a.strides != first.strides for a in arrays):
        return None
    if any(_root(a) is not root for a in arrays):
        return None
    addresses = [a.__array_interface__["data"][0] for a in arrays]
    delta = addresses[1] - addresses[0]
    if any(b - a != delta for a, b in zip(addresses, addresses[1:], strict=False)):
        return None
    return np.lib.stride_tricks.as_strided(
        first,
        shape=(first.shape[0], len(arrays), *first.shape[1:]),
        strides=(first.strides[0], delta, *first.strides[1:]),
        writeable=False,
    )
