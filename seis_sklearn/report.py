"""Layerwise reports: a table of scores per (layer, transform) and its figure.

Needs the ``plot`` extra (pandas, matplotlib), imported when a function is called.
The table comes from :func:`seis_sklearn.adapters.torch.layerwise_seis` (or from
:func:`report_frame` on any rows); :func:`plot_layerwise` draws S_E and S_I against
depth, one colour per transform; :func:`save_report` writes ``report.csv`` and
``layers.png`` in one call.
"""

from __future__ import annotations

import io
from pathlib import Path

from ._files import atomic_write

COLUMNS = (
    "layer",
    "depth",
    "module",
    "shape",
    "transform",
    "equivariance",
    "invariance",
    "equivariance_weighted",
    "invariance_weighted",
    "n_components",
    "n_rows",
    "evaluation",
    "matricization",
    "matricization_choice",
    "layout",
    "layout_choice",
    "remedy",
    "degenerate",
    "degenerate_reason",
)


def _pandas():
    try:
        import pandas
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("the report needs pandas: pip install 'seis-sklearn[plot]'") from None
    return pandas


def report_frame(rows):
    """The report table from rows of per-(layer, transform) results.

    Parameters
    ----------
    rows : iterable of dict
        Each with the keys of :data:`COLUMNS`, and optionally more (statistics,
        other metrics), which become further columns.

    Returns
    -------
    pandas.DataFrame
        Columns in the order of :data:`COLUMNS`, then the extra ones; sorted by
        transform then depth.
    """
    pd = _pandas()
    rows = list(rows)
    extra = list(dict.fromkeys(k for row in rows for k in row if k not in COLUMNS))
    frame = pd.DataFrame(rows, columns=list(COLUMNS) + extra)
    return frame.sort_values(["transform", "depth"], kind="stable").reset_index(drop=True)


def result_row(
    result,
    *,
    layer,
    depth,
    module,
    shape,
    transform,
    metrics=None,
    matricization_choice="given",
    layout_choice="given",
    remedy="",
):
    """One report row from a :class:`~seis_sklearn.SEISResult`.

    The row says which matricization was used and how it was chosen
    (``matricization_choice``: ``"given"`` or the rule of
    ``matricization="auto"``), the layout the layer was read in and how it was
    recognised (``layout_choice``: ``"given"``, or the grid, probe or token rule of a
    layerwise report), what a budget changed (``remedy``: a pooled map, or why the
    layer was not scored), and whether the scores are ``degenerate`` (with the reason;
    a layer that could not be scored has NaN scores and ``"not scored: …"``).
    Permutation p-values and bootstrap intervals, when the result has them, become
    the columns ``<score>_p``, ``<score>_null_mean``, ``<score>_ci_low`` and
    ``<score>_ci_high``; ``metrics`` (name → value) are added as they are.
    """
    row = {
        "layer": layer,
        "depth": depth,
        "module": module,
        "shape": "×".join(map(str, shape)),
        "transform": transform,
        "equivariance": result.equivariance,
        "invariance": result.invariance,
        "equivariance_weighted": result.equivariance_weighted,
        "invariance_weighted": result.invariance_weighted,
        "n_components": result.n_components,
        "n_rows": result.n_rows,
        "evaluation": result.evaluation,
        "matricization": result.matricization,
        "matricization_choice": matricization_choice,
        "layout": result.layout,
        "layout_choice": layout_choice,
        "remedy": remedy,
        "degenerate": result.degenerate,
        "degenerate_reason": result.degenerate_reason,
    }
    for name in ("equivariance", "invariance", "equivariance_weighted", "invariance_weighted"):
        if result.p_values is not None:
            row[f"{name}_p"] = result.p_values[name]
            row[f"{name}_null_mean"] = result.null_means[name]
        if result.ci_low is not None:
            row[f"{name}_ci_low"] = result.ci_low[name]
            row[f"{name}_ci_high"] = result.ci_high[name]
    row.update(metrics or {})
    return row


def save_figure(fig, path, *, dpi=110):
    """Write a figure to ``path`` atomically, in the format its suffix names.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or path-like
        ``.png``, ``.pdf``, ``.svg`` … (what matplotlib writes); its folder must exist.
    dpi : int, default=110

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        Naming ``path``: no suffix, a format matplotlib does not write, or a folder
        that does not exist (nothing is written).
    """
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    formats = fig.canvas.get_supported_filetypes()
    if kind not in formats:
        raise ValueError(
            f"path={str(path)!r}: the suffix must name an image format "
            f"({', '.join('.' + f for f in sorted(formats))}); got {path.suffix or 'none'!r}"
        )
    if not path.parent.is_dir():
        raise ValueError(f"path={str(path)!r}: the folder {str(path.parent)!r} does not exist")
    buf = io.BytesIO()
    fig.savefig(buf, format=kind, dpi=dpi)
    atomic_write(path, buf.getvalue())
    return path


