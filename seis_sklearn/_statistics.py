"""Uncertainty for SEIS: a permutation null and bootstrap confidence intervals.

* **Permutation null**: which transformed sample is paired with which original is
  shuffled (a random permutation of the samples of ``B``), everything is refitted,
  and the scores are recomputed; the p-value of each score is
  ``(1 + #{null ≥ observed}) / (1 + n_permutations)`` (Phipson & Smyth 2010:
  never 0, exact under exchangeability).
* **Bootstrap**: samples are drawn with replacement (pairs kept together), the
  scores recomputed on each resample, and the percentile interval reported,
  shifted by the resamples' bias ``observed − mean(resampled)`` (a resample holds
  only ~63% distinct samples, which moves CCA-based scores: up in-sample, down
  when cross-fitted), and clipped to [0, 1]. With
  ``cv``, a resample's folds split its *distinct* samples (``KFold`` over them),
  so that no copy of a held-out sample is fitted on.

Every replicate is computed exactly as the observed result (the same ``cv``,
the same parameters). The random draws are made up front from ``random_state``,
so results do not depend on ``n_jobs``.
"""

from __future__ import annotations

import numpy as np

from ._result import SCORE_NAMES


def check_statistics(n_permutations, n_bootstrap, confidence):
    for name, value in (("n_permutations", n_permutations), ("n_bootstrap", n_bootstrap)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0; got {value!r}")
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a float in (0, 1); got {confidence!r}")


def _scores(result):
    return np.array([getattr(result, name) for name in SCORE_NAMES])


def _replicate(score, A, B, index_a, index_b, cv, params):
    a = A if index_a is None else A[index_a]
    return _scores(score(a, B[index_b], cv=cv, **params))


def _run(jobs, n_jobs, progress, desc):
    from joblib import Parallel, delayed

    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc=desc, leave=False)
        except ImportError:  # pragma: no cover - tqdm is optional
            bar = None
    if n_jobs in (None, 1):
        out = []
        for job in jobs:
            out.append(_replicate(*job))
            if bar is not None:
                bar.update(1)
    else:
        out = Parallel(n_jobs=n_jobs)(delayed(_replicate)(*job) for job in jobs)
        if bar is not None:
            bar.update(len(jobs))
    if bar is not None:
        bar.close()
    return np.array(out).reshape(len(jobs), len(SCORE_NAMES))


def _grouped_folds(draw, cv):
    """Folds of a bootstrap resample that keep every copy of a sample in one fold.

    Plain folds of a resample would put copies of one sample on both sides and
    inflate the held-out scores; the folds split the distinct samples instead.
    """
    if cv is None:
        return None
    from sklearn.model_selection import KFold, check_cv

    n_splits = check_cv(cv).get_n_splits()
    ids = np.unique(draw)
    if len(ids) < n_splits:  # pragma: no cover - needs n < n_splits distinct samples
        raise ValueError(f"a bootstrap resample has fewer than {n_splits} distinct samples")
    folds = []
    for _, test_ids in KFold(n_splits).split(ids):
        test = np.isin(draw, ids[test_ids])
        folds.append((np.flatnonzero(~test), np.flatnonzero(test)))
    return folds


def statistics(
    A, B, observed, *, cv, params, n_permutations, n_bootstrap, confidence, rng, n_jobs,
    progress, score,
):  # fmt: skip
    """The fields the permutation null and the bootstrap add to a SEISResult;
    ``score`` is :func:`~seis_sklearn.seis_score` (given, so that this module imports
    no estimator)."""
    n = A.shape[0]
    fields = {}
    values = _scores(observed)
    if n_permutations:
        perms = [rng.permutation(n) for _ in range(n_permutations)]
        jobs = [(score, A, B, None, p, cv, params) for p in perms]
        null = _run(jobs, n_jobs, progress, "permutations")
        exceed = (null >= values[None, :] - 1e-12).sum(axis=0)
        fields["n_permutations"] = n_permutations
        fields["p_values"] = {
            name: float((1 + e) / (1 + n_permutations))
            for name, e in zip(SCORE_NAMES, exceed, strict=True)
        }
        fields["null_means"] = {
            name: float(m) for name, m in zip(SCORE_NAMES, null.mean(axis=0), strict=True)
        }
    if n_bootstrap:
        draws = [rng.integers(0, n, n) for _ in range(n_bootstrap)]
        jobs = [(score, A, B, d, d, _grouped_folds(d, cv), params) for d in draws]
        boot = _run(jobs, n_jobs, progress, "bootstrap")
        tail = (1.0 - confidence) / 2.0
        low, high = np.quantile(boot, [tail, 1.0 - tail], axis=0)
        shift = values - boot.mean(axis=0)  # the resamples' bias, removed
        low, high = np.clip(low + shift, 0.0, 1.0), np.clip(high + shift, 0.0, 1.0)
        fields["n_bootstrap"] = n_bootstrap
        fields["confidence"] = confidence
        fields["ci_low"] = {n_: float(v) for n_, v in zip(SCORE_NAMES, low, strict=True)}
        fields["ci_high"] = {n_: float(v) for n_, v in zip(SCORE_NAMES, high, strict=True)}
    return fields
