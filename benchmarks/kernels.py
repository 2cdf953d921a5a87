"""Numba or numpy/BLAS? Times each step of the moment pass both ways, on one chunk.

Usage: ``python benchmarks/kernels.py``. Prints, per step and shape, the
numpy/BLAS time, the Numba time (after compilation) and their ratio; the
decisions in ``benchmarks/README.md`` and ``seis_sklearn/_moments.py`` follow
from these numbers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy.linalg import blas

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seis_sklearn import matricize  # noqa: E402
from seis_sklearn._kernels import centre_chunk, outer_products, sample_view  # noqa: E402


def best(fn, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def numpy_centre(chunk, layout, mode):
    block = matricize(chunk, layout, mode)  # a copy for transposing layouts
    mu = block.mean(axis=0, dtype=np.float64)
    shift = mu.astype(np.float32)
    z = np.empty(block.shape, np.float32)
    np.subtract(block, shift, out=z, casting="unsafe")
    return z, z.min(), z.max()


def numba_centre(chunk, layout, mode):
    return centre_chunk(sample_view(chunk, layout, mode), np.float32)


def blas_products(z0, z1, acc):
    d = z0.shape[1]
    sym = np.zeros((d, d), np.float32)
    full = np.zeros((d, d), np.float32)
    for z, a in ((z0, acc[0]), (z1, acc[1])):
        blas.ssyrk(1.0, z.T, beta=0.0, c=sym.T, trans=0, lower=0, overwrite_c=1)
        a += sym
    blas.sgemm(1.0, z1.T, z0.T, beta=0.0, c=full.T, trans_b=1, overwrite_c=1)
    acc[2] += full


def main():
    rng = np.random.default_rng(0)
    print(f"{'step':<44}{'shape':<24}{'numpy/BLAS ms':>14}{'numba ms':>10}{'ratio':>8}")
    # one chunk of the moment pass: 4,096 rows
    cases = [
        ("NCHW", "spatial", (64, 64, 32, 32)),  # a view already: contiguous rows
        ("NHWC", "spatial", (64, 32, 32, 64)),  # transposing layout, d = 1,024
        ("NLD", "spatial", (64, 196, 64)),  # tokens: rows (n, feature), d = L = 196
        ("NCHW", "channel", (4, 64, 32, 32)),  # transposing layout, d = 64
        ("NHWC", "channel", (4, 32, 32, 64)),  # a view already, d = 64
    ]
    for layout, mode, shape in cases:
        chunk = rng.standard_normal(shape, dtype=np.float32)
        t_np = best(lambda c=chunk, la=layout, mo=mode: numpy_centre(c, la, mo))
        t_nb = best(lambda c=chunk, la=layout, mo=mode: numba_centre(c, la, mo))
        z = numpy_centre(chunk, layout, mode)[0]
        print(
            f"{'centre + cast + range, ' + layout + ' ' + mode:<44}{str(z.shape):<24}"
            f"{t_np * 1e3:>14.2f}{t_nb * 1e3:>10.2f}{t_nb / t_np:>8.2f}"
        )
    for d in (4, 8, 16, 32, 64, 256):
        m = 65536 if d <= 64 else 4096
        z0 = rng.standard_normal((m, d), dtype=np.float32)
        z1 = rng.standard_normal((m, d), dtype=np.float32)
        acc = [np.zeros((d, d)) for _ in range(3)]
        t_blas = best(lambda: blas_products(z0, z1, acc), 5)
        t_nb = best(lambda: outer_products(z0, z1, acc[0], acc[1], acc[2]), 3)
        print(
            f"{'products z0ᵀz0, z1ᵀz1, z0ᵀz1 (f32 in)':<44}{str((m, d)):<24}"
            f"{t_blas * 1e3:>14.2f}{t_nb * 1e3:>10.2f}{t_nb / t_blas:>8.2f}"
        )


if __name__ == "__main__":
    main()
