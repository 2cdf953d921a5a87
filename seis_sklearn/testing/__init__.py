"""Assertions for users' own test suites, in the spirit of ``numpy.testing``.

:func:`assert_equivariant` checks, layer by layer, that a model keeps (and, if
asked, keeps in place) what a transformation does to its inputs, and fails with
a table of the layers that fell short. Hypothesis strategies for property tests
live in :mod:`seis_sklearn.testing.strategies` (the ``testing`` extra); importing
:mod:`seis_sklearn` imports neither.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["assert_equivariant"]


def _is_torch_module(obj):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)


def _activation_pairs(model_or_fn, inputs, transform, layers):
    """Layer name → (original, transformed) activations."""
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
        return extract_activations(
            model_or_fn, inputs, layers, transform=transform, progress=False, dtype=np.float64
        )
    if not callable(model_or_fn):
        raise TypeError(
            "model_or_fn must be a torch.nn.Module or a callable (inputs → activations, or "
            f"a dict of layer name → activations); got {type(model_or_fn).__name__}"
        )
    original = model_or_fn(inputs)
    moved = model_or_fn(transform(inputs))
    if isinstance(original, dict):
        names = list(original) if layers is None else list(layers)
        missing = [n for n in names if n not in original]
        if missing:
            raise ValueError(f"layers: the function returns no layer named {missing[0]!r}")
        return {n: (np.asarray(original[n]), np.asarray(moved[n])) for n in names}
    if layers is not None:
        raise ValueError("layers: the function returns one array, not a dict of layers")
    return {"output": (np.asarray(original), np.asarray(moved))}


def assert_equivariant(
    model_or_fn,
    inputs,
    transform,
    *,
    layers=None,
    min_equivariance=0.99,
    min_invariance=None,
    held_out=True,
    **seis_params,
):
    """Assert that every layer keeps what ``transform`` does to the inputs.

    Parameters
    ----------
    model_or_fn : torch.nn.Module or callable
        A PyTorch module (activations recorded with forward hooks, see
        :mod:`seis_sklearn.adapters.torch`), or a function of a batch of inputs
        returning activations — one array, or a dict of layer name → array.
    inputs : array-like or torch.Tensor
        A batch of inputs, samples first (at least 6 for held-out scores).
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
    **seis_params
        Parameters of :class:`~seis_sklearn.SEISScorer` (``matricization``,
        ``n_components``, ``layout``, …).

    Returns
    -------
    dict
        Layer name → :class:`~seis_sklearn.SEISResult`, when every layer passes.

    Raises
    ------
    AssertionError
        With a table of every layer's S_E and S_I, what was required, and which
        layers fell short.

    Examples
    --------
    >>> import numpy as np
    >>> from seis_sklearn import transforms
    >>> from seis_sklearn.testing import assert_equivariant
    >>> x = np.random.default_rng(0).normal(size=(60, 2, 7, 7))
    >>> relu = lambda batch: np.maximum(batch, 0)          # pointwise: equivariant
    >>> _ = assert_equivariant(relu, x, transforms.hflip)
    >>> crop = lambda batch: batch[:, :, :, :4]            # loses what the flip moves
    >>> assert_equivariant(crop, x, transforms.hflip)
    Traceback (most recent call last):
    ...
    AssertionError: 1 of 1 layers fell short under the transform (held-out SEIS):
    layer      S_E     S_I  required     result
    output  0.3007  0.2279  S_E ≥ 0.99   FELL SHORT
    """
    from seis_sklearn import seis_score

    pairs = _activation_pairs(model_or_fn, inputs, transform, layers)
    cv = 3 if held_out else None
    results, lines, failed = {}, [], 0
    width = max(6, *(len(n) for n in pairs))
    required = f"S_E ≥ {min_equivariance:g}" + (
        f", S_I ≥ {min_invariance:g}" if min_invariance is not None else ""
    )
    for name, (a, b) in pairs.items():
        result = seis_score(a, b, cv=cv, **seis_params)
        results[name] = result
        short = result.equivariance < min_equivariance or (
            min_invariance is not None and result.invariance < min_invariance
        )
        failed += short
        lines.append(
            f"{name:<{width}}{result.equivariance:>8.4f}{result.invariance:>8.4f}  "
            f"{required:<12} {'FELL SHORT' if short else 'ok'}"
        )
    if failed:
        head = f"{'layer':<{width}}{'S_E':>8}{'S_I':>8}  {'required':<12} result"
        evaluation = "held-out" if held_out else "in-sample"
        raise AssertionError(
            f"{failed} of {len(pairs)} layers fell short under the transform "
            f"({evaluation} SEIS):\n" + "\n".join([head, *lines])
        )
    return results
