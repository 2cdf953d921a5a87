"""Single-view subspace denoiser: PCA without whitening, streamed from moments."""

from __future__ import annotations

import contextlib

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from ._accumulate import accumulate
from ._cca import pooled_basis
from ._matricize import matricize, matrix_shape
from ._stack import DenoisedStack
from ._validation import (
    as_activation_array,
    check_finite,
    check_max_components,
    check_n_components,
    check_numeric,
    check_views,
    chunk_samples,
    is_dask_array,
)


class SubspaceDenoiser(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Project 2-D data onto its leading principal subspace (SPEC §2.2 on one view).

    Centres ``X`` by its column means (for a paired stack: every feature over
    the samples, SPEC §2.1), eigen-decomposes the second moment
    ``S = X̃ᵀX̃ / m`` and keeps the leading ``k`` eigenvectors, chosen exactly as
    SEIS chooses its shared basis. Like :class:`sklearn.decomposition.PCA` with
    ``whiten=False``, but ``partial_fit`` accumulates exact moments, so any split
    of the samples gives the same fit as one call to ``fit``.

    Parameters
    ----------
    n_components : int or float, default=0.99
        An int is the number of components kept. A float in (0, 1] keeps the
        smallest number of components whose cumulative explained variance
        reaches it, grown so as not to cut through a cluster of equal
        eigenvalues (relative gap below 1e-6).
    max_components : int, default=None
        Upper bound on the number of components.
    paired : bool, default=False
        ``X`` is a paired stack ``(n_samples, G, ...)`` — axis 1 holding the
        original and transformed views (:func:`seis_sklearn.pair`), or an
        orbit's G views. The shared basis of SPEC §2.2 (§2.5 for an orbit) is
        fitted on the second moment pooled over the views, each centred by its
        own mean and weighted by its own total variance (so that rescaling one
        view changes nothing), and ``transform`` returns every view's coordinates in it:
        ``(n_samples, G, k)``, or ``(n_samples, G, rows, k)`` when the
        matricization has several rows per sample (a
        :class:`~seis_sklearn.DenoisedStack`, which remembers what it holds).
        Feed that to ``SEISScorer(n_components=None)`` to score without
        denoising again: the scorer reads the coordinates as they are meant,
        whatever its own ``matricization``.
    matricization : {"spatial", "flatten", "channel"}, default="spatial"
        With ``paired=True``: how each view becomes a matrix (SPEC §2.1); the
        default is :class:`~seis_sklearn.SEISScorer`'s, so that the default
        pipeline scores what the default scorer does.
    layout : str, default="auto"
        With ``paired=True``: the layout of each view (``X[:, g]``).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Principal axes, orthonormal rows, each with its largest-magnitude entry
        positive.
    explained_variance_ : ndarray of shape (n_components,)
        Variance along each axis (``ddof=1``, as in PCA).
    explained_variance_ratio_ : ndarray of shape (n_components,)
        Fraction of the total variance along each axis.
    mean_ : ndarray of shape (n_features,)
        Column means of the training data. With ``paired=True``: shape
        ``(G, rows, d)``, each view's per-feature means over the samples (SPEC
        §2.1), in matricized form.
    n_components_ : int
        Number of components kept.
    n_samples_seen_ : int
        Number of samples accumulated.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    SEISScorer : Scores the pair of views in the basis shared by both.
    sklearn.decomposition.PCA : The same projection, fitted in one batch.

    Notes
    -----
    ``k`` is capped at ``min(n_features, n_samples - 1)``, at ``max_components``
    and at the number of eigenvalues that are not zero to machine precision.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn import SubspaceDenoiser
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)) @ rng.normal(size=(3, 10))
    >>> denoiser = SubspaceDenoiser(n_components=0.999).fit(X)
    >>> denoiser.n_components_
    3
    >>> bool(np.allclose(denoiser.inverse_transform(denoiser.transform(X)), X))
    True
    """

    _parameter_constraints = {
        "n_components": "int >= 1 or float in (0, 1]",
        "max_components": "None or int >= 1",
        "paired": "bool",
        "matricization": "'flatten', 'spatial' or 'channel'",
        "layout": "a layout of seis_sklearn.matricize",
    }

    def __init__(
        self,
        n_components=0.99,
        max_components=None,
        paired=False,
        matricization="spatial",
        layout="auto",
    ):
        self.n_components = n_components
        self.max_components = max_components
        self.paired = paired
        self.matricization = matricization
        self.layout = layout

    def fit(self, X, y=None):
        """Fit the subspace on ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data (a dask array chunked along the samples works too).
        y : None
            Ignored.

        Returns
        -------
        self : SubspaceDenoiser
        """
        return self._partial_fit(X, reset=True)

    def partial_fit(self, X, y=None):
        """Add the samples of ``X`` to the fit.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A batch of training data.
        y : None
            Ignored.

        Returns
        -------
        self : SubspaceDenoiser
        """
        return self._partial_fit(X, reset=False)

    def _partial_fit(self, X, reset):
        n_components = check_n_components(self.n_components)
        max_components = check_max_components(self.max_components)
        first = reset or not hasattr(self, "_moments")
        if self.paired:
            return self._partial_fit_paired(X, first, n_components, max_components)
        if is_dask_array(X):  # validated from metadata; the moments are summed over blocks
            X = self._check_dask(X, reset=first, min_samples=2 if first else 1)
        else:
            check_numeric(X, "X")
            with _naming_x():
                X = validate_data(
                    self,
                    X,
                    reset=first,
                    dtype=[np.float64, np.float32],
                    ensure_all_finite=False,
                    ensure_min_samples=2 if first else 1,
                )
        part = accumulate([X], "ND", "flatten", names=("X",))
        moments = part if first else self._moments.merge(part)
        basis = pooled_basis(moments, n_components, max_components, names=("X",))
        k = basis.k
        self._moments = moments
        self.n_samples_seen_ = moments.n_rows
        self.mean_ = moments.mean[0, 0].copy()
        self.components_ = basis.components.T.copy()
        self.n_components_ = k
        self.explained_variance_ = _explained_variance(basis, moments)
        self.explained_variance_ratio_ = basis.eigenvalues[:k] / basis.eigenvalues.sum()
        return self

    def _views(self, X, first):
        """The views of a paired stack, validated, and their concrete layout."""
        stack = as_activation_array(X, "X") if not isinstance(X, np.ndarray) else X
        if stack.ndim < 3 or stack.shape[1] < 2:
            raise ValueError(
                "paired=True needs X of shape (n_samples, G, ...) with G >= 2 views on axis "
                f"1 (see seis_sklearn.pair); got shape {stack.shape}"
            )
        if not first and stack.shape[1:] != self.stack_shape_:
            raise ValueError(
                f"X has per-sample shape {stack.shape[1:]}, but this SubspaceDenoiser was "
                f"fitted on {self.stack_shape_}"
            )
        views = [stack[:, g] for g in range(stack.shape[1])]
        names = [f"X[:, {g}]" for g in range(len(views))]
        views, layout = check_views(
            views, names, self.layout if first else self.layout_, self.matricization,
            min_samples=2 if first else 1,
        )  # fmt: skip
        return stack, views, names, layout

    def _partial_fit_paired(self, X, first, n_components, max_components):
        stack, views, names, layout = self._views(X, first)
        part = accumulate(views, layout, self.matricization, names=names)
        moments = part if first else self._moments.merge(part)
        basis = pooled_basis(moments, n_components, max_components, names=names)
        k = basis.k
        self._moments = moments
        self.layout_ = layout
        self.stack_shape_ = tuple(stack.shape[1:])
        self.n_views_ = len(views)
        self.rows_per_sample_ = matrix_shape(views[0].shape, layout, self.matricization)[0]
        self.n_samples_seen_ = stack.shape[0] if first else self.n_samples_seen_ + stack.shape[0]
        self.n_features_in_ = int(np.prod(stack.shape[1:]))
        self.mean_ = moments.mean.copy()  # (G, R, d): each view's per-feature means
        self.components_ = basis.components.T.copy()
        self.n_components_ = k
        self.explained_variance_ = _explained_variance(basis, moments)
        self.explained_variance_ratio_ = basis.eigenvalues[:k] / basis.eigenvalues.sum()
        return self

    def _transform_paired(self, X):
        check_is_fitted(self)
        stack, views, _, layout = self._views(X, first=False)
        n, rows = stack.shape[0], self.rows_per_sample_
        out = np.empty((n, len(views), rows, self.n_components_))
        for g, view in enumerate(views):
            step = chunk_samples(view.shape, view.dtype.itemsize)
            for start in range(0, n, step):
                block = matricize(view[start : start + step], layout, self.matricization)
                check_finite(block, f"X[:, {g}]")
                block = block.reshape(-1, rows, block.shape[1])
                out[start : start + step, g] = (block - self.mean_[g]) @ self.components_.T
        out = (out[:, :, 0] if rows == 1 else out).view(DenoisedStack)
        out.matricization = self.matricization
        return out

    def _check_dask(self, X, reset, min_samples=1):
        X = as_activation_array(X, "X")
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features); got shape {X.shape}")
        if X.shape[0] < min_samples:
            raise ValueError(f"X has {X.shape[0]} sample(s); at least {min_samples} required")
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but SubspaceDenoiser is expecting "
                f"{self.n_features_in_} features as input."
            )
        return X

    def _check_transform_input(self, X):
        check_is_fitted(self)
        check_numeric(X, "X")
        with _naming_x():
            X = validate_data(
                self, X, reset=False, dtype=[np.float64, np.float32], ensure_all_finite=False
            )
        check_finite(X, "X")
        return X

    def transform(self, X):
        """Project ``X`` onto the fitted subspace.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            Same float dtype as ``X`` (computed in float64); a dask array for a
            dask ``X`` (computed lazily, block by block).
        """
        if self.paired:
            return self._transform_paired(X)
        if is_dask_array(X):  # lazily, block by block
            check_is_fitted(self)
            X = self._check_dask(X, reset=False)
            dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
            return X.map_blocks(
                _project, self.mean_, self.components_, dtype=dtype,
                chunks=(X.chunks[0], (self.n_components_,)),
            )  # fmt: skip
        X = self._check_transform_input(X)
        out = np.empty((X.shape[0], self.n_components_), dtype=X.dtype)
        step = chunk_samples(X.shape, X.dtype.itemsize)
        for start in range(0, X.shape[0], step):
            block = np.subtract(X[start : start + step], self.mean_, dtype=np.float64)
            out[start : start + step] = block @ self.components_.T
        return out

    def inverse_transform(self, X):
        """Map projected data back to the original feature space.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        X = np.asarray(X)
        if self.paired:
            return self._inverse_paired(X)
        if X.ndim != 2 or X.shape[1] != self.n_components_:
            raise ValueError(
                f"X must have shape (n_samples, {self.n_components}) to be inverse "
                f"transformed; got {X.shape}"
            )
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        return (X.astype(np.float64) @ self.components_ + self.mean_).astype(dtype, copy=False)

    def _inverse_paired(self, X):
        """Coordinates (n, G[, rows], k) back to denoised views (n, G, ...)."""
        rows, k, G = self.rows_per_sample_, self.n_components_, self.n_views_
        if X.ndim == 3 and rows == 1:
            X = X[:, :, None]
        if X.ndim != 4 or X.shape[1:] != (G, rows, k):
            raise ValueError(
                f"X must have shape (n_samples, {G}, {rows}, {k}) (or (n_samples, {G}, {k}) "
                f"when there is one row per sample) to be inverse transformed; got {X.shape}"
            )
        view_shape = self.stack_shape_[1:]
        # where every matricized entry comes from in one sample: the inverse permutation
        index = np.arange(int(np.prod(view_shape))).reshape((1, *view_shape))
        source = matricize(index, self.layout_, self.matricization)
        out = np.empty((X.shape[0], G, source.size))
        for g in range(G):
            rows_back = X[:, g] @ self.components_ + self.mean_[g]  # (n, rows, d)
            out[:, g][:, source.ravel()] = rows_back.reshape(X.shape[0], -1)
        return out.reshape((X.shape[0], G, *view_shape))

    @property
    def _n_features_out(self):
        return self.n_components_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


@contextlib.contextmanager
def _naming_x():
    """scikit-learn's validation errors, with the argument they are about named first."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if message.startswith("X") or " X " in f" {message} ":
            raise
        raise type(exc)(f"X: {message}") from exc


def _explained_variance(basis, moments):
    """Variance along each kept axis (``ddof=1``, as in PCA).

    The basis's eigenvalues are those of the pooled moment with each view
    divided by its total variance (SPEC §2.2 step 2; for one view, the fraction
    of its variance). Multiplied by the views' mean total variance over ``m − 1``,
    they are PCA's variances for one view, and for views of equal total variance
    the variances of the pooled views.
    """
    m = moments.n_rows
    mean_total = float(np.einsum("gii->g", moments.auto).mean())
    return basis.eigenvalues[: basis.k] * (mean_total / (m - 1))


def _project(block, mean, components):
    """One block of :meth:`SubspaceDenoiser.transform` (dask inputs)."""
    dtype = block.dtype if block.dtype in (np.float32, np.float64) else np.float64
    centred = np.subtract(block, mean, dtype=np.float64)
    check_finite(centred, "X")
    return (centred @ components.T).astype(dtype, copy=False)
