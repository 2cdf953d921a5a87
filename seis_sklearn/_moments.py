"""One-pass, mergeable sufficient statistics of row-aligned views (SPEC §2.2–2.4).

SEIS needs, for views ``P_0 … P_{G-1}`` with the same rows (original activations
first, then the transformed ones), only

* the number of rows ``m`` and the column means ``μ_g``,
* the centred auto-products ``C_gg = P̃_gᵀ P̃_g`` and
* the centred cross-products with the original view ``C_0g = P̃_0ᵀ P̃_g``.

They are accumulated chunk by chunk of samples (float64 whatever the input
dtype; only one chunk is ever converted) and combined with the exact pairwise
update of Chan, Golub & LeVeque, so ``partial_fit`` over any split of the
samples gives the same statistics as one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._matricize import matricize
from ._validation import chunk_samples, raise_nonfinite


@dataclass
class Moments:
    """Centred first and second moments of ``G`` row-aligned views.

    Attributes
    ----------
    n_rows : int
        Number of rows ``m`` accumulated.
    mean : ndarray of shape (G, d)
        Column means of each view.
    auto : ndarray of shape (G, d, d)
        ``P̃_gᵀ P̃_g`` for each view.
    cross : ndarray of shape (G - 1, d, d)
        ``P̃_0ᵀ P̃_g`` for ``g ≥ 1``.
    """

    n_rows: int
    mean: np.ndarray
    auto: np.ndarray
    cross: np.ndarray

    @property
    def n_views(self):
        """Number of views ``G``."""
        return self.mean.shape[0]

    @property
    def n_columns(self):
        """Number of columns ``d``."""
        return self.mean.shape[1]

    def merge(self, other):
        """Return the moments of the union of the rows of ``self`` and ``other``."""
        if other.mean.shape != self.mean.shape:
            raise ValueError(
                "cannot merge moments of different shapes: "
                f"{self.mean.shape} and {other.mean.shape}"
            )
        na, nb = self.n_rows, other.n_rows
        n = na + nb
        delta = other.mean - self.mean
        factor = na * nb / n
        auto = self.auto + other.auto
        auto += factor * delta[:, :, None] * delta[:, None, :]
        cross = self.cross + other.cross
        cross += factor * delta[0][None, :, None] * delta[1:, None, :]
        mean = self.mean + delta * (nb / n)
        return Moments(n, mean, auto, cross)


class NonFiniteError(ArithmeticError):
    """A view's sums came out NaN or infinite (``view`` is its index)."""

    def __init__(self, view):
        super().__init__(view)
        self.view = view


def block_moments(blocks):
    """Moments of in-memory row-aligned matrices (one chunk).

    Parameters
    ----------
    blocks : sequence of ndarray of shape (m, d)
        The views; any float or integer dtype, converted to float64 here.

    Returns
    -------
    Moments

    Raises
    ------
    NonFiniteError
        If a view holds NaN/inf or values whose products overflow float64.
    """
    m = blocks[0].shape[0]
    with np.errstate(over="ignore", invalid="ignore"):
        mean = np.stack([b.mean(axis=0, dtype=np.float64) for b in blocks])
        for g in range(len(blocks)):
            if not np.isfinite(mean[g]).all():
                raise NonFiniteError(g)
        centred = [
            np.subtract(b, mu, dtype=np.float64) for b, mu in zip(blocks, mean, strict=True)
        ]
        auto = np.stack([z.T @ z for z in centred])
        for g in range(len(blocks)):
            if not np.isfinite(np.trace(auto[g])):
                raise NonFiniteError(g)
    if len(centred) > 1:
        cross = np.stack([centred[0].T @ z for z in centred[1:]])
    else:
        cross = np.empty((0,) + auto.shape[1:])
    return Moments(m, mean, auto, cross)


def accumulate(arrays, layout, matricization, *, names, indices=None):
    """One pass over sample chunks of the views, returning their moments.

    Parameters
    ----------
    arrays : sequence of ndarray
        Validated activation arrays of one shape (samples first).
    layout, matricization : str
        Concrete layout and matricization mode.
    names : sequence of str
        Argument names, for the error raised on NaN/inf.
    indices : ndarray of int, optional
        Samples to use (in this order of chunks); all samples by default.

    Returns
    -------
    Moments
    """
    first = arrays[0]
    n = first.shape[0] if indices is None else len(indices)
    step = chunk_samples(first.shape, first.dtype.itemsize)
    total = None
    for start in range(0, n, step):
        if indices is None:
            chunks = [a[start : start + step] for a in arrays]
        else:
            take = indices[start : start + step]
            chunks = [a[take] for a in arrays]
        blocks = [matricize(c, layout, matricization) for c in chunks]
        try:
            part = block_moments(blocks)
        except NonFiniteError as exc:
            raise_nonfinite(arrays[exc.view], names[exc.view])
        total = part if total is None else total.merge(part)
    return total
