"""The result object returned by :func:`seis_score` and :meth:`SEISScorer.scores`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

SCORE_NAMES = (
    "equivariance",
    "invariance",
    "equivariance_weighted",
    "invariance_weighted",
)

_IN_SAMPLE_NOTE = (
    "in-sample: canonical correlations are biased upward when k is not small against "
    "the number of rows; pass cv= (or score held-out data) for honest scores"
)


@dataclass(frozen=True, repr=False)
class SEISResult:
    """Scores of one (original, transformed) pair of activations.

    Attributes
    ----------
    equivariance : float
        ``S_E``, mean canonical correlation (SPEC §2.3 step 7). 0 = information
        lost, 1 = fully kept (possibly re-encoded).
    invariance : float
        ``S_I`` (step 8). 0 = moved or lost, 1 = unchanged in place.
    equivariance_weighted, invariance_weighted : float
        The variance-weighted pair ``S_E^w``, ``S_I^w`` (step 9).
    canonical_correlations : ndarray of shape (k,)
        In-sample ``ρ`` (held-out ``ρ′`` for a held-out result).
    alignments : ndarray of shape (k,)
        ``α_i = u_i · w_i``.
    weights : ndarray of shape (k,)
        Energy weights ``ω_i``.
    n_components : int
        ``k``, dimension of the shared denoised subspace.
    n_rows : int
        Rows ``m`` of the matricized data that was scored.
    explained_variance_ratio : float
        Fraction of the pooled variance kept by the k directions.
    matricization : str
    layout : str
    evaluation : str
        ``"in-sample"``, ``"held-out"`` or ``"cross-fitted"``.
    n_folds : int or None
        Number of folds for a cross-fitted result.
    equivariance_std, invariance_std, equivariance_weighted_std, \
invariance_weighted_std : float or None
        Standard deviations (``ddof=0``) over folds for a cross-fitted result.
    folds : tuple of SEISResult
        The held-out result of each fold (cross-fitted results only).
    n_permutations : int or None
        Size of the permutation null (``seis_score(..., n_permutations=)``).
    p_values, null_means : dict of str → float, or None
        Per score: the permutation p-value ``(1 + #{null ≥ observed}) /
        (1 + n_permutations)`` and the mean of the null.
    n_bootstrap : int or None
        Number of bootstrap resamples (``seis_score(..., n_bootstrap=)``).
    confidence : float or None
        Level of the bootstrap intervals.
    ci_low, ci_high : dict of str → float, or None
        Per score: the percentile bootstrap interval.
    degenerate : bool
        True when the numbers should not be read at face value (SPEC §2.1):
        the matricization has very few columns (d ≤ 4, e.g. spatial mode on a
        ≤ 2×2 map), k = 1, or k is at least half the rows the basis was
        fitted on (in-sample-like bias, even held-out).
    degenerate_reason : str
        Why, in words (``""`` when not degenerate).
    elements : tuple of SEISResult
        For an orbit (``B`` a list, SPEC §2.5): the result of each pair
        ``(A, B_g)``; the four scores above are their means, the arrays and
        sizes those of the first element.

    Notes
    -----
    For a cross-fitted result the four scores are means over folds, while the
    per-component arrays, ``n_components``, ``n_rows`` and
    ``explained_variance_ratio`` describe the fit on all samples.
    """

    equivariance: float
    invariance: float
    equivariance_weighted: float
    invariance_weighted: float
    canonical_correlations: np.ndarray
    alignments: np.ndarray
    weights: np.ndarray
    n_components: int
    n_rows: int
    explained_variance_ratio: float
    matricization: str
    layout: str
    evaluation: str = "in-sample"
    n_folds: int | None = None
    equivariance_std: float | None = None
    invariance_std: float | None = None
    equivariance_weighted_std: float | None = None
    invariance_weighted_std: float | None = None
    folds: tuple = field(default=(), compare=False)
    n_permutations: int | None = None
    p_values: dict | None = None
    null_means: dict | None = None
    n_bootstrap: int | None = None
    confidence: float | None = None
    ci_low: dict | None = None
    ci_high: dict | None = None
    degenerate: bool = False
    degenerate_reason: str = ""
    elements: tuple = field(default=(), compare=False)

    def as_dict(self):
        """Return the result as a plain ``dict`` (arrays as lists, folds omitted).

        Returns
        -------
        dict
            JSON-serialisable mapping of every field but ``folds`` and
            ``elements``.
        """
        out = {}
        for f in fields(self):
            if f.name in ("folds", "elements"):
                continue
            value = getattr(self, f.name)
            out[f.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    def score(self, kind="equivariance"):
        """Return one of the four scores by name.

        Parameters
        ----------
        kind : {"equivariance", "invariance", "equivariance_weighted", \
"invariance_weighted"}, default="equivariance"

        Returns
        -------
        float
        """
        if kind not in SCORE_NAMES:
            raise ValueError(
                f"kind must be one of {', '.join(map(repr, SCORE_NAMES))}; got {kind!r}"
            )
        return getattr(self, kind)

    def __repr__(self):
        head = (
            f"SEISResult({self.evaluation}"
            + (f", {self.n_folds} folds" if self.n_folds else "")
            + f"; {self.matricization} matricization of {self.layout}; "
            f"k={self.n_components} components keeping {self.explained_variance_ratio:.1%} "
            f"of the variance; m={self.n_rows} rows)"
        )
        lines = [head]
        if self.elements:
            lines.append(f"  orbit of {len(self.elements)} transformed views: scores averaged")
        for label, base in (("equivariance", "equivariance"), ("invariance  ", "invariance")):
            plain = getattr(self, base)
            weighted = getattr(self, base + "_weighted")
            std = getattr(self, base + "_std")
            wstd = getattr(self, base + "_weighted_std")
            plain_s = f"{plain:.4f}" + (f" ± {std:.4f}" if std is not None else "")
            weighted_s = f"{weighted:.4f}" + (f" ± {wstd:.4f}" if wstd is not None else "")
            lines.append(f"  {label}  {plain_s}   (variance-weighted {weighted_s})")
        if self.p_values is not None:
            lines.append(
                f"  permutation null ({self.n_permutations}): p = "
                f"{self.p_values['equivariance']:.4g} (S_E), "
                f"{self.p_values['invariance']:.4g} (S_I); null means "
                f"{self.null_means['equivariance']:.4f}, {self.null_means['invariance']:.4f}"
            )
        if self.ci_low is not None:
            lines.append(
                f"  {self.confidence:.0%} bootstrap intervals ({self.n_bootstrap}): S_E "
                f"[{self.ci_low['equivariance']:.4f}, {self.ci_high['equivariance']:.4f}], "
                f"S_I [{self.ci_low['invariance']:.4f}, {self.ci_high['invariance']:.4f}]"
            )
        if self.degenerate:
            lines.append("  degenerate, do not read at face value: " + self.degenerate_reason)
        if self.evaluation == "in-sample":
            lines.append("  note: " + _IN_SAMPLE_NOTE)
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):  # IPython/Jupyter
        printer.text(repr(self))
