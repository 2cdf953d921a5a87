"""SEIS moments of torch tensors, on the tensors' device (the accumulator protocol).

The torch implementation of :mod:`seis_sklearn._accumulate`: the same statistics
as :class:`~seis_sklearn._moments.ArrayAccumulator`, by the same rules — every
feature centred on a shift fixed by the first chunk (its per-feature means,
rounded to the product dtype), float32 input multiplied in float32 over at most
``FLOAT32_PRODUCT_ROWS`` rows (rescaled by exact powers of two when out of range)
and summed in float64, float64 input in float64, TF32 off — computed where the
tensors are. Only the d × d statistics reach the host, in :meth:`result`; the
checks for NaN and overflow are flags on the device, read once per batch.

The Gram solver's passes over columns (:func:`accumulate_gram`,
:func:`gram_components`) are here too, for the rows a streamed layer keeps as
tensors: only the Gram matrix, the means and ``V_k`` reach the host.

Imported only when a torch tensor is given (torch is then loaded already).
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch

from ._gram import GramMoments, column_chunks
from ._matricize import matrix_shape
from ._moments import (
    _SAFE_EXPONENT,
    FLOAT32_PRODUCT_ROWS,
    NonFiniteError,
    _float32_scale,
    check_moment_memory,
    float32_centring_error,
    shifted_moments,
)
from ._validation import CHUNK_BYTES, _nonfinite_error


def _as_rows(chunk, layout, matricization):
    """A (n, R, d) tensor of the chunk's matricized rows (a view when strides allow)."""
    n = chunk.shape[0]
    rows, d = matrix_shape(tuple(chunk.shape), layout, matricization)
    if layout == "ND" or matricization == "flatten":
        return chunk.reshape(n, 1, d)
    if matricization == "spatial":  # channels first: (N, C, *positions)
        if layout == "NHWC":
            chunk = chunk.permute(0, 3, 1, 2)
        elif layout == "NLD":
            chunk = chunk.permute(0, 2, 1)
    elif layout in ("NCHW", "NCDHW"):  # channel mode: channels last
        chunk = torch.movedim(chunk, 1, -1)
    return chunk.reshape(n, rows, d)


def device_indices(indices, device):
    """``indices`` as a long tensor on ``device``, copied there once per distinct set.

    A copy from the host is a synchronisation on a GPU; a report's batches select
    their kept and held-out samples with a few patterns that repeat, so the tensors
    of the last 64 distinct sets are kept.
    """
    indices = np.ascontiguousarray(indices, dtype=np.int64)
    return _cached_indices(indices.tobytes(), str(torch.device(device)))


@functools.lru_cache(maxsize=64)
def _cached_indices(data, device):
    return torch.as_tensor(np.frombuffer(data, dtype=np.int64).copy(), device=device)


def _product_dtype(dtype):
    """float32 products for float32/float16/bfloat16 input, float64 for anything else."""
    low = dtype in (torch.float32, torch.float16, torch.bfloat16)
    return torch.float32 if low else torch.float64


@contextlib.contextmanager
def _exact_matmul():
    """TF32 off for the products (restored afterwards): float32 must mean float32."""
    cuda = torch.backends.cuda.matmul
    before = cuda.allow_tf32
    cuda.allow_tf32 = False
    try:
        yield
    finally:
        cuda.allow_tf32 = before


def _device_float32_scale(top):
    """:func:`~seis_sklearn._moments._float32_scale` of ``[-top, top]``, computed on
    ``top``'s device (a float64 tensor; no synchronisation with the host)."""
    top = top.to(torch.float64)
    exponent = torch.frexp(top).exponent
    keep = (top == 0) | ~torch.isfinite(top) | (exponent.abs() <= _SAFE_EXPONENT)
    return torch.where(keep, torch.ones_like(top), torch.ldexp(torch.ones_like(top), -exponent))


def raise_nonfinite_torch(tensor, name, float32_centring=False):
    """The error of :func:`seis_sklearn._validation.raise_nonfinite`, counted by torch.

    ``float32_centring``: the values are finite but so far from their means that the
    centred float32 values overflowed (the message of the numpy path for that case).
    """
    if float32_centring:
        raise float32_centring_error(name)
    if tensor.is_floating_point():
        n_nan = int(torch.isnan(tensor).sum())
        n_inf = int(torch.isinf(tensor).sum())
        if n_nan or n_inf:
            raise _nonfinite_error(name, n_nan, n_inf, tensor.numel())
    largest = float(tensor.abs().max())
    raise ValueError(
        f"{name} has finite values whose sums overflow float64 (largest |value| "
        f"{largest:.3g}); rescale it"
    )


