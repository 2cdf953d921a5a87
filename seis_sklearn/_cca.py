"""Small dense linear algebra of SEIS: the shared basis, CCA and the scores.

Everything here works on the moments of :mod:`seis_sklearn._moments` (d × d and
k × k matrices), never on the activations themselves. Formulas and step numbers
follow SPEC §2.2–2.4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._blas import eigh_inplace, symmetric_product, symmetrize, syrk_lower

_EPS = np.finfo(np.float64).eps
# Relative gap below which two eigenvalues belong to one cluster (SPEC §2.2 step 3).
CLUSTER_TOL = 1e-6


# The range of a matrix of known small rank is found with a Gaussian sketch of this
# many extra columns, from a fixed seed (so results are deterministic).
SKETCH_OVERSAMPLING = 16
# A d × d matrix whose rank is known to be at most this fraction of d is decomposed in
# its range (benchmarks/README.md: the crossover measured against a full eigh).
LOW_RANK_FRACTION = 0.6


def descending_eigh(S, rank=None, overwrite=False):
    """Eigen-decomposition of a symmetric PSD matrix with eigenvalues descending.

    Parameters
    ----------
    S : ndarray of shape (d, d)
        Symmetrized first (``overwrite=True``: in place, so no copy of a d × d
        matrix is made here).
    rank : int, optional
        An upper bound on the rank of ``S`` known beforehand (e.g. from the
        degrees of freedom of the rows that made it). When it is small against
        ``d``, the decomposition is computed in the range of ``S`` found by a
        fixed Gaussian sketch ``S Ω`` (exact for a matrix of that rank, up to
        rounding): matrix products instead of a d × d eigensolver. The
        remaining eigenvalues are zero.

    Returns
    -------
    eigenvalues : ndarray of shape (d,)
        Clipped at zero.
    eigenvectors : ndarray of shape (d, r)
        Columns, unit norm, signs as the solver left them (see
        :func:`deterministic_signs`); ``r = d``, or the sketch's width.
    """
    S = symmetrize(S.copy() if not overwrite else S)
    d = S.shape[0]
    if rank is not None and rank + SKETCH_OVERSAMPLING <= LOW_RANK_FRACTION * d:
        width = rank + SKETCH_OVERSAMPLING
        sketch = np.random.default_rng(0).standard_normal((d, width))
        Q = np.linalg.qr(S @ sketch)[0]
        w, U = np.linalg.eigh(Q.T @ S @ Q)
        values = np.zeros(d)
        values[:width] = w[::-1]
        return np.maximum(values, 0.0), Q @ U[:, ::-1]
    w, V = eigh_inplace(S)  # in S's memory: V is a view of it
    return np.maximum(w[::-1], 0.0), V[:, ::-1]


def deterministic_signs(V):
    """``V`` with each column's largest-magnitude entry positive (a deterministic basis)."""
    rows = np.argmax(np.abs(V), axis=0)
    signs = np.sign(V[rows, np.arange(V.shape[1])])
    signs[signs == 0] = 1.0
    return V * signs


def n_nonzero(eigenvalues):
    """Number of eigenvalues that are not zero to machine precision."""
    if eigenvalues.size == 0 or eigenvalues[0] <= 0:
        return 0
    tol = eigenvalues[0] * eigenvalues.size * _EPS
    return int(np.count_nonzero(eigenvalues > tol))


