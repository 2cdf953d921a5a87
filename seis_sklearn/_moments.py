"""One-pass, mergeable sufficient statistics of row-aligned views (SPEC §2.1–2.4).

A matricized view has ``R`` rows per sample (spatial: one per channel; channel:
one per position; flatten: one) and ``d`` columns; every (row of a sample,
column) pair is one *feature* of the activations. SEIS centres every feature
by its own mean over the samples (SPEC §2.1, "Centring comes first"), so, for
views ``P_0 … P_{G-1}`` with the same rows (original activations first, then
the transformed ones), it needs only

* the number of samples ``N`` and the per-feature means ``μ_g`` (R × d),
* the centred auto-products ``C_gg = P̃_gᵀ P̃_g`` and
* the centred cross-products with the original view ``C_0g = P̃_0ᵀ P̃_g``,

where ``P̃_g`` has ``μ_g`` subtracted from the rows of every sample. They are
accumulated chunk by chunk of samples (float64 whatever the input dtype; only
one chunk is ever converted) and combined with the exact pairwise update of
Chan, Golub & LeVeque, so ``partial_fit`` over any split of the samples gives
the same statistics as one pass.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from ._blas import mirror_lower, symmetric_product, syrk_lower
from ._kernels import (
    add_lower_triangle,
    centre_into_view,
    feature_means_of_view,
    sample_view,
)
from ._matricize import matricize, matrix_shape
from ._validation import chunk_samples, raise_nonfinite


def _outer_sum(a, b):
    """``Σ_r a_rᵀ b_r`` for stacks of (R, d) matrices: (..., R, d) × (..., R, d) → (..., d, d)."""
    return np.matmul(np.swapaxes(a, -1, -2), b)


@dataclass
class Moments:
    """Per-feature centred first and second moments of ``G`` row-aligned views.

    Attributes
    ----------
    n_samples : int
        Number of samples ``N`` accumulated.
    mean : ndarray of shape (G, R, d)
        Per-feature means over the samples of each view: row ``r`` is the mean
        of the ``r``-th row of every sample's matrix.
    auto : ndarray of shape (G, d, d)
        ``P̃_gᵀ P̃_g`` for each view (each feature centred by its mean).
    cross : ndarray of shape (G - 1, d, d)
        ``P̃_0ᵀ P̃_g`` for ``g ≥ 1``.
    """

    n_samples: int
    mean: np.ndarray
    auto: np.ndarray
    cross: np.ndarray

    @property
    def n_views(self):
        """Number of views ``G``."""
        return self.mean.shape[0]

    @property
    def rows_per_sample(self):
        """Rows ``R`` of one sample's matrix."""
        return self.mean.shape[1]

    @property
    def n_rows(self):
        """Rows ``m = N·R`` of each matricized view."""
        return self.n_samples * self.rows_per_sample

    def merge(self, other):
        """Return the moments of the union of the samples of ``self`` and ``other``."""
        if other.mean.shape != self.mean.shape:
            raise ValueError(
                "cannot merge moments of different shapes: "
                f"{self.mean.shape} and {other.mean.shape}"
            )
        na, nb = self.n_samples, other.n_samples
        n = na + nb
        delta = other.mean - self.mean
        factor = na * nb / n
        auto = self.auto + factor * _outer_sum(delta, delta)
        auto += other.auto
        cross = self.cross + factor * _outer_sum(delta[:1], delta[1:])
        cross += other.cross
        mean = self.mean + delta * (nb / n)
        return Moments(n, mean, auto, cross)


def float32_centring_error(name):
    """The error for finite float32 values whose distance from their means overflows."""
    return ValueError(
        f"{name} has float32 values so far from their means (near ±"
        f"{float(np.finfo(np.float32).max):.3g}) that centring them overflows "
        "float32; rescale it or pass float64"
    )


class NonFiniteError(ArithmeticError):
    """A view's sums came out NaN or infinite (``view`` is its index).

    ``float32_centring`` is set when finite float32 values lay so far from their
    means that the centred values themselves overflowed float32.
    """

    def __init__(self, view, float32_centring=False):
        super().__init__(view)
        self.view = view
        self.float32_centring = float32_centring


