"""Assertions for users' own test suites, in the spirit of ``numpy.testing``.

:func:`assert_equivariant` checks, layer by layer, that a model keeps (and, if
asked, keeps in place) what a transformation does to its inputs, and fails with
a table of the layers that fell short — or, where the inputs are too few to tell,
says so instead of failing. Hypothesis strategies for property tests live in
:mod:`seis_sklearn.testing.strategies` (the ``testing`` extra); importing
:mod:`seis_sklearn` imports neither.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np

from .._fit import fold_splits
from .._matricize import matrix_shape
from .._score import seis_score

__all__ = ["UndecidedError", "assert_equivariant"]

#: Folds of the held-out scores.
FOLDS = 3


PAIR_NOTE = (
    "note: scored on the pair (x, g·x), not on an orbit: with a truncated basis "
    "(n_components below 1.0) even an exactly equivariant layer can read below 1, as the "
    "basis need not be mapped into itself by g; a transform of finite order is scored on "
    "its orbit (orbit='auto' finds it when g gives the inputs back within max_order "
    "steps; or orbit=[g, g², …])"
)


class UndecidedError(ValueError):
    """The inputs are too few for :func:`assert_equivariant` to tell whether a layer
    keeps what the transform moves: the message says how many would do."""


def _is_torch_module(obj):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _is_tensor(obj):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _same(a, b):
    """Whether two batches hold the same values (a tensor and an array compared by
    value: a numpy transform of a tensor gives back an array)."""
    if _is_tensor(a) and _is_tensor(b):
        import torch

        return a.shape == b.shape and torch.equal(a, b)
    a, b = _array(a), _array(b)
    return a.shape == b.shape and np.array_equal(a, b)


def _powers(transform, inputs, max_order):
    """``[g·x, g²·x, …]`` up to the power that gives ``x`` back, or ``None`` when
    ``transform`` has no order ≤ ``max_order`` on these inputs."""
    powers, current = [], inputs
    for _ in range(max_order):
        current = transform(current)
        if _same(current, inputs):
            return powers
        powers.append(current)
    return None


def _transformed_inputs(inputs, transform, orbit, max_order):
    """The transformed batches to score against the original one, and whether they
    are the transform's whole orbit."""
    if orbit is False:
        return [transform(inputs)], False
    if not (_is_tensor(inputs) or isinstance(inputs, np.ndarray)):
        if orbit is True:
            raise TypeError(
                "orbit=True needs inputs as one array or tensor (the transform's powers "
                f"are applied to it); got {type(inputs).__name__}"
            )
        return [transform(inputs)], False  # a loader: the pair
    if orbit == "auto" or orbit is True:
        powers = _powers(transform, inputs, max_order)
        if powers is not None:
            return powers, True
        if orbit is True:
            raise ValueError(
                f"orbit=True: transform does not give the inputs back within "
                f"max_order={max_order} applications; raise max_order, pass the orbit "
                "as a list of transforms, or use orbit=False"
            )
        return [transform(inputs)], False
    if isinstance(orbit, (list, tuple)) and orbit and all(callable(g) for g in orbit):
        return [g(inputs) for g in orbit], True
    raise ValueError(
        "orbit must be 'auto', True, False or a non-empty list of transforms (every "
        f"element of the group but the identity); got {orbit!r}"
    )


def _layer_views(model_or_fn, batches, layers):
    """Layer name → [activations on each batch], the first batch the original."""
    if _is_torch_module(model_or_fn):
        from seis_sklearn.adapters.torch import (
            DEFAULT_LAYER_TYPES,
            extract_activations,
            find_layers,
        )

        if layers is None:
            layers = find_layers(model_or_fn, types=DEFAULT_LAYER_TYPES)
            if not layers:
                raise ValueError("layers: the model has no Conv/Linear module; name the layers")
        recorded = [
            extract_activations(model_or_fn, x, layers, progress=False, dtype=np.float64)
            for x in batches
        ]
        return {name: [r[name] for r in recorded] for name in recorded[0]}
    if not callable(model_or_fn):
        raise TypeError(
            "model_or_fn must be a torch.nn.Module or a callable (inputs → activations, or "
            f"a dict of layer name → activations); got {type(model_or_fn).__name__}"
        )
    outputs = [model_or_fn(x) for x in batches]
    if isinstance(outputs[0], dict):
        names = list(outputs[0]) if layers is None else list(layers)
        missing = [n for n in names if n not in outputs[0]]
        if missing:
            raise ValueError(f"layers: the function returns no layer named {missing[0]!r}")
        return {n: [_array(o[n]) for o in outputs] for n in names}
    if layers is not None:
        raise ValueError("layers: the function returns one array, not a dict of layers")
    return {"output": [_array(o) for o in outputs]}


