"""The SEIS estimator and the one-call function (SPEC §2.3–2.4, §3)."""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.model_selection import check_cv
from sklearn.utils.validation import check_is_fitted

from ._accumulate import (
    accumulate,
    accumulate_folds,
    accumulate_gram,
    backend_of,
    gram_components,
)
from ._cca import (
    degenerate_reason,
    fit_cca,
    held_out_scores,
    in_sample_scores,
    no_variance_error,
    pair_covariances,
    pooled_basis,
)
from ._gram import gram_basis, gram_pair_covariances
from ._latent import estimate as estimate_latent
from ._matricize import matrix_shape
from ._moments import project_moments, recentred
from ._result import SCORE_NAMES, SEISResult
from ._stack import denoised_reading, is_stack
from ._statistics import check_statistics, statistics
from ._validation import (
    INVARIANCE_MODES,
    SOLVERS,
    check_choice,
    check_max_components,
    check_n_components,
    check_reg,
    check_views,
    is_dask_array,
)


class SEISScorer(BaseEstimator):
    """Subspace-based Equivariance and Invariance Scores of a layer.

    ``fit(X, y)`` takes the activations of a layer on a batch of inputs (``X``)
    and on the transformed inputs (``y``), matricizes both, finds the denoising
    basis shared by both views and runs CCA in it. ``score``/``scores`` then
    evaluate the fitted canonical directions on held-out pairs.

    Parameters
    ----------
    n_components : int, float or None, default=0.99
        Dimension ``k`` of the shared subspace: an int is used as is; a float in
        (0, 1] is the smallest k whose cumulative explained variance of the
        pooled second moment reaches it, never cutting through a cluster of
        equal eigenvalues (SPEC §2.2). ``None``: no denoising (every direction,
        up to the rank) — for input a :class:`SubspaceDenoiser` with
        ``paired=True`` has denoised already.
    matricization : {"spatial", "flatten", "channel"}, default="spatial"
        How an activation array becomes a matrix (SPEC §2.1). ``"spatial"``
        sees transformations of the grid channel by channel; ``"flatten"``
        sees any linear action, including channel permutations; ``"channel"``
        compares position-matched channel vectors.
    layout : {"auto", "NCHW", "NHWC", "NCDHW", "NLD", "ND"}, default="auto"
        Axis order of the activations; ``"auto"`` maps 4-D → NCHW, 5-D → NCDHW,
        3-D → NLD, 2-D → ND.
    reg : float, default=1e-6
        Ridge ``ε``: each view's covariance in the shared basis is regularised
        by ``ε·(tr Σ/k)·I``, its own mean variance (SPEC §2.3 step 5), so
        rescaling one view changes nothing and rounding cannot move a score
        (the condition number stays below ``1 + k/ε``).
    max_components : int, default=None
        Upper bound on ``k``.
    invariance : {"trace", "abs"}, default="trace"
        ``"trace"``: ``S_I = max(0, tr K)/k``, basis-independent. ``"abs"``:
        ``(1/k) Σ ρ_i |α_i|``, a literal reading of the paper, for comparison
        only (blind to sign, basis-dependent under ties).
    score_kind : {"equivariance", "invariance", "equivariance_weighted", \
"invariance_weighted"}, default="equivariance"
        Which score :meth:`score` returns.
    solver : {"auto", "moments", "gram"}, default="auto"
        How the statistics are gathered. ``"moments"``: one pass over chunks of
        samples accumulating the d × d centred moments (memory O(d²), time
        O(m·d²); supports ``partial_fit``). ``"gram"``: one pass over chunks of
        columns accumulating the 2m × 2m Gram matrix of the stacked rows
        (memory O(m²), time O(m²·d)), for wide data such as flatten
        matricization of big feature maps; never forms a d × d matrix.
        ``"auto"`` picks the one with fewer estimated flops for the layer's
        rows m and columns d (about: Gram when d > 2m). Both give the same
        scores (to rounding).

    Attributes
    ----------
    n_components_ : int
        Dimension ``k`` of the shared subspace.
    components_ : ndarray of shape (n_components, d)
        Orthonormal basis ``V_kᵀ`` of the shared subspace (rows).
    eigenvalues_ : ndarray of shape (d,)
        Eigenvalues of the pooled second moment ``S``, descending.
    explained_variance_ratio_ : float
        Fraction of the pooled variance kept.
    mean_x_, mean_y_ : ndarray of shape (rows_per_sample, d)
        Per-feature means ``μ_P``, ``μ_Q`` over the samples (SPEC §2.1), in
        matricized form: row r holds the mean of row r of every sample's
        matrix (spatial: of channel r). Held-out data are centred with them.
    matricization_ : str
        The matricization the statistics were computed in (the scorer's own,
        or ``"channel"``/``"flatten"`` for a :class:`~seis_sklearn.DenoisedStack`).
    canonical_correlations_ : ndarray of shape (n_components,)
        In-sample ``ρ``, descending, in [0, 1].
    alignments_ : ndarray of shape (n_components,)
        ``α_i = u_i · w_i``.
    weights_ : ndarray of shape (n_components,)
        Energy weights ``ω_i``.
    n_rows_ : int
        Rows ``m`` accumulated.
    layout_ : str
        Concrete layout of the fitted activations.
    solver_ : str
        The solver used: ``"moments"`` or ``"gram"``.
    activation_shape_ : tuple of int
        Shape of one sample's activations.
    result_ : SEISResult
        In-sample scores of the fitted data.

    See Also
    --------
    seis_score : Fit and score in one call, optionally cross-fitted.
    SubspaceDenoiser : The denoising step on a single view.

    Notes
    -----
    Held-out scoring (SPEC §2.4) projects new data on the fitted canonical
    directions ``V_k R(Σ_xx) u_i`` and ``V_k R(Σ_yy) w_i`` and takes the Pearson
    correlation ``ρ′_i`` of each pair: ``S_E′ = (1/k) Σ max(ρ′_i, 0)``,
    ``S_I′ = max(0, Σ ρ′_i α_i)/k`` (capped at ``S_E′`` so that
    ``S_I′ ≤ S_E′`` holds for held-out data too). In-sample correlations are
    biased upward when ``k`` is not small against ``m``; held-out scores are
    the honest ones.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import KFold, cross_val_score
    >>> from seis_sklearn import SEISScorer
    >>> rng = np.random.default_rng(0)
    >>> A = rng.normal(size=(40, 4, 6, 6))
    >>> B = np.rot90(A, k=1, axes=(2, 3))
    >>> scorer = SEISScorer(n_components=0.9).fit(A, B)
    >>> round(scorer.result_.equivariance, 3) > 0.9
    True
    >>> folds = cross_val_score(SEISScorer(n_components=8), A, B, cv=KFold(4))
    >>> folds.shape
    (4,)
    """

    _parameter_constraints = {
        "n_components": "int >= 1 or float in (0, 1]",
        "matricization": "'spatial', 'flatten' or 'channel'",
        "layout": "'auto', 'NCHW', 'NHWC', 'NCDHW', 'NLD' or 'ND'",
        "reg": "float >= 0",
        "max_components": "None or int >= 1",
        "invariance": "'trace' or 'abs'",
        "score_kind": "one of " + ", ".join(SCORE_NAMES),
        "solver": "'auto', 'moments' or 'gram'",
    }

    def __init__(
        self,
        n_components=0.99,
        matricization="spatial",
        layout="auto",
        reg=1e-6,
        max_components=None,
        invariance="trace",
        score_kind="equivariance",
        solver="auto",
    ):
        self.n_components = n_components
        self.matricization = matricization
        self.layout = layout
        self.reg = reg
        self.max_components = max_components
        self.invariance = invariance
        self.score_kind = score_kind
        self.solver = solver

    # -- fitting -----------------------------------------------------------------
    def _checked_params(self):
        """Validated copies of the parameters that fitting needs."""
        check_choice(self.invariance, "invariance", INVARIANCE_MODES)
        check_choice(self.score_kind, "score_kind", SCORE_NAMES)
        return {
            "n_components": check_n_components(self.n_components, allow_none=True),
            "max_components": check_max_components(self.max_components),
            "reg": check_reg(self.reg),
            "solver": check_choice(self.solver, "solver", SOLVERS),
        }

    def fit(self, X, y=None):
        """Fit the shared basis and the CCA on a pair of activation arrays.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Activations on the original inputs, samples first, in ``layout``;
            numpy arrays, memory maps or dask arrays chunked along the samples.
        y : array-like of the same shape as ``X``, a list of them, or None
            Activations on the transformed inputs; sample i of ``y`` is the
            transform of sample i of ``X``. A list of arrays is an orbit (SPEC
            §2.5); a nested list of numbers is one array.
            ``None``: ``X`` is a paired stack of shape ``(n_samples, 2, ...)``
            (axis 1 = original, transformed) or ``(n_samples, G, ...)`` for an
            orbit, made by :func:`pair` / :func:`orbit` (a
            :class:`PairedStack`; or a :class:`DenoisedStack`, a dask array) —
            what a scikit-learn ``Pipeline`` passes on. A plain ndarray is
            refused then: an NCHW array could as well be one view.

        Returns
        -------
        self : SEISScorer
        """
        X, y = _unstack(X, y)
        return self._fit(X, y, names=("X", "y"), streaming=False, reset=True)

    def partial_fit(self, X, y=None):
        """Add a batch of pairs to the fit (exact: any split equals one ``fit``).

        Uses the moment solver (the Gram solver needs every sample at once).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            A batch of activations on the original inputs.
        y : array-like of the same shape as ``X``
            The same batch's activations on the transformed inputs.

        Returns
        -------
        self : SEISScorer
        """
        X, y = _unstack(X, y)
        return self._fit(X, y, names=("X", "y"), streaming=True)

    def _fit(self, X, y, names, streaming, reset=False, store_components=True):
        params = self._checked_params()
        if reset:
            self.__dict__.pop("_pending", None)
        pending = getattr(self, "_pending", None)  # partial_fit's first samples, fewer than 2
        first = reset or not (hasattr(self, "layout_") or pending)
        if streaming and params["solver"] == "gram":
            raise ValueError(
                "solver='gram' needs every sample at once; partial_fit accumulates moments: "
                "use solver='moments' (or 'auto') for partial_fit, or fit for the Gram solver"
            )
        if not first and pending is None and self._moments is None:
            raise ValueError(
                "this SEISScorer was fitted with the Gram solver, which cannot add samples: "
                "call fit on all the samples, or refit with solver='moments'"
            )
        orbit, ys, view_names = _views_of(y, names)
        params = {**params, "names": view_names}
        before = pending["moments"] if pending else (None if first else self._moments)
        if before is not None and len(ys) + 1 != before.n_views:
            raise ValueError(
                f"{names[1]} has {len(ys)} transformed view(s), but this SEISScorer was fitted "
                f"on {before.n_views - 1}"
            )
        if pending:
            layout, mode, label = pending["reading"]
        else:
            layout, mode, label = self._reading([X, *ys], first)
        # partial_fit takes batches of any size; fit needs two samples at least
        arrays, layout = check_views(
            [X, *ys], view_names, layout, mode, min_samples=2 if first and not streaming else 1
        )
        X, ys = arrays[0], arrays[1:]
        y = ys[0]
        shape = tuple(X.shape[1:])
        expected = pending["shape"] if pending else (None if first else self.activation_shape_)
        if expected is not None and shape != expected:
            raise ValueError(
                f"{names[0]} has per-sample shape {shape}, but this SEISScorer was "
                f"fitted on per-sample shape {expected}"
            )
        if orbit and params["solver"] == "gram":
            raise ValueError(
                "an orbit is scored from the moments pooled over all its elements: use "
                "solver='moments' (or 'auto')"
            )
        solver = (
            "moments"
            if streaming or orbit
            else resolve_solver(params["solver"], X.shape, layout, mode, lazy=is_dask_array(X))
        )
        if solver == "gram":
            basis, cca, gm = _fit_gram_views([X, y], layout, mode, names, params, store_components)
            moments, ccas, n_rows, means = None, [cca], gm.n_rows, gm.mean[:2]
        else:
            part = accumulate([X, *ys], layout, mode, names=view_names)
            moments = part if before is None else before.merge(part)
            if moments.n_samples < 2:  # nothing to fit yet: wait for the next batch
                self._pending = dict(moments=moments, reading=(layout, mode, label), shape=shape)
                return self
            self.__dict__.pop("_pending", None)
            basis, ccas = _fit_orbit(moments, params)
            n_rows, means = moments.n_rows, moments.mean
        fitted = dict(layout=layout, mode=mode, label=label, shape=tuple(X.shape[1:]))
        return self._store(moments, basis, ccas, solver, n_rows, means, orbit, **fitted)

    def _fit_from_moments(self, moments, layout, shape, matricization=None):
        """Fit from accumulated :class:`~seis_sklearn._moments.Moments` (streaming).

        ``moments`` hold the views of ``shape`` (per sample) in ``layout`` and in
        ``matricization`` (default: the scorer's own); one basis and one CCA per
        transformed view, as :meth:`fit` computes them from the same moments.
        """
        params = self._checked_params()
        mode = self.matricization if matricization is None else matricization
        basis, ccas = _fit_orbit(moments, params)
        return self._store(
            moments, basis, ccas, "moments", moments.n_rows, moments.mean,
            moments.n_views > 2, layout=layout, mode=mode, label=mode, shape=tuple(shape),
        )  # fmt: skip

    def _fit_rows(self, rows, names):
        """Fit on the rows a streamed layer kept (:class:`~seis_sklearn._accumulate.RowsFirst`).

        numpy arrays are fitted as :meth:`fit` fits them. torch tensors stay on their
        device: the solver is chosen as for stored activations (by estimated flops),
        and the Gram matrix or the moments are computed there; only they, the means and
        ``V_k`` reach the host. ``layout`` and ``matricization`` must be concrete.
        """
        if backend_of(rows) != "torch":
            return self._fit(rows[0], rows[1], names=names, streaming=False)
        params = self._checked_params()
        layout, mode = self.layout, self.matricization
        shape = tuple(rows[0].shape)
        solver = resolve_solver(params["solver"], shape, layout, mode)
        if solver == "moments":
            moments = accumulate(rows, layout, mode, names=names)
            return self._fit_from_moments(moments, layout, shape[1:], mode)
        basis, cca, gm = _fit_gram_views(rows, layout, mode, names, params)
        return self._store(
            None, basis, [cca], "gram", gm.n_rows, gm.mean[:2], False,
            layout=layout, mode=mode, label=mode, shape=shape[1:],
        )  # fmt: skip

    def _store(
        self, moments, basis, ccas, solver, n_rows, means, orbit, *, layout, mode, label, shape
    ):
        """Replace the fitted state (only now, with every step done) and the in-sample result."""
        cca = ccas[0]
        # V_k (d × k) is kept once, as components_ (k × d, a transposed view).
        components, basis.components = basis.components, None
        self._moments = moments
        self._basis = basis
        self._cca = cca
        self._ccas = ccas
        self.n_views_ = len(ccas) + 1
        self.solver_ = solver
        self.layout_ = layout
        self.matricization_ = mode
        self._label = label
        self.activation_shape_ = shape
        self.n_rows_ = n_rows
        self.n_components_ = basis.k
        self.components_ = None if components is None else components.T
        self.eigenvalues_ = basis.eigenvalues
        self.explained_variance_ratio_ = basis.explained_variance_ratio
        self._means = means  # (G, R, d): held-out data are centred with these
        self.mean_x_ = means[0].copy()
        self.mean_y_ = means[1].copy()
        self.canonical_correlations_ = cca.canonical_correlations
        self.alignments_ = cca.alignments
        self.weights_ = cca.weights
        elements = [
            _result(
                in_sample_scores(c, self.invariance),
                c.canonical_correlations,
                c,
                basis,
                n_rows,
                label,
                layout,
                "in-sample",
            )
            for c in ccas
        ]
        self.result_ = _orbit_mean(elements) if orbit else elements[0]
        return self

    @property
    def latent_action_(self):
        """The estimated action of the group on the denoised features (SPEC §2.5).

        Treats the transformed views given to ``fit`` as the powers ``g, g², …``
        of one generator of a cyclic group (their number + 1 is its order):
        :func:`latent_action` with ``cyclic=True``.

        Returns
        -------
        LatentAction
        """
        return self._latent_action(cyclic=True)

    def _latent_action(self, cyclic):
        check_is_fitted(self)
        if self._moments is None:
            raise ValueError(
                "the latent action needs the moment solver (this scorer was fitted with "
                "solver='gram'); refit with solver='moments'"
            )
        return estimate_latent(self._moments, self.components_.T, cyclic)

    def _reading(self, views, first):
        """``(layout, matricization, label)`` to read ``views`` with.

        The scorer's own parameters, except for the coordinates a
        :class:`SubspaceDenoiser` with ``paired=True`` returns, which are read as
        they are meant whatever ``matricization`` says (the label, which results
        report, is then the denoiser's matricization). A refit keeps the reading.
        """
        reading = denoised_reading(views)
        if reading is not None:
            return reading
        if not first:
            return self.layout_, self.matricization_, self._label
        return self.layout, self.matricization, self.matricization

    def _check_sample_shape(self, X, name="X"):
        if tuple(X.shape[1:]) != self.activation_shape_:
            raise ValueError(
                f"{name} has per-sample shape {tuple(X.shape[1:])}, but this SEISScorer was "
                f"fitted on per-sample shape {self.activation_shape_}"
            )

    # -- scoring -----------------------------------------------------------------
    def scores(self, X, y=None):
        """All held-out scores of a new pair under the fitted directions (SPEC §2.4).

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Activations on original inputs, same per-sample shape as in fit.
        y : array-like of the same shape as ``X``
            Activations on the transformed inputs.

        Returns
        -------
        SEISResult
            ``evaluation="held-out"``; ``canonical_correlations`` are the
            held-out ``ρ′``.
        """
        check_is_fitted(self)
        check_choice(self.invariance, "invariance", INVARIANCE_MODES)
        X, y = _unstack(X, y)
        orbit, ys, view_names = _views_of(y, ("X", "y"))
        if len(ys) != len(self._ccas):
            raise ValueError(
                f"y has {len(ys)} transformed view(s); this SEISScorer was fitted on "
                f"{len(self._ccas)}"
            )
        arrays, layout = check_views([X, *ys], view_names, self.layout_, self.matricization_)
        self._check_sample_shape(arrays[0])
        projected = accumulate(
            arrays,
            layout,
            self.matricization_,
            names=view_names,
            projection=self.components_.T,
        )
        projected = _held_out_moments(projected, self._means, self.components_.T, view_names)
        elements = [
            _held_out_result(
                c,
                self._basis,
                projected,
                self.invariance,
                self._label,
                layout,
                self.n_rows_,
                view=g,
            )
            for g, c in enumerate(self._ccas, start=1)
        ]
        return _orbit_mean(elements) if orbit else elements[0]

    def _score_moments(self, moments):
        """Held-out result from the d × d moments of new pairs (streaming scoring)."""
        check_is_fitted(self)
        return self._score_projected(project_moments(moments, self.components_.T))

    def _score_rows(self, arrays, names):
        """Held-out result of new pairs given as validated arrays in the fitted layout
        (streaming scoring of kept rows); ``names`` name them in errors."""
        check_is_fitted(self)
        projected = accumulate(
            arrays, self.layout_, self.matricization_, names=names,
            projection=self.components_.T,
        )  # fmt: skip
        return self._score_projected(projected, names)

    def _score_projected(self, projected, names=("X", "y")):
        """Held-out result from the moments of new pairs projected on ``V_k``."""
        V = self.components_.T
        projected = _held_out_moments(projected, self._means, V, names)
        return _held_out_result(
            self._cca,
            self._basis,
            projected,
            self.invariance,
            self._label,
            self.layout_,
            self.n_rows_,
        )

    def score(self, X, y=None):
        """One held-out score, the one named by ``score_kind``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Activations on original inputs.
        y : array-like of the same shape as ``X``
            Activations on the transformed inputs.

        Returns
        -------
        float
        """
        check_choice(self.score_kind, "score_kind", SCORE_NAMES)
        return self.scores(X, y).score(self.score_kind)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        return tags


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
    from ._cca import LOW_RANK_FRACTION, SKETCH_OVERSAMPLING

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


