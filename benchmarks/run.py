"""Speed and memory of seis_score against baselines, measured in one process run.

Usage::

    python benchmarks/run.py                 # every case at full size (minutes)
    python benchmarks/run.py --scale 0.125   # the same cases with N scaled down
    python benchmarks/run.py --case spatial-blas

Each case prints our time, the baseline's time and their ratio (medians of
``--repeats`` runs; the machine is noisy, so only ratios within one run are
compared), and the peak resident memory of the process after the case.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seis_sklearn import matricize, seis_score  # noqa: E402


def peak_rss_mb():
    """Peak resident set size of this process so far, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def smooth_activations(n, c, h, w, seed=0, dtype=np.float32):
    """Spatially correlated activations, generated in place channel block by block."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, c, h, w), dtype=dtype)
    for start in range(0, n, 256):
        x = rng.standard_normal((min(256, n - start), c, h, w), dtype=np.float32)
        x += np.roll(x, 1, axis=3) + np.roll(x, 1, axis=2)
        out[start : start + 256] = x
    return out


def direct_seis(A, B, n_components=0.99, reg=1e-6):
    """The SPEC definitions written out with numpy/scipy, no streaming, no moments."""
    P = matricize(A).astype(np.float64)
    Q = matricize(B).astype(np.float64)
    m = P.shape[0]
    P -= P.mean(axis=0)
    Q -= Q.mean(axis=0)
    _, s, Vt = np.linalg.svd(np.vstack([P, Q]), full_matrices=False)
    lam = s**2 / (2 * m)
    k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), n_components) + 1)
    X, Y = P @ Vt[:k].T, Q @ Vt[:k].T

    def inv_sqrt(S):
        w, V = np.linalg.eigh(S + reg * lam[k - 1] * np.eye(k))
        return (V / np.sqrt(w)) @ V.T

    K = inv_sqrt(X.T @ X / m) @ (X.T @ Y / m) @ inv_sqrt(Y.T @ Y / m)
    rho = np.clip(np.linalg.svd(K, compute_uv=False), 0, 1)
    return rho.mean(), max(0.0, np.trace(K)) / k


def case_spatial(scale, repeats):
    """Spatial matricization, m = N·C rows, d = 1,024, float32."""
    n = max(64, int(4096 * scale))
    A = smooth_activations(n, 64, 32, 32, seed=0)
    B = np.roll(A, 2, axis=3)
    P, Q = matricize(A), matricize(B)
    label = f"spatial m={P.shape[0]:,} d={P.shape[1]:,} float32"

    def blas():
        Z = np.hstack([P[: P.shape[0] // 2], Q[: Q.shape[0] // 2]])  # half, to bound memory
        Z.T @ Z
        Z = np.hstack([P[P.shape[0] // 2 :], Q[Q.shape[0] // 2 :]])
        Z.T @ Z

    ours = median_time(lambda: seis_score(A, B), repeats)
    base = median_time(blas, repeats)
    yield label, "one BLAS product [P Q]^T[P Q] (float32)", ours, base
    if scale <= 0.25:  # the direct SVD of the stacked rows grows as m·d²: keep it bounded
        direct = median_time(lambda: direct_seis(A, B), 1)
        yield label, "direct numpy/scipy from the definitions", ours, direct


CASES = {"spatial": case_spatial}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    args = parser.parse_args(argv)
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"BLAS {blas.get('name', '?')} {blas.get('version', '')}; scale={args.scale}, "
        f"medians of {args.repeats}"
    )
    head = f"{'case':<36}{'baseline':<44}{'ours s':>9}{'base s':>9}{'ratio':>8}{'peak MB':>9}"
    print(head)
    print("-" * len(head))
    for name in args.case or sorted(CASES):
        for label, baseline, ours, base in CASES[name](args.scale, args.repeats):
            print(
                f"{label:<36}{baseline:<44}{ours:>9.3f}{base:>9.3f}{ours / base:>8.2f}"
                f"{peak_rss_mb():>9.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