def select_k(eigenvalues, n_components, *, dof, max_components=None):
    """Number of retained components, SPEC §2.2 step 3.

    Parameters
    ----------
    eigenvalues : ndarray of shape (d,)
        Descending, non-negative.
    n_components : int or float
        An int is used as is; a float in (0, 1] is the smallest k whose
        cumulative explained variance reaches it, grown so that it does not cut
        through a cluster of equal eigenvalues.
    dof : int
        Degrees of freedom of one view, the largest rank its per-feature
        centring leaves: its rows ``m`` less one per row of a sample, ``m − R``
        (``m − 1`` in flatten mode). k is capped at ``min(d, dof)``.
    max_components : int, optional
        Further cap.

    Returns
    -------
    k : int
        Zero when every eigenvalue is zero.
    """
    d = eigenvalues.size
    rank = n_nonzero(eigenvalues)
    if rank == 0:
        return 0
    if isinstance(n_components, float):
        ratio = np.cumsum(eigenvalues) / eigenvalues.sum()
        # A threshold of 1.0 must be reachable despite rounding in the cumsum.
        k = int(np.searchsorted(ratio, n_components * (1.0 - 4 * _EPS), side="left")) + 1
        k = min(k, d)
        while k < d and eigenvalues[k] >= (1.0 - CLUSTER_TOL) * eigenvalues[k - 1]:
            k += 1
    else:
        k = n_components
    wanted = k
    k = min(k, d, dof, rank)
    if max_components is not None:
        k = min(k, max_components)
    if isinstance(n_components, float) and k < min(wanted, rank):
        # a cap never cuts through a cluster either: it stops below it (a symmetric
        # layer's pooled moment has exactly repeated eigenvalues — an orbit's always
        # does — and half a pair breaks the symmetry, docs/math.rst section 2)
        while k > 1 and eigenvalues[k] >= (1.0 - CLUSTER_TOL) * eigenvalues[k - 1]:
            k -= 1
    return k


# Eigenvalues of a k × k covariance of m rows below ROUNDING_FLOOR·(k + √m)·u times its
# largest are rounding — the error of sums over m rows and of a k × k decomposition (a
# direction along which the view has no variance: a dead channel, or high frequencies
# of smooth maps that only the other view's noise puts in the shared basis). They are
# set to zero, so that rounding noise never reaches the whitening or the energy
# weights; zeroing λ moves that direction's whitening by at most λ/(2·ridge), a
# relative 1e-6·(k + √m)·k/ε at most.
ROUNDING_FLOOR = 16.0


def spectrum(sigma, n_rows=0, overwrite=False, raw=False):
    """Eigenvalues (ascending, rounding-level ones set to zero) and eigenvectors of a
    symmetric PSD k × k covariance of ``n_rows`` rows (``overwrite``: symmetrized in
    place and its memory reused for the eigenvectors, no copy of it made here;
    ``raw``: the eigenvalues before the floor, clipped at 0, returned third)."""
    w, V = eigh_inplace(symmetrize(sigma if overwrite else sigma.copy()))
    top = max(float(w.max(initial=0.0)), 0.0)
    floor = ROUNDING_FLOOR * (w.size + np.sqrt(n_rows)) * _EPS * top
    if raw:
        return np.where(w > floor, w, 0.0), V, np.maximum(w, 0.0)
    return np.where(w > floor, w, 0.0), V


def effective_directions(raw_eigenvalues, floored_eigenvalues, reg):
    """``tr(Σ (Σ + r·I)⁻¹) = Σ_j λ_j / (λ_j + r)``, ``r = reg·tr Σ/k``: how many of the
    k shared directions a view fills (docs/math.rst, "Counting the pairs a view can
    have").

    The ridge's degrees of freedom: k when the view has variance well above the ridge
    along every direction, one less for each direction along which it has none (a dead
    unit), and continuous in the eigenvalues — a direction at the rounding floor counts
    ``λ/r`` ≈ 1e-10·k, not 0 or 1, so rounding cannot flip it. Scale-free, as the ridge
    follows the view's mean variance. With ``reg = 0`` there is no ridge to count
    against, and it is the number of eigenvalues above the rounding floor (a hard rank).
    """
    k = raw_eigenvalues.size
    if k == 0:
        return 0.0
    ridge = reg * float(raw_eigenvalues.sum()) / k
    if not ridge > 0:
        return float(np.count_nonzero(floored_eigenvalues > 0))
    return float(np.sum(raw_eigenvalues / (raw_eigenvalues + ridge)))