def _fit_moments(moments, params, view=1):
    """Shared basis and CCA of the pair (original, ``view``) from their d × d moments."""
    basis = pooled_basis(
        moments, params["n_components"], params["max_components"], params.get("names")
    )
    covariances = pair_covariances(moments, basis, view)
    return basis, fit_cca(*covariances, params["reg"], moments.n_rows)


def _fit_gram(gm, params, view=1):
    """Shared basis and CCA of the pair (original, ``view``) from the Gram matrix."""
    basis = gram_basis(gm, params["n_components"], params["max_components"], params.get("names"))
    covariances = gram_pair_covariances(gm, basis, view)
    return basis, fit_cca(*covariances, params["reg"], gm.n_rows)


def _fit_gram_views(views, layout, mode, names, params, components=True):
    """Basis, CCA and :class:`~seis_sklearn._gram.GramMoments` of a pair of views in
    memory, by the Gram solver where the views are; ``components``: ``V_k`` too (one
    more pass, which held-out scoring needs)."""
    gm = accumulate_gram(views, layout, mode, names=names)
    basis, cca = _fit_gram(gm, params)
    if components:
        basis.components = gram_components(views, layout, mode, basis, names=names)
    return basis, cca, gm


def _result(
    scores, rho, cca, basis, n_rows, matricization, layout, evaluation, fit_rows=None, **extra
):
    """A :class:`SEISResult`; ``fit_rows`` (default ``n_rows``): rows the basis was fitted on."""
    reason = degenerate_reason(basis.k, basis.n_columns, n_rows if fit_rows is None else fit_rows)
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


