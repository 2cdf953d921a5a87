"""Small dense linear algebra of SEIS: the shared basis, CCA and the scores.

Everything here works on the moments of :mod:`seis_sklearn._moments` (d × d and
k × k matrices), never on the activations themselves. Formulas and step numbers
follow SPEC §2.2–2.4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = np.finfo(np.float64).eps
# Relative gap below which two eigenvalues belong to one cluster (SPEC §2.2 step 3).
CLUSTER_TOL = 1e-6


# The range of a matrix of known small rank is found with a Gaussian sketch of this
# many extra columns, from a fixed seed (so results are deterministic).
SKETCH_OVERSAMPLING = 16
# A d × d matrix whose rank is known to be at most this fraction of d is decomposed in
# its range (benchmarks/README.md: the crossover measured against a full eigh).
LOW_RANK_FRACTION = 0.6


def descending_eigh(S, rank=None):
    """Eigen-decomposition of a symmetric PSD matrix with eigenvalues descending.

    Parameters
    ----------
    S : ndarray of shape (d, d)
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
    S = 0.5 * (S + S.T)
    d = S.shape[0]
    if rank is not None and rank + SKETCH_OVERSAMPLING <= LOW_RANK_FRACTION * d:
        width = rank + SKETCH_OVERSAMPLING
        sketch = np.random.default_rng(0).standard_normal((d, width))
        Q = np.linalg.qr(S @ sketch)[0]
        w, U = np.linalg.eigh(Q.T @ S @ Q)
        values = np.zeros(d)
        values[:width] = w[::-1]
        return np.maximum(values, 0.0), Q @ U[:, ::-1]
    w, V = np.linalg.eigh(S)
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
    k = min(k, d, dof, rank)
    if max_components is not None:
        k = min(k, max_components)
    return k


