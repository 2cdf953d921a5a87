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

import mmap
import os
from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas

from ._dask import is_dask_array
from ._kernels import sample_view
from ._matricize import matricize, matrix_shape
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


def product_dtype(dtype):
    """Dtype of the BLAS products for input of ``dtype``: float32 stays float32."""
    return (
        np.dtype(np.float32)
        if np.dtype(dtype) in (np.float32, np.float16)
        else np.dtype(np.float64)
    )


class MomentAccumulator:
    """Exact one-pass accumulation of the moments of ``G`` views, chunk after chunk.

    Each chunk of rows is centred on its own mean rounded to the product dtype,
    ``Z_g = x_g − c_g``, into one stacked buffer ``[Z_0 … Z_{G-1}]``, and a single
    BLAS SYRK adds its Gram ``[Z_0 … Z_{G-1}]ᵀ[Z_0 … Z_{G-1}]`` — every block
    ``Z_gᵀZ_h`` at once — to a ``G·d × G·d`` float64 accumulator. Centring on
    ``c_g`` rather than on the exact running mean leaves two rank-1 corrections
    per chunk (Chan, Golub & LeVeque's merge term ``f·δδᵀ`` and the rounding of
    the shift ``−r·eeᵀ``); their vectors are kept and applied together, as one
    small product, in :meth:`result`.

    float32 input is multiplied in float32 over chunks of at most
    ``FLOAT32_PRODUCT_ROWS`` centred rows and summed in float64 across chunks.
    """

    def __init__(self, n_views, n_columns, dtype):
        self.n_rows = 0
        self.dtype = np.dtype(dtype)
        self.n_views = n_views
        d = n_columns
        self.mean = np.zeros((n_views, d))
        self.joint = np.zeros((n_views * d, n_views * d))  # lower triangle is kept
        self._plus = [[] for _ in range(n_views)]  # rows sqrt(f)·δ_g
        self._minus = [[] for _ in range(n_views)]  # rows sqrt(r)·e_g
        self._buffer = np.empty((0, n_views * d), dtype=self.dtype)
        self._scratch = None
        if self.dtype == np.float32:  # float32 products land here before the float64 sum
            self._scratch = np.zeros((n_views * d, n_views * d), np.float32)

    def add(self, blocks, views=None):
        """Add a chunk: row-aligned ``(r, d)`` matrices, one per view.

        ``views`` may give the same chunk as ``(n_samples, rows, d)`` strided views
        of the input, which the Numba kernel centres without a transposing copy.
        """
        if views is not None:
            n, rows, d = views[0].shape
            r = n * rows
        else:
            r, d = blocks[0].shape
        if self._buffer.shape[0] < r:
            self._buffer = np.empty((r, self.n_views * d), dtype=self.dtype)
        buffer = self._buffer[:r]
        mu = np.empty((self.n_views, d))
        shift = np.empty((self.n_views, d), dtype=self.dtype)
        scales = np.ones(self.n_views)
        for g in range(self.n_views):
            out = buffer[:, g * d : (g + 1) * d]
            if views is not None:
                mu[g], shift[g], lo, hi = centre_view(views[g], out)
            else:
                mu[g], shift[g], lo, hi = _centre_block(blocks[g], out)
            if not (np.isfinite(mu[g]).all() and np.isfinite(lo) and np.isfinite(hi)):
                raise NonFiniteError(g)
            if self._scratch is not None:
                scales[g] = _float32_scale(lo, hi)
                if scales[g] != 1.0:
                    out *= np.float32(scales[g])
        self._product(buffer, scales, d)
        if not np.isfinite(np.trace(self.joint)):
            raise NonFiniteError(int(np.argmin(np.isfinite(np.diagonal(self.joint)))) // d)
        n = self.n_rows
        delta = mu - self.mean
        factor = n * r / (n + r)
        for g in range(self.n_views):
            self._plus[g].append(np.sqrt(factor) * delta[g])
            self._minus[g].append(np.sqrt(r) * (mu[g] - shift[g]))
        self.mean += delta * (r / (n + r))
        self.n_rows = n + r

    def _product(self, buffer, scales, d):
        # The C-ordered accumulator seen through .T is a Fortran matrix for BLAS;
        # SYRK of bufferᵀ fills the lower triangle of the C-ordered matrix.
        if self._scratch is None:
            blas.dsyrk(1.0, buffer.T, beta=1.0, c=self.joint.T, trans=0, lower=0, overwrite_c=1)
            return
        blas.ssyrk(1.0, buffer.T, beta=0.0, c=self._scratch.T, trans=0, lower=0, overwrite_c=1)
        if (scales == 1.0).all():
            self.joint += self._scratch
            return
        for g in range(self.n_views):
            for h in range(g + 1):
                sl_g, sl_h = slice(g * d, (g + 1) * d), slice(h * d, (h + 1) * d)
                _add_scaled(
                    self.joint[sl_g, sl_h],
                    self._scratch[sl_g, sl_h],
                    1.0 / (scales[g] * scales[h]),
                )

    def result(self):
        """The accumulated :class:`Moments` (symmetric, corrections applied)."""
        G, d = self.mean.shape
        plus = [np.array(p).reshape(-1, d) for p in self._plus]
        minus = [np.array(q).reshape(-1, d) for q in self._minus]
        auto = np.empty((G, d, d))
        cross = np.empty((max(G - 1, 0), d, d))
        diagonal = np.arange(d)
        for g in range(G):
            block = self.joint[g * d : (g + 1) * d, g * d : (g + 1) * d]
            a = auto[g]
            np.copyto(a, block)  # lower triangle filled, upper triangle zero
            a += a.T
            a[diagonal, diagonal] *= 0.5
            a += plus[g].T @ plus[g] - minus[g].T @ minus[g]
            if g:
                # the lower-left block (rows of view g, columns of view 0) is Z_gᵀZ_0
                lower_left = self.joint[g * d : (g + 1) * d, :d]
                cross[g - 1] = lower_left.T + plus[0].T @ plus[g] - minus[0].T @ minus[g]
        return Moments(self.n_rows, self.mean.copy(), auto, cross)


# Rows of wide chunks are centred by the Numba kernel, narrow ones by numpy: the
# crossover measured by benchmarks/kernels.py (see benchmarks/README.md).
NUMBA_MIN_COLUMNS = 256


def _centre_block(block, out):
    """numpy: column means, rounded shift, ``out = block − shift`` and its range."""
    with np.errstate(over="ignore", invalid="ignore"):
        mu = block.mean(axis=0, dtype=np.float64)
    if not np.isfinite(mu).all():
        return mu, mu.astype(out.dtype), np.nan, np.nan
    shift = mu.astype(out.dtype)
    np.subtract(block, shift, out=out, casting="unsafe")
    if out.dtype != np.float32:
        return mu, shift, 0.0, 0.0
    return mu, shift, float(out.min()), float(out.max())


def centre_view(view, out):
    """Numba: the same as :func:`_centre_block`, reading a (n, rows, d) strided view."""
    from ._kernels import centre_into_view

    return centre_into_view(view, out)


def _add_scaled(total, part, factor):
    """``total += factor·part`` (``factor`` a power of two, so exact)."""
    if factor == 1.0:
        total += part
    else:
        total += factor * part.astype(np.float64)


# Centred float32 values are multiplied by an exact power of two when their largest
# magnitude leaves [2^-20, 2^20], so that sums of FLOAT32_PRODUCT_ROWS products
# neither underflow nor overflow float32.
_SAFE_EXPONENT = 20


def _float32_scale(lo, hi):
    """Power of two that brings values in [lo, hi] near 1 in magnitude, or 1 if safe."""
    top = max(abs(lo), abs(hi))
    if top == 0.0 or not np.isfinite(top):
        return 1.0
    exponent = int(np.frexp(top)[1])
    if -_SAFE_EXPONENT <= exponent <= _SAFE_EXPONENT:
        return 1.0
    return float(np.ldexp(1.0, -exponent))


# Rows of one float32 BLAS product: the products are summed in float32 over at most
# this many centred rows, then in float64 (see benchmarks/README.md for the choice).
FLOAT32_PRODUCT_ROWS = 4096


def project_moments(moments, V):
    """Moments of the projected views ``P_g V`` (k columns), from d × d moments."""
    return Moments(
        moments.n_rows,
        moments.mean @ V,
        np.stack([V.T @ a @ V for a in moments.auto]),
        np.stack([V.T @ c @ V for c in moments.cross]),
    )


def accumulate(arrays, layout, matricization, *, names, indices=None, projection=None):
    """One pass over sample chunks of the views, returning their moments.

    Parameters
    ----------
    arrays : sequence of ndarray
        Validated activation arrays of one shape (samples first).
    layout, matricization : str
        Concrete layout and matricization mode.
    names : sequence of str or None
        Argument names, for the error raised on NaN/inf (``None``: raise
        :class:`NonFiniteError` with the view's index instead).
    indices : ndarray of int, optional
        Samples to use (in this order of chunks); all samples by default.
    projection : ndarray of shape (d, k), optional
        Accumulate the moments of ``P_g @ projection`` (k columns) instead.

    Returns
    -------
    Moments

    Notes
    -----
    Dask arrays are accumulated block by block where they live and merged in a
    tree (:func:`seis_sklearn._dask.accumulate_dask`).
    """
    if any(is_dask_array(a) for a in arrays):
        from ._dask import accumulate_dask

        return accumulate_dask(
            arrays,
            layout,
            matricization,
            names=names,
            index_sets=(indices,),
            projection=projection,
        )[0]
    first = arrays[0]
    n = first.shape[0] if indices is None else len(indices)
    dtype = product_dtype(np.result_type(*arrays))
    rows_per_sample, d = matrix_shape(first.shape, layout, matricization)
    if projection is not None:
        dtype, d = np.dtype(np.float64), projection.shape[1]
    else:
        check_moment_memory(len(arrays), d)
    step = chunk_samples(first.shape, first.dtype.itemsize)
    if dtype == np.float32:
        step = max(1, min(step, FLOAT32_PRODUCT_ROWS // rows_per_sample))
    acc = MomentAccumulator(len(arrays), d, dtype)
    release = _page_releaser(arrays)
    for start in range(0, n, step):
        if indices is None:
            chunks = [a[start : start + step] for a in arrays]
        else:
            take = indices[start : start + step]
            chunks = [a[take] for a in arrays]
        views = None
        if projection is None and d >= NUMBA_MIN_COLUMNS:
            views = [sample_view(c, layout, matricization) for c in chunks]
            if any(v is None for v in views):
                views = None
        blocks = None
        if views is None:
            blocks = [matricize(c, layout, matricization) for c in chunks]
            if projection is not None:
                blocks = [b @ projection for b in blocks]
        try:
            acc.add(blocks, views)
        except NonFiniteError as exc:
            if names is None:
                raise
            raise_nonfinite(arrays[exc.view], names[exc.view])
        release()
    return acc.result()


def accumulate_folds(arrays, layout, matricization, *, names, index_sets):
    """The moments of several sets of samples; one pass over dask inputs.

    Returns
    -------
    list of Moments
        One per entry of ``index_sets``.
    """
    if any(is_dask_array(a) for a in arrays):
        from ._dask import accumulate_dask

        return accumulate_dask(arrays, layout, matricization, names=names, index_sets=index_sets)
    return [
        accumulate(arrays, layout, matricization, names=names, indices=indices)
        for indices in index_sets
    ]


def check_moment_memory(n_views, d):
    """Refuse d × d moments that cannot fit in this machine's memory, with the way out."""
    needed = (2 * n_views - 1) * d * d * 8
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return
    if needed > available // 2:
        raise ValueError(
            f"the moments of {n_views} views with d={d} columns need {needed / 2**30:.1f} GiB "
            f"(this machine has {available / 2**30:.1f} GiB): use fit with solver='gram' "
            "(or 'auto'), which works from the Gram matrix of the rows"
        )


def _file_mappings(arr):
    """The mmap objects behind ``arr`` that may safely drop their resident pages.

    Read-only (``"r"``) and shared (``"r+"``, ``"w+"``) file mappings keep their
    data in the page cache, so dropping the process's pages loses nothing;
    copy-on-write mappings (``"c"``) would lose their private changes and are
    left alone.
    """
    found = []
    obj = arr
    while obj is not None:
        mm = getattr(obj, "_mmap", None)
        if mm is not None and getattr(obj, "mode", "c") != "c":
            found.append(mm)
            break
        obj = getattr(obj, "base", None)
    return found


def _page_releaser(arrays):
    """A callable that releases the pages a pass has read from memory-mapped inputs.

    Pages of a file mapping that were read stay resident and count in the
    process's RSS until the mapping is closed; releasing them after each chunk
    keeps the peak memory of a pass over ``np.load(..., mmap_mode="r")`` arrays
    bounded by the chunk size instead of the file size.
    """
    if not hasattr(mmap, "MADV_DONTNEED"):  # pragma: no cover - not Linux/macOS
        return lambda: None
    mappings = {id(m): m for a in arrays for m in _file_mappings(a)}.values()

    def release():
        for mm in mappings:
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # closed mapping or refused: keep going
                pass

    return release
