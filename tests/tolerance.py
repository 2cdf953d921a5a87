"""Tolerances that follow from the conditioning of the case, not from one machine.

Two computations of the same scores (numpy vs dask, moments vs Gram, fit vs
partial_fit, the package vs the reference implementation) differ only by
rounding, but rounding in different orders: BLAS kernels (Haswell, SkylakeX,
Zen…), block sizes and reduction trees differ between CPUs and paths. The
rule used throughout the suite (tests/README.md):

* **Statistics** (moments, Gram matrices, means) are compared tightly:
  relative ``c·u·√n`` for sums of n terms in unit roundoff ``u`` (float64, or
  float32 for float32 products).
* **Scores and canonical correlations** are compared within
  ``score_tolerance``: the statistics' relative error ``η = u·(√m + k)``
  (sums over m rows, eigen/SVD backward error O(k·u)) is amplified by the
  whitening ``R(Σ) = (Σ + ridge)^(-1/2)``, so a score moves by at most about
  ``η·(κ_x + κ_y)`` with ``κ`` the condition number of ``Σ + ridge`` of each
  view. The factor 10 covers the constants of these bounds (measured ratio
  ≤ 0.5 on the suite's cases). Canonical correlations within ~1e-7 of 1
  (exact cases) come with κ large, and the bound widens accordingly.
* **Held-out and cross-fitted scores** evaluate the fitted canonical
  directions one by one on new data, and a direction is only as well
  determined as the gap to its neighbouring correlations: in-sample
  correlations crowd below 1 (measured: 61 of 90 rows kept, ρ_max = 1 − 2e-8,
  gaps 5e-10), so the bound is divided by ``1 − ρ_max`` (at most by ``√u``).
  Such cases are flagged ``degenerate`` by the toolkit (k ≥ m/2); tests that
  compare two computations choose well-conditioned cases instead, where the
  factor is ~10.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold

from seis_sklearn import SEISScorer

FACTOR = 10.0
FLOOR = 1e-13  # differences below this are rounding of the final sums themselves


def unit_roundoff(dtype):
    """Unit roundoff of the products for input of ``dtype`` (float32 stays float32)."""
    if np.dtype(dtype) in (np.float32, np.float16):
        return float(np.finfo(np.float32).eps)
    return float(np.finfo(np.float64).eps)


def _kappa(eigenvalues, reg):
    """Condition number of ``Σ + ε·(tr Σ/k)·I`` (SPEC §2.3 step 5) from Σ's eigenvalues:
    at most ``1 + k/ε``."""
    w = np.maximum(eigenvalues, 0.0)
    ridge = reg * float(w.sum()) / max(w.size, 1)
    top = float(w.max()) + ridge
    keep = w + ridge > top * w.size * np.finfo(np.float64).eps
    return top / (float(w[keep].min()) + ridge) if keep.any() else 1.0


def scorer_tolerance(scorer, dtype=np.float64, held_out=False):
    """Rounding bound of the scores of a fitted :class:`SEISScorer` (module docstring).

    ``held_out=True``: of held-out scores under its directions.
    """
    reg = scorer.reg
    kappa = max(_kappa(c.spectrum_x, reg) + _kappa(c.spectrum_y, reg) for c in scorer._fitted.ccas)
    m, k = scorer.n_rows_, scorer.n_components_
    u = unit_roundoff(dtype)
    rows = m if u < 1e-10 else min(m, 4096)  # float32: per product
    tol = FACTOR * u * (np.sqrt(rows) + k) * kappa
    if held_out:
        rho_max = max(float(c.rho_raw.max()) for c in scorer._fitted.ccas)
        tol /= max(1.0 - rho_max, np.sqrt(u))
    return tol + FLOOR


def score_tolerance(A, B, *, cv=None, dtype=None, **params):
    """Rounding bound of ``seis_score(A, B, cv=cv, **params)``: the worst fit involved.

    ``cv`` an int: the held-out bounds of the training sets of unshuffled
    ``KFold(cv)``, and the in-sample bound of all samples.
    """
    dtype = np.result_type(A) if dtype is None else dtype
    n = len(A)
    trains = [np.arange(n)]
    if cv is not None:
        trains += [train for train, _ in KFold(cv).split(np.empty((n, 1)))]
    Bs = B if isinstance(B, (list, tuple)) else [B]
    params = {key: value for key, value in params.items() if key != "solver"}
    return max(
        scorer_tolerance(
            SEISScorer(**params, solver="moments").fit(
                np.asarray(A)[t], [np.asarray(b)[t] for b in Bs] if len(Bs) > 1 else Bs[0][t]
            ),
            dtype,
            held_out=i > 0,
        )
        for i, t in enumerate(trains)
    )


SCORES = ("equivariance", "invariance", "equivariance_weighted", "invariance_weighted")


def assert_scores_close(got, want, tol, *, correlations=True):
    """Every score (and the canonical correlations) of two results within ``tol``."""
    for name in SCORES:
        a, b = getattr(got, name), getattr(want, name)
        assert abs(a - b) <= tol, (name, a, b, tol)
    if correlations:
        diff = np.abs(np.asarray(got.canonical_correlations) - want.canonical_correlations)
        assert diff.max() <= tol, (diff.max(), tol)
