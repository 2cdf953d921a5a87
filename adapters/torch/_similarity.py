"""Layer × layer similarity maps (Kornblith et al. 2019; Nguyen, Raghu & Kornblith 2021).

Every layer of one model against every layer of another — or of one model on the
inputs against itself on transformed inputs, to see where in depth what layer ``i``
carries under the transform lands. The measure is linear CKA between the layers'
flattened activations (each sample one row), computed batch by batch as Nguyen et
al. do for networks too wide for one Gram matrix of all samples: for each batch,
each layer's ``b × b`` linear Gram matrix, centred (``"cka"``) or U-centred
(``"cka_debiased"``, the unbiased HSIC of Song et al. 2012); the HSIC estimates of
every pair of layers summed over batches; the map is
``Σ HSIC(K_i, L_j) / sqrt(Σ HSIC(K_i, K_i) · Σ HSIC(L_j, L_j))``. With one batch of
all samples it is exactly :func:`seis_sklearn.metrics.linear_cka` of the flattened
layers (the standard CKA: samples as rows, all features as columns). Memory: one
``b × b`` matrix per layer; layers of any shapes. A streamed layerwise report's
``cka`` and ``cka_debiased`` columns are this estimator over the report's batches
(:class:`seis_sklearn.metrics.MinibatchCKA`): the diagonal of the map of a model
against itself under the report's transform, for the same batches.

``"seis"`` maps SEIS instead: for every two layers whose activations have the same
shape (SEIS compares two views in one shared basis: layers of other shapes have no
score, NaN), ``S_E`` of layer ``i`` on the rows' inputs against layer ``j`` on the
columns' — exact over all samples, from moments accumulated batch by batch
(:meth:`seis_sklearn.SEISScorer.partial_fit`, SEIS's defaults) — and ``S_I`` beside
it in ``attrs["invariance"]``. Memory: three ``d × d`` float64 matrices per pair of
equal shapes (``d`` the matricized width).
"""

from __future__ import annotations

import numpy as np

METRICS = ("cka", "cka_debiased", "seis")


