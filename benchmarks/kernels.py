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
from seis_sklearn._kernels import centre_into_view, sample_view  # noqa: E402


def _outer_products_kernel():
    import numba

    @numba.njit(cache=True, nogil=True)
    def outer_products(z0, z1, auto0, auto1, cross):
        """Lower triangles of z0ᵀz0, z1ᵀz1 and all of z0ᵀz1, added in float64."""
        m, d = z0.shape
        for i in range(m):
            for a in range(d):
                x0 = np.float64(z0[i, a])
                x1 = np.float64(z1[i, a])
                for b in range(a + 1):
                    auto0[a, b] += x0 * z0[i, b]
                    auto1[a, b] += x1 * z1[i, b]
                for b in range(d):
                    cross[b, a] += z0[i, b] * x1

    return outer_products


outer_products = _outer_products_kernel()


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
    shift = block.mean(axis=0, dtype=np.float64).astype(np.float32)
    z = np.empty(block.shape, np.float32)
    np.subtract(block, shift, out=z, casting="unsafe")
    return z, block.sum(axis=0, dtype=np.float64) - len(block) * shift.astype(np.float64)


def numba_centre(chunk, layout, mode):
    view = sample_view(chunk, layout, mode)
    shift = view.mean(axis=0, dtype=np.float64).astype(np.float32)
    out = np.empty((view.shape[0] * view.shape[1], view.shape[2]), np.float32)
    return out, centre_into_view(view, shift, out)


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
            f"{'centre + cast + sums, ' + layout + ' ' + mode:<44}{str(z.shape):<24}"
            f"{t_np * 1e3:>14.2f}{t_nb * 1e3:>10.2f}{t_nb / t_np:>8.2f}"
        )
    for d in (4, 8, 16, 32, 64, 256):
        m = 65536 if d <= 64 else 4096
        z0 = rng.standard_normal((m, d), dtype=np.float32)
        z1 = rng.standard_normal((m, d), dtype=np.float32)
        acc = [np.zeros((d, d)) for _ in range(3)]
        t_blas = best(lambda z0=z0, z1=z1, acc=acc: blas_products(z0, z1, acc), 5)
        t_nb = best(lambda z0=z0, z1=z1, a=acc: outer_products(z0, z1, a[0], a[1], a[2]), 3)
        print(
            f"{'products z0ᵀz0, z1ᵀz1, z0ᵀz1 (f32 in)':<44}{str((m, d)):<24}"
            f"{t_blas * 1e3:>14.2f}{t_nb * 1e3:>10.2f}{t_nb / t_blas:>8.2f}"
        )

    geed_kernels(rng)


def numpy_channel_cosines(a, b):
    """Cosines per (sample, channel) with numpy: three reductions over the grid."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    dot = np.einsum("ncp,ncp->nc", a, b)
    norms = np.sqrt(np.einsum("ncp,ncp->nc", a, a) * np.einsum("ncp,ncp->nc", b, b))
    return np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)


def numpy_mean_pair_distance(x):
    """Mean pairwise Euclidean distance through the Gram matrix (one BLAS product)."""
    sq = np.einsum("nd,nd->n", x, x)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    n = x.shape[0]
    return np.sqrt(d2)[np.triu_indices(n, 1)].mean()


def geed_kernels(rng):
    """The two loops of seis_sklearn.metrics (G-EED) both ways."""
    from scipy.spatial.distance import pdist

    from seis_sklearn.metrics import _channel_cosines, _mean_pair_distance

    for shape in ((256, 64, 1024), (256, 256, 64)):
        a = rng.standard_normal(shape, dtype=np.float32)
        b = rng.standard_normal(shape, dtype=np.float32)
        t_np = best(lambda a=a, b=b: numpy_channel_cosines(a, b), 3)
        t_nb = best(lambda a=a, b=b: _channel_cosines(a, b), 3)
        print(
            f"{'G-EED channel cosines (f32 in)':<44}{str(shape):<24}"
            f"{t_np * 1e3:>14.2f}{t_nb * 1e3:>10.2f}{t_nb / t_np:>8.2f}"
        )
    for shape in ((2000, 512), (2000, 16)):
        x = rng.standard_normal(shape)
        t_np = best(lambda x=x: numpy_mean_pair_distance(x), 3)
        t_sp = best(lambda x=x: pdist(x).mean(), 3)
        t_nb = best(lambda x=x: _mean_pair_distance(x), 3)
        print(
            f"{'G-EED mean pair distance (Gram / pdist)':<44}{str(shape):<24}"
            f"{t_np * 1e3:>14.2f}{t_nb * 1e3:>10.2f}{t_nb / t_np:>8.2f}"
            f"   pdist {t_sp * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