def inverse_sqrt(eigenvalues, reg):
    """``R(Σ) = (Σ + reg·(tr Σ/k)·I)^(-1/2)`` in Σ's eigenbasis (SPEC §2.3 step 5).

    The ridge is tied to the matrix's own *mean* variance ``tr Σ/k``: it scales
    with the view (``R(c²Σ) = R(Σ)/c`` exactly) and bounds the condition number
    of ``Σ + ridge`` by ``1 + k/reg``, so rounding in ``Σ`` cannot move the
    result by more than that factor times itself. A direction is dropped (a zero,
    as in a pseudo-inverse) only where the *ridged* variance is at the rounding
    floor — decided after the ridge is added, so with ``reg > 0`` only when the
    matrix has no variance at all.

    Parameters
    ----------
    eigenvalues : ndarray of shape (k,)
        Of ``Σ``, as :func:`spectrum` returns them.
    reg : float

    Returns
    -------
    ndarray of shape (k,)
        ``1/√(λ_j + ridge)``, or 0 for a dropped direction: ``R = V diag(·) Vᵀ``.
    """
    w = eigenvalues + reg * float(eigenvalues.sum()) / max(eigenvalues.size, 1)
    top = float(w.max()) if w.size else 0.0
    keep = w > top * w.size * _EPS
    inv = np.zeros_like(w)
    inv[keep] = 1.0 / np.sqrt(w[keep])
    return inv


def degenerate_reason(k, n_columns, fit_rows):
    """Why scores should not be read at face value (SPEC §2.1), or ``""``.

    Very few columns (d ≤ 4: spatial mode on a ≤ 2×2 map), one canonical pair
    (k = 1), or k at least half the rows the basis was fitted on (in-sample-like
    bias, even held-out).
    """
    reasons = []
    if n_columns <= 4:
        reasons.append(f"only d={n_columns} columns in the matricization")
    if k == 1:
        reasons.append("k=1: a single canonical pair")
    if 2 * k >= fit_rows:
        reasons.append(f"k={k} is at least half of the m={fit_rows} rows fitted")
    return "; ".join(reasons)


def views_without_variance(names):
    """``"A and B have no variance"`` (or ``"X has …"``) for the views named."""
    if not names:
        return "the activations have no variance"
    verb = "has" if len(names) == 1 else "have"
    return f"{' and '.join(names)} {verb} no variance"


def no_variance_error(what="the activations have no variance"):
    """The error for views with no variance over their samples: nothing to score."""
    return ValueError(
        f"{what} after centring (every feature is constant over the samples in every "
        "view, or so small that its products underflow); there is nothing to score"
    )


@dataclass
class Basis:
    """Shared denoising basis of SPEC §2.2.

    Attributes
    ----------
    components : ndarray of shape (d, k)
        ``V_k``, orthonormal columns.
    eigenvalues : ndarray of shape (d,)
        All eigenvalues of the pooled second moment ``S``, descending.
    k : int
    n_columns : int
        ``d``, the columns of the matricized views.
    constant : tuple of bool
        Per view: no variance after centring (constant to rounding); such a view
        has no weight in the basis, and no pair with it has a score.
    """

    components: np.ndarray
    eigenvalues: np.ndarray
    k: int
    n_columns: int = 0
    constant: tuple = ()

    @property
    def explained_variance_ratio(self):
        """Fraction of the pooled variance kept by the first k directions."""
        total = self.eigenvalues.sum()
        return float(self.eigenvalues[: self.k].sum() / total) if total > 0 else 0.0


# A view whose total variance is below this fraction of the squares of its values
# (``(ROUNDING_VARIANCE·eps)²·N·Σ μ²``) varies only by the rounding of its centring:
# it is constant, and has no weight in the pooled basis.
ROUNDING_VARIANCE = 64.0


def view_traces(traces, mean, n_samples):
    """Each view's total variance ``tr(P̃_gᵀP̃_g)``, zero for a view that is constant to
    rounding (its variance at the level the centring of its values leaves).

    Parameters
    ----------
    traces : ndarray of shape (G,)
        The traces of the views' centred second moments.
    mean : ndarray of shape (G, R, d)
        Per-feature means.
    n_samples : int

    Returns
    -------
    ndarray of shape (G,)
    """
    traces = np.asarray(traces, dtype=np.float64).copy()
    level = n_samples * np.einsum("grd,grd->g", mean, mean)
    constant = ~(traces > (ROUNDING_VARIANCE * _EPS) ** 2 * level) | ~np.isfinite(traces)
    traces[constant] = 0.0
    return traces


def variance_weighted_sum(blocks, traces):
    """``(1/G) Σ_g blocks[g] / traces[g]`` (SPEC §2.2 step 2), views without variance
    (a zero trace) left out.

    Dividing the entries (not multiplying by ``1/tr``) keeps a view of extreme
    scale in range: every entry of a Gram or moment block is at most its trace.
    """
    total = np.zeros(blocks[0].shape)
    for block, trace in zip(blocks, traces, strict=True):
        if trace > 0:
            total += block / trace
    total /= len(traces)
    return total


