"""The one-call functions: :func:`seis_score` and :func:`latent_action` (SPEC §2.3–2.5)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from ._fit import cross_fit, fold_splits, resolve_solver
from ._matricize import grid_of, matrix_shape
from ._result import described
from ._scorer import SEISScorer, _views_of, is_orbit
from ._stack import DenoisedStack
from ._statistics import check_statistics, statistics
from ._validation import as_activation_array, check_views, checked_auto_layout, is_dask_array


def seis_score(
    A,
    B,
    *,
    cv="auto",
    n_permutations=0,
    n_bootstrap=0,
    confidence=0.95,
    random_state=None,
    n_jobs=None,
    progress=False,
    **params,
):
    """SEIS scores of a pair of activation arrays, cross-fitted (or in-sample if asked).

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
    cv : "auto", int, cross-validation splitter, iterable or None, default="auto"
        ``"auto"``: cross-fitted over 5 folds (``KFold(5)``, unshuffled) when
        there are at least 10 samples, so that every test set holds 2 samples
        or more; with fewer samples, in-sample, with a warning and the reason
        in ``evaluation_reason``. An int ``n``: the mean and standard deviation
        of held-out scores over ``KFold(n)`` (unshuffled) folds of the
        samples, each scored under a fit on the other folds. Any scikit-learn
        splitter or iterable of ``(train, test)`` index arrays is accepted too.
        ``None``: fit and score on all samples (in-sample: canonical
        correlations are biased upward when k is not small against the rows;
        the result says so).
    n_permutations : int, default=0
        Size of a permutation null: the pairing of ``B``'s samples with
        ``A``'s is shuffled this many times, each refitted and scored like the
        observed result (cross-fitted over the same folds when it is);
        ``p_values`` and ``null_means`` are reported.
    n_bootstrap : int, default=0
        Bootstrap resamples of the samples (pairs kept together), each scored
        like the observed result (cross-fitted: the folds split each
        resample's distinct samples, so ``cv`` must be ``"auto"``, an int or
        None there); percentile intervals ``ci_low``/``ci_high``.
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
        ``invariance``, ``solver``). ``layout="auto"`` (the default) reads a
        4-D array ``(N, a, b, c)`` channels last (NHWC) where only that
        reading gives a square grid (``a == b != c``), with a
        :class:`~seis_sklearn.LayoutWarning`; where both readings are square
        (``a == b == c``) it keeps NCHW and warns that it cannot tell (docs:
        quick start, "Layouts and matricizations"). The result's ``layout``,
        ``grid`` and ``layout_choice`` say what was read.

    Returns
    -------
    SEISResult
        ``variance_shortfall`` says when a float ``n_components`` could not be
        reached (k capped by the rows or by ``max_components``), with a
        warning.

    Warns
    -----
    LayoutWarning
        ``layout="auto"`` read channels last, or could not tell the layout.
    UserWarning
        Too few samples for ``cv="auto"`` (in-sample instead), or a variance
        share that the components could not reach.

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
    >>> r.evaluation, r.n_folds, r.grid
    ('cross-fitted', 5, (5, 5))
    >>> round(r.equivariance, 6), round(r.invariance, 6)
    (1.0, 0.0)
    >>> r = seis_score(A, np.flip(A, axis=3), cv=None, n_components=10)
    >>> r.evaluation, r.evaluation_reason
    ('in-sample', 'cv=None asked for it')
    """
    check_statistics(n_permutations, n_bootstrap, confidence)
    _check_random_state(random_state)
    if is_orbit(B) and (n_permutations or n_bootstrap):
        raise ValueError("n_permutations and n_bootstrap take a pair (A, B), not an orbit")
    shape = tuple(as_activation_array(A, "A").shape)
    layout = params.get("layout", "auto")
    if layout == "auto" and not isinstance(A, DenoisedStack):
        found = checked_auto_layout(shape, "A", stacklevel=2)
        params = {**params, "layout": found.layout}
        choice = found.choice
    else:
        choice = "given"
    cv, reason = resolve_cv(cv, shape[0])
    result = _seis_score(A, B, cv, params)
    rows_per_sample = None
    if not isinstance(A, DenoisedStack):
        rows_per_sample = matrix_shape(shape, result.layout, result.matricization)[0]
    result = described(
        result, grid=grid_of(shape, result.layout), layout_choice=choice,
        target=params.get("n_components", 0.99), evaluation_reason=reason,
        fit_rows=result.n_rows, rows_per_sample=rows_per_sample,
        max_components=params.get("max_components"),
    )  # fmt: skip
    if result.variance_shortfall:
        warnings.warn(
            "the variance share asked for was not reached: " + result.variance_shortfall,
            UserWarning,
            stacklevel=2,
        )
    if np.isnan(result.equivariance) and "no variance" in result.degenerate_reason:
        warnings.warn(f"no score: {result.degenerate_reason}", UserWarning, stacklevel=2)
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
        score=_quiet_score,
    )
    return dataclasses.replace(result, **fields)


#: ``cv="auto"``: this many folds, when every test set gets at least
#: :data:`AUTO_MIN_TEST` samples (10 samples or more), else in-sample.
AUTO_FOLDS = 5
AUTO_MIN_TEST = 2


def resolve_cv(cv, n_samples):
    """``cv`` made concrete, and why a result is in-sample (``""`` when it is not).

    ``"auto"`` → :data:`AUTO_FOLDS` folds when ``n_samples`` ≥ ``AUTO_FOLDS ×
    AUTO_MIN_TEST``, else None with a warning; None → None (asked for); anything
    else is returned as it is (checked where the folds are made).

    Examples
    --------
    >>> from seis_sklearn._score import resolve_cv
    >>> resolve_cv("auto", 64)
    (5, '')
    >>> resolve_cv(None, 64)
    (None, 'cv=None asked for it')
    """
    if cv is None:
        return None, "cv=None asked for it"
    if isinstance(cv, str):
        if cv != "auto":
            raise ValueError(
                f"cv must be 'auto', an int >= 2, a splitter, an iterable of (train, test) "
                f"index arrays, or None (in-sample); got {cv!r}"
            )
        needed = AUTO_FOLDS * AUTO_MIN_TEST
        if n_samples >= needed:
            return AUTO_FOLDS, ""
        reason = (
            f"cv='auto' found {n_samples} samples, too few to cross-fit ({needed} give "
            f"{AUTO_FOLDS} folds of {AUTO_MIN_TEST} test samples)"
        )
        warnings.warn(
            f"{reason}: the scores are in-sample, biased upward", UserWarning, stacklevel=3
        )
        return None, reason
    return cv, ""


def _seis_score(A, B, cv, params):
    scorer = SEISScorer(**params)
    if cv is None:
        fitted = scorer._fit(A, B, names=("A", "B"), streaming=False, store_components=False)
        return fitted.result_
    fit_params = scorer._checked_params()
    orbit, Bs, names = _views_of(B, ("A", "B"))
    views, layout = check_views([A, *Bs], names, scorer.layout, scorer.matricization)
    splits = fold_splits(cv, views[0].shape[0])
    if orbit and fit_params["solver"] == "gram":
        raise ValueError(
            "an orbit is scored from the moments pooled over all its elements: use "
            "solver='moments' (or 'auto')"
        )
    solver = "moments" if orbit else resolve_solver(
        fit_params["solver"], views[0].shape, layout, scorer.matricization,
        lazy=is_dask_array(views[0]),
    )  # fmt: skip
    return cross_fit(
        views, names, layout, scorer.matricization, splits, fit_params, scorer.invariance,
        solver, orbit,
    )  # fmt: skip


def _quiet_score(A, B, **kwargs):
    """:func:`seis_score` of one replicate of the statistics, its warnings (said once,
    by the observed result) silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return seis_score(A, B, **kwargs)


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