class TorchAccumulator:
    """The moments of row-aligned views, batch after batch of torch tensors.

    Parameters
    ----------
    n_views : int
    shape : tuple of int
        Per-sample shape of every view.
    dtype : torch.dtype
        float32/float16/bfloat16 input keeps float32 products; anything else float64.
    layout, matricization : str
    names : sequence of str or None
        Argument names for errors (``None``: raise ``NonFiniteError``).
    projection : ndarray of shape (d, k), optional
        Accumulate the moments of ``P_g @ projection`` instead (float64).
    device : torch.device
        Where the statistics are accumulated (the tensors' device).
    """

    def __init__(
        self, n_views, shape, dtype, layout, matricization, *, names, projection=None, device
    ):
        self.layout, self.matricization, self.names = layout, matricization, names
        self.n_views, self.device = n_views, torch.device(device)
        self.rows, d = matrix_shape((1, *shape), layout, matricization)
        self.dtype = _product_dtype(dtype)
        self.projection = None
        if projection is not None:
            self.dtype, d = torch.float64, projection.shape[1]
            self.projection = torch.as_tensor(projection, dtype=torch.float64, device=device)
        else:
            check_moment_memory(n_views, d)
        self.d = d
        per_sample = max(1, int(np.prod(shape))) * 8
        self.step = max(1, CHUNK_BYTES // per_sample)
        if self.dtype == torch.float32:
            self.step = max(1, min(self.step, FLOAT32_PRODUCT_ROWS // self.rows))
        self.n_samples = 0
        self.shift = None
        self.sums = torch.zeros((n_views, self.rows, d), dtype=torch.float64, device=device)
        self.joint = torch.zeros((n_views * d, n_views * d), dtype=torch.float64, device=device)

    def add(self, tensors, indices=None):
        """Add the samples of a batch (all of them, or ``indices``, in that order).

        The batch's values are checked once, after all its chunks: NaN, infinities
        and overflows are flagged on the device and read by the host in one
        synchronisation per batch, not one per chunk.
        """
        if indices is not None:
            take = device_indices(indices, self.device)
            tensors = [t.index_select(0, take) for t in tensors]
        n = tensors[0].shape[0]
        flags = torch.zeros((3, self.n_views), dtype=torch.bool, device=self.device)
        for start in range(0, n, self.step):
            chunks = [t[start : start + self.step].detach() for t in tensors]
            views = [_as_rows(c, self.layout, self.matricization) for c in chunks]
            if self.projection is not None:
                views = [v.to(torch.float64) @ self.projection for v in views]
            self._add(views, flags)
        diagonal = torch.diagonal(self.joint).reshape(self.n_views, self.d)
        flags[2] |= ~torch.isfinite(diagonal).all(dim=1)  # a product overflowed
        bad = flags.cpu().numpy()  # the one synchronisation of the batch
        if bad.any():
            view = int(np.argmax(bad.any(axis=0)))
            centring = bool(bad[1, view] and not bad[0, view])
            if self.names is None:
                raise NonFiniteError(view, float32_centring=centring)
            raise_nonfinite_torch(tensors[view], self.names[view], float32_centring=centring)
        return self

    def _add(self, views, flags):
        """One chunk. Sets ``flags[0, g]`` where view g's sums are not finite (NaN or
        infinite values, or float64 sums that overflowed) and ``flags[1, g]`` where its
        float32 values overflowed when centred; ``add`` sets ``flags[2]`` for products."""
        G, d = self.n_views, self.d
        n = views[0].shape[0]
        if self.shift is None:
            self.shift = torch.stack([v.to(torch.float64).mean(dim=0) for v in views]).to(
                self.dtype
            )
        Z = torch.empty((n * self.rows, G * d), dtype=self.dtype, device=self.device)
        sums = torch.empty_like(self.sums)
        scales = torch.ones(G, dtype=torch.float64, device=self.device)
        for g, view in enumerate(views):
            shift = self.shift[g]
            sums[g] = (view.to(torch.float64) - shift.to(torch.float64)).sum(dim=0)
            flags[0, g] |= ~torch.isfinite(sums[g]).all()
            block = Z[:, g * d : (g + 1) * d]
            block.copy_((view.to(self.dtype) - shift).reshape(n * self.rows, d))
            if self.dtype == torch.float32 and block.numel():
                top = block.abs().amax()
                flags[1, g] |= ~torch.isfinite(top)
                scales[g] = _device_float32_scale(top)
                block.mul_(scales[g].to(torch.float32))  # a power of two: exact
        with _exact_matmul():
            product = Z.T @ Z
        if self.dtype == torch.float32:
            unscale = (1.0 / scales).repeat_interleave(d)
            product = product.to(torch.float64) * unscale[:, None] * unscale[None, :]
        self.joint += product
        self.sums += sums
        self.n_samples += n

    def result(self, final=False):
        """The :class:`~seis_sklearn._moments.Moments` of every sample added (on the host:
        always a copy, so ``final`` changes nothing)."""
        return shifted_moments(
            self.joint.cpu().numpy(),
            self.sums.cpu().numpy(),
            self.shift.to(torch.float64).cpu().numpy(),
            self.n_samples,
        )


def _centred_columns(views, c0, c1, dtype, names, tensors):
    """Columns c0:c1 of every (n, R, d) view, each feature centred over the samples.

    Returns the row stack (G·m, c1 − c0) in ``dtype`` and the float64 means (G, R, c1 − c0).
    """
    n, rows = views[0].shape[:2]
    m = n * rows
    out = torch.empty((len(views) * m, c1 - c0), dtype=dtype, device=views[0].device)
    means = []
    for g, view in enumerate(views):
        block = view[:, :, c0:c1].to(torch.float64)
        mu = block.mean(dim=0)
        if not bool(torch.isfinite(mu).all()):
            _raise_nonfinite(tensors, names, g)
        out[g * m : (g + 1) * m] = (block - mu).reshape(m, c1 - c0).to(dtype)
        means.append(mu)
    return out, torch.stack(means)


def _raise_nonfinite(tensors, names, g):
    if names is None:
        raise NonFiniteError(g)
    raise_nonfinite_torch(tensors[g], names[g])


def accumulate_gram(tensors, layout, matricization, *, names):
    """The :class:`~seis_sklearn._gram.GramMoments` of views held as torch tensors.

    The torch twin of :func:`seis_sklearn._gram.accumulate_gram`, on the tensors'
    device: one pass over chunks of columns, every feature centred over the samples
    in float64, float32 input multiplied in float32 (rescaled by an exact power of
    two when out of range; TF32 off) and summed in float64. Only the
    ``G·m × G·m`` Gram matrix and the ``(G, R, d)`` means reach the host.

    Parameters
    ----------
    tensors : sequence of torch.Tensor
        Views of one shape (samples first), on one device.
    layout, matricization : str
        Concrete layout and matricization mode.
    names : sequence of str or None
        Argument names for errors (``None``: raise ``NonFiniteError``).

    Returns
    -------
    GramMoments
    """
    views = [_as_rows(t.detach(), layout, matricization) for t in tensors]
    n, rows, d = views[0].shape
    m, size = n * rows, len(views) * n * rows
    dtype, device = _product_dtype(tensors[0].dtype), tensors[0].device
    gram = torch.zeros((size, size), dtype=torch.float64, device=device)
    mean = torch.empty((len(views), rows, d), dtype=torch.float64, device=device)
    with _exact_matmul():
        for c0, c1 in column_chunks(m, d, len(views)):
            Z, mean[:, :, c0:c1] = _centred_columns(views, c0, c1, dtype, names, tensors)
            if dtype == torch.float64:
                gram += Z @ Z.T
                continue
            top = float(Z.abs().max())
            scale = _float32_scale(-top, top)
            if scale != 1.0:
                Z *= scale
            gram += (Z @ Z.T).to(torch.float64) / (scale * scale)
    if not bool(torch.isfinite(torch.trace(gram))):
        diagonal = torch.isfinite(torch.diagonal(gram)).to(torch.int8)
        _raise_nonfinite(tensors, names, int(torch.argmin(diagonal)) // m)
    return GramMoments(m, mean.cpu().numpy(), gram.cpu().numpy())


def gram_components(tensors, layout, matricization, basis, *, names):
    """``V_k = Zᵀ U_k / s_k`` (d × k, on the host) by one more pass on the tensors' device.

    The torch twin of :func:`seis_sklearn._gram.gram_components`.
    """
    views = [_as_rows(t.detach(), layout, matricization) for t in tensors]
    n, rows, d = views[0].shape
    dtype, device = _product_dtype(tensors[0].dtype), tensors[0].device
    coefficients = torch.as_tensor(basis.coefficients, device=device).to(dtype)
    V = torch.empty((d, basis.k), dtype=torch.float64, device=device)
    with _exact_matmul():
        for c0, c1 in column_chunks(n * rows, d, len(views)):
            Z, _ = _centred_columns(views, c0, c1, dtype, names, tensors)
            V[c0:c1] = Z.T @ coefficients  # float32 input: float32 products over G·m rows
    return V.cpu().numpy()