def pooled_basis(moments, n_components, max_components=None, names=None):
    """The basis from the second moment pooled over every view (SPEC §2.2, §2.5).

    ``S = (1/G) Σ_g P̃_gᵀ P̃_g / tr(P̃_gᵀ P̃_g)``: each view weighted by its own total
    variance, so that rescaling one view changes neither the basis nor k. For a pair,
    ``½ (P̃ᵀP̃/tr(P̃ᵀP̃) + Q̃ᵀQ̃/tr(Q̃ᵀQ̃))``; its eigenvalues sum to 1.

    Raises
    ------
    ValueError
        If every view is constant (no variance to keep), naming the views
        (``names``) when given.
    """
    traces = view_traces(np.einsum("gii->g", moments.auto), moments.mean, moments.n_samples)
    S = variance_weighted_sum(moments.auto, traces)
    dof = moments.n_rows - moments.rows_per_sample
    # each view's centred rows span at most dof dimensions: S has rank <= G·dof
    d = S.shape[0]
    eigenvalues, V = descending_eigh(S, rank=moments.n_views * dof, overwrite=True)
    del S
    if n_components is None:  # no denoising: every direction (up to the rank and rows)
        n_components = d
    k = select_k(eigenvalues, n_components, dof=dof, max_components=max_components)
    if k == 0:
        raise no_variance_error(views_without_variance(names))
    return Basis(deterministic_signs(V[:, :k]), eigenvalues, k, d, tuple(traces == 0))


@dataclass
class CCAFit:
    """Everything a fitted pair keeps for scoring (SPEC §2.3–2.4).

    Attributes
    ----------
    trace_agreement : float
        ``max(0, tr Σ_xy) / sqrt(tr Σ_xx · tr Σ_yy)`` of the fitted pair (step 9).
    spectrum_x, spectrum_y : ndarray of shape (k,)
        Eigenvalues of ``Σ_xx`` and ``Σ_yy`` (ascending; those at the rounding floor
        zero), each divided by a power of four near its mean: their conditioning,
        without the k × k matrices.
    directions_x, directions_y : ndarray of shape (k, k)
        The canonical directions ``R(Σ_xx) u_i`` and ``R(Σ_yy) w_i`` (columns), each
        up to a positive factor (an exact power of two that keeps extreme scales in
        range; correlations and energy weights do not depend on it).
    rho_raw : ndarray of shape (k,)
        Singular values of ``K``, unclipped.
    canonical_correlations : ndarray of shape (k,)
        ``ρ`` clipped to [0, 1].
    alignments : ndarray of shape (k,)
        ``α_i = u_i · w_i``.
    weights : ndarray of shape (k,)
        Energy weights ``ω_i`` of step 9.
    null : ndarray of bool, shape (k,)
        Pairs whose correlation is zero to rounding: their directions are an
        arbitrary basis of K's null spaces, so they count as 0 held-out.
    effective_pairs : float
        ``k_eff = max(dof_x, dof_y)``, the divisor of the uniform pair: the larger
        of the two views' effective numbers of directions in the basis
        (:func:`effective_directions`; docs/math.rst, "Counting the pairs a view can
        have"). ``k`` when both views fill the basis.
    constant_views : str
        Which view of the pair has no variance after centring ("the original
        view", "the transformed view", "both views"), or "": then there is nothing
        to compare and the pair has no score (NaN, with the reason).
    """

    trace_agreement: float
    spectrum_x: np.ndarray
    spectrum_y: np.ndarray
    directions_x: np.ndarray
    directions_y: np.ndarray
    rho_raw: np.ndarray
    canonical_correlations: np.ndarray
    alignments: np.ndarray
    weights: np.ndarray
    null: np.ndarray
    effective_pairs: float
    constant_views: str = ""


def project(C, V, symmetric=False):
    """``Vᵀ C V`` (``symmetric``: C is, and only the product's lower triangle is
    computed, :func:`~seis_sklearn._blas.symmetric_product`)."""
    if symmetric:
        return symmetric_product(V, C @ V)
    return V.T @ C @ V