def latent_action(A, Bs, *, cyclic=True, **params):
    """The latent action ``T̂_g`` of a group on a layer's features, and its defects.

    Fits the orbit (SPEC §2.5: the basis pooled over ``A`` and every ``Bs[j]``)
    and estimates, in that denoised subspace, ``T̂_g = argmin ‖X T − Y_g‖`` for
    every transformed view — the linear action of ``g`` on the layer's
    features, if it has one. Its defects say how far the layer is from carrying
    a representation of the group.

    Parameters
    ----------
    A : array-like of shape (n_samples, ...)
        Activations on the original inputs (the identity).
    Bs : list of array-like
        Activations on the transformed inputs, one per non-identity element.
    cyclic : bool, default=True
        ``Bs`` are the powers ``g, g², …, g^{n-1}`` of one generator of a
        cyclic group of order ``n = len(Bs) + 1`` (e.g. ``rot90`` by 1, 2, 3
        quarter turns): then the order and homomorphism defects are computed.
    **params
        Parameters of :class:`SEISScorer` (``matricization``, ``n_components``,
        ``reg``, …).

    Returns
    -------
    LatentAction

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn import latent_action
    >>> A = np.random.default_rng(0).normal(size=(300, 2, 5, 5))
    >>> orbit = [np.rot90(A, k, axes=(2, 3)) for k in (1, 2, 3)]
    >>> action = latent_action(A, orbit, matricization="flatten", n_components=40)
    >>> action.homomorphism_defect < 1e-4, action.orthogonality_defect < 1e-4
    (True, True)
    """
    if not isinstance(Bs, (list, tuple)) or not Bs:
        raise TypeError("Bs must be a non-empty list of arrays (one per group element but e)")
    scorer = SEISScorer(**{**params, "solver": "moments"}).fit(A, list(Bs))
    return scorer._latent_action(cyclic)


