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
  (:mod:`seis_sklearn._moments`), so they stream, memory-map and run on dask
  arrays like :func:`~seis_sklearn.seis_score`, with the same ``layout`` and
  ``matricization`` arguments — and, like SEIS, they compare two views of one
  shape (a layer on original and transformed inputs).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._accumulate import accumulate
from ._cca import descending_eigh, deterministic_signs
from ._matricize import matricize, resolve_layout
from ._validation import check_choice, check_finite, check_views, chunk_samples, first_line

__all__ = [
    "RowNormSums",
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


def _moments_of(A, B, layout, matricization):
    (A, B), layout = check_views([A, B], ["A", "B"], layout, matricization)
    return accumulate([A, B], layout, matricization, names=("A", "B"))


def cka_from_moments(moments):
    """Linear CKA from the centred auto- and cross-products."""
    cross = moments.cross[0]
    norms = [np.linalg.norm(moments.auto[0]), np.linalg.norm(moments.auto[1])]
    if not norms[0] * norms[1] > 0:
        raise ValueError(f"linear CKA is undefined: {_constant(norms)}")
    denominator = norms[0] * norms[1]
    return float(np.sum(cross * cross) / denominator)


def linear_cka(A, B, *, layout="auto", matricization="flatten", debiased=False):
    """Linear centred kernel alignment (Kornblith et al. 2019), biased or debiased.

    ``CKA = ‖X̃ᵀỸ‖²_F / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F)`` on the centred matricized views (rows:
    samples for ``"flatten"``; see :func:`seis_sklearn.matricize`; each feature
    centred by its mean, SPEC §2.1).

    ``debiased=True`` replaces each HSIC by the unbiased estimator of Song et al.
    (2012), as Nguyen, Raghu & Kornblith (2021) do: with ``a_i = ‖x̃_i‖²`` and
    ``b_i = ‖ỹ_i‖²`` the squared norms of the centred rows and ``n`` the rows,
    ``h(X, Y) = ‖X̃ᵀỸ‖²_F − n/(n − 2)·Σ_i a_i b_i + Σa·Σb/((n − 1)(n − 2))`` and
    ``CKA_u = h(X, Y) / sqrt(h(X, X)·h(Y, Y))`` — the U-centred Gram matrices of the
    rows, computed without them. The biased estimator is far from 0 for unrelated
    views when the features are not few against the samples (independent Gaussian
    activations, 32 samples of 256 features: ≈ 0.89); the debiased one is near 0
    there, and can be slightly negative. Exact, in two passes over the samples (the
    moments, then the rows' norms: :class:`RowNormSums`): memory maps and dask
    arrays stream. With ``"spatial"``/``"channel"`` the estimator's observations are
    the rows (a sample's rows are not independent, so the bias removed is that of
    the rows' estimator), centred by their mean over all rows — the U-centring's
    own, not SEIS's mean per row position.

    Parameters
    ----------
    A, B : array-like of shape (n_samples, ...)
        As in :func:`seis_sklearn.seis_score` (numpy, memory maps, dask).
    layout : str, default="auto"
    matricization : {"flatten", "spatial", "channel"}, default="flatten"
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
    """
    if not isinstance(debiased, (bool, np.bool_)):
        raise TypeError(f"debiased must be True or False; got {type(debiased).__name__}")
    min_samples = 4 if debiased and matricization == "flatten" else 2
    (A, B), layout = check_views([A, B], ["A", "B"], layout, matricization,
                                 min_samples=min_samples)  # fmt: skip
    moments = accumulate([A, B], layout, matricization, names=("A", "B"))
    if not debiased:
        return cka_from_moments(moments)
    return cka_debiased_from_moments(moments, row_norm_sums(A, B, layout, matricization))


#: ``cka(A, B, debiased=True)``: the name the literature uses for :func:`linear_cka`.
cka = linear_cka


def row_norm_sums(A, B, layout, matricization):
    """:class:`RowNormSums` of two views' matricized rows, one chunk of samples at a time."""
    sums = RowNormSums()
    n = A.shape[0]
    step = chunk_samples(A.shape)
    for start in range(0, n, step):
        sums.add(*(matricize(_host(a[start : start + step]), layout, matricization)
                   for a in (A, B)))  # fmt: skip
    return sums


class RowNormSums:
    """What the debiased CKA needs beyond the moments, from one pass over the rows.

    The unbiased HSIC weighs the rows' squared norms about their mean ``m`` — known
    only at the end of a pass. About a centre fixed by the first chunk (``c``), with
    ``u_i = x_i − c``, ``A_i = ‖u_i‖²`` (and ``w_i``, ``B_i`` for the second view),
    ``‖x_i − m‖² = A_i − 2 u_i·δ + ‖δ‖²`` for ``δ = m − c``: the sums ``ΣA_iB_i``,
    ``ΣA_i²``, ``ΣB_i²``, ``ΣA_i``, ``ΣB_i`` and the vectors ``ΣA_i u_i``, ``ΣB_i u_i``,
    ``ΣA_i w_i``, ``ΣB_i w_i``, ``Σu_i``, ``Σw_i`` give every sum of products of the
    norms about ``m`` (:func:`cka_debiased_from_moments`), in float64 whatever the
    rows' dtype, in any chunking.
    """

    def __init__(self):
        self.centre, self.scalars, self.vectors, self.n_rows = None, np.zeros(5), None, 0

    def add(self, x, y):
        """Add a chunk of rows of the two views (2-D arrays, rows aligned)."""
        x, y = np.asarray(x), np.asarray(y)
        if self.centre is None:
            self.centre = np.stack([x.mean(axis=0, dtype=np.float64),
                                    y.mean(axis=0, dtype=np.float64)])  # fmt: skip
            self.vectors = np.zeros((6, x.shape[1]))
        u = x - self.centre[0]  # float64
        w = y - self.centre[1]
        a, b = np.einsum("ij,ij->i", u, u), np.einsum("ij,ij->i", w, w)
        self.scalars += [a @ b, a @ a, b @ b, a.sum(), b.sum()]
        self.vectors += np.stack([a @ u, b @ u, a @ w, b @ w, u.sum(axis=0), w.sum(axis=0)])
        self.n_rows += len(u)

    def state(self):
        """The sums as arrays (a checkpoint's); :meth:`from_state` reads them back."""
        return {"centre": self.centre, "scalars": self.scalars, "vectors": self.vectors,
                "n_rows": np.array(self.n_rows)}  # fmt: skip

    @classmethod
    def from_state(cls, state):
        sums = cls()
        sums.centre, sums.scalars = np.asarray(state["centre"]), np.asarray(state["scalars"])
        sums.vectors, sums.n_rows = np.asarray(state["vectors"]), int(state["n_rows"])
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
    a_u, b_u, a_w, b_w, s_u, s_w = sums.vectors
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
    bad = [name for name, h, f in zip("AB", (self_x, self_y), floors, strict=True) if not h > f]
    if bad:
        verb = "has" if len(bad) == 1 else "have"
        raise ValueError(
            f"debiased linear CKA is undefined: {' and '.join(bad)} {verb} no variance "
            "left by the unbiased estimator (its U-centred Gram matrix is zero: a "
            "constant view, for one)"
        )
    return float(min(hsic / np.sqrt(self_x * self_y), 1.0))


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
        ``A`` is the view whose neurons weight the correlations.
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


#: Metrics a layerwise report can add as columns (computed from the same moments).
REPORT_METRICS = {
    "cka": cka_from_moments,
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
    known = [*REPORT_METRICS, "cka_debiased", "channel_eed", *(["lee"] if lee else [])]
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
