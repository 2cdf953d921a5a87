"""A direct, slow implementation of SPEC §2.1–2.4, written from the definitions.

It shares no code with the package: each view centred per feature over the
samples (``A − A.mean(axis=0)``, SPEC §2.1) before matricization by explicit
axis moves, the basis from the SVD of the stacked centred rows, each view
divided by the square root of its total variance (SPEC §2.2 step 2), ``R(Σ)``
by ``scipy.linalg.fractional_matrix_power`` with the mean-variance ridge (step
5), the weights from the canonical variates themselves (step 9) and held-out
correlations with ``np.corrcoef``.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

CHANNEL_AXIS = {"NCHW": 1, "NHWC": 3, "NCDHW": 1, "NLD": 2}


def reference_matricize(A, layout, mode):
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[0]
    if layout == "ND" or mode == "flatten":
        return A.reshape(n, -1)
    c_axis = CHANNEL_AXIS[layout]
    chan_first = np.moveaxis(A, c_axis, 1)  # (N, C, *positions)
    C = chan_first.shape[1]
    if mode == "spatial":
        return chan_first.reshape(n * C, -1)
    return np.moveaxis(chan_first, 1, -1).reshape(-1, C)


def reference_k(lam, n_components, dof, max_components=None):
    d = lam.size
    tol = lam[0] * d * np.finfo(float).eps
    rank = int((lam > tol).sum())
    if isinstance(n_components, float):
        ratio = np.cumsum(lam) / lam.sum()
        k = 1
        while ratio[k - 1] < n_components * (1 - 4 * np.finfo(float).eps):
            k += 1
        while k < d and lam[k] >= (1 - 1e-6) * lam[k - 1]:
            k += 1
    else:
        k = n_components
    capped = min(k, d, dof, rank)
    if max_components is not None:
        capped = min(capped, max_components)
    if isinstance(n_components, float) and capped < min(k, rank):
        while capped > 1 and lam[capped] >= (1 - 1e-6) * lam[capped - 1]:  # not in a pair
            capped -= 1
    return capped


def inv_sqrt(S, reg):
    """``(S + reg·(tr S/k)·I)^(-1/2)``: the ridge tied to the view's mean variance."""
    ridge = reg * np.trace(S) / len(S)
    return np.real(linalg.fractional_matrix_power(S + ridge * np.eye(len(S)), -0.5))


def reference_fit(
    A, B, layout="auto", matricization="spatial", n_components=0.99, reg=1e-6, max_components=None
):
    if layout == "auto":
        layout = {2: "ND", 3: "NLD", 4: "NCHW", 5: "NCDHW"}[np.ndim(A)]
    A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
    mu_p, mu_q = A.mean(axis=0), B.mean(axis=0)  # per feature, over the samples
    Pc = reference_matricize(A - mu_p, layout, matricization)
    Qc = reference_matricize(B - mu_q, layout, matricization)
    m = Pc.shape[0]
    # S = ½ (P̃ᵀP̃/tr(P̃ᵀP̃) + Q̃ᵀQ̃/tr(Q̃ᵀQ̃)) = ZᵀZ/2, Z the stack of the views
    # each divided by its Frobenius norm
    Z = np.vstack([Pc / np.linalg.norm(Pc), Qc / np.linalg.norm(Qc)])
    _, s, Vt = np.linalg.svd(Z, full_matrices=True)
    lam = np.zeros(Pc.shape[1])
    lam[: s.size] = s**2 / 2
    k = reference_k(lam, n_components, m - m // A.shape[0], max_components)
    Vk = Vt[:k].T
    X, Y = Pc @ Vk, Qc @ Vk
    Sxx, Syy, Sxy = X.T @ X / m, Y.T @ Y / m, X.T @ Y / m
    Rx, Ry = inv_sqrt(Sxx, reg), inv_sqrt(Syy, reg)
    K = Rx @ Sxy @ Ry
    U, rho, Wt = np.linalg.svd(K)
    W = Wt.T
    alpha = np.sum(U * W, axis=0)
    # the pairs the views can have: the larger trace of R Σ R, each view's effective
    # number of directions under its ridge (docs/math.rst)
    pairs = max(np.trace(Rx @ Sxx @ Rx), np.trace(Ry @ Syy @ Ry))
    xv, yv = X @ Rx @ U, Y @ Ry @ W  # canonical variates, columns
    omega = np.array(  # each view's share of its own energy
        [
            np.sum((X.T @ xv[:, i]) ** 2) / np.sum(xv[:, i] ** 2) / np.sum(X**2)
            + np.sum((Y.T @ yv[:, i]) ** 2) / np.sum(yv[:, i] ** 2) / np.sum(Y**2)
            for i in range(k)
        ]
    )
    return dict(
        P=Pc,
        Q=Qc,
        m=m,
        mu_p=mu_p,
        mu_q=mu_q,
        Vk=Vk,
        k=k,
        pairs=pairs,
        lam=lam,
        Sxx=Sxx,
        Syy=Syy,
        Sxy=Sxy,
        Rx=Rx,
        Ry=Ry,
        U=U,
        W=W,
        rho=np.clip(rho, 0, 1),
        alpha=alpha,
        omega=omega,
        layout=layout,
        matricization=matricization,
    )


def reference_scores(fit, invariance="trace"):
    rho, alpha, omega, k = fit["rho"], fit["alpha"], fit["omega"], fit["pairs"]
    S_E = min(1.0, rho.sum() / k)
    if invariance == "trace":
        S_I = max(0.0, np.sum(rho * alpha)) / k
    else:
        S_I = np.sum(rho * np.abs(alpha)) / k
    S_Ew = np.sum(omega * rho) / np.sum(omega)
    agree = max(0.0, np.trace(fit["Sxy"])) / np.sqrt(np.trace(fit["Sxx"]) * np.trace(fit["Syy"]))
    return dict(
        equivariance=S_E,
        invariance=S_I,
        equivariance_weighted=S_Ew,
        invariance_weighted=min(S_Ew, agree),
    )


def reference_held_out(fit, A2, B2, invariance="trace"):
    # held-out data centred with the fitted per-feature means
    P2 = reference_matricize(np.asarray(A2) - fit["mu_p"], fit["layout"], fit["matricization"])
    Q2 = reference_matricize(np.asarray(B2) - fit["mu_q"], fit["layout"], fit["matricization"])
    k, pairs = fit["k"], fit["pairs"]
    xv = P2 @ fit["Vk"] @ fit["Rx"] @ fit["U"]
    yv = Q2 @ fit["Vk"] @ fit["Ry"] @ fit["W"]
    rho = np.array([np.corrcoef(xv[:, i], yv[:, i])[0, 1] for i in range(k)])
    pos = np.maximum(rho, 0)
    S_E = min(1.0, pos.sum() / pairs)
    if invariance == "trace":
        S_I = max(0.0, np.sum(rho * fit["alpha"])) / pairs
    else:
        S_I = np.sum(pos * np.abs(fit["alpha"])) / pairs
    S_I = min(S_I, S_E)
    omega = fit["omega"]
    S_Ew = np.sum(omega * pos) / np.sum(omega)
    X2 = P2 @ fit["Vk"]
    Y2 = Q2 @ fit["Vk"]
    X2, Y2 = X2 - X2.mean(0), Y2 - Y2.mean(0)
    agree = max(0.0, np.trace(X2.T @ Y2)) / np.sqrt(np.trace(X2.T @ X2) * np.trace(Y2.T @ Y2))
    return dict(
        equivariance=S_E,
        invariance=S_I,
        equivariance_weighted=S_Ew,
        invariance_weighted=min(S_Ew, agree),
    ), rho
