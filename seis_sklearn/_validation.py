"""Input and parameter validation shared by every public entry point (SPEC §4).

Every check raises one ``ValueError`` or ``TypeError`` whose message starts with
the name of the offending argument.
"""

from __future__ import annotations

import numbers
import re
import sys
import warnings

import numpy as np

from ._matricize import (
    LayoutWarning,
    auto_layout,
    check_matricization,
    matrix_shape,
    resolve_layout,
)

SCORE_KINDS = (
    "equivariance",
    "invariance",
    "equivariance_weighted",
    "invariance_weighted",
)
INVARIANCE_MODES = ("trace", "abs")
SOLVERS = ("auto", "moments", "gram")

# Samples per chunk are chosen so one chunk of one matricized view in float64
# stays near this size: large enough for BLAS, small enough for the caches.
CHUNK_BYTES = 1 << 25


def is_dask_array(x):
    """True for a ``dask.array.Array`` (without importing dask when it is not loaded)."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(x, module.Array)


def is_torch_tensor(x):
    """True for a ``torch.Tensor`` (without importing torch when it is not loaded)."""
    module = sys.modules.get("torch")
    return module is not None and isinstance(x, module.Tensor)


def check_dask_chunks(A, name):
    """Check a dask array's chunks (its dtype and shape are checked like numpy's).

    Returns the array, rechunked (lazily, with a warning) so that every axis but
    the samples axis is one chunk: the moments are accumulated block by block
    of whole samples. Nothing is computed.
    """
    if any(np.isnan(c) for chunks in A.chunks for c in chunks):
        raise ValueError(
            f"{name} has unknown chunk sizes (e.g. after boolean indexing); call "
            f"{name}.compute_chunk_sizes() first"
        )
    split = [axis for axis in range(1, A.ndim) if len(A.chunks[axis]) > 1]
    if split:
        warnings.warn(
            f"{name} is chunked along feature axis {split[0]} (chunks {A.chunks[split[0]]}); "
            "SEIS streams whole samples, so it is rechunked to one chunk along every axis "
            "but the first. Chunk along the samples axis only to avoid the rechunk.",
            UserWarning,
            stacklevel=5,
        )
        A = A.rechunk({axis: -1 for axis in range(1, A.ndim)})
    return A


def as_activation_array(A, name):
    """Return ``A`` as a numeric ndarray (no copy) or raise naming ``name``.

    Parameters
    ----------
    A : array-like
        Activations, samples first.
    name : str
        Argument name used in error messages.

    Returns
    -------
    A : ndarray or dask array
        The same memory when ``A`` already is an ndarray (memory maps included);
        a dask array stays lazy (see :mod:`seis_sklearn._dask`).
    """
    if is_torch_tensor(A):  # autograd is not needed for scores: a detached host view
        A = A.detach()
        A = A if A.device.type == "cpu" else A.cpu()
        if str(A.dtype) == "torch.bfloat16":  # numpy has no bfloat16: float32 holds it exactly
            A = A.float()
        A = A.numpy()
    if isinstance(A, np.matrix):  # a 2-D array that is not an ndarray in behaviour
        A = np.asarray(A)
    _check_frame_columns(A, name)
    lazy = is_dask_array(A)  # a dask array is checked from its metadata, never computed
    if isinstance(A, np.ndarray) or lazy:
        arr = A
    else:
        try:
            arr = np.asarray(A)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name} cannot be read as an array: {exc}") from None
    if arr.dtype == object:
        raise TypeError(f"{name} is an object array; activations must be a numeric array")
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must be a numeric (bool, integer or float) array; got dtype {arr.dtype}"
        )
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must have a samples axis and at least one feature axis; "
            f"got an array of shape {arr.shape}"
        )
    if lazy:
        arr = check_dask_chunks(arr, name)
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return arr


def _check_frame_columns(X, name):
    """A DataFrame (or Series) whose columns are not all plain numbers — categorical,
    text, object — is one ``TypeError`` naming ``name`` and the column (numpy would
    turn categories into their values, or objects, without a word). Returns whether
    ``X`` was a frame."""
    dtypes = getattr(X, "dtypes", None)
    if dtypes is None or isinstance(X, np.ndarray) or is_dask_array(X):
        return False
    if not hasattr(dtypes, "__len__"):  # a Series: one dtype
        dtypes, columns = [dtypes], [getattr(X, "name", 0)]
    else:
        columns = getattr(X, "columns", range(len(dtypes)))
    for column, dtype in zip(columns, dtypes, strict=False):
        kind = getattr(dtype, "kind", "O")
        if kind not in "biuf" or type(dtype).__name__ == "CategoricalDtype":
            raise TypeError(f"{name} must be numeric; column {column!r} has dtype {dtype}")
    return True


def check_numeric(X, name):
    """Refuse non-numeric 2-D input before scikit-learn would convert it silently.

    Strings (``"1.5"`` included), bytes, categorical or text columns of a DataFrame,
    and object arrays holding anything but numbers are one ``TypeError`` naming
    ``name``; an object array of numbers is accepted (scikit-learn's contract).
    """
    if _check_frame_columns(X, name):
        return
    if hasattr(X, "toarray") or is_dask_array(X):  # sparse or lazy: checked where converted
        return
    arr = X if isinstance(X, np.ndarray) else np.asarray(X, dtype=object)
    if arr.dtype.kind in "biufc":  # complex: scikit-learn's own error says so
        return
    if arr.dtype.kind in "USV":
        raise TypeError(f"{name} must be numeric; got dtype {arr.dtype}")
    if arr.dtype == object:
        flat = arr.ravel()
        bad = next((v for v in flat if not isinstance(v, numbers.Real | np.number)), None)
        if bad is not None:
            raise TypeError(
                f"{name} must be numeric; it holds {bad!r:.40} (float() argument must be a "
                f"string or a real number, not {type(bad).__name__!r}; strings are refused too)"
            )
        return
    raise TypeError(f"{name} must be numeric; got dtype {arr.dtype}")


def first_line(exc):
    """An exception's message as one line: its first non-empty line, colours removed."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # terminal colours in some messages
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


def count_nonfinite(A):
    """Return (number of NaN, number of ±inf) in ``A``, chunk by chunk."""
    if A.dtype.kind != "f":
        return 0, 0
    n_nan = n_inf = 0
    step = chunk_samples(A.shape, A.dtype.itemsize)
    for start in range(0, A.shape[0], step):
        block = A[start : start + step]
        n_nan += int(np.count_nonzero(np.isnan(block)))
        n_inf += int(np.count_nonzero(np.isinf(block)))
    return n_nan, n_inf


def _nonfinite_error(name, n_nan, n_inf, size):
    return ValueError(
        f"{name} contains {n_nan} NaN and {n_inf} infinite value(s) out of {size}; "
        "activations must be finite"
    )


def check_finite(A, name):
    """Raise a ValueError with the counts if ``A`` holds NaN or infinite values."""
    n_nan, n_inf = count_nonfinite(A)
    if n_nan or n_inf:
        raise _nonfinite_error(name, n_nan, n_inf, A.size)


def raise_nonfinite(A, name):
    """Raise the ValueError for an ``A`` whose sums came out non-finite.

    Either ``A`` holds NaN/inf (the error gives the counts) or its finite values
    are so large that their sums overflow float64.
    """
    check_finite(A, name)
    raise ValueError(
        f"{name} has finite values whose sums overflow float64 (largest |value| "
        f"{float(np.max(np.abs(A))):.3g}); rescale it"
    )


def chunk_samples(shape, itemsize=8, budget=CHUNK_BYTES):
    """Samples per chunk so that one chunk holds about ``budget`` bytes in float64."""
    per_sample = max(1, int(np.prod(shape[1:], dtype=np.int64))) * max(8, itemsize)
    return max(1, budget // per_sample)


def check_views(arrays, names, layout, matricization, *, min_samples=2):
    """Validate paired activation arrays and return them with their layout.

    Parameters
    ----------
    arrays : sequence of array-like
        The views (original first); all must share one shape.
    names : sequence of str
        Argument names for error messages.
    layout : str
        Requested layout (may be ``"auto"``).
    matricization : str
        Requested matricization.
    min_samples : int, default=2
        Fewest samples accepted (1 for a later ``partial_fit`` batch).

    Returns
    -------
    arrays : list of ndarray
    layout : str
        The concrete layout.
    """
    arrays = [as_activation_array(a, n) for a, n in zip(arrays, names, strict=True)]
    first, first_name = arrays[0], names[0]
    for arr, name in zip(arrays[1:], names[1:], strict=True):
        if arr.shape != first.shape:
            raise ValueError(
                f"{first_name} and {name} must have the same shape; got {first_name} "
                f"{first.shape} and {name} {arr.shape}"
            )
    if layout == "auto":
        layout = checked_auto_layout(first.shape, first_name, stacklevel=4).layout
    layout = resolve_layout(layout, first.ndim, name=first_name)
    check_matricization(matricization)
    n = first.shape[0]
    if n < min_samples:
        raise ValueError(
            f"{first_name} has {n} sample; at least {min_samples} samples are required "
            f"(n_samples={n})"
        )
    rows_per_sample, _ = matrix_shape(first.shape, layout, matricization)
    if n * rows_per_sample < min_samples:
        raise ValueError(f"{first_name} gives fewer than 2 rows after matricization")
    return arrays, layout


def checked_auto_layout(shape, name, *, stacklevel=2, square_grid=None):
    """:func:`~seis_sklearn._matricize.auto_layout` of ``shape``: its
    :class:`~seis_sklearn._matricize.LayoutWarning` issued, its error raised
    (a ``ValueError`` naming ``name`` and ``layout``)."""
    found = auto_layout(shape, name=name, square_grid=square_grid)
    if found.error:
        raise ValueError(found.error)
    if found.warning:
        warnings.warn(found.warning, LayoutWarning, stacklevel=stacklevel + 1)
    return found


def check_n_components(n_components, name="n_components", allow_none=False):
    """Validate ``n_components``: an int ≥ 1 or a float in (0, 1]."""
    if n_components is None and allow_none:
        return None
    if isinstance(n_components, bool):
        raise TypeError(f"{name} must be an int >= 1 or a float in (0, 1]; got a bool")
    if isinstance(n_components, numbers.Integral):
        if n_components < 1:
            raise ValueError(f"{name} must be >= 1 when an int; got {n_components}")
        return int(n_components)
    if isinstance(n_components, numbers.Real):
        value = float(n_components)
        if not (0.0 < value <= 1.0):
            raise ValueError(
                f"{name} must lie in (0, 1] when a float (a fraction of variance); "
                f"got {n_components!r}"
            )
        return value
    raise TypeError(
        f"{name} must be an int >= 1 or a float in (0, 1]; got {type(n_components).__name__}"
    )


def check_max_components(max_components):
    """Validate ``max_components``: None or an int ≥ 1."""
    if max_components is None:
        return None
    if isinstance(max_components, bool) or not isinstance(max_components, numbers.Integral):
        raise TypeError(
            f"max_components must be None or an int >= 1; got {type(max_components).__name__}"
        )
    if max_components < 1:
        raise ValueError(f"max_components must be >= 1; got {max_components}")
    return int(max_components)


def check_reg(reg):
    """Validate the ridge factor ``reg``: a finite float ≥ 0."""
    if isinstance(reg, bool) or not isinstance(reg, numbers.Real):
        raise TypeError(f"reg must be a float >= 0; got {type(reg).__name__}")
    if not np.isfinite(reg) or reg < 0:
        raise ValueError(f"reg must be a finite float >= 0; got {reg!r}")
    return float(reg)


def check_choice(value, name, choices):
    """Validate that ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value