def product_dtype(dtype):
    """Dtype of the BLAS products for input of ``dtype``: float32 stays float32."""
    return (
        np.dtype(np.float32)
        if np.dtype(dtype) in (np.float32, np.float16)
        else np.dtype(np.float64)
    )


_SCRATCHES = weakref.WeakValueDictionary()


def _shared(key, rows, width, dtype, floor=0):
    """A buffer of at least ``rows`` (and ``floor``) × ``width`` values of ``dtype``,
    shared by every accumulator of this thread under ``key`` (their products never
    overlap in one thread; dask's threads get their own): a report that holds many
    layers' statistics holds one buffer of a kind per width, not one per accumulator.
    Each accumulator keeps a reference to the buffer it uses, so that it lives as long
    as one of them does."""
    key = (threading.get_ident(), key, width, np.dtype(dtype).str)
    buffer = _SCRATCHES.get(key)
    if buffer is None or buffer.shape[0] < rows:
        buffer = np.empty((max(rows, floor), width), dtype)
        _SCRATCHES[key] = buffer
    return buffer


def _scratch(n):
    """The float32 n × n product of the stacked rows (:func:`_shared`)."""
    return _shared("product", n, n, np.float32)


def _row_buffer(rows, width, dtype):
    """Centred rows of a chunk multiplied at once (:func:`_shared`): it is centred into
    the buffer and its product taken before another accumulator of the thread runs."""
    floor = FLOAT32_PRODUCT_ROWS if np.dtype(dtype) == np.float32 else 0
    return _shared("rows", rows, width, dtype, floor)