def _unstack(X, y):
    """``(X, y)`` from a paired or orbit stack ``X`` of shape (n, G, ...) when y is None."""
    if y is not None:
        return X, y
    if not is_stack(X):
        shape = getattr(X, "shape", None)
        raise ValueError(
            "y is None, so X must be a paired stack made by seis_sklearn.pair(A, B) — shape "
            "(n_samples, 2, ...), axis 1 holding (original, transformed) — or by "
            "seis_sklearn.orbit(A, *Bs); a plain array"
            + (f" of shape {shape}" if shape is not None else "")
            + " could be one view: pass the transformed activations as y, or wrap X"
        )
    if X.ndim < 3 or X.shape[1] < 2:
        raise ValueError(
            f"y is None, so X must be a paired stack of shape (n_samples, G >= 2, ...); "
            f"got shape {X.shape}"
        )
    views = [X[:, g] for g in range(X.shape[1])]
    return views[0], (views[1] if len(views) == 2 else views[1:])


def _views_of(y, names):
    """(is an orbit, the transformed views, the names of all views) of ``y``.

    A list (or tuple) of arrays is an orbit (SPEC §2.5); a nested list of numbers
    is one array, as numpy reads it."""
    if is_orbit(y):
        if not y:
            raise ValueError(f"{names[1]} is an empty list: give at least one transformed view")
        return True, list(y), (names[0], *(f"{names[1]}[{i}]" for i in range(len(y))))
    return False, [y], tuple(names)


