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


def grid_text(grid):
    """A grid in words: ``"12×12 grid"``, ``"197 tokens"``, ``"vectors"``."""
    if grid is None:
        return ""
    if len(grid) == 0:
        return "vectors"
    if len(grid) == 1:
        return f"{grid[0]} tokens"
    return "×".join(map(str, grid)) + " grid"


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
        The concrete layout the activations were read in (never ``"auto"``).
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
    grid : tuple of int or None
        The spatial grid the layout gives the activations: ``(H, W)``,
        ``(D, H, W)``, ``(L,)`` tokens, ``()`` vectors (None where unknown).
    layout_choice : str
        How the layout was chosen: ``"given"``, or the rule of ``layout="auto"``
        (e.g. ``"auto: channels last (a 12×12 grid of 16 channels; …)"``).
    evaluation_reason : str
        Why an in-sample result is in-sample: asked for (``cv=None``), or too few
        samples for the folds of ``cv="auto"`` (``""`` otherwise).
    variance_target : float or None
        The share of the pooled variance asked for (``n_components`` as a
        float), None when ``k`` was given as a number.
    variance_shortfall : str
        When the ``k`` components keep less than ``variance_target`` — ``k``
        capped by the rows left after centring or by ``max_components`` (in the
        fit on all samples, or in a fold's) — what was reached and why;
        ``""`` when the target was met.

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
    grid: tuple | None = None
    layout_choice: str = ""
    evaluation_reason: str = ""
    variance_target: float | None = None
    variance_shortfall: str = ""

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
            if isinstance(value, tuple):
                value = list(value)
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
            + f"; {self.matricization} matricization of {self.layout}"
            + (f" ({grid_text(self.grid)})" if self.grid is not None else "")
            + "; "
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
        if "channels last" in self.layout_choice or "either" in self.layout_choice:
            lines.append("  layout: " + self.layout_choice)
        if self.variance_shortfall:
            lines.append("  variance target not reached: " + self.variance_shortfall)
        if self.degenerate:
            lines.append("  degenerate, do not read at face value: " + self.degenerate_reason)
        if self.evaluation == "in-sample":
            why = self.evaluation_reason
            reason = f"; in-sample because {why}" if why else ""
            lines.append("  note: " + _IN_SAMPLE_NOTE + reason)
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle):  # IPython/Jupyter
        printer.text(repr(self))


def variance_shortfall(result, target, *, fit_rows=None, rows_per_sample=None,
                       max_components=None):  # fmt: skip
    """Why ``result``'s k components keep less than ``target`` of the variance, or ``""``.

    ``target`` is ``n_components`` as given; only a float asks for a share. The fit on
    all samples and, for a cross-fitted result, every fold's fit are checked (a
    training set has fewer rows, so its k may be capped where the whole fit's is not).
    """
    if not isinstance(target, float) or not np.isfinite(result.explained_variance_ratio):
        return ""
    tol = 1e-9
    reached = result.explained_variance_ratio
    parts = []
    if reached < target - tol:
        k, cause = result.n_components, ""
        if max_components is not None and k >= max_components:
            cause = f"max_components={max_components} caps k"
        elif fit_rows is not None and rows_per_sample is not None:
            free = fit_rows - rows_per_sample
            if k >= free:
                cause = (
                    f"k is capped at m − R = {free}: centring over the samples leaves {free} "
                    f"degrees of freedom in {fit_rows} rows; more samples would lift the cap"
                )
        parts.append(
            f"n_components={target} asks for {target:.1%} of the variance; k={k} components "
            f"keep {_share(reached, target)}" + (f" ({cause})" if cause else "")
        )
    short_folds = [f for f in result.folds if f.explained_variance_ratio < target - tol]
    if short_folds:
        worst = min(short_folds, key=lambda f: f.explained_variance_ratio)
        parts.append(
            f"{len(short_folds)} of {len(result.folds)} folds' fits keep less than "
            f"{target:.1%} (the least {_share(worst.explained_variance_ratio, target)} with "
            f"k={worst.n_components})"
        )
    return "; ".join(parts)


def _share(reached, target):
    """A share short of ``target``, with the digits that show it is short."""
    for digits in (1, 2, 3, 4):
        text = f"{reached:.{digits}%}"
        if text != f"{target:.{digits}%}":
            return text
    return f"{reached:.6%}"


def described(result, *, grid, layout_choice, target=None, evaluation_reason="",
              fit_rows=None, rows_per_sample=None, max_components=None):  # fmt: skip
    """``result`` with the fields that say how it was read and whether its variance
    target was met (on its orbit elements too)."""
    from dataclasses import replace

    def one(r):
        shortfall = variance_shortfall(
            r, target, fit_rows=fit_rows, rows_per_sample=rows_per_sample,
            max_components=max_components,
        )  # fmt: skip
        return replace(
            r, grid=tuple(grid), layout_choice=layout_choice, evaluation_reason=evaluation_reason,
            variance_target=target if isinstance(target, float) else None,
            variance_shortfall=shortfall,
        )  # fmt: skip

    out = one(result)
    if result.elements:
        out = replace(out, elements=tuple(one(e) for e in result.elements))
    return out