def _energy_share(eigenvalues, coefficients):
    """Each direction's share of its view's energy (SPEC §2.3 step 9), per column v of
    ``coefficients`` (directions in Σ's eigenbasis): ``vᵀΣ²v / (vᵀΣv · tr Σ)`` —
    ``‖Xᵀx‖²/‖x‖²/tr(XᵀX)`` for the variate ``x = Xv``; scale-free in the view and in
    v. 0 where vᵀΣv vanishes."""
    w = eigenvalues
    c2 = coefficients**2
    num = w**2 @ c2
    den = w @ c2
    total = float(w.sum())
    tol = _EPS * total * c2.sum(axis=0)
    out = np.zeros_like(den)
    ok = den > tol
    out[ok] = num[ok] / (den[ok] * total)
    return out


def _block_energy_share(eigenvalues, coefficients):
    """The summed :func:`_energy_share` of a block of directions, independent of the
    basis chosen in their span: ``tr((MᵀΣM)⁺ MᵀΣ²M) / tr Σ`` for ``M = coefficients``
    (the sum of the generalized Rayleigh quotients over a Σ-orthogonal basis of the
    span)."""
    w, C = eigenvalues, coefficients
    total = float(w.sum())
    root = np.sqrt(w)[:, None] * C  # Σ^½ M in the eigenbasis: MᵀΣM = rootᵀroot
    g, Q = np.linalg.eigh(root.T @ root)
    # the rounding floor of MᵀΣM: directions along which the view has no variance
    floor = ROUNDING_FLOOR * w.size * _EPS * float(w.max(initial=0.0)) * float((C**2).sum())
    keep = g > floor
    if total == 0.0 or not keep.any():
        return 0.0
    projected = w[:, None] * (C @ Q[:, keep])  # Σ M q for each Σ-orthogonal direction q
    return float(np.sum(column_dots(projected, projected) / g[keep]) / total)


def pair_covariances(moments, basis, view=1):
    """``Σ_xx, Σ_yy, Σ_xy`` of the original view and view ``view`` in the basis (step 5)."""
    m = moments.n_rows
    V = basis.components
    return (
        project(moments.auto[0], V, symmetric=True) / m,
        project(moments.auto[view], V, symmetric=True) / m,
        project(moments.cross[view - 1], V) / m,
    )


