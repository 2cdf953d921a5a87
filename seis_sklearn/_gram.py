"""The wide path: SEIS from the Gram matrix of the stacked rows, never a d × d matrix.

When the number of columns ``d`` is large against the number of rows ``m``
(flatten matricization of big feature maps: N = 2,000 samples, d = C·H·W =
262,144), the d × d moments of :mod:`seis_sklearn._moments` do not fit in memory.
The pooled second moment ``S = ZᵀZ/G`` of the stacked centred views, each
divided by the square root of its total variance (SPEC §2.2 step 2),
``Z = [P̃_0/√t_0; …; P̃_{G-1}/√t_{G-1}]``, has the same non-zero eigenvalues as
the ``G·m × G·m`` matrix ``ZZᵀ/G = U diag(s²/G) Uᵀ``, and its eigenvectors are
``V = Zᵀ U / s``. Hence

``X_g = P̃_g V_k = (Z₀Z₀ᵀ)[rows of g, :] D U_k / s_k``

(``Z₀`` the unweighted stack, ``D`` the weights ``1/√t_g`` of its rows),

so the k × k covariances of SPEC §2.3 come from the Gram matrix alone. The
Gram is accumulated in one pass over chunks of *columns*: each column chunk
holds every row, so its per-feature means over the samples — and the centring
of SPEC §2.1 — are exact.
``V_k`` itself (for held-out scoring) takes one more pass. This module holds the
passes over the columns; the algebra of the Gram matrix (its basis and the
covariances in it) is with the rest of the dense algebra, in :mod:`seis_sklearn._cca`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._matricize import matricize, matrix_shape
from ._moments import InputFiles, _float32_scale, _page_releaser, product_dtype
from ._validation import CHUNK_BYTES, check_finite, raise_nonfinite


@dataclass
class GramMoments:
    """Per-feature means and the centred Gram matrix of ``G`` stacked views.

    Attributes
    ----------
    n_rows : int
        Rows ``m`` of each view.
    mean : ndarray of shape (G, R, d)
        Per-feature means over the samples of each view (R rows per sample).
    gram : ndarray of shape (G·m, G·m)
        ``Z Zᵀ`` with ``Z`` the row-stack of the centred views.
    """

    n_rows: int
    mean: np.ndarray
    gram: np.ndarray

    @property
    def n_views(self):
        """Number of views ``G``."""
        return self.mean.shape[0]

    @property
    def n_samples(self):
        """Number of samples ``N``."""
        return self.n_rows // self.mean.shape[1]


def column_chunks(m, d, n_views):
    """Column ranges of ``m × d`` views such that one chunk of all ``n_views`` stays
    near ``4·CHUNK_BYTES`` bytes in float64 (also the torch twin's chunks)."""
    step = max(1, (4 * CHUNK_BYTES) // (8 * m * n_views))
    return [(c, min(c + step, d)) for c in range(0, d, step)]


def _centred_chunk(matrices, rows, c0, c1, dtype, names, arrays):
    """Rows of every view, columns c0:c1, each feature centred over the samples.

    Returns the stack (G·m, c1 − c0) in ``dtype`` and each view's means (R, c1 − c0).
    """
    m = matrices[0].shape[0]
    n = m // rows
    out = np.empty((len(matrices) * m, c1 - c0), dtype=dtype)
    means = []
    for g, P in enumerate(matrices):
        block = P[:, c0:c1].reshape(n, rows, c1 - c0)
        with np.errstate(over="ignore", invalid="ignore"):
            mu = block.mean(axis=0, dtype=np.float64)
        if not np.isfinite(mu).all():
            raise_nonfinite(arrays[g], names[g])
        target = out[g * m : (g + 1) * m].reshape(n, rows, c1 - c0)
        np.subtract(block, mu, out=target, casting="unsafe")
        means.append(mu)
    return out, means


def accumulate_gram(arrays, layout, matricization, *, names):
    """One pass over column chunks of the views, returning their :class:`GramMoments`.

    Parameters
    ----------
    arrays : sequence of ndarray
        Validated activation arrays of one shape (samples first).
    layout, matricization : str
        Concrete layout and matricization mode.
    names : sequence of str
        Argument names, for errors.

    Returns
    -------
    GramMoments
    """
    matrices = [matricize(a, layout, matricization) for a in arrays]
    m, d = matrices[0].shape
    rows = matrix_shape(arrays[0].shape, layout, matricization)[0]
    dtype = product_dtype(np.result_type(*arrays))
    size = len(matrices) * m
    gram = np.zeros((size, size))
    scratch = np.zeros((size, size), dtype=np.float32) if dtype == np.float32 else None
    mean = np.empty((len(matrices), rows, d))
    release = _page_releaser(arrays)
    files = InputFiles(arrays)
    for c0, c1 in column_chunks(*matrices[0].shape, len(matrices)):
        files.before_chunk()
        Z, means = _centred_chunk(matrices, rows, c0, c1, dtype, names, arrays)
        mean[:, :, c0:c1] = means
        # numpy's BLAS, as in the moment pass (_moments.MomentAccumulator._product);
        # an overflow is reported after the pass, naming the view
        with np.errstate(over="ignore", invalid="ignore"):
            if scratch is None:
                gram += Z @ Z.T
            else:
                scale = _float32_scale(float(Z.min()), float(Z.max()))
                if scale != 1.0:
                    Z *= np.float32(scale)
                np.matmul(Z, Z.T, out=scratch)
                gram += scratch if scale == 1.0 else scratch.astype(np.float64) / (scale * scale)
        release()
    files.after_pass()
    if not np.isfinite(np.trace(gram)):
        for a, name in zip(arrays, names, strict=True):
            check_finite(a, name)
        raise_nonfinite(arrays[0], names[0])
    return GramMoments(m, mean, gram)


def gram_components(arrays, layout, matricization, basis, *, names):
    """``V_k = Zᵀ U_k / s_k`` (d × k), by one more pass over column chunks."""
    matrices = [matricize(a, layout, matricization) for a in arrays]
    d = matrices[0].shape[1]
    rows = matrix_shape(arrays[0].shape, layout, matricization)[0]
    dtype = product_dtype(np.result_type(*arrays))
    coefficients = basis.coefficients.astype(dtype)
    V = np.empty((d, basis.k))
    release = _page_releaser(arrays)
    files = InputFiles(arrays)
    for c0, c1 in column_chunks(*matrices[0].shape, len(matrices)):
        files.before_chunk()
        Z, _ = _centred_chunk(matrices, rows, c0, c1, dtype, names, arrays)
        V[c0:c1] = Z.T @ coefficients  # float32 input: float32 products over 2m rows
        release()
    files.after_pass()
    return V