def similarity_map(
    model_a,
    inputs,
    layers_a=None,
    *,
    model_b=None,
    layers_b=None,
    transform=None,
    metric="cka_debiased",
    batch_size=256,
    device=None,
    select=None,
    progress=True,
):
    """Similarity of every layer of one model with every layer of another, or of a
    model on ``x`` with itself on ``transform(x)``.

    Two models, as pytorch-cka's ``CKA(model1, model2, model1_layers=…,
    model2_layers=…).compare(loader)`` takes them: ``similarity_map(model1, loader,
    model1_layers, model_b=model2, layers_b=model2_layers)`` — the second model and
    its layers are the keyword arguments ``model_b`` and ``layers_b``, and one
    ``inputs`` feeds both. Layers default to each model's blocks and head, as every
    report does (:func:`~seis_sklearn.adapters.torch.default_layers`).

    Parameters
    ----------
    model_a : torch.nn.Module
    inputs : torch.Tensor, ndarray or iterable of batches
        As in :func:`seis_sklearn.adapters.torch.extract_activations`. With two
        models, each batch goes through both (one pass over the inputs).
    layers_a : str or sequence of str, optional
        Modules of ``model_a`` (rows of the map): names or globs, as in
        :func:`~seis_sklearn.adapters.torch.extract_activations`. Default:
        :func:`~seis_sklearn.adapters.torch.default_layers` of ``model_a`` (those
        that run and keep samples first, as a layerwise report takes them).
    model_b : torch.nn.Module, optional
        The second model (columns; pytorch-cka's ``model2``); default ``model_a``.
    layers_b : str or sequence of str, optional
        Its modules (pytorch-cka's ``model2_layers``); default ``layers_a`` when
        ``model_b`` is not given, else ``model_b``'s default layers.
    transform : callable or str, optional
        Columns are ``model_b``'s layers (default ``model_a``'s) on the transformed
        inputs; only with one model. A text spec (``"rot90"``, ``"hflip"``) as in
        :func:`~seis_sklearn.adapters.torch.extract_activations`.
    metric : {"cka_debiased", "cka", "seis"}, default="cka_debiased"
        Linear CKA with the unbiased (Song et al. 2012) or the ordinary HSIC,
        summed over batches; or SEIS's ``S_E`` of layers of equal shapes (module
        docstring).
    batch_size : int, default=256
        Samples per batch of the estimator (and of the forward passes); at least 4
        for ``"cka_debiased"``. A last batch smaller than that is not used (said in
        a warning and in ``attrs["samples_used"]``).
    device, select, progress
        As in :func:`~seis_sklearn.adapters.torch.extract_activations`.

    Returns
    -------
    pandas.DataFrame
        Rows ``layers_a``, columns ``layers_b`` (a module called several times per
        forward gives ``name#1``, …). ``attrs``: ``metric``, ``batch_size``,
        ``samples_used``, ``transform``; with ``"seis"``, ``invariance`` (the
        ``S_I`` map).

    Examples
    --------
    >>> import torch
    >>> from seis_sklearn.adapters.torch import similarity_map
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    >>> x = torch.randn(64, 8)
    >>> m = similarity_map(net, x, ["0", "1", "2"], batch_size=32, progress=False)
    >>> m.round(2).values.diagonal().tolist()
    [1.0, 1.0, 1.0]
    >>> list(similarity_map(net, x, batch_size=32, progress=False).index)  # default layers
    ['0', '2']
    """
    from seis_sklearn.report import _pandas

    from .._names import as_transform
    from . import (
        _check_layers,
        _forward_batches,
        _from_spec,
        _import_torch,
        _running_default_layers,
    )

    torch = _import_torch()  # the error that says how to install it
    for name, model in (("model_a", model_a), ("model_b", model_b)):
        if model is not None and not isinstance(model, torch.nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module; got {type(model).__name__}")
    given, transform = transform, as_transform(transform, _from_spec)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(map(repr, METRICS))}; got {metric!r}")
    debiased = metric == "cka_debiased"
    smallest = 4 if debiased else 2
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < smallest:
        raise ValueError(
            f"batch_size must be an int >= {smallest} for metric={metric!r} (each batch "
            f"is one estimate); got {batch_size!r}"
        )
    two_models = model_b is not None and model_b is not model_a
    if two_models and transform is not None:
        raise ValueError(
            "transform compares one model on x with itself on transform(x): give "
            "model_b or transform, not both"
        )
    if layers_a is None:
        layers_a, inputs = _running_default_layers(model_a, inputs, batch_size, device, select,
                                                   "layers_a")  # fmt: skip
    if layers_b is None and two_models:
        layers_b, inputs = _running_default_layers(model_b, inputs, batch_size, device, select,
                                                   "layers_b")  # fmt: skip
    elif layers_b is None:
        layers_b = layers_a
    model_b = model_b if model_b is not None else model_a
    # names and globs → module names (the rule of docs/torch.rst, "Choosing layers")
    layers_a, _ = _check_layers(model_a, layers_a, "layers_a")
    layers_b, _ = _check_layers(model_b, layers_b, "layers_b")
    run = dict(batch_size=batch_size, device=device, select=select)

    if two_models:  # one module running both on every batch: one pass, the same batches
        names_a, names_b = layers_a, layers_b

        class Both(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.b = model_a, model_b

            def forward(self, x):
                return self.a(x), self.b(x)

        param_b = next(model_b.parameters(), None)
        home_b = param_b.device if param_b is not None else None
        layers = [f"a.{n}" for n in names_a] + [f"b.{n}" for n in names_b]
        batches = _forward_batches(Both(), inputs, layers, None, progress=progress, **run)

        def pairs():
            for rows, recorded in batches:
                view = recorded["original"]
                yield (
                    rows,
                    {k[2:]: v for k, v in view.items() if k.startswith("a.")},
                    {k[2:]: v for k, v in view.items() if k.startswith("b.")},
                )

    else:
        home_b = None
        views = None if transform is None else {"original": None, "transformed": transform}
        layers = list(dict.fromkeys([*_as_list(layers_a), *_as_list(layers_b)]))
        batches = _forward_batches(model_a, inputs, layers, views, progress=progress, **run)
        column_view = "original" if transform is None else "transformed"

        def pairs():
            for rows, recorded in batches:
                yield rows, recorded["original"], recorded[column_view]

    next(batches)
    # the batch generator runs the model under torch.inference_mode(), which stays on
    # in this thread while it is suspended: close it however the loop ends
    try:
        if metric == "seis":
            keys_a, keys_b, scorers, used, skipped = _accumulate_seis(pairs(), layers_a, layers_b)
        else:
            keys_a, keys_b, cross, self_a, self_b, used, skipped = _accumulate(
                pairs(), layers_a, layers_b, debiased, smallest
            )
    finally:
        batches.close()
        if home_b is not None:  # the pair was moved back to model_a's device
            model_b.to(home_b)
    if keys_a is None:
        raise ValueError(
            f"inputs gave no batch of at least {smallest} samples: nothing to estimate"
        )
    if skipped:
        import warnings

        warnings.warn(
            f"similarity_map: the last {skipped} samples (a batch smaller than {smallest}) "
            "were not used",
            UserWarning,
            stacklevel=2,
        )
    invariance = None
    if metric == "seis":
        values, invariance = _seis_values(scorers, keys_a, keys_b)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            values = cross / np.sqrt(np.outer(self_a, self_b))
        values[~(np.outer(self_a, self_b) > 0)] = np.nan  # a layer without variance
        values = np.minimum(values, 1.0)
    frame = _pandas().DataFrame(values, index=keys_a, columns=keys_b)
    frame.index.name, frame.columns.name = "layer_a", "layer_b"
    if invariance is not None:
        invariance = _pandas().DataFrame(invariance, index=keys_a, columns=keys_b)
        invariance.index.name, invariance.columns.name = "layer_a", "layer_b"
    frame.attrs.update(metric=metric, batch_size=batch_size, samples_used=used,
                       transform=_name(given, transform))  # fmt: skip
    if invariance is not None:
        frame.attrs["invariance"] = invariance
    return frame


def _accumulate(pairs, layers_a, layers_b, debiased, smallest):
    """The HSIC estimates of every pair of layers summed over the batches ``pairs``
    yields (``((start, stop), activations_a, activations_b)``)."""
    keys_a = keys_b = cross = self_a = self_b = None
    used = skipped = 0
    for (start, stop), acts_a, acts_b in pairs:
        b = stop - start
        if b < smallest:
            skipped += b
            continue
        if keys_a is None:
            keys_a = _keys(acts_a, layers_a)
            keys_b = _keys(acts_b, layers_b)
            cross = np.zeros((len(keys_a), len(keys_b)))
            self_a, self_b = np.zeros(len(keys_a)), np.zeros(len(keys_b))
        grams_a = np.stack([_centred_gram(acts_a[k], debiased) for k in keys_a])
        grams_b = np.stack([_centred_gram(acts_b[k], debiased) for k in keys_b])
        scale = 1.0 / (b * (b - 3)) if debiased else 1.0 / (b - 1) ** 2
        flat_a, flat_b = grams_a.reshape(len(keys_a), -1), grams_b.reshape(len(keys_b), -1)
        cross += scale * (flat_a @ flat_b.T)
        self_a += scale * np.einsum("ij,ij->i", flat_a, flat_a)
        self_b += scale * np.einsum("ij,ij->i", flat_b, flat_b)
        used += b
    return keys_a, keys_b, cross, self_a, self_b, used, skipped


def _accumulate_seis(pairs, layers_a, layers_b):
    """SEIS moments of every two layers of equal shapes, summed over the batches."""
    from seis_sklearn import SEISScorer

    keys_a = keys_b = None
    scorers, failed = {}, set()
    used = 0
    for (start, stop), acts_a, acts_b in pairs:
        if keys_a is None:
            keys_a, keys_b = _keys(acts_a, layers_a), _keys(acts_b, layers_b)
        for ka in keys_a:
            for kb in keys_b:
                a, b = np.asarray(acts_a[ka]), np.asarray(acts_b[kb])
                if a.shape[1:] != b.shape[1:] or (ka, kb) in failed:
                    continue
                try:
                    scorers.setdefault((ka, kb), SEISScorer()).partial_fit(a, b)
                except ValueError:  # NaN activations, a layout that does not fit: NaN
                    failed.add((ka, kb))
                    scorers.pop((ka, kb), None)
        used += stop - start
    return keys_a, keys_b, scorers, used, 0


def _seis_values(scorers, keys_a, keys_b):
    """``S_E`` and ``S_I`` maps from the fitted scorers (NaN: no score)."""
    equivariance = np.full((len(keys_a), len(keys_b)), np.nan)
    invariance = equivariance.copy()
    for i, ka in enumerate(keys_a):
        for j, kb in enumerate(keys_b):
            result = getattr(scorers.get((ka, kb)), "result_", None)
            if result is not None:
                equivariance[i, j], invariance[i, j] = result.equivariance, result.invariance
    return equivariance, invariance


def plot_similarity_map(frame, ax=None, *, path=None, **imshow):
    """Heatmap of a :func:`similarity_map` frame.

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows and columns are layers.
    ax : matplotlib.axes.Axes, optional
        Where to draw; default a new figure's.
    path : str or path-like, optional
        Also save the figure there (:func:`seis_sklearn.report.save_figure`:
        ``.png``, ``.pdf``, ``.svg`` …).
    **imshow
        Passed to ``Axes.imshow`` (default ``vmin=0, vmax=1, cmap="magma"``).

    Returns
    -------
    matplotlib.figure.Figure
        The figure that holds the heatmap (``fig.axes[0]``; its colour bar is
        ``fig.axes[1]``), as :func:`seis_sklearn.report.plot_layerwise` and
        :func:`~seis_sklearn.report.plot_measures` return theirs.
    """
    if ax is None:
        from matplotlib.figure import Figure

        size = (1.2 + 0.35 * frame.shape[1], 1.0 + 0.35 * frame.shape[0])
        ax = Figure(figsize=size, layout="constrained").subplots()
    options = dict(vmin=0.0, vmax=1.0, cmap="magma") | imshow
    image = ax.imshow(frame.to_numpy(dtype=float), **options)
    ax.set_xticks(range(frame.shape[1]), [str(c) for c in frame.columns], rotation=90)
    ax.set_yticks(range(frame.shape[0]), [str(i) for i in frame.index])
    ax.set_xlabel(frame.columns.name or "layer_b")
    ax.set_ylabel(frame.index.name or "layer_a")
    title = frame.attrs.get("metric", "")
    if frame.attrs.get("transform"):
        title += f" (columns on {frame.attrs['transform']})"
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax)
    from seis_sklearn.report import _saved

    return _saved(ax.figure, path)


def _as_list(layers):
    return [layers] if isinstance(layers, str) else list(layers)


def _keys(recorded, layers):
    """The recorded keys of ``layers`` (a module called several times: ``name#1``, …),
    in the order the layers were named."""
    out = []
    for name in _as_list(layers):
        out += [k for k in recorded if k == name or k.split("#")[0] == name]
    return out


def _centred_gram(activations, debiased):
    """The linear Gram matrix of a batch's flattened activations, centred (biased HSIC)
    or U-centred (unbiased: zero diagonal, Song et al. 2012), in float64 — the one of
    :func:`seis_sklearn.metrics.centred_gram`, which a report's CKA columns use too."""
    from seis_sklearn.metrics import centred_gram

    return centred_gram(np.asarray(activations), debiased)


def _name(given, transform):
    """The transform's name in ``attrs``: the spec given as text, else the callable's."""
    from .._common import describe

    if transform is None or isinstance(given, str):
        return given
    return describe(transform) or getattr(transform, "__name__", "transform")
