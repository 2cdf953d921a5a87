"""The SEIS estimator and the one-call function (SPEC §2.3–2.4, §3)."""

from __future__ import annotations

import functools

from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._accumulate import accumulate, backend_of
from ._fit import (
    fit,
    fit_views,
    gather,
    held_out,
    held_out_moments,
    held_out_rows,
    in_sample,
    resolve_solver,
)
from ._latent import estimate as estimate_latent
from ._matricize import auto_layout, grid_of, matrix_shape
from ._result import SCORE_NAMES, described
from ._stack import denoised_reading, is_stack
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
        Axis order of the activations; ``"auto"`` maps 5-D → NCDHW, 3-D → NLD,
        2-D → ND, and 4-D ``(N, a, b, c)`` → NCHW, except NHWC where only that
        reading gives a square grid (``a == b != c``), with a
        :class:`~seis_sklearn.LayoutWarning`; where both readings are square it
        keeps NCHW and warns that it cannot tell. ``layout_`` and the results'
        ``layout``, ``grid`` and ``layout_choice`` say what was read.
    reg : float, default=1e-6
        Ridge ``ε``: each view's covariance in the shared basis is regularised
        by ``ε·(tr Σ/k)·I``, its own mean variance (SPEC §2.3 step 5), so
        rescaling one view changes nothing and rounding cannot move a score
        (the condition number stays below ``1 + k/ε``).
    max_components : int, default=None
        Upper bound on ``k``.
    invariance : {"trace", "abs"}, default="trace"
        ``"trace"``: ``S_I = max(0, tr K)/k_eff``, basis-independent. ``"abs"``:
        ``Σ ρ_i |α_i| / k_eff``, a literal reading of the paper, for comparison
        only (blind to sign, basis-dependent under ties). ``k_eff`` is the
        number of canonical pairs the views can have (docs/math.rst, "Counting
        the pairs a view can have"): ``k`` when both views fill the basis.
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
    correlation ``ρ′_i`` of each pair: ``S_E′ = Σ max(ρ′_i, 0)/k_eff``,
    ``S_I′ = max(0, Σ ρ′_i α_i)/k_eff`` (capped at ``S_E′`` so that
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

    def __getattr__(self, name):
        # only for attributes not found: a fitted attribute asked for while partial_fit
        # has seen fewer than 2 samples says so, instead of a bare AttributeError
        pending = self.__dict__.get("_pending")
        if pending and name.endswith("_") and not name.startswith("__"):
            seen = pending["moments"].n_samples
            raise AttributeError(
                f"{name} is not set yet: partial_fit has seen {seen} sample"
                f"{'' if seen == 1 else 's'}, and a fit needs at least 2; call partial_fit "
                "with more samples first"
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
            fitted = fit_views([X, y], layout, mode, view_names, params, "gram", store_components)
        else:
            part = gather([X, *ys], layout, mode, view_names)
            moments = part if before is None else before.merge(part)
            if moments.n_samples < 2:  # nothing to fit yet: wait for the next batch
                self._pending = dict(moments=moments, reading=(layout, mode, label), shape=shape)
                return self
            self.__dict__.pop("_pending", None)
            fitted = fit(moments, params, view_names)
        choice = "given"
        if first and not pending and self.layout == "auto" and layout != "auto":
            choice = auto_layout((X.shape[0], *shape)).choice if label == mode else "given"
        return self._store(fitted, orbit, layout=layout, mode=mode, label=label, shape=shape,
                           layout_choice=choice)  # fmt: skip

    def _fit_from_moments(self, moments, layout, shape, matricization=None):
        """Fit from accumulated :class:`~seis_sklearn._moments.Moments` (streaming).

        ``moments`` hold the views of ``shape`` (per sample) in ``layout`` and in
        ``matricization`` (default: the scorer's own); one basis and one CCA per
        transformed view, as :meth:`fit` computes them from the same moments.
        """
        mode = self.matricization if matricization is None else matricization
        fitted = fit(moments, self._checked_params())
        return self._store(
            fitted, moments.n_views > 2, layout=layout, mode=mode, label=mode, shape=tuple(shape)
        )

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
        fitted = fit_views(rows, layout, mode, names, params, solver)
        return self._store(fitted, False, layout=layout, mode=mode, label=mode, shape=shape[1:])

    def _store(self, fitted, orbit, *, layout, mode, label, shape, layout_choice="given"):
        """Replace the fitted state (only now, with every step done) and the in-sample result."""
        basis, cca = fitted.basis, fitted.ccas[0]
        # V_k (d × k) is kept once, as components_ (k × d, a transposed view).
        components = basis.components
        self._fitted = fitted
        self._orbit = orbit
        self._moments = fitted.moments
        self.n_views_ = len(fitted.ccas) + 1
        self.solver_ = fitted.solver
        self.layout_ = layout
        self.matricization_ = mode
        self._label = label
        self._layout_choice = layout_choice
        self.activation_shape_ = shape
        self.n_rows_ = fitted.n_rows
        self.n_components_ = basis.k
        self.components_ = None if components is None else components.T
        self.eigenvalues_ = basis.eigenvalues
        self.explained_variance_ratio_ = basis.explained_variance_ratio
        self.mean_x_ = fitted.means[0].copy()
        self.mean_y_ = fitted.means[1].copy()
        self.canonical_correlations_ = cca.canonical_correlations
        self.alignments_ = cca.alignments
        self.weights_ = cca.weights
        self.result_ = self._described(in_sample(fitted, self.invariance, label, layout, orbit))
        return self

    def _described(self, result):
        """``result`` with the grid and layout choice of the fit and its variance check."""
        shape = (1, *self.activation_shape_)
        return described(
            result, grid=grid_of(shape, self.layout_),
            layout_choice=getattr(self, "_layout_choice", "given"), target=self.n_components,
            fit_rows=self.n_rows_, rows_per_sample=matrix_shape(shape, self.layout_,
                                                                 self.matricization_)[0],
            max_components=self.max_components,
        )  # fmt: skip

    def _release_moments(self):
        """Let the fit's d × d statistics go: a report's scorer only scores its held-out
        samples afterwards (the latent action then says it needs them)."""
        self._moments = None
        self._fitted.moments = None

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
        return estimate_latent(
            self._moments, self.components_.T, cyclic, degenerate_reason=self._latent_reason()
        )

    def _latent_reason(self):
        """Why the latent action's defects say little, or "": k at least half the rows
        (a least-squares map then fits any pair of views), or k capped by the rows'
        degrees of freedom below the share of the variance asked for (the basis holds
        part of the orbit's span only)."""
        k, m = self.n_components_, self.n_rows_
        per_sample, d = matrix_shape(self.activation_shape_, self.layout_, self.matricization_)
        reasons = []
        if 2 * k >= m:
            reasons.append(
                f"k={k} is at least half of the m={m} rows fitted: a least-squares map "
                "of that size fits any views, so its defects are not the layer's"
            )
        cap = m - per_sample
        target = self.n_components
        capped_by_rows = self.max_components is None or k < self.max_components
        if (
            isinstance(target, float)
            and capped_by_rows
            and k < d
            and float(self.explained_variance_ratio_) < target
        ):
            reasons.append(
                f"k={k} is capped by m − R = {cap} (the rows' degrees of freedom) below the "
                f"{target:.0%} of the variance asked for: the basis holds part of the "
                "orbit's span only — more samples, or fewer columns (pooling, "
                "max_components), would be needed"
            )
        return "; ".join(reasons)

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
        if len(ys) != len(self._fitted.ccas):
            raise ValueError(
                f"y has {len(ys)} transformed view(s); this SEISScorer was fitted on "
                f"{len(self._fitted.ccas)}"
            )
        arrays, layout = check_views([X, *ys], view_names, self.layout_, self.matricization_)
        self._check_sample_shape(arrays[0])
        return self._score_rows(arrays, view_names, orbit)

    def _score_moments(self, moments, names=("X", "y"), orbit=False):
        """Held-out result from the d × d moments of new pairs (streaming scoring)."""
        check_is_fitted(self)
        return self._held_out(held_out_moments, moments, names, orbit)

    def _score_rows(self, arrays, names, orbit=False):
        """Held-out result of new views given as validated arrays in the fitted layout
        (also the streaming scoring of kept rows); ``names`` name them in errors."""
        check_is_fitted(self)
        if backend_of(arrays) == "numpy":  # in memory: the variates from the rows
            score = functools.partial(held_out_rows, matricization=self.matricization_)
            return self._held_out(score, arrays, names, orbit)
        projected = accumulate(
            arrays, self.layout_, self.matricization_, names=names,
            projection=self.components_.T,
        )  # fmt: skip
        return self._score_projected(projected, names, orbit)

    def _score_projected(self, projected, names=("X", "y"), orbit=False):
        """Held-out result from the moments of new views projected on ``V_k``."""
        return self._held_out(held_out, projected, names, orbit)

    def _held_out(self, score, moments, names, orbit):
        """``score`` (:func:`held_out` or :func:`held_out_moments`) under the fit."""
        check_choice(self.invariance, "invariance", INVARIANCE_MODES)
        fitted = self._fitted
        fitted.basis.components = self.components_.T  # kept once, as components_
        try:
            return self._described(
                score(fitted, moments, names, self.invariance, self._label, self.layout_, orbit)
            )
        finally:
            fitted.basis.components = None

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