def is_orbit(y):
    """Whether ``y`` is an orbit: a list or tuple whose elements are arrays (numpy, dask,
    torch…), not numbers or lists of numbers (a nested list is one array)."""
    if not isinstance(y, (list, tuple)):
        return False
    return not y or any(hasattr(item, "shape") and hasattr(item, "dtype") for item in y)


def _fit_orbit(moments, params):
    """The basis pooled over every view (SPEC §2.5) and the CCA of each (A, B_g)."""
    basis = pooled_basis(
        moments, params["n_components"], params["max_components"], params.get("names")
    )
    ccas = [
        fit_cca(*pair_covariances(moments, basis, g), params["reg"], moments.n_rows)
        for g in range(1, moments.n_views)
    ]
    return basis, ccas


def _orbit_mean(elements, **extra):
    """One result for an orbit: the four scores averaged over its elements g ≠ e.

    The per-element results are in ``elements``; the arrays and sizes are the
    first element's.
    """
    first = elements[0]
    means = {name: float(np.mean([getattr(e, name) for e in elements])) for name in SCORE_NAMES}
    return dataclasses.replace(first, **means, elements=tuple(elements), **extra)


def _held_out_moments(projected, fitted_mean, V, names):
    """Held-out moments in the fitted basis, centred by the fitted means (SPEC §2.4).

    Raises the error of a fit without variance when the held-out views have no
    variance over their samples in the fitted subspace (constant data, or data
    so small that their products underflow).
    """
    k = V.shape[1]
    within = sum(float(np.trace(a)) for a in projected.auto)
    level = projected.n_samples * float(np.sum(projected.mean**2))
    if within <= (64 * k * np.finfo(np.float64).eps) ** 2 * level:
        raise no_variance_error(f"{' and '.join(names)} have no variance in the fitted subspace")
    return recentred(projected, fitted_mean[: projected.n_views] @ V)