def _saved(fig, path):
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_layerwise(frame, *, title=None, weighted=False, ax=None, path=None):
    """S_E (solid) and S_I (dashed) against depth, one colour per transform.

    Parameters
    ----------
    frame : pandas.DataFrame
        A report table (:func:`report_frame`).
    title : str, optional
    weighted : bool, default=False
        Plot the variance-weighted pair instead of the uniform one.
    ax : matplotlib.axes.Axes, optional
        Draw into this axis (e.g. one panel per model) instead of a new figure.
    path : str or path-like, optional
        Also save the figure there (:func:`save_figure`: ``.png``, ``.pdf``,
        ``.svg`` …; with ``ax``, the whole figure that holds it).

    Returns
    -------
    matplotlib.figure.Figure
        Two lines per transform; the x axis is labelled with the layer names;
        degenerate rows (SPEC §2.1) are crossed out in grey. Every plot function of
        the project returns the Figure (``fig.axes`` holds its panels).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the figure needs matplotlib: pip install 'seis-sklearn[plot]'"
        ) from None
    suffix = "_weighted" if weighted else ""
    if ax is None:
        fig = Figure(
            figsize=(max(6.0, 0.55 * frame["depth"].nunique() + 3), 4.2), layout="constrained"
        )
        ax = fig.subplots()
    flagged = frame["degenerate"].astype(bool) if "degenerate" in frame else None
    marked = False
    for i, (name, group) in enumerate(frame.groupby("transform", sort=False)):
        group = group.sort_values("depth")
        for score, style, label in (("equivariance", "-o", "S_E"), ("invariance", "--s", "S_I")):
            ax.plot(
                group["depth"],
                group[score + suffix],
                style,
                color=f"C{i % 10}",
                ms=4,
                label=f"{name}: {label}",
            )
            if flagged is not None and flagged[group.index].any():
                bad = group[flagged[group.index]]
                label = None if marked else "degenerate (not at face value)"
                ax.plot(bad["depth"], bad[score + suffix], "x", color="0.35", ms=9, label=label)
                marked = True
    ticks = frame.drop_duplicates("depth").sort_values("depth")
    ax.set_xticks(ticks["depth"], ticks["layer"], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("layer (depth order)")
    ax.set_ylabel(("variance-weighted " if weighted else "") + "score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="best")
    evaluation = ", ".join(sorted(set(frame["evaluation"])))
    ax.set_title(title or f"SEIS by layer ({evaluation})")
    return _saved(ax.figure, path)


#: Columns :func:`plot_measures` draws when a report has them, and their titles.
MEASURE_TITLES = {
    "equivariance": "SEIS S_E",
    "invariance": "SEIS S_I",
    "cka": "linear CKA",
    "cka_debiased": "debiased CKA",
    "svcca": "SVCCA",
    "pwcca": "PWCCA",
    "channel_eed": "G-EED (channel term)",
    "lee": "LEE share",
}


def plot_measures(frame, measures=None, *, title=None, path=None):
    """Every measure of a report against depth, one panel each (their scales differ),
    one line per transform: SEIS beside the metrics from the literature.

    Parameters
    ----------
    frame : pandas.DataFrame
        A report table, e.g. of ``layerwise_seis(..., metrics=["cka_debiased",
        "channel_eed", "lee"])``.
    measures : sequence of str, optional
        Columns to draw; default every column of :data:`MEASURE_TITLES` the frame has
        with a value.
    title : str, optional
    path : str or path-like, optional
        Also save the figure there (:func:`save_figure`).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import pandas as pd
    >>> from seis_sklearn.report import plot_measures
    >>> frame = pd.DataFrame({"layer": ["a", "b"], "depth": [0, 1], "transform": "rot90",
    ...                       "equivariance": [0.9, 0.5], "invariance": [0.1, 0.4],
    ...                       "cka": [0.8, 0.6]})
    >>> [ax.get_title() for ax in plot_measures(frame).axes]
    ['SEIS S_E', 'SEIS S_I', 'linear CKA']
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the figure needs matplotlib: pip install 'seis-sklearn[plot]'"
        ) from None
    if measures is None:
        measures = [m for m in MEASURE_TITLES if m in frame and frame[m].notna().any()]
    measures = list(measures)
    missing = [m for m in measures if m not in frame]
    if missing or not measures:
        raise ValueError(
            f"measures: the report has no column {missing[0]!r}"
            if missing
            else "measures: the report has none of the measures' columns"
        )
    fig = Figure(figsize=(2.6 * len(measures) + 0.6, 3.0), layout="constrained")
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    ticks = frame.drop_duplicates("depth").sort_values("depth")
    for ax, name in zip(axes, measures, strict=True):
        for i, (transform, group) in enumerate(frame.groupby("transform", sort=False)):
            group = group.sort_values("depth")
            ax.plot(group["depth"], group[name].astype(float), "-o", ms=3, color=f"C{i % 10}",
                    label=str(transform))  # fmt: skip
        ax.set_xticks(ticks["depth"], ticks["layer"], rotation=45, ha="right", fontsize=7)
        ax.set_title(MEASURE_TITLES.get(name, name), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _saved(fig, path)


def save_report(frame, out, *, title=None):
    """Write ``report.csv`` and ``layers.png`` in ``out`` (created), each atomically.

    Parameters
    ----------
    frame : pandas.DataFrame
    out : str or path-like
        Output folder.
    title : str, optional
        Title of the figure.

    Returns
    -------
    (pathlib.Path, pathlib.Path)
        The CSV and the PNG.
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = folder / "report.csv", folder / "layers.png"
    atomic_write(csv_path, frame.to_csv(index=False, float_format="%.6f").encode())
    buf = io.BytesIO()
    plot_layerwise(frame, title=title).savefig(buf, format="png", dpi=110)
    atomic_write(png_path, buf.getvalue())
    return csv_path, png_path
