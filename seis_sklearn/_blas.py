"""SYRK and the symmetric eigensolver from the BLAS library numpy itself runs on, where
it can be found.

``numpy.matmul(x.T, x)`` recognises the product of a matrix with its own transpose
and calls SYRK, but then copies the computed triangle into the other one: for the
4,096 × 2,048 float32 chunks of the moment pass that copy costs ≈ 13 % of the product
(``benchmarks/README.md``). scipy's ``ssyrk`` has no copy but runs on scipy's own
OpenBLAS, a second thread pool whose idle threads spin against numpy's (and
torch's) after every call. So where numpy ships OpenBLAS (its wheels do), this module
calls ``cblas_?syrk`` of *that* library — the one already loaded, found with
``RTLD_NOLOAD`` so that nothing else is ever loaded — and fills only the lower
triangle. Elsewhere (numpy built against MKL, Accelerate, a system BLAS)
:func:`syrk_lower` falls back to ``numpy.matmul``, which fills both triangles.

:func:`eigh_inplace` calls the same library's LAPACK ``dsyevd`` — the routine
``numpy.linalg.eigh`` calls, so the results are the same bits — on the caller's own
matrix: ``numpy.linalg.eigh`` first copies its input into column-major order, one
column at a time, which at d = 3,136 costs ≈ 10 % of the decomposition
(``benchmarks/README.md``); a symmetric matrix is its own transpose, so its
row-major buffer already is the column-major matrix LAPACK reads.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

_ROW_MAJOR, _LOWER, _TRANS = 101, 122, 112  # CBLAS enums
_SYMBOLS = (  # (name, integer type): numpy >= 2 wheels, then numpy 1.x wheels
    ("scipy_cblas_{}syrk64_", ctypes.c_int64),
    ("cblas_{}syrk64_", ctypes.c_int64),
    ("scipy_cblas_{}syrk", ctypes.c_int),
    ("cblas_{}syrk", ctypes.c_int),
)
_REALS = {
    np.dtype(np.float32): ("s", ctypes.c_float),
    np.dtype(np.float64): ("d", ctypes.c_double),
}


def _numpy_openblas_libraries():
    """The OpenBLAS libraries numpy has loaded (only those: the same thread pool,
    nothing new loaded)."""
    root = os.path.dirname(np.__file__)
    candidates = sorted(
        glob.glob(os.path.join(root, os.pardir, "numpy.libs", "*openblas*"))  # Linux
        + glob.glob(os.path.join(root, ".dylibs", "*openblas*"))  # macOS
    )
    for path in candidates:
        try:
            yield ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)
        except OSError:  # pragma: no cover - a file numpy does not use
            continue


def _numpy_openblas_syrk():
    """``{dtype: function}`` for numpy's own OpenBLAS, or ``{}`` where not found."""
    if not hasattr(os, "RTLD_NOLOAD"):  # pragma: no cover - Windows
        return {}
    for lib in _numpy_openblas_libraries():
        for pattern, integer in _SYMBOLS:
            names = {dtype: pattern.format(letter) for dtype, (letter, _) in _REALS.items()}
            if not all(hasattr(lib, name) for name in names.values()):
                continue
            functions = {}
            for dtype, name in names.items():
                real = _REALS[dtype][1]
                functions[dtype] = function = getattr(lib, name)
                function.restype = None
                function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                     integer, integer, real, ctypes.c_void_p, integer,
                                     real, ctypes.c_void_p, integer]  # fmt: skip
            return functions
    return {}  # pragma: no cover - numpy without a bundled OpenBLAS


_SYRK = _numpy_openblas_syrk()

_LAPACKE = (  # (name pattern, integer type), as _SYMBOLS
    ("scipy_LAPACKE_{}64_", ctypes.c_int64),
    ("LAPACKE_{}64_", ctypes.c_int64),
    ("scipy_LAPACKE_{}", ctypes.c_int),
    ("LAPACKE_{}", ctypes.c_int),
)
_COL_MAJOR = 102


def _numpy_openblas_syevd():
    """LAPACKE ``dsyevd`` of numpy's own OpenBLAS, or None where not found."""
    if not hasattr(os, "RTLD_NOLOAD"):  # pragma: no cover - Windows
        return None
    for lib in _numpy_openblas_libraries():
        for pattern, integer in _LAPACKE:
            function = getattr(lib, pattern.format("dsyevd"), None)
            if function is None:
                continue
            function.restype = integer
            function.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, integer,
                                 ctypes.c_void_p, integer, ctypes.c_void_p]  # fmt: skip
            return function
    return None  # pragma: no cover - numpy without a bundled OpenBLAS


_SYEVD = _numpy_openblas_syevd()