class MomentAccumulator:
    """Exact one-pass accumulation of the moments of ``G`` views, chunk after chunk.

    The first chunk fixes a shift per feature and view, ``s_g`` (R × d): its
    per-feature means, rounded to the product dtype. Every chunk is written as
    ``Z_g = x_g − s_g`` into one stacked row buffer ``[Z_0 … Z_{G-1}]``; its
    products add ``Z_gᵀZ_g`` and ``Z_gᵀZ_0`` — the only blocks SEIS reads — to
    float64 sums kept block by block (``G + (G − 1)`` d × d matrices, not the whole
    ``G·d × G·d`` Gram), and the per-feature sums of ``Z_g`` are kept in float64.
    :meth:`result` removes the shift exactly, ``P̃_gᵀP̃_h = Z_gᵀZ_h −
    N·Σ_r z̄_{g,r}ᵀ z̄_{h,r}`` (the shifted-data form of the centred products), as
    one small product: the per-feature centring of SPEC §2.1 costs no more than
    column centring did. The shift is within a sampling error of the means, so the
    correction removes little.

    float32 input is multiplied in float32 (one SYRK of the stacked rows into a
    float32 product shared by every accumulator of the thread) over at most
    ``FLOAT32_PRODUCT_ROWS`` centred rows, and summed in float64 across products.
    A chunk of at least ``DIRECT_PRODUCT_ROWS`` rows is centred into a row buffer
    shared the same way and multiplied at once; smaller chunks wait in the
    accumulator's own buffer, pooled so that many small batches cost one product.
    A report that holds many layers' statistics thus holds their float64 sums and
    one buffer of each kind per width.
    """

    def __init__(self, n_views, rows_per_sample, n_columns, dtype):
        self.n_samples = 0
        self.dtype = np.dtype(dtype)
        self.n_views = n_views
        self.rows = rows_per_sample
        self.d = d = n_columns
        self.shift = None  # (G, R, d) in the product dtype, from the first chunk
        self.sums = np.zeros((n_views, rows_per_sample, d))  # Σ Z per feature
        self.auto = np.zeros((n_views, d, d))  # Σ Z_gᵀZ_g, lower triangles
        self.lower = np.zeros((max(n_views - 1, 0), d, d))  # Σ Z_gᵀZ_0, g ≥ 1
        self._buffer = None  # own rows: float32 chunks too small to multiply alone
        # float32: centred rows wait in _buffer (up to FLOAT32_PRODUCT_ROWS) for one
        # product, so that small batches (streaming) do not pay a d × d float64 sum
        # each; _segments are the pending chunks' row ranges, for the rare product
        # that needs rescaling
        self._pending, self._segments = 0, []
        self._float32 = self.dtype == np.float32  # products land in a scratch, then float64
        self._scratch = None  # the shared float32 product (_scratch), once one ran
        self._rows = None  # the shared row buffer (_row_buffer), once used
        self._finished = False

    def add(self, views, numba=False):
        """Add a chunk: one ``(n_samples, R, d)`` array per view (any strides).

        ``numba=True`` centres with the Numba kernel, which reads strided views
        of transposing layouts without a copy; otherwise numpy broadcasts.
        """
        if self._finished:
            raise RuntimeError("the moments were taken with result(final=True)")
        n, rows, d = views[0].shape
        r = n * rows
        # float32: small chunks pool in the accumulator's buffer until a product is due
        pooled = self._float32 and r < DIRECT_PRODUCT_ROWS
        if self._pending and (not pooled or self._pending + r > FLOAT32_PRODUCT_ROWS):
            self._flush()
        if pooled:
            start = self._pending
            self._reserve(start + r)
            buffer = self._buffer[start : start + r]
        else:
            start = 0
            self._rows = _row_buffer(r, self.n_views * d, self.dtype)
            buffer = self._rows[:r]
        if self.shift is None:
            self.shift = np.empty((self.n_views, rows, d), dtype=self.dtype)
            for g, view in enumerate(views):
                self.shift[g] = _feature_means(view, numba)
        sums = np.empty_like(self.sums)
        for g, view in enumerate(views):
            out = buffer[:, g * d : (g + 1) * d]
            if numba:
                sums[g] = centre_into_view(view, self.shift[g], out)
            else:
                sums[g] = _centre_block(view, self.shift[g], _as_samples(out, n))
            if not np.isfinite(sums[g]).all():
                raise NonFiniteError(g)
        if pooled:
            self._segments.append((start, start + r))
            self._pending = start + r
            if self._pending >= FLOAT32_PRODUCT_ROWS:
                self._flush()
        elif self._float32:
            self._product(buffer, [(0, r)])
        else:
            self._add_float64(buffer)
        self.sums += sums
        self.n_samples += n

    def _reserve(self, rows):
        """An own buffer of at least ``rows`` rows, keeping the pending ones."""
        have = 0 if self._buffer is None else self._buffer.shape[0]
        if have >= rows:
            return
        grown = np.empty((max(rows, min(2 * have, FLOAT32_PRODUCT_ROWS)),
                          self.n_views * self.d), dtype=self.dtype)  # fmt: skip
        if self._pending:
            grown[: self._pending] = self._buffer[: self._pending]
        self._buffer = grown

    def _flush(self):
        """The float32 product of the pending rows, added to the float64 sums."""
        if not self._pending:
            return
        self._product(self._buffer[: self._pending], self._segments)
        self._pending, self._segments = 0, []

    def _product(self, rows, segments):
        """Add the float32 product of the centred ``rows`` (chunks at ``segments``).

        SYRK of numpy's own BLAS (``seis_sklearn._blas``): only the lower triangle
        is computed, and no second OpenBLAS (scipy's) spins its idle threads against
        numpy's (measured: a ResNet-18 report 9.7 s with scipy's SYRK, 8.0 s
        without). Only the lower triangle of the diagonal blocks and the first
        column of blocks (``Z_gᵀZ_0``) are read.

        Nothing is scaled beforehand: the product's own diagonal says whether a
        view's values could have over- or underflowed float32 (:func:`_float32_safe`).
        Only then (almost never) is each chunk scaled by the exact powers of two its
        own range needs and multiplied on its own (:meth:`_add_rescaled`).
        """
        scratch = self._scratch = _scratch(self.n_views * self.d)
        with np.errstate(over="ignore", invalid="ignore"):
            syrk_lower(rows, scratch)
            if _float32_safe(scratch, self.n_views, self.d):
                self._add_blocks(scratch)
            else:
                for start, stop in segments:
                    self._add_rescaled(rows[start:stop])
        self._check_finite()

    def _add_blocks(self, product, scales=None):
        """Add the read blocks of a stacked product, each divided by its views' scales."""
        d = self.d
        for g in range(self.n_views):
            sl = slice(g * d, (g + 1) * d)
            if scales is None:
                add_lower_triangle(self.auto[g], product[sl, sl])
                if g:
                    self.lower[g - 1] += product[sl, :d]
            else:
                _add_scaled(self.auto[g], product[sl, sl], 1.0 / scales[g] ** 2)
                if g:
                    _add_scaled(self.lower[g - 1], product[sl, :d], 1.0 / (scales[g] * scales[0]))

    def _add_rescaled(self, rows):
        """The product of ``rows`` with each view brought near 1 by a power of two."""
        d = self.d
        scales = np.ones(self.n_views)
        for g in range(self.n_views):
            block = rows[:, g * d : (g + 1) * d]
            if not np.isfinite(block).all():  # x − s itself overflowed float32
                raise NonFiniteError(g, float32_centring=True)
            scales[g] = _float32_scale(float(block.min()), float(block.max()))
            if scales[g] != 1.0:
                block *= np.float32(scales[g])
        scratch = self._scratch = _scratch(self.n_views * d)
        syrk_lower(rows, scratch)
        self._add_blocks(scratch, scales)

    def _add_float64(self, rows):
        """Add the float64 products of centred ``rows``: a SYRK per view, a GEMM per pair."""
        d = self.d
        first = rows[:, :d]
        with np.errstate(over="ignore", invalid="ignore"):  # checked after the products
            for g in range(self.n_views):
                block = rows[:, g * d : (g + 1) * d]
                syrk_lower(block, self.auto[g], beta=1.0)
                if g:
                    self.lower[g - 1] += block.T @ first
        self._check_finite()

    def _check_finite(self):
        for g in range(self.n_views):
            if not np.isfinite(np.trace(self.auto[g])):
                raise NonFiniteError(g)

    def result(self, final=False):
        """The accumulated :class:`Moments` (symmetric, the shift removed).

        ``final=True`` builds them in the accumulator's own arrays instead of copies
        (no second set of d × d matrices beside the first) and ends it: nothing can
        be added afterwards.
        """
        if self._finished:
            raise RuntimeError("the moments were taken with result(final=True)")
        self._flush()
        auto, lower = self.auto, self.lower
        if final:
            self._finished = True
            self.auto = self.lower = self._buffer = self._rows = self._scratch = None
        else:
            auto, lower = auto.copy(), lower.copy()
        for g in range(self.n_views):  # the products wrote (at least) the lower triangle
            mirror_lower(auto[g])
        return shifted_block_moments(auto, lower, self.sums, self.shift, self.n_samples)