def _held_out_result(cca, basis, projected, invariance, matricization, layout, fit_rows, view=1):
    scores, rho = held_out_scores(cca, projected, invariance, view=view)
    return _result(
        scores,
        rho,
        cca,
        basis,
        projected.n_rows,
        matricization,
        layout,
        "held-out",
        fit_rows=fit_rows,
    )


def seis_score(
    A,
    B,
    *,
    cv=None,
    n_permutations=0,
    n_bootstrap=0,
    confidence=0.95,
    random_state=None,
    n_jobs=None,
    progress=False,
    **params,
):
    """SEIS scores of a pair of activation arrays, in-sample or cross-fitted.

    Parameters
    ----------
    A : array-like of shape (n_samples, ...)
        Activations of a layer on the original inputs, samples first. A
        ``dask.array`` chunked along the samples axis is accumulated block by
        block where it lives (see the docs page "Scaling out with Dask").
    B : array-like of the same shape as ``A``, or a list of them
        Activations on the transformed inputs (sample i of ``B`` is the
        transform of sample i of ``A``). A list of arrays is an *orbit* (SPEC
        §2.5; a nested list of numbers is one array, as numpy reads it): ``B[j]``
        holds the activations for the j-th non-identity element of a finite
        group (``A`` is the identity); the denoising basis is pooled over all of
        them, every pair ``(A, B[j])`` is scored in it, and the result holds
        their mean (per-element results in ``elements``).
    cv : int, cross-validation splitter or iterable, default=None
        ``None``: fit and score on all samples (in-sample). An int ``n``: the
        mean and standard deviation of held-out scores over ``KFold(n)``
        (unshuffled) folds of the samples, each scored under a fit on the
        other folds. Any scikit-learn splitter or iterable of
        ``(train, test)`` index arrays is accepted too.
    n_permutations : int, default=0
        Size of a permutation null: the pairing of ``B``'s samples with
        ``A``'s is shuffled this many times, each refitted and scored like the
        observed result; ``p_values`` and ``null_means`` are reported.
    n_bootstrap : int, default=0
        Bootstrap resamples of the samples (pairs kept together), each scored
        like the observed result; percentile intervals ``ci_low``/``ci_high``.
    confidence : float, default=0.95
        Level of the bootstrap intervals.
    random_state : int, numpy Generator or None, default=None
        Seed of the permutations and resamples (drawn up front, so the result
        does not depend on ``n_jobs``).
    n_jobs : int or None, default=None
        Replicates run in parallel with joblib (``-1``: every core).
    progress : bool, default=False
        A progress bar over the replicates (tqdm).
    **params
        Parameters of :class:`SEISScorer` (``n_components``,
        ``matricization``, ``layout``, ``reg``, ``max_components``,
        ``invariance``, ``solver``).

    Returns
    -------
    SEISResult

    Notes
    -----
    With the moment solver and ``KFold``-like splits (test sets partition the
    samples, trains are their complements) the data are read once: the
    moments of each fold are accumulated and every training set's moments are
    merged from them. The Gram solver fits each fold separately.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn import seis_score
    >>> rng = np.random.default_rng(0)
    >>> A = rng.normal(size=(64, 8, 5, 5))
    >>> r = seis_score(A, -A)
    >>> round(r.equivariance, 6), round(r.invariance, 6)
    (1.0, 0.0)
    >>> r = seis_score(A, np.flip(A, axis=3), cv=4, n_components=10)
    >>> r.evaluation, r.n_folds
    ('cross-fitted', 4)
    """
    check_statistics(n_permutations, n_bootstrap, confidence)
    _check_random_state(random_state)
    if is_orbit(B) and (n_permutations or n_bootstrap):
        raise ValueError("n_permutations and n_bootstrap take a pair (A, B), not an orbit")
    result = _seis_score(A, B, cv, params)
    if not (n_permutations or n_bootstrap):
        return result
    (A, B), _ = check_views([A, B], ["A", "B"], params.get("layout", "auto"), "spatial")
    fields = statistics(
        A,
        B,
        result,
        cv=cv,
        params=params,
        n_permutations=n_permutations,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        rng=np.random.default_rng(random_state),
        n_jobs=n_jobs,
        progress=progress,
    )
    return dataclasses.replace(result, **fields)