def _array(a):
    if _is_tensor(a):
        a = a.detach().cpu()
        return (a.float() if str(a.dtype) == "torch.bfloat16" else a).numpy()
    return np.asarray(a)


def _undecided(name, result, shape):
    """The :class:`UndecidedError` of a layer scored on a pair whose fits kept nearly
    as many directions as they had rows, or ``None`` when the data decide."""
    n_samples = shape[0]
    per_sample, d = matrix_shape(shape, result.layout, result.matricization)
    if result.folds:  # each fold's fit: its k and the rows of its training samples
        splits = fold_splits(FOLDS, n_samples)
        fits = [
            (f.n_components, per_sample * len(train))
            for f, (train, _) in zip(result.folds, splits, strict=True)
        ]
    else:
        fits = [(result.n_components, per_sample * n_samples)]
    fit_k, fit_rows = max(fits, key=lambda fit: fit[0] / fit[1])
    if 2 * fit_k < fit_rows:
        return None
    # each fit must hold at least 2d rows (k ≤ d) from (FOLDS − 1)/FOLDS of the samples
    needed = math.ceil(2 * d / per_sample * FOLDS / (FOLDS - 1)) + 1
    return UndecidedError(
        f"cannot decide layer {name!r}: {n_samples} samples give m = {fit_rows} rows "
        f"per fit ({per_sample} per sample, {result.matricization} matricization) for "
        f"d = {d} features, and the fit kept k = {fit_k} directions, at least half the "
        f"rows, so a score this low (S_E {result.equivariance:.4f} on the pair) can come "
        f"from too few samples as well as from the layer. Pass ≥ {needed} samples, or "
        "the transform's orbit (orbit=[g, g², …]; a transform of finite order is found "
        "and scored on its orbit by default when the inputs are one array), or fewer "
        "columns (max_components=, another matricization)"
    )