def shifted_block_moments(auto, lower, sums, shift, n):
    """:class:`Moments` from shifted sums kept block by block, in place.

    Parameters
    ----------
    auto : ndarray of shape (G, d, d)
        float64 ``Z_gᵀZ_g``, symmetric; overwritten by the centred ``P̃_gᵀP̃_g``.
    lower : ndarray of shape (G - 1, d, d)
        float64 ``Z_gᵀZ_0`` for ``g ≥ 1``; overwritten by the centred ``P̃_0ᵀP̃_g``.
    sums, shift : ndarray of shape (G, R, d)
        Per-feature sums of ``Z_g`` and the shifts ``s_g``.
    n : int
        Samples.

    Returns
    -------
    Moments
        ``P̃_gᵀP̃_h = Z_gᵀZ_h − n·Σ_r z̄_{g,r}ᵀ z̄_{h,r}`` with ``z̄ = sums / n``.
    """
    centre = sums / n  # mean of Z per feature: μ − s
    for cross in lower:
        np.copyto(cross, cross.T.copy())  # Z_0ᵀZ_g
    _add_mean_products(auto, lower, centre, -n)
    mean = np.asarray(shift, dtype=np.float64) + centre
    return Moments(n, mean, auto, lower)


def _add_mean_products(auto, cross, means, factor):
    """``auto[g] += factor·Σ_r m_{g,r}ᵀm_{g,r}`` and ``cross[g−1] += factor·Σ_r
    m_{0,r}ᵀm_{g,r}`` for per-feature means (or mean offsets) ``m`` (G, R, d), in
    place, one d × d temporary at a time."""
    for g in range(auto.shape[0]):
        term = _outer_sum(means[g], means[g])
        term *= factor
        auto[g] += term
        if g:
            term = _outer_sum(means[0], means[g])
            term *= factor
            cross[g - 1] += term