def _seis_score(A, B, cv, params):
    scorer = SEISScorer(**params)
    if cv is None:
        fitted = scorer._fit(A, B, names=("A", "B"), streaming=False, store_components=False)
        return fitted.result_
    fit_params = scorer._checked_params()
    orbit, Bs, names = _views_of(B, ("A", "B"))
    fit_params["names"] = names
    views, layout = check_views([A, *Bs], names, scorer.layout, scorer.matricization)
    A, B = views[0], views[1]
    n = A.shape[0]
    splitter = check_cv(_checked_cv(cv, n))
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

    solver = resolve_solver(
        fit_params["solver"], A.shape, layout, scorer.matricization, lazy=is_dask_array(A)
    )
    if orbit:
        return _cross_fitted_orbit(views, names, layout, splits, n, scorer, fit_params)
    if solver == "gram":
        # The Gram matrix of one training set says nothing about another's: fit each fold.
        folds = []
        for train, test in splits:
            train, test = np.sort(train), np.sort(test)
            fold = clone(scorer).set_params(solver="gram")
            fold._fit(A[train], B[train], names=("A", "B"), streaming=False, reset=True)
            folds.append(fold.scores(A[test], B[test]))
        basis, cca, gm = _fit_gram_views(
            [A, B], layout, scorer.matricization, ("A", "B"), fit_params, components=False
        )
        full_rows = gm.n_rows
    else:

        def moments_of(indices):
            return accumulate(
                [A, B], layout, scorer.matricization, names=("A", "B"), indices=indices
            )

        tests = [np.sort(test) for _, test in splits]
        fold_moments = accumulate_folds(
            [A, B], layout, scorer.matricization, names=("A", "B"), index_sets=tests
        )
        if _is_partition(splits, n):  # read the data once: trains merge from the folds
            train_moments = [
                _merge_all(fold_moments[:f] + fold_moments[f + 1 :]) for f in range(len(tests))
            ]
            full = _merge_all(fold_moments)
        else:
            train_moments = [moments_of(np.sort(train)) for train, _ in splits]
            full = accumulate([A, B], layout, scorer.matricization, names=("A", "B"))
        folds = []
        for train_m, test_m in zip(train_moments, fold_moments, strict=True):
            basis, cca = _fit_moments(train_m, fit_params)
            projected = _held_out_moments(
                project_moments(test_m, basis.components), train_m.mean, basis.components, names
            )
            folds.append(
                _held_out_result(
                    cca,
                    basis,
                    projected,
                    scorer.invariance,
                    scorer.matricization,
                    layout,
                    train_m.n_rows,
                )
            )
        basis, cca = _fit_moments(full, fit_params)
        full_rows = full.n_rows
    table = np.array([[getattr(f, name) for name in SCORE_NAMES] for f in folds])
    means, stds = table.mean(axis=0), table.std(axis=0)
    return _result(
        dict(zip(SCORE_NAMES, map(float, means), strict=True)),
        cca.canonical_correlations,
        cca,
        basis,
        full_rows,
        scorer.matricization,
        layout,
        "cross-fitted",
        n_folds=len(folds),
        folds=tuple(folds),
        **{f"{name}_std": float(s) for name, s in zip(SCORE_NAMES, stds, strict=True)},
    )


