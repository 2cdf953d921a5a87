"""One pipeline for every fit: statistics → basis → CCA → scores (SPEC §2.1–2.5).

Every way SEIS is computed goes through these few functions, the variants being
their inputs rather than branches around them:

* **statistics** — :func:`gather`: the moments of the views (one pass over samples;
  numpy, memory maps, dask blocks, torch tensors: :mod:`seis_sklearn._accumulate`) or,
  for wide views, their Gram matrix (one pass over columns, :mod:`seis_sklearn._gram`);
* **basis and CCA** — :func:`fit`: the basis pooled over every view (a pair or an
  orbit), one CCA per transformed view (:mod:`seis_sklearn._cca`, the dense algebra);
* **scores** — :func:`in_sample` and :func:`held_out` (the moments of new views
  projected on the basis);
* **folds** — :func:`cross_fit`: each training set's statistics, :func:`fit`, and
  :func:`held_out` on its test set, whatever the solver, backend or number of views.

The estimator (:mod:`seis_sklearn._scorer`) coordinates; nothing here knows it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ._accumulate import accumulate, accumulate_folds, accumulate_gram, gram_components
from ._cca import (
    LOW_RANK_FRACTION,
    SKETCH_OVERSAMPLING,
    column_dots,
    degenerate_reason,
    fit_cca,
    gram_basis,
    gram_pair_covariances,
    held_out_scores,
    in_sample_scores,
    no_variance_error,
    pair_covariances,
    pooled_basis,
    scores_of_variates,
    views_without_variance,
)
from ._gram import GramMoments
from ._matricize import matricize, matrix_shape
from ._moments import InputFiles, _page_releaser, mean_spread, project_moments, recentred
from ._result import SCORE_NAMES, SEISResult
from ._validation import chunk_samples, raise_nonfinite

# An eigendecomposition of an n × n matrix costs about this many times n³ flops of a
# matrix product on these machines (benchmarks/README.md: numpy eigh vs GEMM).
EIGH_COST = 10.0


def solver_costs(n_rows, n_columns, rank=None):
    """Estimated flops of the moment and the Gram solver for m rows and d columns (a pair).

    Moments: the products of the stacked ``[P Q]`` (``m·(2d)²``) and the pooled
    eigendecomposition (``d³``, or products in its range when the rank is known to
    be small: :func:`~seis_sklearn._cca.descending_eigh`). Gram: the ``2m × 2m``
    Gram over column chunks (``d·(2m)²``), its eigendecomposition, and the pass
    that forms ``V_k`` (``2m·d·k``, k ≤ m).
    """
    m, d = n_rows, n_columns
    r = 2 * m if rank is None else rank
    if r + SKETCH_OVERSAMPLING <= LOW_RANK_FRACTION * d:
        basis = 4 * d * d * (r + SKETCH_OVERSAMPLING) + EIGH_COST * (r + SKETCH_OVERSAMPLING) ** 3
    else:
        basis = EIGH_COST * d**3
    moments = m * (2 * d) ** 2 + basis
    gram = d * (2 * m) ** 2 + EIGH_COST * (2 * m) ** 3 + 2 * m * d * m
    return moments, gram


def resolve_solver(solver, shape, layout, matricization, lazy=False):
    """``"moments"`` or ``"gram"``: ``"auto"`` takes the one with fewer estimated flops
    for the rows and columns the matricized layer has (:func:`solver_costs`).

    ``lazy`` (dask inputs): always the moments, which are sums over blocks.
    """
    if lazy:
        if solver == "gram":
            raise ValueError(
                "solver='gram' needs every sample at once; dask arrays are scored from "
                "moments summed over their blocks: use solver='moments' (or 'auto')"
            )
        return "moments"
    if solver != "auto":
        return solver
    rows_per_sample, d = matrix_shape(shape, layout, matricization)
    m = shape[0] * rows_per_sample
    moments, gram = solver_costs(m, d, rank=2 * (m - rows_per_sample))
    return "gram" if gram < moments else "moments"


@dataclass
class Fit:
    """A fitted basis and its canonical pairs.

    Attributes
    ----------
    basis : Basis
        ``V_k`` (``components``; None for the Gram solver until :func:`gather`'s
        extra pass) and the pooled spectrum.
    ccas : list of CCAFit
        One per transformed view (the pairs ``(view 0, view g)``).
    n_rows : int
        Rows the fit saw.
    means : ndarray of shape (G, R, d)
        Per-feature means of every view (held-out data are centred with them).
    moments : Moments or None
        The statistics (moment solver), for more samples, the latent action and
        other metrics.
    solver : str
    """

    basis: object
    ccas: list
    n_rows: int
    means: np.ndarray
    moments: object
    solver: str


def gather(arrays, layout, mode, names, solver="moments", indices=None):
    """The statistics of views: their :class:`~seis_sklearn._moments.Moments`, or their
    :class:`~seis_sklearn._gram.GramMoments` (``solver="gram"``, arrays held in memory)."""
    if solver == "gram":
        if indices is not None:
            arrays = [a[indices] for a in arrays]
        return accumulate_gram(arrays, layout, mode, names=names)
    return accumulate(arrays, layout, mode, names=names, indices=indices)


def fit(stats, params, names=None):
    """The basis pooled over every view of ``stats`` and one CCA per transformed view
    (SPEC §2.2–2.3, §2.5): the same algebra for moments and Gram matrices, pairs and
    orbits. ``params``: ``n_components``, ``max_components``, ``reg``."""
    gram = isinstance(stats, GramMoments)
    make_basis = gram_basis if gram else pooled_basis
    covariances = gram_pair_covariances if gram else pair_covariances
    basis = make_basis(stats, params["n_components"], params["max_components"], names)
    ccas = [
        fit_cca(list(covariances(stats, basis, g)), params["reg"], stats.n_rows)
        for g in range(1, stats.n_views)
    ]
    for g, cca in enumerate(ccas, start=1):
        cca.constant_views = _constant_views(basis.constant, g)
    means = stats.mean
    return Fit(
        basis, ccas, stats.n_rows, means, None if gram else stats, "gram" if gram else "moments"
    )


def fit_views(arrays, layout, mode, names, params, solver, components=True):
    """:func:`gather` and :func:`fit` of views; ``components``: ``V_k`` too for the Gram
    solver (one more pass over the columns, which held-out scoring needs)."""
    stats = gather(arrays, layout, mode, names, solver)
    fitted = fit(stats, params, names)
    if solver == "gram" and components:
        fitted.basis.components = gram_components(arrays, layout, mode, fitted.basis, names=names)
    return fitted


def _constant_views(constant, g):
    """Which of views 0 and ``g`` has no variance (:attr:`Basis.constant`), or ""."""
    if not constant:
        return ""
    first, other = constant[0], constant[g]
    if first and other:
        return "both views"
    return "the original view" if first else "the transformed view" if other else ""


def result(scores, rho, cca, basis, n_rows, matricization, layout, evaluation, fit_rows=None,
           **extra):  # fmt: skip
    """A :class:`SEISResult`; ``fit_rows`` (default ``n_rows``): rows the basis was fitted on.

    A pair one of whose views has no variance after centring has no score: NaN, with
    the reason (the rule the layerwise reports follow for constant layers)."""
    reason = degenerate_reason(basis.k, basis.n_columns, n_rows if fit_rows is None else fit_rows)
    if cca.constant_views:
        verb = "have" if cca.constant_views == "both views" else "has"
        empty = (
            f"{cca.constant_views} {verb} no variance after centring (every feature constant "
            "over the samples): nothing to compare, no score"
        )
        reason = f"{empty}; {reason}" if reason else empty
        scores = dict.fromkeys(scores, float("nan"))
    return SEISResult(
        **scores,
        canonical_correlations=rho,
        alignments=cca.alignments,
        weights=cca.weights,
        n_components=basis.k,
        n_rows=n_rows,
        explained_variance_ratio=basis.explained_variance_ratio,
        matricization=matricization,
        layout=layout,
        evaluation=evaluation,
        degenerate=bool(reason),
        degenerate_reason=reason,
        **extra,
    )


def orbit_mean(elements, **extra):
    """One result for an orbit: the four scores averaged over its elements g ≠ e (the
    arrays and sizes are the first element's; per-element results in ``elements``)."""
    first = elements[0]
    means = {name: float(np.mean([getattr(e, name) for e in elements])) for name in SCORE_NAMES}
    return dataclasses.replace(first, **means, elements=tuple(elements), **extra)


def _combined(elements, orbit):
    return orbit_mean(elements) if orbit else elements[0]


def in_sample(fitted, invariance, label, layout, orbit):
    """The in-sample result of a fit (SPEC §2.3; an orbit's mean over its elements)."""
    elements = [
        result(
            in_sample_scores(c, invariance),
            c.canonical_correlations,
            c,
            fitted.basis,
            fitted.n_rows,
            label,
            layout,
            "in-sample",
        )  # fmt: skip
        for c in fitted.ccas
    ]
    return _combined(elements, orbit)


def held_out(fitted, projected, names, invariance, label, layout, orbit):
    """The held-out result of new views (SPEC §2.4) under a fit, from their moments
    projected on ``V_k`` (``P′V_k``, k columns; overwritten: recentred in place).

    Raises the error of a fit without variance when the new views have none in the
    fitted subspace (constant data, or values so small that their products underflow).
    """
    if projected.n_samples < 2:  # a correlation over one sample: nothing to measure
        raise ValueError(
            f"held-out scores need at least 2 held-out samples (correlations over the "
            f"samples); got {projected.n_samples}: score more samples"
        )
    V = fitted.basis.components
    k = V.shape[1]
    within = sum(float(np.trace(a)) for a in projected.auto)
    _check_variance(within, projected.n_samples * float(np.sum(projected.mean**2)), k, names)
    # the projected moments are this function's own (each caller's temporary)
    projected = recentred(projected, fitted.means[: projected.n_views] @ V, overwrite=True)
    elements = []
    for g, cca in enumerate(fitted.ccas, start=1):
        scores, rho = held_out_scores(cca, projected, invariance, view=g)
        elements.append(
            _held_out_result(scores, rho, cca, fitted, projected.n_rows, label, layout)
        )
    return _combined(elements, orbit)


def _check_variance(within, level, k, names):
    """The error of a fit without variance when the new views' variance in the fitted
    subspace (``within``) is rounding of their squared means (``level``): constant
    data, or values so small that their products underflow."""
    if within <= (64 * k * np.finfo(np.float64).eps) ** 2 * level:
        raise no_variance_error(f"{views_without_variance(names)} in the fitted subspace")


def _held_out_result(scores, rho, cca, fitted, n_rows, label, layout):
    return result(scores, rho, cca, fitted.basis, n_rows, label, layout, "held-out",
                  fit_rows=fitted.n_rows)  # fmt: skip


def direct_is_cheaper(d, k, n_pairs):
    """Whether :func:`held_out_moments` should score d × d moments through the variates'
    directions in feature space (``6d²k + 4dk²`` flops per pair, ``2d²k`` shared for
    ``V_kV_kᵀ``) rather than project them on ``V_k`` first (``2d²k + 2dk²`` per
    projected block, ``2·pairs + 1`` blocks, then ``6k³`` per pair): at k near d the
    first needs about 30 % less, at k below d/3 more."""
    direct = n_pairs * (6 * d * d * k + 4 * d * k * k) + 2 * d * d * k
    projected = (2 * n_pairs + 1) * (2 * d * d * k + 2 * d * k * k) + n_pairs * 6 * k**3
    return direct < projected


def held_out_moments(fitted, moments, names, invariance, label, layout, orbit):
    """:func:`held_out` from the new views' d × d moments.

    Where it is cheaper (:func:`direct_is_cheaper`), without projecting them: each
    pair's variates are the feature-space directions ``D = V_k·directions``, and their
    recentred covariances ``Dᵀ(C + N Σ_r s_rᵀs_r)D`` and the traces
    ``tr V_kᵀ(…)V_k = ⟨…, V_kV_kᵀ⟩`` are what :func:`held_out` computes from the
    projected moments, by the same algebra in the other order.
    """
    V = fitted.basis.components
    d, k = V.shape
    G = moments.n_views
    if not direct_is_cheaper(d, k, G - 1):
        return held_out(fitted, project_moments(moments, V), names, invariance, label, layout,
                        orbit)  # fmt: skip
    n = moments.n_samples
    P = V @ V.T  # ⟨C, V Vᵀ⟩ = tr(VᵀCV)
    within = sum(float(np.vdot(a, P)) for a in moments.auto)
    _check_variance(within, n * float(np.sum((moments.mean @ V) ** 2)), k, names)
    spread = mean_spread(moments.mean, fitted.means[:G])[1]  # (G, R, d), as recentred()
    spread_v = spread @ V

    def recentred_times(C, left, right, D):  # (C + n Σ_r s_leftᵀ s_right) D
        return C @ D + n * (spread[left].T @ (spread[right] @ D))

    def recentred_trace(C, left, right):
        return float(np.vdot(C, P)) + n * float(np.vdot(spread_v[left], spread_v[right]))

    elements = []
    for g, cca in enumerate(fitted.ccas, start=1):
        D_x, D_y = V @ cca.directions_x, V @ cca.directions_y
        cov = column_dots(D_x, recentred_times(moments.cross[g - 1], 0, g, D_y))
        var_x = column_dots(D_x, recentred_times(moments.auto[0], 0, 0, D_x))
        var_y = column_dots(D_y, recentred_times(moments.auto[g], g, g, D_y))
        del D_x, D_y
        traces = (
            recentred_trace(moments.cross[g - 1], 0, g),
            recentred_trace(moments.auto[0], 0, 0),
            recentred_trace(moments.auto[g], g, g),
        )
        scores, rho = scores_of_variates(cca, cov, var_x, var_y, traces, invariance)
        elements.append(_held_out_result(scores, rho, cca, fitted, moments.n_rows, label, layout))
    return _combined(elements, orbit)


def held_out_rows(fitted, arrays, names, invariance, label, layout, orbit, *, matricization):
    """:func:`held_out` of new views held in memory (numpy arrays or memory maps), from
    their rows: each pair's variates ``x′ = (P′ − μ_P)V_k·directions`` summed directly,
    not through the k × k moments of ``P′V_k``.

    The moments' way needs ``m′k(d + 2k) + 3k³`` multiply-adds per pair (the
    projection, the moments of the projected pair, three k × k products with the
    directions), this one ``m′k(d + k)`` per view: at k near d (a 56×56 map of a
    held-out fifth, m′ ≈ d) about half. One pass over the rows, ``matricization``
    being the fit's: each view is shifted by its first sample (so that a constant view
    sums to exactly nothing), its per-feature centred sums follow from the shifted ones
    and their per-row totals, and the recentring of :func:`held_out` (the fitted means,
    then the column means) adds the spread of the means as
    :func:`~seis_sklearn._moments.recentred` does.
    """
    V = fitted.basis.components
    d, k = V.shape
    G = len(arrays)
    n = arrays[0].shape[0]
    R = matrix_shape(arrays[0].shape, layout, matricization)[0]
    step = chunk_samples(arrays[0].shape, 8)
    release = _page_releaser(arrays)  # memory maps: their pages go after each chunk
    files = InputFiles(arrays)  # and their files are watched
    shift = np.stack([matricize(a[:1], layout, matricization) for a in arrays]).astype(float)
    pairs = [(g, cca.directions_x, cca.directions_y) for g, cca in enumerate(fitted.ccas, 1)]
    totals = np.zeros((G, R, k))  # per view and row of a sample: Σ over samples of its row
    products = np.zeros((G, 2))  # per view: tr of its scatter and of its cross with view 0
    sums = np.zeros((len(pairs), 3, k))  # per pair: Σ x′y′, Σ x′², Σ y′² of each variate

    def shifted(g, chunk):  # a chunk's rows less the view's first sample, on V_k
        block = matricize(chunk, layout, matricization).reshape(-1, R, d)
        return (block - shift[g]).reshape(-1, d) @ V

    def variate_products(x, y):
        return np.stack([column_dots(x, y), column_dots(x, x), column_dots(y, y)])

    with np.errstate(over="ignore", invalid="ignore"):  # non-finite sums: raised below
        for start in range(0, n, step):
            files.before_chunk()
            projected = [shifted(g, a[start : start + step]) for g, a in enumerate(arrays)]
            release()
            for g, p in enumerate(projected):
                totals[g] += p.reshape(-1, R, k).sum(axis=0)
                products[g] += np.vdot(p, p), np.vdot(projected[0], p)
            for i, (g, dir_x, dir_y) in enumerate(pairs):
                sums[i] += variate_products(projected[0] @ dir_x, projected[g] @ dir_y)
            del projected
    files.after_pass()
    for g in range(G):
        if not np.isfinite(products[g]).all():
            raise_nonfinite(arrays[g], names[g])
    # about the per-feature means: Σ (z − z̄)(z′ − z̄′) = Σ z z′ − Σ_r t_r t′_r / n
    products[:, 0] -= np.einsum("grk,grk->g", totals, totals) / n
    products[:, 1] -= np.einsum("rk,grk->g", totals[0], totals) / n
    mean_v = shift @ V + totals / n  # the per-feature means, in the basis
    _check_variance(float(products[:, 0].sum()), n * float(np.sum(mean_v**2)), k, names)
    spread = mean_spread(mean_v, fitted.means[:G] @ V)[1]  # (G, R, k)
    elements = []
    for i, (g, dir_x, dir_y) in enumerate(pairs):
        cov, var_x, var_y = (
            sums[i]
            - variate_products(totals[0] @ dir_x, totals[g] @ dir_y) / n
            + n * variate_products(spread[0] @ dir_x, spread[g] @ dir_y)
        )
        traces = (
            products[g, 1] + n * np.vdot(spread[0], spread[g]),
            products[0, 0] + n * np.vdot(spread[0], spread[0]),
            products[g, 0] + n * np.vdot(spread[g], spread[g]),
        )
        cca = fitted.ccas[g - 1]
        scores, rho = scores_of_variates(cca, cov, var_x, var_y, traces, invariance)
        elements.append(_held_out_result(scores, rho, cca, fitted, n * R, label, layout))
    return _combined(elements, orbit)


def cross_fit(views, names, layout, mode, splits, params, invariance, solver, orbit):
    """Cross-fitted scores (SPEC §2.4): each fold's training statistics, :func:`fit`,
    :func:`held_out` on its test samples; the mean and standard deviation over folds.

    With the moment solver and folds that partition the samples, the data are read
    once: every training set's moments are merged from the folds'. The Gram solver
    fits each fold from its own Gram matrix (and one pass for its ``V_k``).
    """
    n = views[0].shape[0]
    tests = [np.sort(test) for _, test in splits]
    trains = [np.sort(train) for train, _ in splits]
    full = None
    if solver == "gram":
        fits = [
            fit_views([v[t] for v in views], layout, mode, names, params, "gram") for t in trains
        ]
        test_parts = [None] * len(tests)
    else:
        test_parts = accumulate_folds(views, layout, mode, names=names, index_sets=tests)
        if _is_partition(splits, n):  # read the data once: trains merge from the folds
            train_stats = [
                _merge_all(test_parts[:f] + test_parts[f + 1 :]) for f in range(len(tests))
            ]
            full = _merge_all(test_parts)
        else:
            train_stats = [gather(views, layout, mode, names, indices=t) for t in trains]
        fits = [fit(s, params, names) for s in train_stats]
    per_fold = []
    for fitted, test, part in zip(fits, tests, test_parts, strict=True):
        V = fitted.basis.components
        if part is None:  # the Gram solver: the test views projected on V_k directly
            projected = accumulate(
                [v[test] for v in views], layout, mode, names=names, projection=V
            )
            per_fold.append(held_out(fitted, projected, names, invariance, mode, layout, True))
        else:
            per_fold.append(held_out_moments(fitted, part, names, invariance, mode, layout, True))
    whole = (
        fit(full, params, names)
        if full is not None
        else fit_views(views, layout, mode, names, params, solver, components=False)
    )
    n_rows = whole.n_rows

    def summary(results, cca):
        table = np.array([[getattr(r, name) for name in SCORE_NAMES] for r in results])
        return result(
            dict(zip(SCORE_NAMES, map(float, table.mean(axis=0)), strict=True)),
            cca.canonical_correlations, cca, whole.basis, n_rows, mode, layout, "cross-fitted",
            n_folds=len(results), folds=tuple(results),
            **{f"{k}_std": float(v) for k, v in zip(SCORE_NAMES, table.std(axis=0), strict=True)},
        )  # fmt: skip

    elements = [
        summary([fold.elements[g] for fold in per_fold], cca) for g, cca in enumerate(whole.ccas)
    ]
    if not orbit:
        return elements[0]
    mean = summary([orbit_mean(fold.elements) for fold in per_fold], whole.ccas[0])
    return dataclasses.replace(mean, elements=tuple(elements))


def checked_cv(cv, n):
    """``cv`` as given, or one error naming it: an int of folds in [2, n samples]."""
    if isinstance(cv, (bool, np.bool_)):
        raise TypeError(
            f"cv must be an int >= 2 (the number of folds), a splitter or an iterable of "
            f"(train, test) index arrays; got {cv!r}"
        )
    if isinstance(cv, (int, np.integer)):
        if cv < 2:
            raise ValueError(f"cv must be at least 2 folds; got cv={int(cv)}")
        if cv > n:
            raise ValueError(f"cv={int(cv)} asks for more folds than the {n} samples")
    return cv


def fold_splits(cv, n):
    """The (train, test) index arrays of ``cv`` over ``n`` samples, checked."""
    from sklearn.model_selection import check_cv

    splitter = check_cv(checked_cv(cv, n))
    splits = [
        (_fold_indices(train, n, "training"), _fold_indices(test, n, "test"))
        for train, test in splitter.split(np.empty((n, 1)))
    ]
    if len(splits) < 2:
        raise ValueError(f"cv must give at least 2 folds; got {len(splits)}")
    for train, test in splits:
        if len(train) < 2 or len(test) < 2:
            raise ValueError(
                "cv gives a fold with fewer than 2 training or test samples "
                f"({len(train)} and {len(test)} of {n}); use fewer folds"
            )
    return splits


def _fold_indices(indices, n, which):
    """A fold's sample indices as integers in range(n), or one error naming ``cv``."""
    indices = np.asarray(indices)
    if indices.dtype == bool:
        if indices.shape != (n,):
            raise ValueError(
                f"cv gives a boolean {which} mask of shape {indices.shape}; need ({n},)"
            )
        return np.flatnonzero(indices)
    if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
        raise ValueError(
            f"cv must give 1-D integer index arrays; a {which} set is {indices!r:.60}"
        )
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(
            f"cv gives {which} indices out of range: {int(indices.min())}..{int(indices.max())} "
            f"for {n} samples"
        )
    return indices.astype(np.intp)


def _is_partition(splits, n):
    """True when the test sets partition range(n) and each train is its complement."""
    seen = np.zeros(n, dtype=np.int64)
    for train, test in splits:
        if len(train) + len(test) != n:
            return False
        seen[test] += 1
        mask = np.zeros(n, dtype=bool)
        mask[train] = True
        if mask[test].any():
            return False
    return bool((seen == 1).all())


def _merge_all(parts):
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return total