def shifted_moments(joint, sums, shift, n):
    """:class:`Moments` from shifted sums: ``joint = ZᵀZ`` of the stacked ``Z_g = x_g − s_g``
    (the torch accumulator's), through :func:`shifted_block_moments` on copies of the
    blocks it reads: the diagonal ones in full and the first column (``Z_gᵀZ_0``).
    ``sums``, ``shift`` and ``n`` as there."""
    G, d = sums.shape[0], sums.shape[2]
    blocks = [slice(g * d, (g + 1) * d) for g in range(G)]
    auto = np.stack([joint[b, b] for b in blocks])
    lower = np.stack([joint[b, :d] for b in blocks[1:]]) if G > 1 else np.empty((0, d, d))
    return shifted_block_moments(auto, lower, sums, shift, n)


# Chunks of these dtypes are centred by the Numba kernel, straight from a strided view
# (faster than numpy at every width measured by benchmarks/kernels.py, d = 1 to 1,024:
# benchmarks/README.md); numpy centres what cannot be viewed so (F order, other dtypes)
# and projected chunks.
NUMBA_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _as_samples(out, n):
    """The (n·R, d) block ``out`` seen as (n, R, d), without a copy."""
    view = out.view()
    view.shape = (n, out.shape[0] // n, out.shape[1])
    return view


def _feature_means(view, numba):
    """Float64 mean over the samples of every feature of a (n, R, d) chunk."""
    if numba:
        return feature_means_of_view(view)
    with np.errstate(over="ignore", invalid="ignore"):
        return view.mean(axis=0, dtype=np.float64)


def _centre_block(view, shift, out):
    """numpy: ``out = view − shift`` (both (n, R, d)); returns the float64 per-feature
    sums of ``view − shift`` (from the input, so the means are the input's)."""
    with np.errstate(over="ignore", invalid="ignore"):
        np.subtract(view, shift, out=out, casting="unsafe")
        return view.sum(axis=0, dtype=np.float64) - view.shape[0] * shift.astype(np.float64)


def _add_scaled(total, part, factor):
    """``total += factor·part`` (``factor`` a power of two, so exact)."""
    if factor == 1.0:
        total += part
    else:
        total += factor * part.astype(np.float64)


# Centred float32 values are multiplied by an exact power of two when their largest
# magnitude leaves [2^-20, 2^20], so that sums of FLOAT32_PRODUCT_ROWS products
# neither underflow nor overflow float32. The moment pass does it only when a
# product's diagonal shows the values were outside a (wider) safe range:
# squares summing to at most 2^120 cannot have overflowed (every entry of the
# product is bounded by its diagonal, Cauchy–Schwarz), and a largest diagonal of at
# least 2^-80 over at most 4,096 rows means a largest square of at least 2^-92, so
# every product within 2^-30 of it is above 2^-126, where float32 is still normal.
# A zero diagonal (an all-zero view, or squares that all underflowed) is checked
# on the values themselves.
_SAFE_EXPONENT = 20
_SAFE_DIAGONAL = (2.0**-80, 2.0**120)


def _float32_safe(product, n_views, d):
    """Whether a float32 product's diagonal blocks show no over- or underflow."""
    diagonal = np.diagonal(product)
    if not np.isfinite(diagonal).all():
        return False
    lo, hi = _SAFE_DIAGONAL
    for g in range(n_views):
        # zero too: all-zero values, or values whose squares all underflowed
        if not lo <= float(diagonal[g * d : (g + 1) * d].max()) <= hi:
            return False
    return True


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
# A float32 chunk of at least this many rows is multiplied on its own, from the shared
# row buffer, instead of waiting in its accumulator's: the product's float64 sum (a
# lower triangle of (G·d)² values) costs under 5 % of the product from here on
# (d = 3,136: 14 ms against 0.4 s), and an accumulator then owns no rows.
DIRECT_PRODUCT_ROWS = 1024


def project_moments(moments, V):
    """Moments of the projected views ``P_g V`` (k columns), from d × d moments."""
    return Moments(
        moments.n_samples,
        moments.mean @ V,
        np.stack([symmetric_product(V, a @ V) for a in moments.auto]),
        np.stack([V.T @ c @ V for c in moments.cross]),
    )


def mean_spread(mean, fitted_mean):
    """``δ_r = μ′_r − μ_r`` of held-out per-feature means against the fitted ones, and
    its spread ``δ_r − δ̄`` about its mean over the rows of a sample (:func:`recentred`).

    Parameters
    ----------
    mean, fitted_mean : ndarray of shape (G, R, c)

    Returns
    -------
    (ndarray, ndarray)
        ``δ`` and ``δ − δ̄``, both of shape (G, R, c).
    """
    delta = mean - fitted_mean
    return delta, delta - delta.mean(axis=1, keepdims=True)


def recentred(moments, fitted_mean, overwrite=False):
    """The moments of held-out views centred by fitted means, then by their column means.

    SPEC §2.4: new data are centred with the per-feature means of the fit,
    ``P′ − μ_P``, and Pearson correlations and ``Σ′`` then subtract the column
    means of what is left. For rows ``(s, r)`` with held-out per-feature means
    ``μ′_r`` and ``δ_r = μ′_r − μ_r``, the column mean is ``δ̄ = mean_r δ_r`` and
    the scatter is the per-feature scatter plus ``N·Σ_r (δ_r − δ̄)ᵀ(δ_r − δ̄)``.

    Parameters
    ----------
    moments : Moments
        Per-feature moments of the held-out views (usually projected, k columns).
    fitted_mean : ndarray of shape (G, R, k)
        The fitted per-feature means in the same columns.
    overwrite : bool, default=False
        Add the spread to ``moments``' own arrays instead of copies.

    Returns
    -------
    Moments
        Whose ``auto``/``cross`` are the recentred scatters (``mean``: ``δ``).
    """
    delta, spread = mean_spread(moments.mean, fitted_mean)
    n = moments.n_samples
    auto = moments.auto if overwrite else moments.auto.copy()
    cross = moments.cross if overwrite else moments.cross.copy()
    _add_mean_products(auto, cross, spread, n)
    return Moments(n, delta, auto, cross)


class ArrayAccumulator:
    """The moments of row-aligned views, batch after batch of numpy arrays.

    The numpy implementation of the accumulator protocol of
    :mod:`seis_sklearn._accumulate` — ``add`` a batch, ``result`` — over
    :class:`MomentAccumulator`: each batch is cut into chunks of samples, read
    through strided views where the Numba kernel can (wide rows) and matricized
    by numpy otherwise.

    Parameters
    ----------
    n_views : int
    shape : tuple of int
        Per-sample shape of every view.
    dtype : numpy dtype
        Input dtype (float32 keeps float32 products).
    layout, matricization : str
        Concrete layout and matricization mode.
    names : sequence of str or None
        Argument names, for the error raised on NaN/inf (``None``: raise
        :class:`NonFiniteError` with the view's index instead).
    projection : ndarray of shape (d, k), optional
        Accumulate the moments of ``P_g @ projection`` (k columns) instead.
    """

    def __init__(self, n_views, shape, dtype, layout, matricization, *, names, projection=None):
        self.layout, self.matricization, self.names = layout, matricization, names
        self.projection = projection
        self.rows, d = matrix_shape((1, *shape), layout, matricization)
        dtype = product_dtype(dtype)
        if projection is not None:
            dtype, d = np.dtype(np.float64), projection.shape[1]
        else:
            check_moment_memory(n_views, d)
        self.d = d
        self.step = chunk_samples((1, *shape), np.dtype(dtype).itemsize)
        if dtype == np.float32:
            self.step = max(1, min(self.step, FLOAT32_PRODUCT_ROWS // self.rows))
        self._acc = MomentAccumulator(n_views, self.rows, d, dtype)

    @property
    def n_samples(self):
        """Samples added so far."""
        return self._acc.n_samples

    def add(self, arrays, indices=None):
        """Add the samples of a batch (all of them, or ``indices``, in that order)."""
        n = arrays[0].shape[0] if indices is None else len(indices)
        release = _page_releaser(arrays)
        files = InputFiles(arrays)
        for start in range(0, n, self.step):
            files.before_chunk()
            if indices is None:
                chunks = [a[start : start + self.step] for a in arrays]
            else:
                take = indices[start : start + self.step]
                chunks = [a[take] for a in arrays]
            views = None
            if self.projection is None and all(c.dtype in NUMBA_DTYPES for c in chunks):
                views = [sample_view(c, self.layout, self.matricization) for c in chunks]
                if any(v is None for v in views):
                    views = None
            numba = views is not None
            if not numba:
                blocks = [matricize(c, self.layout, self.matricization) for c in chunks]
                if self.projection is not None:
                    blocks = [b @ self.projection for b in blocks]
                size = len(chunks[0])
                views = [b.reshape(size, self.rows, b.shape[1]) for b in blocks]
            try:
                self._acc.add(views, numba=numba)
            except NonFiniteError as exc:
                self._raise(exc, arrays)
            release()
        files.after_pass()
        return self

    def result(self, final=False):
        """The :class:`Moments` of every sample added (``final=True``: in the
        accumulator's own arrays, after which nothing can be added)."""
        try:
            return self._acc.result(final)  # the last pooled float32 product runs here
        except NonFiniteError as exc:
            self._raise(exc)

    def _raise(self, exc, arrays=None):
        """The ValueError naming the argument for a :class:`NonFiniteError`."""
        if self.names is None:
            raise exc
        name = self.names[exc.view]
        if exc.float32_centring:
            raise float32_centring_error(name) from None
        if arrays is None:  # pragma: no cover - rescaled float32 products stay finite
            raise ValueError(f"{name} has values whose sums overflow; rescale it") from None
        raise_nonfinite(arrays[exc.view], name)


def accumulate_numpy(arrays, layout, matricization, *, names, indices=None, projection=None):
    """:func:`seis_sklearn._accumulate.accumulate` for numpy arrays (the dask blocks' kernel).

    Returns
    -------
    Moments
    """
    first = arrays[0]
    acc = ArrayAccumulator(
        len(arrays),
        first.shape[1:],
        np.result_type(*arrays),
        layout,
        matricization,
        names=names,
        projection=projection,
    )
    return acc.add(arrays, indices).result(final=True)


def check_moment_memory(n_views, d):
    """Refuse d × d moments that cannot fit in this machine's memory, with the way out."""
    needed = (2 * n_views - 1) * d * d * 8
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return
    if needed > available // 2:
        head = (
            f"the moments of {n_views} views with d={d} columns need {needed / 2**30:.1f} GiB "
            f"(this machine has {available / 2**30:.1f} GiB)"
        )
        if n_views > 2:  # an orbit: its basis is pooled from the moments, no Gram route
            raise ValueError(
                f"{head}: an orbit is scored from its d × d moments, so fewer columns are "
                "the way out — average-pool the maps' grid (p × p blocks keep quarter "
                "turns, flips and shifts by multiples of p exact; a layerwise report's "
                "over_budget='pool' does it), or matricization='spatial' (d = the "
                "positions) instead of 'flatten'; or score the pairs (A, B_g) one by one "
                "with solver='gram'"
            )
        raise ValueError(
            f"{head}: use fit with solver='gram' (or 'auto'), which works from the Gram "
            "matrix of the rows"
        )


class InputChangedError(ValueError):
    """A memory-mapped input file was truncated or rewritten while it was being read."""


class InputFiles:
    """The files behind memory-mapped inputs, watched during a pass.

    A file truncated under a memory map kills the reader with SIGBUS when it
    touches a page past the new end, and a file rewritten in place mixes old and
    new data silently. Before every chunk the files' sizes are checked (a
    truncation seen then is an error, not a crash), and after the pass their sizes
    and modification times must be those of the start. :attr:`reading` names the
    files of the pass in progress (for the command line's bus-error message).
    """

    reading = ()

    def __init__(self, arrays):
        self.files = {}
        for a in arrays:
            name = getattr(a, "filename", None)
            if isinstance(a, np.memmap) and name:
                with contextlib.suppress(OSError):
                    stat = os.stat(name)
                    self.files[name] = (stat.st_size, stat.st_mtime_ns)
        if self.files:
            InputFiles.reading = tuple(self.files)

    def before_chunk(self):
        for name, (size, _) in self.files.items():
            now = _stat(name)
            if now is None or now[0] < size:
                got = "gone" if now is None else f"{now[0]} bytes"
                raise InputChangedError(
                    f"{name}: truncated while being read (was {size} bytes, now {got})"
                )

    def after_pass(self):
        for name, identity in self.files.items():
            if _stat(name) != identity:
                raise InputChangedError(
                    f"{name}: changed while being read (its size or modification time "
                    "differs from the start): the scores would mix old and new data"
                )
        InputFiles.reading = ()


def _stat(name):
    try:
        stat = os.stat(name)
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns)


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