def assert_equivariant(
    model_or_fn,
    inputs,
    transform,
    *,
    layers=None,
    min_equivariance=0.99,
    min_invariance=None,
    held_out=True,
    orbit="auto",
    max_order=32,
    **seis_params,
):
    """Assert that every layer keeps what ``transform`` does to the inputs.

    A transform of finite order (a quarter turn, a flip, a circular shift) is
    scored on its whole **orbit** — the inputs transformed once, twice, … until
    they come back — so that the shared basis is mapped into itself and an exactly
    equivariant layer scores 1 held-out, however few the samples
    (docs/math.rst, section 2; :doc:`/equivariance`). A transform without a finite
    order (a rotation by 15°) is scored on the pair; where the samples are then too
    few to tell a short layer from a short sample, :class:`UndecidedError` says so
    with the numbers, instead of a verdict.

    Parameters
    ----------
    model_or_fn : torch.nn.Module or callable
        A PyTorch module (activations recorded with forward hooks, see
        :mod:`seis_sklearn.adapters.torch`), or a function of a batch of inputs
        returning activations — one array, or a dict of layer name → array.
    inputs : array-like or torch.Tensor
        A batch of inputs, samples first (at least 6 for held-out scores). A
        ``DataLoader`` or other iterable works for a torch module, scored on the
        pair (the orbit needs one array or tensor).
    transform : callable
        Maps a batch of inputs to the transformed batch (a tensor function for
        a torch module; e.g. :mod:`seis_sklearn.adapters.torch.transforms`).
    layers : sequence of str, optional
        Layers to check: module names for a torch module (default: every
        Conv/Linear module), keys of the dict a function returns (default: all).
    min_equivariance : float, default=0.99
        Required ``S_E`` of every layer.
    min_invariance : float, optional
        Also required ``S_I`` (for layers that should be invariant).
    held_out : bool, default=True
        Cross-fitted scores over 3 folds (honest); ``False``: in-sample.
    orbit : {"auto", True, False} or list of callables, default="auto"
        ``"auto"``: apply ``transform`` to the inputs until they come back
        exactly (at most ``max_order`` times) and score every layer on that
        orbit; if they do not come back, score the pair. ``True``: the orbit or
        an error. ``False``: the pair ``(x, g·x)`` only. A list: the orbit's
        elements other than the identity, as transforms of the inputs
        (``[g, g², g³]`` for a quarter turn).
    max_order : int, default=32
        The largest order looked for by ``orbit="auto"`` (each element costs a
        forward pass).
    **seis_params
        Parameters of :class:`~seis_sklearn.SEISScorer` (``matricization``,
        ``n_components``, ``layout``, …).

    Returns
    -------
    dict
        Layer name → :class:`~seis_sklearn.SEISResult` (an orbit's mean over its
        elements, per element in ``elements``), when every layer passes.

    Raises
    ------
    AssertionError
        With a table of every layer's S_E and S_I, what was required, and which
        layers fell short.
    UndecidedError
        (a ``ValueError``) When no layer fell short where the data decide, but a
        layer scored on a pair fell short while its fits kept at least half as many
        directions as they had rows (the message gives the samples that would
        decide, and the other remedies), or a layer is constant on every input.

    Notes
    -----
    On a pair (no orbit) ``n_components`` defaults to 1.0: every direction the rows
    allow, so that a truncated basis which ``g`` does not map into itself cannot
    fail an exact layer. Every feature is centred over the samples first, so a
    constant added to a layer passes: equivariance up to per-feature constants.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn import transforms
    >>> from seis_sklearn.testing import assert_equivariant
    >>> x = np.random.default_rng(0).normal(size=(64, 3, 16, 16))
    >>> _ = assert_equivariant(np.tanh, x, transforms.rot90)   # pointwise: equivariant
    >>> half = np.ones((16, 16)); half[:, 8:] = 0
    >>> assert_equivariant(lambda batch: batch * half, x, transforms.rot90)
    Traceback (most recent call last):
    ...
    AssertionError: 1 of 1 layers fell short under the transform (held-out SEIS on its orbit of 4):
    layer      S_E     S_I  required     result
    output  0.2773  0.0029  S_E ≥ 0.99   FELL SHORT
    note: ...
    """
    if _is_torch_module(model_or_fn) and isinstance(inputs, np.ndarray):
        import torch

        inputs = torch.as_tensor(inputs)  # the transform is a tensor function
    batches, is_orbit = _transformed_inputs(inputs, transform, orbit, max_order)
    views = _layer_views(model_or_fn, [inputs, *batches], layers)
    params = dict(seis_params)
    if not is_orbit:
        # a pair's truncated basis is not mapped into itself by g: keep every direction
        # the rows allow, so that an exact layer scores 1 where the rows decide
        params.setdefault("n_components", 1.0)
    cv = FOLDS if held_out else None
    results, lines, undecided, failed = {}, [], [], 0
    width = max(6, *(len(n) for n in views))
    required = f"S_E ≥ {min_equivariance:g}" + (
        f", S_I ≥ {min_invariance:g}" if min_invariance is not None else ""
    )
    caught = []  # the scores' warnings (a variance share not reached) go with a failure
    for name, (original, *moved) in views.items():
        with warnings.catch_warnings(record=True) as caught_here:
            warnings.simplefilter("always")
            try:
                result = seis_score(original, moved if is_orbit else moved[0], cv=cv, **params)
            except ValueError as exc:
                if "no variance" not in str(exc):
                    raise
                undecided.append(
                    UndecidedError(
                        f"cannot decide layer {name!r}: it is constant on every input, so "
                        "there is nothing whose equivariance could be measured"
                    )
                )
                lines.append(f"{name:<{width}}{'—':>8}{'—':>8}  {required:<12} CANNOT DECIDE")
                continue
        caught += caught_here
        results[name] = result
        if np.isnan(result.equivariance):  # one view without variance: no score, short
            short, verdict = True, f"FELL SHORT ({result.degenerate_reason})"
        else:
            short = result.equivariance < min_equivariance or (
                min_invariance is not None and result.invariance < min_invariance
            )
            verdict = "FELL SHORT" if short else "ok"
        if short and not is_orbit and held_out and not np.isnan(result.equivariance):
            why = _undecided(name, result, np.shape(original))
            if why is not None:
                undecided.append(why)
                short, verdict = False, "CANNOT DECIDE"
        failed += short
        lines.append(
            f"{name:<{width}}{result.equivariance:>8.4f}{result.invariance:>8.4f}  "
            f"{required:<12} {verdict}"
        )
    if failed:
        head = f"{'layer':<{width}}{'S_E':>8}{'S_I':>8}  {'required':<12} result"
        evaluation = "held-out SEIS" if held_out else "in-sample SEIS"
        if is_orbit and len(batches) > 1:
            evaluation += f" on its orbit of {len(batches) + 1}"
        notes = [f"note: {m}" for m in dict.fromkeys(str(w.message) for w in caught)]
        notes += [f"note: {u}" for u in undecided]
        if not is_orbit:
            notes.insert(0, PAIR_NOTE)
        raise AssertionError(
            f"{failed} of {len(views)} layers fell short under the transform "
            f"({evaluation}):\n" + "\n".join([head, *lines, *notes])
        )
    if undecided:  # nothing fell short where the data decide, but some could not
        if len(undecided) == 1:
            raise undecided[0]
        raise UndecidedError("; ".join(str(u) for u in undecided))
    return results