def inverse_sqrt(sigma, reg):
    """``R(Σ) = (Σ + reg·λ_min(Σ)·I)^(-1/2)`` of a symmetric PSD matrix.

    The ridge is tied to the matrix's own smallest eigenvalue, so it scales with
    the view: ``R(c²Σ) = R(Σ)/c`` exactly, and no direction is damped by more
    than a factor ``1 + reg``. Directions with no variance (to machine
    precision) get a zero, as in a pseudo-inverse.
    """
    w, V = np.linalg.eigh(0.5 * (sigma + sigma.T))
    top = max(float(w.max()), 0.0)
    keep = w > top * w.size * _EPS
    w = w + reg * max(float(w.min()), 0.0)
    inv = np.zeros_like(w)
    inv[keep] = 1.0 / np.sqrt(w[keep])
    return (V * inv) @ V.T


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
    """

    components: np.ndarray
    eigenvalues: np.ndarray
    k: int
    n_columns: int = 0

    @property
    def explained_variance_ratio(self):
        """Fraction of the pooled variance kept by the first k directions."""
        total = self.eigenvalues.sum()
        return float(self.eigenvalues[: self.k].sum() / total) if total > 0 else 0.0


def pooled_basis(moments, n_components, max_components=None):
    """The basis from the second moment pooled over every view (SPEC §2.2, §2.5).

    ``S = Σ_g P̃_gᵀ P̃_g / (G·m)``; for a pair this is ``(P̃ᵀP̃ + Q̃ᵀQ̃) / (2m)``.

    Raises
    ------
    ValueError
        If every view is constant (no variance to keep).
    """
    S = moments.auto.sum(axis=0) / (moments.n_views * moments.n_rows)
    dof = moments.n_rows - moments.rows_per_sample
    # each view's centred rows span at most dof dimensions: S has rank <= G·dof
    eigenvalues, V = descending_eigh(S, rank=moments.n_views * dof)
    if n_components is None:  # no denoising: every direction (up to the rank and rows)
        n_components = S.shape[0]
    k = select_k(eigenvalues, n_components, dof=dof, max_components=max_components)
    if k == 0:
        raise no_variance_error()
    return Basis(deterministic_signs(V[:, :k]), eigenvalues, k, S.shape[0])


@dataclass
class CCAFit:
    """Everything a fitted pair keeps for scoring (SPEC §2.3–2.4).

    Attributes
    ----------
    sigma_xx, sigma_yy, sigma_xy : ndarray of shape (k, k)
        Covariances of the views in the shared basis.
    whiten_x, whiten_y : ndarray of shape (k, k)
        ``R(Σ_xx)`` and ``R(Σ_yy)``, each up to a positive factor (an exact
        power of two that keeps extreme scales in range; correlations and
        energy weights do not depend on it).
    U, W : ndarray of shape (k, k)
        Singular vectors of ``K`` (columns).
    rho_raw : ndarray of shape (k,)
        Singular values of ``K``, unclipped.
    canonical_correlations : ndarray of shape (k,)
        ``ρ`` clipped to [0, 1].
    alignments : ndarray of shape (k,)
        ``α_i = u_i · w_i``.
    weights : ndarray of shape (k,)
        Energy weights ``ω_i`` of step 9.
    """

    sigma_xx: np.ndarray
    sigma_yy: np.ndarray
    sigma_xy: np.ndarray
    whiten_x: np.ndarray
    whiten_y: np.ndarray
    U: np.ndarray
    W: np.ndarray
    rho_raw: np.ndarray
    canonical_correlations: np.ndarray
    alignments: np.ndarray
    weights: np.ndarray


def project(C, V):
    """``Vᵀ C V``."""
    return V.T @ C @ V


def _energy(sigma, directions, n_rows):
    """``m·vᵀΣ²v / vᵀΣv`` for each column v of ``directions``; 0 where vᵀΣv vanishes."""
    sv = sigma @ directions
    num = n_rows * np.einsum("ij,ij->j", sv, sv)
    den = np.einsum("ij,ij->j", directions, sv)
    tol = _EPS * max(float(np.trace(sigma)), 0.0) * np.einsum("ij,ij->j", directions, directions)
    out = np.zeros_like(den)
    ok = den > tol
    out[ok] = num[ok] / den[ok]
    return out


def pair_covariances(moments, basis, view=1):
    """``Σ_xx, Σ_yy, Σ_xy`` of the original view and view ``view`` in the basis (step 5)."""
    m = moments.n_rows
    V = basis.components
    return (
        project(moments.auto[0], V) / m,
        project(moments.auto[view], V) / m,
        project(moments.cross[view - 1], V) / m,
    )


def _power_of_four(sigma):
    """The power of four nearest the mean variance ``tr Σ / k`` (1 when there is none)."""
    mean = float(np.trace(sigma)) / max(sigma.shape[0], 1)
    if not (mean > 0 and np.isfinite(mean)):
        return 1.0
    return float(np.ldexp(1.0, 2 * (int(np.frexp(mean)[1]) // 2)))


def fit_cca(sigma_xx, sigma_yy, sigma_xy, reg, n_rows):
    """CCA of two views from their k × k covariances (SPEC §2.3 steps 5–6 and 9).

    Parameters
    ----------
    sigma_xx, sigma_yy, sigma_xy : ndarray of shape (k, k)
        Covariances in the shared basis.
    reg : float
        ``ε``: each covariance gets the ridge ``ε·λ_min`` of its own spectrum
        (:func:`inverse_sqrt`), so rescaling one view changes nothing.
    n_rows : int
        ``m``, which scales the energy weights.

    Returns
    -------
    CCAFit
    """
    # Each view is brought to unit mean variance by an exact power of four first:
    # CCA does not depend on the scale of either view (the ridges follow it), and
    # a view of scale 1e-160 beside one of scale 1 must not under- or overflow.
    scale_x, scale_y = _power_of_four(sigma_xx), _power_of_four(sigma_yy)
    whiten_x = inverse_sqrt(sigma_xx / scale_x, reg)
    whiten_y = inverse_sqrt(sigma_yy / scale_y, reg)
    K = whiten_x @ (sigma_xy / np.sqrt(scale_x * scale_y)) @ whiten_y
    U, rho, Wt = np.linalg.svd(K)
    W = Wt.T
    alignments = np.clip(np.einsum("ij,ij->j", U, W), -1.0, 1.0)
    weights = _energy(sigma_xx, whiten_x @ U, n_rows) + _energy(sigma_yy, whiten_y @ W, n_rows)
    return CCAFit(
        sigma_xx=sigma_xx,
        sigma_yy=sigma_yy,
        sigma_xy=sigma_xy,
        whiten_x=whiten_x,
        whiten_y=whiten_y,
        U=U,
        W=W,
        rho_raw=rho,
        canonical_correlations=np.clip(rho, 0.0, 1.0),
        alignments=alignments,
        weights=weights,
    )


def _trace_agreement(sigma_xy, sigma_xx, sigma_yy):
    """``max(0, tr Σ_xy) / sqrt(tr Σ_xx · tr Σ_yy)``; 0 when a view has no variance."""
    den = np.sqrt(max(np.trace(sigma_xx), 0.0) * max(np.trace(sigma_yy), 0.0))
    return float(max(np.trace(sigma_xy), 0.0) / den) if den > 0 else 0.0


def _scores(rho, alignments, weights, trace_agreement, invariance):
    """The four scores from per-pair correlations ρ (already made non-negative for S_E)."""
    k = rho.size
    positive = np.maximum(rho, 0.0)
    equivariance = float(positive.sum() / k)
    if invariance == "trace":
        invariance_score = max(0.0, float(np.dot(rho, alignments))) / k
    else:
        invariance_score = float(np.dot(positive, np.abs(alignments)) / k)
    total = weights.sum()
    equivariance_w = float(np.dot(weights, positive) / total) if total > 0 else 0.0
    return {
        "equivariance": equivariance,
        "invariance": min(invariance_score, equivariance),
        "equivariance_weighted": equivariance_w,
        "invariance_weighted": min(equivariance_w, trace_agreement),
    }


def in_sample_scores(cca, invariance="trace"):
    """The SEIS scores of the fitted pair (SPEC §2.3 steps 7–9)."""
    return _scores(
        cca.canonical_correlations,
        cca.alignments,
        cca.weights,
        _trace_agreement(cca.sigma_xy, cca.sigma_xx, cca.sigma_yy),
        invariance,
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
    dir_x = cca.whiten_x @ cca.U
    dir_y = cca.whiten_y @ cca.W
    c_xx, c_yy, c_xy = projected.auto[0], projected.auto[view], projected.cross[view - 1]
    cov = np.einsum("ij,ij->j", dir_x, c_xy @ dir_y)
    var_x = np.einsum("ij,ij->j", dir_x, c_xx @ dir_x)
    var_y = np.einsum("ij,ij->j", dir_y, c_yy @ dir_y)
    den = np.sqrt(np.maximum(var_x, 0.0) * np.maximum(var_y, 0.0))
    rho = np.zeros_like(cov)
    ok = den > 0
    rho[ok] = cov[ok] / den[ok]
    rho = np.clip(rho, -1.0, 1.0)
    agreement = _trace_agreement(c_xy, c_xx, c_yy)
    return _scores(rho, cca.alignments, cca.weights, agreement, invariance), rho
