"""Metrics from the literature, on the same activation arrays as SEIS.

* **G-EED** (Gruver-style empirical equivariance deviation; Quiroga et al., the
  seed paper's §3): on *orbit* arrays — a layer's activations for every element
  ``g`` of a finite group acting on the inputs, identity first —
  :func:`channelwise_geed` (negative mean cosine between the channels of
  ``f(gx)`` and ``g·f(x)``), :func:`latent_geed` (Euclidean or cosine, normalised
  by the mean over distinct points) and :func:`softmax_geed` (KL divergence to
  the orbit-averaged prediction). Larger = less equivariant / invariant.
* **Representation similarity**: :func:`linear_cka` (Kornblith et al. 2019),
  :func:`svcca` (Raghu et al. 2017) and :func:`pwcca` (Morcos et al. 2018). They
  are computed from the same one-pass, mergeable moments as SEIS
  (:mod:`seis_sklearn._moments`; CKA from the samples' Gram matrices where those
  are smaller), so they stream, memory-map and run on dask arrays like
  :func:`~seis_sklearn.seis_score`, with the same ``layout`` and ``matricization``
  arguments. They compare two views of the same samples of any widths (a layer on
  original and transformed inputs, or two layers of different shapes); G-EED's
  orbit elements share one shape by definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from ._accumulate import accumulate, accumulator
from ._cca import descending_eigh, deterministic_signs
from ._matricize import matricize, matrix_shape, resolve_layout
from ._validation import (
    CHUNK_BYTES,
    as_activation_array,
    check_choice,
    check_finite,
    check_views,
    chunk_samples,
    first_line,
    is_dask_array,
)

__all__ = [
    "MinibatchCKA",
    "PairMoments",
    "RowNormSums",
    "centred_gram",
    "channelwise_geed",
    "cka",
    "cka_debiased_from_moments",
    "latent_geed",
    "linear_cka",
    "pwcca",
    "softmax_geed",
    "svcca",
]


# ---------------------------------------------------------------------------- G-EED


def _check_orbit(orbit, name="orbit"):
    if isinstance(orbit, np.ndarray):
        raise TypeError(
            f"{name} must be a sequence of arrays, one per group element (identity first)"
        )
    arrays = [np.asarray(a) for a in orbit]
    if len(arrays) < 2:
        raise ValueError(f"{name} needs at least 2 group elements (identity first)")
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise ValueError(
                f"{name}[{i}] has shape {a.shape}; every element must have {name}[0]'s "
                f"shape {shape}"
            )
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name}[{i}] must be numeric; got dtype {a.dtype}")
        check_finite(a, f"{name}[{i}]")
    if len(shape) < 2 or shape[0] < 1:
        raise ValueError(f"{name} arrays need samples first and a feature axis; got {shape}")
    return arrays


@njit(cache=True)
def _channel_cosines(a, b):  # pragma: no cover - compiled; tested against numpy
    """Cosine between a[n, c, :] and b[n, c, :] for every (n, c), in one pass.

    Both zero: 1 (equal); one zero: 0. Sums in float64.
    """
    n, c, p = a.shape
    out = np.empty((n, c))
    for i in range(n):
        for j in range(c):
            dot = 0.0
            na = 0.0
            nb = 0.0
            for k in range(p):
                x = np.float64(a[i, j, k])
                y = np.float64(b[i, j, k])
                dot += x * y
                na += x * x
                nb += y * y
            if na == 0.0 and nb == 0.0:
                out[i, j] = 1.0
            elif na == 0.0 or nb == 0.0:
                out[i, j] = 0.0
            else:
                out[i, j] = dot / np.sqrt(na * nb)
    return out


def _channels_last_flat(x, layout):
    """(N, C, P): channels and the flattened grid, whatever the layout."""
    if layout in ("NHWC",):
        x = np.moveaxis(x, -1, 1)
    elif layout == "NLD":
        x = np.moveaxis(x, -1, 1)
    elif layout == "ND":
        x = x[:, :, None]
    return np.ascontiguousarray(x.reshape(x.shape[0], x.shape[1], -1))


def channelwise_geed(orbit, actions, *, layout="auto", channel_permutations=None):
    """Channelwise G-EED: −mean cosine between the channels of f(gx) and g·f(x).

    ``E = 1/(|D||G|) Σ_x Σ_g −(1/C) Σ_i cos([f(gx)]_i, [g·f(x)]_i)`` (the seed
    paper's eq. 5, with ``f̂ = f`` as for the faithful spatial actions). −1 for an
    exactly equivariant layer; larger is less equivariant.

    Parameters
    ----------
    orbit : sequence of ndarray
        ``orbit[g]`` = the layer's activations on the inputs transformed by the
        g-th group element, samples first, one layout; ``orbit[0]`` is the
        identity (the original inputs).
    actions : sequence of callable
        ``actions[g]`` maps ``f(x)`` (an array of ``orbit[0]``'s shape) to
        ``g·f(x)``, e.g. ``partial(transforms.rot90, k=g)`` — the spatial
        transform applied to every channel. ``actions[0]`` is the identity
        (``None`` is accepted for it).
    layout : str, default="auto"
        Layout of the arrays (channels are the C axis; ``"ND"``: each feature
        is a channel of one value).
    channel_permutations : sequence of array of int, optional
        For group-equivariant networks whose action also permutes channels:
        ``channel_permutations[g][i]`` is the channel of ``g·f(x)`` compared with
        channel ``i`` of ``f(gx)``.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from functools import partial
    >>> from seis_sklearn import transforms
    >>> from seis_sklearn.metrics import channelwise_geed
    >>> fx = np.random.default_rng(0).normal(size=(8, 3, 5, 5))
    >>> orbit = [transforms.rot90(fx, k) for k in range(4)]      # an equivariant layer
    >>> actions = [partial(transforms.rot90, k=k) for k in range(4)]
    >>> round(channelwise_geed(orbit, actions), 12)
    -1.0
    """
    arrays = _check_orbit(orbit)
    if len(actions) != len(arrays):
        raise ValueError(
            f"actions has {len(actions)} entries for an orbit of {len(arrays)} elements"
        )
    layout = resolve_layout(layout, arrays[0].ndim, name="orbit[0]")
    fx = arrays[0]
    total = 0.0
    for g, (fgx, act) in enumerate(zip(arrays, actions, strict=True)):
        moved = fx if act is None else np.asarray(act(fx))
        if moved.shape != fx.shape:
            raise ValueError(f"actions[{g}] changed the shape of f(x): {fx.shape} → {moved.shape}")
        # cosines do not depend on scale: bring each array near 1 (1e±300 would overflow)
        a = _channels_last_flat(_unit_scale(fgx), layout)
        b = _channels_last_flat(_unit_scale(moved), layout)
        if channel_permutations is not None:
            perm = np.asarray(channel_permutations[g])
            if sorted(perm.tolist()) != list(range(a.shape[1])):
                raise ValueError(
                    f"channel_permutations[{g}] is not a permutation of the {a.shape[1]} channels"
                )
            b = b[:, perm]
        total += -float(_channel_cosines(a, b).mean())
    return total / len(arrays)


def _power_of_two_above(top):
    """The power of two at or above ``top`` (1 for 0 or non-finite)."""
    if not (top > 0 and np.isfinite(top)):
        return 1.0
    return float(np.ldexp(1.0, int(np.frexp(top)[1])))


def _unit_scale(x):
    """``x`` (float64) divided by a power of two so that its largest magnitude is near 1."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    return x / _power_of_two_above(float(np.abs(x).max()))


def _check_reference(reference):
    """``reference`` as a finite float64 array of points, or one error naming it."""
    if isinstance(reference, np.ndarray) and reference.dtype == object:
        raise TypeError("reference is an object array; it must be numeric")
    try:
        ref = np.asarray(reference, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"reference must be a numeric array ({first_line(exc)})") from None
    if ref.ndim < 2 or ref.shape[0] < 2:
        raise ValueError(f"reference must hold at least 2 points, samples first; got {ref.shape}")
    check_finite(ref, "reference")
    return ref


def _mean_distinct(points, metric):
    """Mean ℓ2 distance, or mean cosine similarity, over pairs of distinct points."""
    n = points.shape[0]
    if n < 2:
        raise ValueError("the normalisation M needs at least 2 points")
    x = points.astype(np.float64, copy=False)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1)
        unit = np.divide(x, norms[:, None], out=np.zeros_like(x), where=norms[:, None] > 0)
        sim = unit @ unit.T
        return (sim.sum() - np.trace(sim)) / (n * (n - 1))
    if x.shape[1] <= NUMBA_MAX_FEATURES:
        return _mean_pair_distance(x)
    return _mean_pair_distance_blas(x)


#: Up to this many features the exact Numba loop beats BLAS for the mean pairwise
#: distance; above it the Gram matrix (one product per block of rows) wins — 9× at
#: d = 512 (``benchmarks/kernels.py``).
NUMBA_MAX_FEATURES = 48


def _mean_pair_distance_blas(x, block=1024):
    """Mean pairwise distance from Gram blocks: ‖a−b‖² = ‖a‖² + ‖b‖² − 2a·b."""
    n = x.shape[0]
    sq = np.einsum("nd,nd->n", x, x)
    total = 0.0
    for start in range(0, n, block):
        rows = x[start : start + block]
        d2 = sq[start : start + block, None] + sq[None, start:] - 2.0 * (rows @ x[start:].T)
        upper = np.triu(np.ones(d2.shape, dtype=bool), k=1)  # j > i only
        total += np.sqrt(np.maximum(d2[upper], 0.0)).sum()
    return total / (n * (n - 1) / 2)


@njit(cache=True)
def _mean_pair_distance(x):  # pragma: no cover - compiled; tested against scipy pdist
    """Mean Euclidean distance over the n(n−1)/2 pairs, summed exactly (no Gram trick)."""
    n, d = x.shape
    total = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            s = 0.0
            for k in range(d):
                diff = x[i, k] - x[j, k]
                s += diff * diff
            total += np.sqrt(s)
    return total / (n * (n - 1) / 2)


def latent_geed(orbit, *, metric="euclidean", reference=None):
    """Latent-space G-EED: distance of f(gx) to the orbit mean, normalised by M.

    ``E = (1/M) · 1/(|D||G|) Σ_x Σ_g m(f(gx), f̂(x))`` with
    ``f̂(x) = (1/|G|) Σ_g f(gx)`` (eq. 6). ``m`` is the Euclidean distance, or
    the *negative* cosine similarity; ``M`` is the mean Euclidean distance (or
    mean cosine similarity) between distinct points of ``f(D)`` — the
    identity's activations, or ``reference`` (the paper's OOD experiments).

    Parameters
    ----------
    orbit : sequence of ndarray
        Latent features per group element, each (n_samples, ...) (flattened).
    metric : {"euclidean", "cosine"}, default="euclidean"
    reference : ndarray of shape (n_points, ...), optional
        Points on which M is computed (default ``orbit[0]``).

    Returns
    -------
    float
        0 (Euclidean) or ``−1/M`` (cosine) for an exactly invariant layer.
    """
    check_choice(metric, "metric", ("euclidean", "cosine"))
    arrays = [a.reshape(a.shape[0], -1).astype(np.float64) for a in _check_orbit(orbit)]
    ref = arrays[0] if reference is None else _check_reference(reference)
    ref = ref.reshape(ref.shape[0], -1)
    if ref.shape[1] != arrays[0].shape[1]:
        raise ValueError(
            f"reference has {ref.shape[1]} features; the orbit has {arrays[0].shape[1]}"
        )
    # E is a ratio of distances (or of cosines): one power of two for the orbit and the
    # reference changes nothing and keeps squares of values near 1e±300 in range
    scale = _power_of_two_above(max(float(np.abs(x).max()) for x in (*arrays, ref)))
    arrays = [x / scale for x in arrays]
    ref = ref / scale
    stack = np.stack(arrays)  # (G, N, d)
    centre = stack.mean(axis=0)
    if metric == "euclidean":
        deviation = np.linalg.norm(stack - centre, axis=2)
    else:
        dot = np.einsum("gnd,nd->gn", stack, centre)
        norms = np.linalg.norm(stack, axis=2) * np.linalg.norm(centre, axis=1)
        cos = np.divide(dot, norms, out=np.ones_like(dot), where=norms > 0)
        deviation = -cos
    M = _mean_distinct(ref, metric)
    if M == 0:
        raise ValueError("the normalisation M is 0: the reference points are all alike")
    return float(deviation.mean() / M)


def softmax_geed(orbit, *, from_logits=False):
    """Softmax G-EED: mean KL divergence of f(gx) from the orbit-averaged prediction.

    ``E = 1/(|D||G|) Σ_x Σ_g KL(f(gx) ‖ f̂(x))``, ``f̂(x) = (1/|G|) Σ_g f(gx)``.

    Parameters
    ----------
    orbit : sequence of ndarray of shape (n_samples, n_classes)
        Class probabilities per group element (or logits with ``from_logits``).
    from_logits : bool, default=False
        Apply a softmax first.

    Returns
    -------
    float
        0 for an exactly invariant classifier.
    """
    arrays = [a.astype(np.float64) for a in _check_orbit(orbit)]
    if arrays[0].ndim != 2:
        raise ValueError(
            f"orbit[0] must hold softmax outputs of shape (n_samples, n_classes); got shape "
            f"{arrays[0].shape}"
        )
    p = np.stack(arrays)
    if from_logits:
        p = np.exp(p - p.max(axis=2, keepdims=True))
        p /= p.sum(axis=2, keepdims=True)
    elif (p < 0).any() or not np.allclose(p.sum(axis=2), 1.0, atol=1e-6):
        raise ValueError(
            "orbit must hold probabilities (non-negative, rows summing to 1); "
            "pass from_logits=True for logits"
        )
    q = p.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return float(terms.sum(axis=2).mean())


# ------------------------------------------------------------ representation similarity


def _check_pair(A, B, layout, matricization, *, min_samples=2):
    """Validate two views of the same samples, of any widths.

    They must hold the same samples and give the same rows per sample under
    ``matricization`` (one in flatten mode; the channels in spatial mode, the
    positions in channel mode): the similarity's estimator pairs row ``i`` of one
    with row ``i`` of the other. Their widths may differ.

    Returns
    -------
    A, B : ndarray or dask array
    layouts : tuple of str
        The concrete layout of each.
    """
    A, B = as_activation_array(A, "A"), as_activation_array(B, "B")
    if A.shape == B.shape:
        (A, B), layout = check_views([A, B], ["A", "B"], layout, matricization,
                                     min_samples=min_samples)  # fmt: skip
        return A, B, (layout, layout)
    if A.shape[0] != B.shape[0]:
        raise ValueError(
            f"A and B must hold the same samples (row i of one is compared with row i of "
            f"the other); got {A.shape[0]} samples in A {A.shape} and {B.shape[0]} in "
            f"B {B.shape}"
        )
    (A,), layout_a = check_views([A], ["A"], layout, matricization, min_samples=min_samples)
    (B,), layout_b = check_views([B], ["B"], layout, matricization, min_samples=min_samples)
    rows = [matrix_shape(x.shape, lay, matricization)[0]
            for x, lay in ((A, layout_a), (B, layout_b))]  # fmt: skip
    if rows[0] != rows[1]:
        raise ValueError(
            f"A {A.shape} and B {B.shape} give {rows[0]} and {rows[1]} rows per sample with "
            f"matricization={matricization!r}: views of different widths are compared row "
            "by row, so their rows must correspond (matricization='flatten', one row per "
            "sample, compares any widths)"
        )
    return A, B, (layout_a, layout_b)


@dataclass
class PairMoments:
    """Centred moments of two views whose widths may differ (``d_A``, ``d_B``): the
    fields of :class:`~seis_sklearn._moments.Moments` for ``G = 2``, as lists.

    Attributes
    ----------
    n_samples : int
    mean : list of ndarray
        ``[μ_A (R × d_A), μ_B (R × d_B)]``, the per-feature means.
    auto : list of ndarray
        ``[X̃ᵀX̃ (d_A × d_A), ỸᵀỸ (d_B × d_B)]``.
    cross : list of ndarray
        ``[X̃ᵀỸ (d_A × d_B)]``.
    """

    n_samples: int
    mean: list
    auto: list
    cross: list

    @property
    def rows_per_sample(self):
        """Rows ``R`` of one sample's matrix."""
        return self.mean[0].shape[0]

    @property
    def n_rows(self):
        """Rows ``m = N·R`` of each matricized view."""
        return self.n_samples * self.rows_per_sample


def _moments_of(A, B, layout, matricization, *, min_samples=2):
    A, B, layouts = _check_pair(A, B, layout, matricization, min_samples=min_samples)
    return _pair_moments(A, B, layouts, matricization)


def _pair_moments(A, B, layouts, matricization):
    """The centred moments of two validated views: :func:`~seis_sklearn._accumulate.
    accumulate` where they have one shape, else the moments of their rows side by side
    (``[x_i, y_i]``, ``d_A + d_B`` columns, chunk by chunk of samples: memory maps and
    dask arrays stream) cut into the blocks of a :class:`PairMoments`."""
    if A.shape == B.shape and layouts[0] == layouts[1]:
        return accumulate([A, B], layouts[0], matricization, names=("A", "B"))
    rows, d_a = matrix_shape(A.shape, layouts[0], matricization)
    d_b = matrix_shape(B.shape, layouts[1], matricization)[1]
    n = A.shape[0]
    step = chunk_samples((n, rows, d_a + d_b))
    acc = None
    for start in range(0, n, step):
        parts = []
        for x, lay, name in ((A, layouts[0], "A"), (B, layouts[1], "B")):
            part = matricize(_host(x[start : start + step]), lay, matricization)
            check_finite(part, name)
            parts.append(part)
        # (samples, R, d_A + d_B): each sample's R rows, read as tokens by channel
        joined = np.concatenate(parts, axis=1).reshape(-1, rows, d_a + d_b)
        if acc is None:
            acc = accumulator([joined], "NLD", "channel", names=("A and B",))
        acc.add([joined])
    joint = acc.result(final=True)
    mean, auto = joint.mean[0], joint.auto[0]
    return PairMoments(
        joint.n_samples, [mean[:, :d_a], mean[:, d_a:]], [auto[:d_a, :d_a], auto[d_a:, d_a:]],
        [auto[:d_a, d_a:]],
    )  # fmt: skip


def cka_from_moments(moments):
    """Linear CKA from the centred auto- and cross-products (:class:`~seis_sklearn.
    _moments.Moments` or :class:`PairMoments`): ``‖X̃ᵀỸ‖²_F / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F)``."""
    cross = moments.cross[0]
    norms = [np.linalg.norm(moments.auto[0]), np.linalg.norm(moments.auto[1])]
    if not norms[0] * norms[1] > 0:
        raise ValueError(f"linear CKA is undefined: {_constant(norms)}")
    denominator = norms[0] * norms[1]
    return float(np.sum(cross * cross) / denominator)


def linear_cka(A, B, *, layout="auto", matricization="flatten", debiased=False):
    """Linear centred kernel alignment (Kornblith et al. 2019), biased or debiased.

    The standard CKA: each sample one row, its features (``C·H·W`` of a map) the
    columns, each feature centred by its mean over the samples; ``A`` and ``B`` may
    differ in width (layers of different shapes) but must hold the same samples.
    ``CKA = ‖X̃ᵀỸ‖²_F / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F) = ⟨K̃, L̃⟩ / (‖K̃‖ ‖L̃‖)`` for the
    centred Gram matrices ``K̃ = X̃X̃ᵀ``, ``L̃ = ỸỸᵀ`` of the samples. Computed from
    whichever is smaller: the ``n × n`` Gram matrices (memory ``2n²``, the features
    read in blocks of columns) or the moments (``(d_A + d_B)²``, one pass over the
    samples: dask arrays always take this way).

    ``debiased=True`` replaces each HSIC by the unbiased estimator of Song et al.
    (2012), as Nguyen, Raghu & Kornblith (2021) do: with ``a_i = ‖x̃_i‖²`` and
    ``b_i = ‖ỹ_i‖²`` the squared norms of the centred rows and ``n`` the rows,
    ``h(X, Y) = ‖X̃ᵀỸ‖²_F − n/(n − 2)·Σ_i a_i b_i + Σa·Σb/((n − 1)(n − 2))`` and
    ``CKA_u = h(X, Y) / sqrt(h(X, X)·h(Y, Y))`` — the U-centred Gram matrices of the
    rows. The biased estimator is far from 0 for unrelated views when the features
    are not few against the samples (independent Gaussian activations, 32 samples of
    256 features: ≈ 0.89); the debiased one is near 0 there, and can be slightly
    negative. From the moments it is exact in two passes over the samples (the
    moments, then the rows' norms: :class:`RowNormSums`).

    ``matricization="spatial"``/``"channel"`` give a *matricized* CKA instead (docs/
    metrics.rst, "Matricized CKA"): the rows of :func:`seis_sklearn.matricize`
    (``(sample, channel)`` rows of positions in spatial mode) are the observations,
    each (row position, column) feature centred by its mean over the samples; the
    views must then give the same rows per sample. For the debiased estimator the rows
    are centred by their mean over all rows — the U-centring's own (a sample's rows
    are not independent, so the bias removed is that of the rows' estimator).

    Parameters
    ----------
    A : array-like of shape (n_samples, ...)
        As in :func:`seis_sklearn.seis_score` (numpy, memory maps, dask, torch).
    B : array-like of shape (n_samples, ...)
        The same samples; any width.
    layout : str, default="auto"
        Of both views (``"auto"``: each by its number of axes).
    matricization : {"flatten", "spatial", "channel"}, default="flatten"
        ``"flatten"`` is the standard CKA.
    debiased : bool, default=False
        The unbiased HSIC estimator (needs at least 4 rows).

    Returns
    -------
    float
        In [0, 1] when biased; debiased, near 0 for unrelated views and at most 1.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn.metrics import linear_cka
    >>> rng = np.random.default_rng(0)
    >>> A, B = rng.normal(size=(32, 256)), rng.normal(size=(32, 256))
    >>> round(linear_cka(A, B), 2), abs(linear_cka(A, B, debiased=True)) < 0.05
    (0.88, True)
    >>> linear_cka(A, A[:, :16] @ rng.normal(size=(16, 5))) > 0   # another width
    True
    """
    if not isinstance(debiased, (bool, np.bool_)):
        raise TypeError(f"debiased must be True or False; got {type(debiased).__name__}")
    min_samples = 4 if debiased and matricization == "flatten" else 2
    A, B, layouts = _check_pair(A, B, layout, matricization, min_samples=min_samples)
    if matricization == "flatten" and _grams_are_smaller(A, B):
        return _gram_cka(A, B, debiased)
    moments = _pair_moments(A, B, layouts, matricization)
    if not debiased:
        return cka_from_moments(moments)
    return cka_debiased_from_moments(moments, row_norm_sums(A, B, layouts, matricization))


#: ``cka(A, B, debiased=True)``: the name the literature uses for :func:`linear_cka`.
cka = linear_cka


def _grams_are_smaller(A, B):
    """Whether two ``n × n`` Gram matrices take less memory than the moments
    (``d_A² + d_B² + d_A·d_B`` float64) of views held in memory (not dask)."""
    if is_dask_array(A) or is_dask_array(B):
        return False
    n = A.shape[0]
    d_a, d_b = (int(np.prod(x.shape[1:], dtype=np.int64)) for x in (A, B))
    return 2 * n * n < d_a * d_a + d_b * d_b + d_a * d_b


def centred_gram(x, debiased=False, *, name="A"):
    """The linear Gram matrix of a batch's samples, centred or U-centred, in float64.

    Each sample is one row of its flattened features; each feature is centred by its
    mean over the batch (columns read in blocks, shifted by the first sample first so
    that a constant feature is exactly 0), then ``K = X̃X̃ᵀ`` is centred again
    (``HKH``, the biased HSIC's) or U-centred (Song et al. 2012: zero diagonal, the
    unbiased HSIC's) — as the reference code of Kornblith et al. does.

    Parameters
    ----------
    x : array-like of shape (n, ...)
        The batch (numpy array, memory map, or anything ``np.asarray`` reads).
    debiased : bool, default=False
        U-centre (needs ``n ≥ 4``) instead of centre.
    name : str, default="A"
        For the error raised on NaN or infinite values.

    Returns
    -------
    ndarray of shape (n, n)
        ``⟨K, L⟩`` of two such matrices is ``(n − 1)²`` times the biased HSIC, or
        ``n(n − 3)`` times the unbiased one.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn.metrics import centred_gram
    >>> K = centred_gram(np.random.default_rng(0).normal(size=(6, 3, 2)))
    >>> K.shape, bool(np.allclose(K.sum(axis=0), 0))
    ((6, 6), True)
    """
    return _centre_gram(_gram(x, name), debiased)


def _gram(x, name):
    """``X̃X̃ᵀ`` of the samples' flattened features, each centred over the samples."""
    x = x.reshape(x.shape[0], -1)
    n = x.shape[0]
    step = max(1, min(GRAM_COLUMNS, CHUNK_BYTES // (8 * n)))
    gram = np.zeros((n, n))
    for start in range(0, x.shape[1], step):
        part = np.array(_host(x[:, start : start + step]), dtype=np.float64)
        check_finite(part, name)
        part -= part[:1]  # a constant feature: exactly zero
        part -= part.mean(axis=0)
        gram += part @ part.T
    return gram


def _centre_gram(gram, debiased):
    """``HKH`` (biased) or the U-centring of Song et al. (2012), in place."""
    n = gram.shape[0]
    if debiased:
        np.fill_diagonal(gram, 0.0)
        means = gram.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0.0)
    else:
        means = gram.mean(axis=0)
        means -= means.mean() / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


#: Feature columns of a batch multiplied at a time into its Gram matrix (float64
#: copies of at most this many columns).
GRAM_COLUMNS = 8192


def _gram_cka(A, B, debiased):
    """CKA of views held in memory from their centred (U-centred) Gram matrices."""
    raw = [_gram(A, "A"), _gram(B, "B")]
    floors = [_gram_floor(g) for g in raw]
    K, L = (_centre_gram(g, debiased) for g in raw)
    k, l_ = K.ravel(), L.ravel()
    return _cka_of_hsic(k @ l_, k @ k, l_ @ l_, debiased, floors)


def _gram_floor(gram):
    """What rounding leaves of a view without variance in its U-centred Gram's
    ``⟨K, K⟩``: ``64 n ε ‖X̃X̃ᵀ‖²_F`` (as for the moments, ``‖X̃ᵀX̃‖_F = ‖X̃X̃ᵀ‖_F``)."""
    return 64 * gram.shape[0] * np.finfo(np.float64).eps * float(np.sum(gram * gram))


def _cka_of_hsic(cross, self_a, self_b, debiased, floors=(0.0, 0.0)):
    """CKA from its three HSIC terms (any common scale); errors for views without
    variance (debiased: below ``floors``, what rounding leaves of none)."""
    if not debiased:
        if not self_a * self_b > 0:
            raise ValueError(f"linear CKA is undefined: {_constant([self_a, self_b])}")
        return float(min(cross / np.sqrt(self_a * self_b), 1.0))
    bad = [name for name, h, f in zip("AB", (self_a, self_b), floors, strict=True) if not h > f]
    if bad:
        verb = "has" if len(bad) == 1 else "have"
        raise ValueError(
            f"debiased linear CKA is undefined: {' and '.join(bad)} {verb} no variance "
            "left by the unbiased estimator (its U-centred Gram matrix is zero: a "
            "constant view, for one)"
        )
    return float(min(cross / np.sqrt(self_a * self_b), 1.0))


class MinibatchCKA:
    """Linear CKA of two views estimated over minibatches (Nguyen, Raghu & Kornblith
    2021), batch by batch: what a streamed report and
    :func:`~seis_sklearn.adapters.torch.similarity_map` compute.

    Each batch of ``b`` samples adds its HSIC estimates from the batch's
    :func:`centred_gram` matrices ``K``, ``L`` of the flattened views — ``⟨K, L⟩ /
    (b − 1)²`` (biased) and ``⟨K_u, L_u⟩ / (b(b − 3))`` (unbiased, U-centred) — and
    the CKA is ``Σ HSIC(K, L) / sqrt(Σ HSIC(K, K)·Σ HSIC(L, L))`` over the batches.
    With one batch of all samples it is :func:`linear_cka` (flatten) exactly. Memory:
    the ``b × b`` Grams of one batch; the views may differ in width. Batches of fewer
    than 2 samples (4 for the debiased estimator) cannot be used and are counted in
    ``skipped``.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn.metrics import MinibatchCKA, linear_cka
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(40, 6, 3))
    >>> Y = X[:, :2] + rng.normal(size=(40, 2, 3))
    >>> one = MinibatchCKA()
    >>> one.add(X, Y)
    >>> bool(np.isclose(one.value(debiased=True), linear_cka(X, Y, debiased=True)))
    True
    """

    def __init__(self):
        # biased ⟨K, L⟩, ⟨K, K⟩, ⟨L, L⟩, then the unbiased ones, then the unbiased floors
        self.sums = np.zeros(8)
        self.used = np.zeros(2, dtype=np.int64)  # samples behind each estimator
        self.skipped = np.zeros(2, dtype=np.int64)

    def add(self, x, y):
        """Add a batch of both views (arrays of ``b`` samples each, rows aligned)."""
        b = len(x)
        if len(y) != b:
            raise ValueError(f"the views' batches hold {b} and {len(y)} samples")
        if b < 2:
            self.skipped += b
            return
        raw = [_gram(x, "A"), _gram(y, "B")]
        if b >= 4:
            floors = [_gram_floor(g) / (b * (b - 3)) for g in raw]
            K, L = (_centre_gram(g.copy(), True) for g in raw)
            k, l_ = K.ravel(), L.ravel()
            self.sums[3:] += [k @ l_ / (b * (b - 3)), k @ k / (b * (b - 3)),
                              l_ @ l_ / (b * (b - 3)), *floors]  # fmt: skip
            self.used[1] += b
        else:
            self.skipped[1] += b
        K, L = (_centre_gram(g, False) for g in raw)
        k, l_ = K.ravel(), L.ravel()
        self.sums[:3] += np.array([k @ l_, k @ k, l_ @ l_]) / (b - 1) ** 2
        self.used[0] += b

    def value(self, debiased=False):
        """The CKA over the batches added (a ValueError where it is undefined)."""
        j = int(bool(debiased))
        if not self.used[j]:
            raise ValueError(
                f"no batch of at least {4 if debiased else 2} samples was added: nothing "
                "to estimate"
            )
        cross, self_a, self_b = self.sums[3 * j : 3 * j + 3]
        return _cka_of_hsic(cross, self_a, self_b, debiased, self.sums[6:] if j else (0, 0))

    def state(self):
        """The sums as arrays (a checkpoint's); :meth:`from_state` reads them back."""
        return {"sums": self.sums, "used": self.used, "skipped": self.skipped}

    @classmethod
    def from_state(cls, state):
        """The sums :meth:`state` gave."""
        sums = cls()
        sums.sums = np.array(state["sums"], dtype=np.float64)
        sums.used = np.array(state["used"], dtype=np.int64)
        sums.skipped = np.array(state["skipped"], dtype=np.int64)
        return sums


def row_norm_sums(A, B, layout, matricization):
    """:class:`RowNormSums` of two views' matricized rows, one chunk of samples at a time
    (``layout``: one for both, or a pair)."""
    layouts = (layout, layout) if isinstance(layout, str) else tuple(layout)
    sums = RowNormSums()
    n = A.shape[0]
    step = min(chunk_samples(A.shape), chunk_samples(B.shape))
    for start in range(0, n, step):
        sums.add(*(matricize(_host(a[start : start + step]), lay, matricization)
                   for a, lay in zip((A, B), layouts, strict=True)))  # fmt: skip
    return sums


class RowNormSums:
    """What the debiased CKA needs beyond the moments, from one pass over the rows.

    The unbiased HSIC weighs the rows' squared norms about their mean ``m`` — known
    only at the end of a pass. About a centre fixed by the first chunk (``c``), with
    ``u_i = x_i − c``, ``A_i = ‖u_i‖²`` (and ``w_i``, ``B_i`` for the second view),
    ``‖x_i − m‖² = A_i − 2 u_i·δ + ‖δ‖²`` for ``δ = m − c``: the sums ``ΣA_iB_i``,
    ``ΣA_i²``, ``ΣB_i²``, ``ΣA_i``, ``ΣB_i`` and the vectors ``ΣA_i u_i``, ``ΣB_i u_i``,
    ``Σu_i`` (of the first view's width) and ``ΣA_i w_i``, ``ΣB_i w_i``, ``Σw_i`` (of
    the second's) give every sum of products of the norms about ``m``
    (:func:`cka_debiased_from_moments`), in float64 whatever the rows' dtype, in any
    chunking.
    """

    def __init__(self):
        self.centre, self.scalars, self.vectors, self.n_rows = None, np.zeros(5), None, 0

    def add(self, x, y):
        """Add a chunk of rows of the two views (2-D arrays, rows aligned)."""
        x, y = np.asarray(x), np.asarray(y)
        if self.centre is None:
            self.centre = [x.mean(axis=0, dtype=np.float64), y.mean(axis=0, dtype=np.float64)]
            self.vectors = [np.zeros((3, x.shape[1])), np.zeros((3, y.shape[1]))]
        u = x - self.centre[0]  # float64
        w = y - self.centre[1]
        a, b = np.einsum("ij,ij->i", u, u), np.einsum("ij,ij->i", w, w)
        self.scalars += [a @ b, a @ a, b @ b, a.sum(), b.sum()]
        self.vectors[0] += np.stack([a @ u, b @ u, u.sum(axis=0)])
        self.vectors[1] += np.stack([a @ w, b @ w, w.sum(axis=0)])
        self.n_rows += len(u)

    def state(self):
        """The sums as arrays (a checkpoint's); :meth:`from_state` reads them back."""
        return {"centre_x": self.centre[0], "centre_y": self.centre[1],
                "scalars": self.scalars, "vectors_x": self.vectors[0],
                "vectors_y": self.vectors[1], "n_rows": np.array(self.n_rows)}  # fmt: skip

    @classmethod
    def from_state(cls, state):
        """The sums :meth:`state` gave (or the one-width arrays ``centre`` and
        ``vectors`` of earlier versions)."""
        sums = cls()
        sums.scalars, sums.n_rows = np.asarray(state["scalars"]), int(state["n_rows"])
        if "vectors" in state:  # both views of one width, stacked
            centre, vectors = np.asarray(state["centre"]), np.asarray(state["vectors"])
            sums.centre = [centre[0], centre[1]]
            sums.vectors = [vectors[[0, 1, 4]], vectors[[2, 3, 5]]]
        else:
            sums.centre = [np.asarray(state["centre_x"]), np.asarray(state["centre_y"])]
            sums.vectors = [np.asarray(state["vectors_x"]), np.asarray(state["vectors_y"])]
        return sums


def cka_debiased_from_moments(moments, sums):
    """Debiased linear CKA (:func:`linear_cka`) of the rows of a pair, from its centred
    moments and the :class:`RowNormSums` of the same rows.

    The rows are the estimator's observations, centred by their mean (over all rows:
    the unbiased HSIC is unchanged by one shift of all rows, not by a shift per row
    position); with one row per sample that is the per-feature centring of SEIS.
    """
    n = moments.n_rows
    if n < 4:
        raise ValueError(
            f"debiased linear CKA needs at least 4 rows (the unbiased HSIC divides by "
            f"n − 3); A and B have {n}"
        )
    if sums.n_rows != n:
        raise ValueError(f"the row norms cover {sums.n_rows} rows, the moments {n}")
    per_row = moments.n_samples  # samples behind each row position's mean
    mu, nu = moments.mean[0], moments.mean[1]  # (R, d)
    m, m2 = mu.mean(axis=0), nu.mean(axis=0)
    dx, dy = mu - m, nu - m2

    def about_mean(product, left, right):  # Σ_r N (μ_r − m)(ν_r − m')ᵀ added
        return product + per_row * (left.T @ right)

    xx = about_mean(moments.auto[0], dx, dx)
    yy = about_mean(moments.auto[1], dy, dy)
    xy = about_mean(moments.cross[0], dx, dy)
    t_x, t_y = float(np.trace(xx)), float(np.trace(yy))
    # the norms about m from the sums about c: a_i = A_i − 2 p_i + k, p_i = u_i·δ
    d, d2 = m - sums.centre[0], m2 - sums.centre[1]
    k, k2 = d @ d, d2 @ d2
    s_ab, s_aa, s_bb, s_a, s_b = sums.scalars
    (a_u, b_u, s_u), (a_w, b_w, s_w) = sums.vectors
    p, q = d @ s_u, d2 @ s_w
    ex, ey = (mu - sums.centre[0]) @ d, (nu - sums.centre[1]) @ d2  # (μ_r − c)·δ
    pq = d @ moments.cross[0] @ d2 + per_row * (ex @ ey)
    pp = d @ moments.auto[0] @ d + per_row * (ex @ ex)
    qq = d2 @ moments.auto[1] @ d2 + per_row * (ey @ ey)
    ab = (s_ab - 2 * (d2 @ a_w) + k2 * s_a - 2 * (d @ b_u) + 4 * pq - 2 * k2 * p + k * s_b
          - 2 * k * q + n * k * k2)  # fmt: skip
    aa = s_aa - 4 * (d @ a_u) + 2 * k * s_a + 4 * pp - 4 * k * p + n * k * k
    bb = s_bb - 4 * (d2 @ b_w) + 2 * k2 * s_b + 4 * qq - 4 * k2 * q + n * k2 * k2
    hsic = _unbiased_hsic(float(np.sum(xy * xy)), ab, t_x, t_y, n)
    self_x = _unbiased_hsic(float(np.sum(xx * xx)), aa, t_x, t_x, n)
    self_y = _unbiased_hsic(float(np.sum(yy * yy)), bb, t_y, t_y, n)
    # the self-terms are sums of squares of U-centred Gram entries: positive unless
    # the view has no variance (zero up to rounding of its terms, ‖XᵀX‖²_F)
    floors = [64 * n * np.finfo(np.float64).eps * float(np.sum(a * a)) for a in (xx, yy)]
    return _cka_of_hsic(hsic, self_x, self_y, True, floors)


def _host(chunk):
    """A chunk as a numpy array (dask computed, torch copied to the host)."""
    if hasattr(chunk, "detach"):
        return chunk.detach().cpu().numpy()
    return np.asarray(chunk)


def _unbiased_hsic(frobenius, norm_products, total_x, total_y, n):
    """``n(n − 3)`` times the unbiased HSIC of linear kernels (Song et al. 2012), from
    ``‖XᵀY‖²_F``, ``Σ a_i b_i`` and ``Σa``, ``Σb`` of ``n`` centred rows."""
    return frobenius - n / (n - 2) * norm_products + total_x * total_y / ((n - 1) * (n - 2))


#: Directions whose variance is below this fraction of the leading one count as null
#: (as SVD-based CCA codes do with their epsilon); CCA there would only amplify rounding.
RANK_TOLERANCE = 1e-10


def _constant(norms, names=("A", "B")):
    """Which views have no variance, in words."""
    which = [n for n, v in zip(names, norms, strict=True) if not v > 0]
    verb = "is" if len(which) == 1 else "are"
    return f"{' and '.join(which)} {verb} constant (no variance over the samples)"


def _principal(auto, threshold, name="A"):
    """Leading eigenvectors of one view's product explaining ``threshold`` of its variance."""
    values, vectors = descending_eigh(auto)
    values = np.clip(values, 0.0, None)
    total = values.sum()
    if total <= 0:
        raise ValueError(f"{name} is constant: no variance to keep")
    keep_rank = values > values[0] * RANK_TOLERANCE  # numerically null directions dropped
    cumulative = np.cumsum(values) / total
    k = int(np.searchsorted(cumulative, threshold - 1e-12) + 1)
    k = max(1, min(k, int(keep_rank.sum())))
    return values[:k], deterministic_signs(vectors[:, :k])


def _cca_reduced(moments, threshold_a, threshold_b):
    """CCA between the views reduced to their principal subspaces (SVD-CCA).

    Returns (ρ, Wx) with ``Wx`` (d × r) the canonical weights of view A in its
    original coordinates, so ``X̃ Wx`` are the canonical variates (unit norm).
    """
    va, Ua = _principal(moments.auto[0], threshold_a)
    vb, Ub = _principal(moments.auto[1], threshold_b, "B")
    # whitened bases: X̃ Ua / sqrt(va) have orthonormal columns
    Ka = Ua / np.sqrt(va)
    Kb = Ub / np.sqrt(vb)
    T = Ka.T @ moments.cross[0] @ Kb
    u, rho, _ = np.linalg.svd(T, full_matrices=False)
    rho = np.clip(rho, 0.0, 1.0)
    return rho, Ka @ u


def svcca(A, B, *, threshold=0.99, layout="auto", matricization="flatten"):
    """SVCCA (Raghu et al. 2017): mean canonical correlation after per-view SVD.

    Each view is reduced to its leading singular directions explaining
    ``threshold`` of its variance (measured on the squared singular values),
    then CCA runs between the reduced views; the score is the mean of the
    ``min(k_A, k_B)`` canonical correlations.

    Parameters
    ----------
    A, B : array-like of shape (n_samples, ...)
        The same samples; the widths may differ (rows per sample may not).
    threshold : float in (0, 1], default=0.99
    layout : str, default="auto"
    matricization : {"flatten", "spatial", "channel"}, default="flatten"

    Returns
    -------
    float in [0, 1]
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must lie in (0, 1]; got {threshold!r}")
    return svcca_from_moments(_moments_of(A, B, layout, matricization), threshold)


def svcca_from_moments(moments, threshold=0.99):
    """SVCCA from the centred auto- and cross-products (see :func:`svcca`)."""
    rho, _ = _cca_reduced(moments, threshold, threshold)
    return float(rho.mean())


def pwcca_from_moments(moments):
    rho, W = _cca_reduced(moments, 1.0, 1.0)
    # ⟨h_i, x_j⟩ for canonical variates h_i = X̃ w_i and the centred neurons x_j of A
    projections = moments.auto[0] @ W  # (d, r)
    alpha = np.abs(projections).sum(axis=0)
    alpha = alpha / alpha.sum()
    return float(np.sum(alpha * rho))


def pwcca(A, B, *, layout="auto", matricization="flatten"):
    """Projection-weighted CCA (Morcos et al. 2018).

    CCA between the views (in their full-rank subspaces), each canonical
    correlation weighted by how much of view A it accounts for:
    ``α̃_i = Σ_j |⟨h_i, x_j⟩|`` over A's centred neurons ``x_j``, with ``h_i``
    A's i-th canonical variate; ``PWCCA = Σ_i α_i ρ_i``, ``α = α̃ / Σ α̃``.

    Parameters
    ----------
    A, B : array-like of shape (n_samples, ...)
        ``A`` is the view whose neurons weight the correlations; the widths may
        differ (rows per sample may not).
    layout : str, default="auto"
    matricization : {"flatten", "spatial", "channel"}, default="flatten"

    Returns
    -------
    float in [0, 1]

    Notes
    -----
    When canonical correlations tie (e.g. several exactly 1), the canonical
    variates within the tie are any rotation of each other and the weights —
    sums of absolute projections — depend on the one chosen: PWCCA is then
    defined only up to that choice, and rounding can move it (by ~1e-3 in our
    tests). CKA and SVCCA have no such ambiguity.
    """
    return pwcca_from_moments(_moments_of(A, B, layout, matricization))


#: Metrics a layerwise report computes from each layer's SEIS moments (so on the rows
#: of the layer's matricization). Its ``cka`` and ``cka_debiased`` columns are the
#: standard CKA of the flattened activations instead (docs/metrics.rst).
REPORT_METRICS = {
    "svcca": svcca_from_moments,
    "pwcca": pwcca_from_moments,
}


def check_report_metrics(metrics, *, lee=False):
    """Validate the ``metrics=`` of a layerwise report; return the list of names.

    ``lee``: the report can add the Lie derivative's column (PyTorch models only)."""
    if metrics is None:
        return []
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    known = ["cka", "cka_debiased", *REPORT_METRICS, "channel_eed", *(["lee"] if lee else [])]
    for name in metrics:
        if name == "lee" and not lee:
            raise ValueError(
                "metrics: 'lee' (the Lie derivative) needs the model itself: it is a column "
                "of seis_sklearn.adapters.torch.layerwise_seis only"
            )
        if name not in known:
            raise ValueError(
                f"metrics: unknown metric {name!r}; choose from "
                f"{', '.join(map(repr, known))} (latent and "
                "softmax G-EED need whole orbits: see seis_sklearn.metrics)"
            )
    return metrics
