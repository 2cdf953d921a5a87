"""Synthetic validation of SEIS on scikit-learn's digits (the paper's §4.1), numpy only.

A fixed bank of random 5×5 filters is applied to the digits images (upsampled
to 32×32); the resulting activation maps are then transformed *directly*
(rotations, circular shifts, scalings, flips), so the ground truth is known: every
transform keeps the information (equivariance high) but moves it (invariance
low), except where interpolation or zero fill destroys part of it.

Run it with ``python -m seis_sklearn.demo --out DIR`` (``make demo-synthetic``): it prints
a table and writes ``synthetic_validation.csv`` and ``synthetic_validation.png``
in ``DIR``.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import transforms
from ._files import atomic_write
from ._result import SCORE_NAMES
from ._score import seis_score

FILTER_SEED = 20260523


def digits_activations(n_samples=600, n_filters=16, size=32, seed=FILTER_SEED):
    """Activations of a fixed random 5×5 filter bank on scikit-learn's digits.

    Parameters
    ----------
    n_samples : int, default=600
        Number of digit images used (the first ones of the data set).
    n_filters : int, default=16
        Number of random filters (channels).
    size : int, default=32
        Side of the upsampled images.
    seed : int
        Seed of the filter bank.

    Returns
    -------
    ndarray of shape (n_samples, n_filters, size, size), float32
        ``ReLU(filters ⋆ images)`` with zero padding ("same" size).
    """
    from sklearn.datasets import load_digits

    images = load_digits().images[:n_samples].astype(np.float64) / 16.0
    images = ndimage.zoom(images, (1, size / 8, size / 8), order=1, grid_mode=True, mode="nearest")
    rng = np.random.default_rng(seed)
    filters = rng.normal(size=(n_filters, 5, 5))
    filters -= filters.mean(axis=(1, 2), keepdims=True)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (5, 5), axis=(1, 2))
    out = np.einsum("nhwij,cij->nchw", windows, filters, optimize=True)
    return np.maximum(out, 0.0).astype(np.float32)


def sweep_transforms():
    """The transforms of the sweep: (family, magnitude, label, function)."""
    cases = []
    for angle in range(0, 181, 15):
        cases.append(
            ("rotation", angle, f"rotate {angle}°", lambda a, t=angle: transforms.rotate(a, t))
        )
    for shift in range(0, 9):
        cases.append(
            ("shift", shift, f"shift {shift} px", lambda a, s=shift: transforms.translate(a, s))
        )
    for factor in (0.8, 0.9, 1.1, 1.25):
        cases.append(
            ("scale", factor, f"scale ×{factor:g}", lambda a, f=factor: transforms.scale(a, f))
        )
    cases.append(("flip", 1, "flip horizontal", transforms.hflip))
    cases.append(("flip", 2, "flip vertical", transforms.vflip))
    return cases


def run_sweep(A, *, cv=3, n_components=0.99, progress=None):
    """Score every transform of :func:`sweep_transforms` on the activations ``A``.

    Parameters
    ----------
    A : ndarray of shape (n_samples, channels, H, W)
        Reference activations.
    cv : int, default=3
        Folds of the cross-fitted (held-out) scores.
    n_components : int or float, default=0.99
        Passed to :func:`seis_score`.
    progress : callable, optional
        Called with each finished row.

    Returns
    -------
    list of dict
        One row per transform with its family, magnitude, label, the four
        scores and ``k``.
    """
    rows = []
    for family, magnitude, label, fn in sweep_transforms():
        result = seis_score(A, fn(A), cv=cv, n_components=n_components)
        row = {"family": family, "magnitude": magnitude, "transform": label}
        row.update({name: getattr(result, name) for name in SCORE_NAMES})
        row["k"] = result.n_components
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def format_table(rows):
    """Render the sweep as a fixed-width text table."""
    head = f"{'transform':<18}{'S_E':>8}{'S_I':>8}{'S_E^w':>8}{'S_I^w':>8}{'k':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['transform']:<18}{r['equivariance']:>8.3f}{r['invariance']:>8.3f}"
            f"{r['equivariance_weighted']:>8.3f}{r['invariance_weighted']:>8.3f}{r['k']:>6d}"
        )
    return "\n".join(lines)


def rows_to_csv(rows):
    """CSV text of the sweep rows."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def plot_sweep(rows, title=""):
    """Figure of the four scores against transform magnitude (needs matplotlib).

    Returns
    -------
    matplotlib.figure.Figure
    """
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the figure needs matplotlib: pip install 'seis-sklearn[plot]'"
        ) from None
    fig = Figure(figsize=(15, 3.8), layout="constrained")
    axes = fig.subplots(1, 4, sharey=True)
    styles = {
        "equivariance": ("S_E", "C0", "-"),
        "invariance": ("S_I", "C3", "-"),
        "equivariance_weighted": ("S_E^w", "C0", "--"),
        "invariance_weighted": ("S_I^w", "C3", "--"),
    }
    for ax, family, xlabel in zip(
        axes,
        ("rotation", "shift", "scale", "flip"),
        ("angle (degrees)", "circular shift (px)", "zoom factor", ""),
        strict=True,
    ):
        sel = [r for r in rows if r["family"] == family]
        x = np.arange(len(sel)) if family == "flip" else [r["magnitude"] for r in sel]
        for name, (label, color, ls) in styles.items():
            ax.plot(x, [r[name] for r in sel], ls, color=color, marker="o", ms=3, label=label)
        if family == "flip":
            ax.set_xticks(x, [r["transform"].replace("flip ", "") for r in sel])
            ax.set_xlim(-0.5, len(sel) - 0.5)
        ax.set_title(family)
        ax.set_xlabel(xlabel)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (held-out)")
    axes[0].legend(loc="center left", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def main(argv=None):
    """Command-line entry point: ``python -m seis_sklearn.demo``."""
    parser = argparse.ArgumentParser(
        prog="python -m seis_sklearn.demo",
        description="SEIS on random-filter activations of scikit-learn's digits, "
        "transformed directly (the paper's synthetic validation).",
        allow_abbrev=False,  # options in full, as seis takes them
    )
    parser.add_argument("--out", default="demo-output", help="output folder (created)")
    parser.add_argument("--samples", type=int, default=600, help="digits used (default 600)")
    parser.add_argument("--cv", type=int, default=3, help="folds for held-out scores (default 3)")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    if args.samples < 2 * args.cv:
        parser.error(f"--samples must be at least twice --cv ({2 * args.cv})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    A = digits_activations(n_samples=args.samples)
    print(
        f"activations: {A.shape[0]} digits × {A.shape[1]} random 5×5 filters on "
        f"{A.shape[2]}×{A.shape[3]} grids (float32); scores cross-fitted over {args.cv} folds,"
        " spatial matricization, n_components=0.99\n"
    )
    print(format_table([]))
    rows = run_sweep(A, cv=args.cv, progress=lambda r: print(format_table([r]).splitlines()[2]))
    atomic_write(out / "synthetic_validation.csv", rows_to_csv(rows).encode())
    written = [out / "synthetic_validation.csv"]
    if not args.no_plot:
        fig = plot_sweep(rows, "SEIS on digits activations transformed directly")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        atomic_write(out / "synthetic_validation.png", buf.getvalue())
        written.append(out / "synthetic_validation.png")
    print(f"\n{time.perf_counter() - start:.1f} s; wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
