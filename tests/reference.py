"""A direct, slow implementation of SPEC §2.1–2.4, written from the definitions.

It shares no code with the package: matricization by explicit axis moves, the
basis from the SVD of the stacked centred rows, ``R(Σ)`` by
``scipy.linalg.fractional_matrix_power``, the weights from the canonical
variates themselves and held-out correlations with ``np.corrcoef``.
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


def reference_k(lam, n_components, m, max_components=None):
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
    k = min(k, d, m - 1, rank)
    if max_components is not None:
        k = min(k, max_components)
    return k


def inv_sqrt(S, ridge):
    return np.real(linalg.fractional_matrix_power(S + ridge * np.eye(len(S)), -0.5))


def reference_fit(
    A, B, layout="auto", matricization="spatial", n_components=0.99, reg=1e-6, max_components=None
):
    if layout == "auto":
        layout = {2: "ND", 3: "NLD", 4: "NCHW", 5: "NCDHW"}[np.ndim(A)]
    P = reference_matricize(A, layout, matricization)
    Q = reference_matricize(B, layout, matricization)
    m = P.shape[0]
    mu_p, mu_q = P.mean(axis=0), Q.mean(axis=0)
    Pc, Qc = P - mu_p, Q - mu_q
    _, s, Vt = np.linalg.svd(np.vstack([Pc, Qc]), full_matrices=True)
    lam = np.zeros(P.shape[1])
    lam[: s.size] = s**2 / (2 * m)
    k = reference_k(lam, n_components, m, max_components)
    Vk = Vt[:k].T
    X, Y = Pc @ Vk, Qc @ Vk
    Sxx, Syy, Sxy = X.T @ X / m, Y.T @ Y / m, X.T @ Y / m
    ridge = reg * lam[k - 1]
    Rx, Ry = inv_sqrt(Sxx, ridge), inv_sqrt(Syy, ridge)
    K = Rx @ Sxy @ Ry
    U, rho, Wt = np.linalg.svd(K)
    W = Wt.T
    alpha = np.sum(U * W, axis=0)
    xv, yv = X @ Rx @ U, Y @ Ry @ W  # canonical variates, columns
    omega = np.array(
        [
            np.sum((X.T @ xv[:, i]) ** 2) / np.sum(xv[:, i] ** 2)
            + np.sum((Y.T @ yv[:, i]) ** 2) / np.sum(yv[:, i] ** 2)
            for i in range(k)
        ]
    )
    return dict(
        P=P,
        Q=Q,
        m=m,
        mu_p=mu_p,
        mu_q=mu_q,
        Vk=Vk,
        k=k,
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
    rho, alpha, omega, k = fit["rho"], fit["alpha"], fit["omega"], fit["k"]
    S_E = rho.mean()
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
    P2 = reference_matricize(A2, fit["layout"], fit["matricization"])
    Q2 = reference_matricize(B2, fit["layout"], fit["matricization"])
    k = fit["k"]
    xv = (P2 - fit["mu_p"]) @ fit["Vk"] @ fit["Rx"] @ fit["U"]
    yv = (Q2 - fit["mu_q"]) @ fit["Vk"] @ fit["Ry"] @ fit["W"]
    rho = np.array([np.corrcoef(xv[:, i], yv[:, i])[0, 1] for i in range(k)])
    pos = np.maximum(rho, 0)
    S_E = pos.mean()
    if invariance == "trace":
        S_I = max(0.0, np.sum(rho * fit["alpha"])) / k
    else:
        S_I = np.sum(pos * np.abs(fit["alpha"])) / k
    omega = fit["omega"]
    S_Ew = np.sum(omega * pos) / np.sum(omega)
    X2 = (P2 - fit["mu_p"]) @ fit["Vk"]
    Y2 = (Q2 - fit["mu_q"]) @ fit["Vk"]
    X2, Y2 = X2 - X2.mean(0), Y2 - Y2.mean(0)
    agree = max(0.0, np.trace(X2.T @ Y2)) / np.sqrt(np.trace(X2.T @ X2) * np.trace(Y2.T @ Y2))
    return dict(
        equivariance=S_E,
        invariance=S_I,
        equivariance_weighted=S_Ew,
        invariance_weighted=min(S_Ew, agree),
    ), rho
