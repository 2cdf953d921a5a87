"""Tracking SEIS during training: one layerwise report per epoch on a fixed probe set."""

from __future__ import annotations

import numbers


class SEISMonitor:
    """Layerwise held-out SEIS of a model on a fixed probe set, epoch after epoch.

    Call :meth:`update` from a training loop (or let
    :class:`seis_sklearn.adapters.lightning.SEISCallback` call it): each call
    streams the probe inputs through the model — each batch once as it is and
    once per transform (:func:`~seis_sklearn.adapters.torch.layerwise_seis`:
    activations are never stored, the model's train/eval modes are restored) —
    and keeps the table.

    Parameters
    ----------
    inputs : torch.Tensor, ndarray or iterable of batches
        The probe set: the same inputs every epoch (a few hundred images are
        enough for held-out scores of layers of moderate width).
    transforms : dict of str → callable or spec, or list of specs
        As in :func:`~seis_sklearn.adapters.torch.layerwise_seis` (``["rot90",
        "hflip"]``).
    layers : sequence of str, optional
        Default: :func:`~seis_sklearn.adapters.torch.default_layers` of the
        model at the first update.
    **report_params
        Further parameters of :func:`~seis_sklearn.adapters.torch.layerwise_seis`
        (``held_out``, ``batch_size``, ``device``, ``matricization``, ``tokens``,
        ``layout`` — one layout, or a dict layer → layout —, ``metrics``, SEIS
        parameters …).

    Attributes
    ----------
    frames : list of pandas.DataFrame
        One report per update, each with an ``epoch`` column first.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from seis_sklearn.adapters.torch import SEISMonitor, transforms as TT
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU())
    >>> probe = np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32)
    >>> monitor = SEISMonitor(probe, {"flip": TT.hflip}, layers=["0"], progress=False)
    >>> for epoch in range(2):
    ...     _ = monitor.update(model, epoch)           # after each epoch's training
    >>> monitor.frame[["epoch", "layer", "transform"]].values.tolist()
    [[0, '0', 'flip'], [1, '0', 'flip']]
    """

    def __init__(self, inputs, transforms, *, layers=None, **report_params):
        from .._names import as_transforms
        from . import _from_spec

        transforms = as_transforms(transforms, _from_spec)
        self.inputs = inputs
        self.transforms = transforms
        self.layers = layers
        self.report_params = {"progress": False, **report_params}
        self.frames = []

    def update(self, model, epoch):
        """Score the model now; return this epoch's table (also kept in :attr:`frames`).

        Parameters
        ----------
        model : torch.nn.Module
        epoch : int
            Recorded in the ``epoch`` column.

        Returns
        -------
        pandas.DataFrame
        """
        from . import default_layers, layerwise_seis

        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Real):
            raise TypeError(
                f"epoch must be a number (the x axis of plot()); got {type(epoch).__name__} "
                f"{epoch!r}"
            )
        if self.layers is None:
            self.layers = default_layers(model)
        frame = layerwise_seis(
            model, self.inputs, self.transforms, layers=self.layers, **self.report_params
        )
        frame.insert(0, "epoch", epoch)
        self.frames.append(frame)
        return frame

    @property
    def frame(self):
        """Every update's table, one DataFrame over (epoch, layer, transform)."""
        from seis_sklearn.report import _pandas

        pd = _pandas()
        if not self.frames:
            return pd.DataFrame(columns=["epoch", "layer", "transform"])
        return pd.concat(self.frames, ignore_index=True)

    def plot(self, score="equivariance", *, path=None):
        """``score`` against epochs: one panel per transform, one line per layer.

        Parameters
        ----------
        score : str, default="equivariance"
            A column of the table (``"invariance"``, ``"equivariance_weighted"`` …).
        path : str or path-like, optional
            Also save the figure there (:func:`seis_sklearn.report.save_figure`).

        Returns
        -------
        matplotlib.figure.Figure
        """
        from matplotlib.figure import Figure

        frame = self.frame
        if frame.empty:
            raise ValueError("nothing to plot: call update() at least once")
        sizes = ("epoch", "depth", "n_components", "n_rows")
        numeric = [c for c in frame.columns if c not in sizes and frame[c].dtype.kind == "f"]
        if score not in numeric:
            raise ValueError(f"score must be one of {', '.join(numeric)}; got {score!r}")
        names = list(dict.fromkeys(frame["transform"]))
        fig = Figure(figsize=(4.2 * len(names), 3.6), layout="constrained")
        axes = fig.subplots(1, len(names), squeeze=False)[0]
        for ax, name in zip(axes, names, strict=True):
            part = frame[frame["transform"] == name]
            for i, (layer, rows) in enumerate(part.groupby("layer", sort=False)):
                rows = rows.sort_values("epoch")
                ax.plot(rows["epoch"], rows[score], "-o", ms=3, color=f"C{i % 10}", label=layer)
            ax.set_title(f"{name}: {score}")
            ax.set_xlabel("epoch")
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7, loc="best")
        from seis_sklearn.report import _saved

        return _saved(fig, path)
