"""SEIS during Lightning training: a callback that updates a ``SEISMonitor``.

Needs the ``lightning`` extra (``pip install 'seis-sklearn[lightning]'``; either
``lightning`` or ``pytorch-lightning``).
"""

from __future__ import annotations


def _callback_base():
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError:  # pragma: no cover - exercised only without the extra
            raise ImportError(
                "seis_sklearn.adapters.lightning needs Lightning: "
                "pip install 'seis-sklearn[lightning]'"
            ) from None
    return Callback


class SEISCallback(_callback_base()):
    """Update a :class:`~seis_sklearn.adapters.torch.SEISMonitor` at the end of epochs.

    Parameters
    ----------
    monitor : SEISMonitor
        Holds the probe set, the transforms and the tables.
    every_n_epochs : int, default=1
        Score after every n-th training epoch (and after the first).

    Examples
    --------
    ::

        monitor = SEISMonitor(probe_images, {"rot90": TT.rot90})
        trainer = Trainer(max_epochs=20, callbacks=[SEISCallback(monitor)])
        trainer.fit(model, loader)
        monitor.frame        # (epoch, layer, transform) → scores
        monitor.plot()
    """

    def __init__(self, monitor, every_n_epochs=1):
        super().__init__()
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int):
            raise TypeError("every_n_epochs must be an int >= 1")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1; got {every_n_epochs}")
        self.monitor = monitor
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch
        if epoch % self.every_n_epochs == 0:
            params = self.monitor.report_params
            if "device" not in params:  # score where the model is
                params = {**params, "device": pl_module.device}
            saved, self.monitor.report_params = self.monitor.report_params, params
            try:
                self.monitor.update(pl_module, epoch)
            finally:
                self.monitor.report_params = saved