def eigh_inplace(matrix, triangle="upper"):
    """Eigenvalues (ascending) and eigenvectors of a real symmetric matrix, computed in
    its own memory.

    Parameters
    ----------
    matrix : ndarray of shape (n, n)
        float64, C-contiguous; overwritten (by the eigenvectors, where numpy's
        OpenBLAS is found). Only the ``triangle`` named is read.
    triangle : {"upper", "lower"}, default="upper"
        ``"upper"`` on a symmetric matrix gives the bits ``numpy.linalg.eigh`` gives
        (which reads the lower triangle of its column-major copy: the same numbers
        in the same order).

    Returns
    -------
    eigenvalues : ndarray of shape (n,)
    eigenvectors : ndarray of shape (n, n)
        Columns (a transposed view of ``matrix``'s memory, or a new array where
        ``numpy.linalg.eigh`` ran instead).

    Raises
    ------
    numpy.linalg.LinAlgError
        If the eigensolver does not converge (as ``numpy.linalg.eigh``).
    """
    usable = (
        _SYEVD is not None
        and matrix.dtype == np.float64
        and matrix.ndim == 2
        and matrix.shape[0] == matrix.shape[1]
        and matrix.shape[0] > 0
        and matrix.flags.c_contiguous
        and matrix.flags.writeable
    )
    if not usable:
        return np.linalg.eigh(matrix, UPLO="U" if triangle == "upper" else "L")
    n = matrix.shape[0]
    values = np.empty(n)
    # the row-major upper triangle is the column-major lower one
    uplo = b"L" if triangle == "upper" else b"U"
    info = _SYEVD(_COL_MAJOR, b"V", uplo, n, matrix.ctypes.data, n, values.ctypes.data)
    if info != 0:
        raise np.linalg.LinAlgError(f"Eigenvalues did not converge (dsyevd info={info})")
    return values, matrix.T


def syrk_lower(x, out, beta=0.0):
    """``out ← xᵀx + beta·out``, at least on and below the diagonal.

    Parameters
    ----------
    x : ndarray of shape (rows, n)
        float32 or float64, rows contiguous (``x.strides[1]`` one item).
    out : ndarray of shape (n, n)
        Same dtype, C-contiguous. With numpy's OpenBLAS only its lower triangle
        (diagonal included) is written and the strict upper triangle is left as it
        was; otherwise (``numpy.matmul``) all of it.
    beta : {0.0, 1.0}
        1.0 adds the product to ``out``.

    Returns
    -------
    bool
        Whether only the lower triangle was written.
    """
    function = _SYRK.get(x.dtype)
    usable = (
        function is not None
        and out.dtype == x.dtype
        and out.flags.c_contiguous
        and x.ndim == 2
        and x.shape[0] > 0
        and x.shape[1] > 0
        and x.strides[1] == x.itemsize
        and x.strides[0] % x.itemsize == 0
        and x.strides[0] >= x.shape[1] * x.itemsize
    )
    if not usable:
        if beta:
            out += x.T @ x
        else:
            np.matmul(x.T, x, out=out)
        return False
    n, k = x.shape[1], x.shape[0]
    function(_ROW_MAJOR, _LOWER, _TRANS, n, k, 1.0, x.ctypes.data,
             x.strides[0] // x.itemsize, beta, out.ctypes.data, n)  # fmt: skip
    return True


# Block rows of a symmetric product computed as one GEMM each (their lower triangle):
# at k = 2,983 six take 0.36 s against 0.56 s for the whole product (benchmarks/README.md).
SYMMETRIC_BLOCKS = 6
# Below this size the whole product is one GEMM (the blocks' overhead would not pay).
SYMMETRIC_MIN = 512


def symmetric_product(a, b):
    """``aᵀb`` for a product known to be symmetric (``VᵀCV`` as ``Vᵀ(CV)``, C symmetric):
    its lower triangle by block rows, one GEMM each, then mirrored — about 60 % of the
    product's flops at six blocks, and exactly symmetric.

    Parameters
    ----------
    a, b : ndarray of shape (d, k)

    Returns
    -------
    ndarray of shape (k, k)
    """
    k = a.shape[1]
    if k < SYMMETRIC_MIN:
        return a.T @ b
    out = np.empty((k, k), dtype=np.result_type(a, b))
    edges = np.linspace(0, k, SYMMETRIC_BLOCKS + 1).astype(int)
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        np.matmul(a[:, start:stop].T, b[:, :stop], out=out[start:stop, :stop])
    return mirror_lower(out)


def mirror_lower(matrix, block=256):
    """Copy the strict lower triangle of a square ``matrix`` onto its upper one, in
    place: ``block`` rows at a time, so that no temporary as large as the matrix is
    made (a d × d moment of a 56×56 map is 79 MB)."""
    n = matrix.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        diagonal = matrix[start:stop, start:stop]
        diagonal[...] = np.tril(diagonal) + np.tril(diagonal, -1).T
        matrix[start:stop, stop:] = matrix[stop:, start:stop].T
    return matrix


def symmetrize(matrix, block=256):
    """``matrix ← (matrix + matrixᵀ)/2`` in place, ``block`` rows at a time (no
    temporary as large as the matrix); returns it."""
    n = matrix.shape[0]
    for start in range(0, n, block):
        stop = min(start + block, n)
        diagonal = matrix[start:stop, start:stop]
        diagonal[...] = 0.5 * (diagonal + diagonal.T)
        below = matrix[stop:, start:stop]
        below += matrix[start:stop, stop:].T
        below *= 0.5
        matrix[start:stop, stop:] = below.T
    return matrix