def _power_of_four(sigma):
    """The power of four nearest the mean variance ``tr Σ / k`` (1 when there is none)."""
    mean = float(np.trace(sigma)) / max(sigma.shape[0], 1)
    if not (mean > 0 and np.isfinite(mean)):
        return 1.0
    return float(np.ldexp(1.0, 2 * (int(np.frexp(mean)[1]) // 2)))


def fit_cca(covariances, reg, n_rows):
    """CCA of two views from their k × k covariances (SPEC §2.3 steps 5–6 and 9).

    Parameters
    ----------
    covariances : list of ndarray of shape (k, k)
        ``[Σ_xx, Σ_yy, Σ_xy]`` in the shared basis. Consumed: the list is emptied
        and the matrices overwritten as they are used, so that at k ≈ 3,000 (a 56×56
        map) the fit does not hold them beside its own k × k matrices.
    reg : float
        ``ε``: each covariance gets the ridge ``ε·tr Σ/k`` of its own mean
        variance (:func:`inverse_sqrt`), so rescaling one view changes nothing.
    n_rows : int
        ``m``, the rows the covariances were summed over (their rounding floor).

    Returns
    -------
    CCAFit
    """
    sigma_xx, sigma_yy, sigma_xy = covariances
    covariances.clear()
    agreement = _trace_agreement(sigma_xy, sigma_xx, sigma_yy)
    # Each view is brought to unit mean variance by an exact power of four first:
    # CCA does not depend on the scale of either view (the ridges follow it), and
    # a view of scale 1e-160 beside one of scale 1 must not under- or overflow.
    scale_x, scale_y = _power_of_four(sigma_xx), _power_of_four(sigma_yy)
    sigma_xx /= scale_x
    w_x, V_x, raw_x = spectrum(sigma_xx, n_rows, overwrite=True, raw=True)
    del sigma_xx
    sigma_yy /= scale_y
    w_y, V_y, raw_y = spectrum(sigma_yy, n_rows, overwrite=True, raw=True)
    del sigma_yy
    # the pairs the two views can have: the larger of their effective numbers of
    # directions in the shared basis (docs/math.rst, "Counting the pairs a view can have")
    pairs = max(effective_directions(raw_x, w_x, reg), effective_directions(raw_y, w_y, reg))
    del raw_x, raw_y
    inv_x, inv_y = inverse_sqrt(w_x, reg), inverse_sqrt(w_y, reg)
    # K = R_x Σ_xy R_y in the eigenbases, V_xᵀ K V_y = diag(a) V_xᵀΣ_xyV_y diag(b), where a
    # view has no variance (an eigenvalue zero to rounding) its rows of Σ_xy are rounding
    # too, and are left out: a = R_x's eigenvalues there, 0 along such directions
    a, b = np.where(w_x > 0, inv_x, 0.0), np.where(w_y > 0, inv_y, 0.0)
    sigma_xy /= np.sqrt(scale_x * scale_y)  # a power of two: exact
    cross = V_x.T @ sigma_xy
    del sigma_xy
    cross = cross @ V_y
    k = cross.shape[0]
    floor = ROUNDING_FLOOR * k * _EPS * a.max(initial=0.0) * b.max(initial=0.0)
    floor *= float(np.linalg.norm(cross))
    cross *= a[:, None]
    cross *= b[None, :]  # the whitened cross-covariance in the eigenbases
    U_e, rho, W_e = singular_pairs(cross, floor)
    del cross
    alignments = _alignments(V_x, U_e, V_y, W_e)
    U_e *= inv_x[:, None]  # R U, R W in the eigenbases
    W_e *= inv_y[:, None]
    coef_x, coef_y = U_e, W_e
    weights = _energy_share(w_x, coef_x) + _energy_share(w_y, coef_y)
    # Pairs whose correlation is zero to rounding (K's rounding error: k·u·‖a‖‖Σ_xy‖‖b‖)
    # span K's null spaces, in which the SVD picks an arbitrary basis on each side —
    # they appear where one view has no variance along directions of the shared basis
    # (dead channels, k beyond a view's rank). Their weights are set from the spans
    # alone (the block's energy shared equally), and held-out they count as 0.
    null = rho <= floor
    if null.sum() > 1:
        block = _block_energy_share(w_x, coef_x[:, null]) + _block_energy_share(
            w_y, coef_y[:, null]
        )
        weights[null] = block / null.sum()
    directions_x = V_x @ coef_x
    del V_x, coef_x, U_e
    directions_y = V_y @ coef_y
    return CCAFit(
        trace_agreement=agreement,
        spectrum_x=w_x,
        spectrum_y=w_y,
        directions_x=directions_x,
        directions_y=directions_y,
        rho_raw=rho,
        canonical_correlations=np.clip(rho, 0.0, 1.0),
        alignments=alignments,
        weights=weights,
        null=null,
        effective_pairs=pairs,
    )


# Columns of the singular vectors formed at a time for the alignments (GEMMs this wide
# run at full speed, and no k × k matrix is made for them).
ALIGNMENT_COLUMNS = 512


def _alignments(V_x, U_e, V_y, W_e):
    """``α_i = u_i · w_i`` for the singular vectors ``U = V_x U_e``, ``W = V_y W_e`` of
    K, formed ``ALIGNMENT_COLUMNS`` at a time."""
    k = U_e.shape[1]
    out = np.empty(k)
    for start in range(0, k, ALIGNMENT_COLUMNS):
        cols = slice(start, start + ALIGNMENT_COLUMNS)
        out[cols] = column_dots(V_x @ U_e[:, cols], V_y @ W_e[:, cols])
    return np.clip(out, -1.0, 1.0)


def singular_pairs(K, floor):
    """The SVD ``K = U diag(ρ) Wᵀ`` of a square matrix, from a symmetric eigensolver.

    ``KᵀK = W diag(ρ²) Wᵀ`` (its lower triangle by SYRK) by ``eigh`` — a third of the
    time of an SVD at the sizes of a layer's canonical pairs (k = 2,800: 7 s against
    20 s, benchmarks/README.md) — then ``ρ_i = ‖K w_i‖``, accurate to rounding in
    absolute terms even where ``ρ²`` is not, and ``u_i = K w_i / ρ_i``. Pairs with
    ``ρ_i ≤ floor`` (zero to rounding) get an orthonormal basis of the rest of the space
    for ``u_i``: any is as good as
    the SVD's there (:func:`fit_cca` treats them as null pairs).

    Returns
    -------
    U : ndarray of shape (k, k)
    rho : ndarray of shape (k,)
        Descending.
    W : ndarray of shape (k, k)
    """
    gram = np.empty((K.shape[1], K.shape[1]))
    syrk_lower(np.ascontiguousarray(K), gram)  # KᵀK: half the flops of a product
    W = eigh_inplace(gram, triangle="lower")[1]
    del gram
    W = np.ascontiguousarray(W[:, ::-1])  # ρ² descending, up to rounding
    U = K @ W
    rho = np.sqrt(column_dots(U, U))
    order = np.argsort(-rho, kind="stable")
    if (order != np.arange(order.size)).any():
        rho, W, U = rho[order], W[:, order], U[:, order]
    live = rho > floor
    U /= np.where(live, rho, 1.0)
    if not live.all():  # complete U with an orthonormal basis of what the live ones leave
        basis = np.linalg.qr(np.concatenate([U[:, live], np.eye(K.shape[0])], axis=1))[0]
        U[:, ~live] = basis[:, live.sum() : K.shape[0]]
    return U, rho, W


def _trace_agreement(sigma_xy, sigma_xx, sigma_yy):
    """``max(0, tr Σ_xy) / sqrt(tr Σ_xx · tr Σ_yy)``; 0 when a view has no variance."""
    return _agreement(np.trace(sigma_xy), np.trace(sigma_xx), np.trace(sigma_yy))


def _agreement(t_xy, t_xx, t_yy):
    """:func:`_trace_agreement` from the three traces."""
    den = np.sqrt(max(t_xx, 0.0) * max(t_yy, 0.0))
    return float(max(t_xy, 0.0) / den) if den > 0 else 0.0


def _scores(rho, alignments, weights, trace_agreement, invariance, pairs):
    """The four scores from per-pair correlations ρ (already made non-negative for S_E);
    the uniform pair divides by ``pairs``, the pairs the views can have (``k_eff``)."""
    k = pairs if pairs > 0 else max(rho.size, 1)
    positive = np.maximum(rho, 0.0)
    equivariance = float(positive.sum() / k)
    if invariance == "trace":
        invariance_score = max(0.0, float(np.dot(rho, alignments))) / k
    else:
        invariance_score = float(np.dot(positive, np.abs(alignments)) / k)
    total = weights.sum()
    equivariance_w = float(np.dot(weights, positive) / total) if total > 0 else 0.0
    # every score is a mean of numbers in [0, 1]: rounding of the sums (a held-out
    # identity's Σω·ρ′/Σω came out 1.0000000000000002) must not leave the range
    equivariance, equivariance_w = _unit(equivariance), _unit(equivariance_w)
    return {
        "equivariance": equivariance,
        "invariance": min(_unit(invariance_score), equivariance),
        "equivariance_weighted": equivariance_w,
        "invariance_weighted": min(equivariance_w, _unit(trace_agreement)),
    }


def _unit(value):
    return min(max(value, 0.0), 1.0)


def in_sample_scores(cca, invariance="trace"):
    """The SEIS scores of the fitted pair (SPEC §2.3 steps 7–9)."""
    return _scores(
        cca.canonical_correlations,
        cca.alignments,
        cca.weights,
        cca.trace_agreement,
        invariance,
        cca.effective_pairs,
    )


def held_out_scores(cca, projected, invariance="trace", view=1):
    """The SEIS scores of new paired data under a fitted pair (SPEC §2.4).

    Parameters
    ----------
    cca : CCAFit
        The fitted pair.
    projected : Moments
        Moments of the new views projected on the fitted basis, ``P′V_k`` and
        ``Q′V_k`` (k columns). Pearson correlation and the recentred
        covariances ``Σ′`` ignore the fitted means, so only these are needed.
    invariance : {"trace", "abs"}
    view : int, default=1
        Which transformed view of ``projected`` pairs with view 0.

    Returns
    -------
    scores : dict
        The four scores.
    rho : ndarray of shape (k,)
        Held-out correlations ``ρ′_i`` of the fitted canonical variates.
    """
    dir_x, dir_y = cca.directions_x, cca.directions_y
    c_xx, c_yy, c_xy = projected.auto[0], projected.auto[view], projected.cross[view - 1]
    cov = column_dots(dir_x, c_xy @ dir_y)
    var_x = column_dots(dir_x, c_xx @ dir_x)
    var_y = column_dots(dir_y, c_yy @ dir_y)
    traces = (np.trace(c_xy), np.trace(c_xx), np.trace(c_yy))
    return scores_of_variates(cca, cov, var_x, var_y, traces, invariance)


def column_dots(a, b):
    """``aᵢ · bᵢ`` of every column i of two matrices of one shape."""
    return np.einsum("ij,ij->j", a, b)


def scores_of_variates(cca, cov, var_x, var_y, traces, invariance="trace"):
    """The held-out scores from the fitted variates' covariances and variances on the
    new data, and the traces ``tr Σ′_xy, tr Σ′_xx, tr Σ′_yy`` in the basis (SPEC §2.4).

    Returns
    -------
    (dict, ndarray)
        The four scores, and the held-out correlations ``ρ′_i``.
    """
    den = np.sqrt(np.maximum(var_x, 0.0) * np.maximum(var_y, 0.0))
    rho = np.zeros_like(cov)
    ok = (den > 0) & ~cca.null
    rho[ok] = cov[ok] / den[ok]
    rho = np.clip(rho, -1.0, 1.0)
    scores = _scores(
        rho, cca.alignments, cca.weights, _agreement(*traces), invariance, cca.effective_pairs
    )
    return scores, rho


# ---------------------------------------------------------------- from a Gram matrix


@dataclass
class GramBasis(Basis):
    """A :class:`~seis_sklearn._cca.Basis` known through the Gram eigenvectors.

    ``components`` (``V_k``, d × k) is ``None`` until :func:`gram_components`
    computes it; ``coefficients`` maps Gram rows to it: ``V_k = Zᵀ·coefficients``.
    """

    coefficients: np.ndarray = None


def gram_basis(gm, n_components, max_components=None, names=None):
    """The shared basis of SPEC §2.2 from the Gram matrix.

    The pooled moment ``S = (1/G) Σ_g P̃_gᵀP̃_g / t_g`` (``t_g`` the trace of view g's
    diagonal block: its total variance) is ``Z_wᵀZ_w / G`` for the stacked rows
    ``Z_w = D Z`` with ``D`` = ``1/√t_g`` on the rows of view g, so its eigenvectors
    come from ``D (ZZᵀ) D = U diag(s²) Uᵀ``: ``V = Zᵀ D U / s``.
    """
    m, G = gm.n_rows, gm.n_views
    diagonal = np.diagonal(gm.gram)
    traces = view_traces(diagonal.reshape(G, m).sum(axis=1), gm.mean, gm.n_samples)
    scale = np.zeros(G * m)
    for g, trace in enumerate(traces):
        if trace > 0:
            scale[g * m : (g + 1) * m] = 1.0 / np.sqrt(trace)
    w, U = descending_eigh(gm.gram * scale[:, None] * scale[None, :], overwrite=True)
    eigenvalues = w / G
    if n_components is None:  # no denoising: every direction the rows allow
        n_components = eigenvalues.size
    dof = m - gm.mean.shape[1]
    k = select_k(eigenvalues, n_components, dof=dof, max_components=max_components)
    if k == 0:
        raise no_variance_error(views_without_variance(names))
    coefficients = scale[:, None] * deterministic_signs(U[:, :k]) / np.sqrt(w[:k])
    return GramBasis(None, eigenvalues, k, gm.mean.shape[-1], tuple(traces == 0), coefficients)


def gram_pair_covariances(gm, basis, view=1):
    """``Σ_xx, Σ_yy, Σ_xy`` of views 0 and ``view`` in the basis, from the Gram matrix."""
    m = gm.n_rows
    X = gm.gram[:m] @ basis.coefficients
    Y = gm.gram[view * m : (view + 1) * m] @ basis.coefficients
    # X and Y are centred (rows of centred data times fixed vectors)
    return X.T @ X / m, Y.T @ Y / m, X.T @ Y / m