def _check_random_state(random_state):
    """None, an int >= 0 or a numpy Generator, or one error naming ``random_state``."""
    if random_state is None or isinstance(random_state, np.random.Generator):
        return
    if isinstance(random_state, (bool, np.bool_)) or not isinstance(
        random_state, (int, np.integer)
    ):
        raise TypeError(
            "random_state must be None, an int >= 0 or a numpy Generator; got "
            f"{type(random_state).__name__}"
        )
    if random_state < 0:
        raise ValueError(f"random_state must be an int >= 0; got {int(random_state)}")


def _checked_cv(cv, n):
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


def _cross_fitted_orbit(views, names, layout, splits, n, scorer, fit_params):
    """Cross-fitted orbit scores: per fold, the pooled basis and every (A, B_g) pair."""
    mode = scorer.matricization
    tests = [np.sort(test) for _, test in splits]
    fold_moments = accumulate_folds(views, layout, mode, names=names, index_sets=tests)
    if _is_partition(splits, n):
        trains = [_merge_all(fold_moments[:f] + fold_moments[f + 1 :]) for f in range(len(tests))]
    else:
        trains = [
            accumulate(views, layout, mode, names=names, indices=np.sort(train))
            for train, _ in splits
        ]
    per_fold = []
    for train_m, test_m in zip(trains, fold_moments, strict=True):
        basis, ccas = _fit_orbit(train_m, fit_params)
        projected = _held_out_moments(
            project_moments(test_m, basis.components), train_m.mean, basis.components, names
        )
        per_fold.append(
            [
                _held_out_result(
                    c, basis, projected, scorer.invariance, mode, layout, train_m.n_rows, view=g
                )
                for g, c in enumerate(ccas, start=1)
            ]
        )
    full = _merge_all(fold_moments) if _is_partition(splits, n) else None
    if full is None:
        full = accumulate(views, layout, mode, names=names)
    basis, ccas = _fit_orbit(full, fit_params)

    def cross_fitted(results, cca):
        table = np.array([[getattr(r, name) for name in SCORE_NAMES] for r in results])
        return _result(
            dict(zip(SCORE_NAMES, map(float, table.mean(axis=0)), strict=True)),
            cca.canonical_correlations, cca, basis, full.n_rows, mode, layout, "cross-fitted",
            n_folds=len(results), folds=tuple(results),
            **{f"{k}_std": float(v) for k, v in zip(SCORE_NAMES, table.std(axis=0), strict=True)},
        )  # fmt: skip

    elements = [cross_fitted([fold[g] for fold in per_fold], cca) for g, cca in enumerate(ccas)]
    fold_means = [_orbit_mean(fold) for fold in per_fold]
    mean = cross_fitted(fold_means, ccas[0])
    return dataclasses.replace(mean, elements=tuple(elements))


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
