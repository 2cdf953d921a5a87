"""Tracking SEIS during training: SEISMonitor in a plain loop and the Lightning callback."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters.torch import SEISMonitor  # noqa: E402
from seis_sklearn.adapters.torch import transforms as TT  # noqa: E402


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(6, 3),
    )  # fmt: skip


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean((1, 2)) > 0).astype(np.int64) + (x[:, 0, :, :4].mean((1, 2)) > 0)
    return torch.from_numpy(x), torch.from_numpy(y)


def test_monitor_in_a_plain_training_loop():
    model = _net()
    x, y = _data()
    probe = x[:48]
    monitor = SEISMonitor(probe, {"flip": TT.hflip, "rot90": TT.rot90}, batch_size=16)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch in range(3):
        model.train()
        for lo in range(0, 96, 32):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x[lo : lo + 32]), y[lo : lo + 32]).backward()
            optimiser.step()
        this = monitor.update(model, epoch)
        assert set(this["epoch"]) == {epoch}
        assert model.training  # the report restores every module's mode
    frame = monitor.frame
    assert monitor.layers == ["0", "3", "7"]  # Conv/Linear: this net has no blocks
    assert len(frame) == 3 * 2 * 3 and sorted(set(frame["epoch"])) == [0, 1, 2]
    assert np.isfinite(frame[["equivariance", "invariance"]].to_numpy()).all()
    # the weights changed between epochs, so did the scores of the trained layers
    first, last = (frame[(frame.epoch == e) & (frame.layer == "3")] for e in (0, 2))
    assert not np.allclose(first["equivariance"], last["equivariance"])
    fig = monitor.plot("invariance")
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) == 3  # a line per layer
    with pytest.raises(ValueError, match="call update"):
        SEISMonitor(probe, {"flip": TT.hflip}).plot()
    with pytest.raises(TypeError, match="transforms must be a non-empty dict"):
        SEISMonitor(probe, [])


def test_monitor_takes_a_layout_per_layer():
    """SEISMonitor passes a per-layer layout on to every report (issue 29)."""
    model = _net().eval()
    probe = _data()[0][:48]
    monitor = SEISMonitor(probe, {"flip": TT.hflip}, layers=["0", "3"], held_out=None,
                          layout={"3": "NCHW"})  # fmt: skip
    frame = monitor.update(model, 0).set_index("layer")
    assert frame.loc["3", "layout_choice"] == "given"
    assert frame.loc["0", "layout_choice"].startswith("grid: channels first")


def test_lightning_callback_scores_every_n_epochs():
    pl = pytest.importorskip("pytorch_lightning")

    from seis_sklearn.adapters.lightning import SEISCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _net()

        def forward(self, batch):
            return self.net(batch)

        def training_step(self, batch, _):
            inputs, labels = batch
            return torch.nn.functional.cross_entropy(self(inputs), labels)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    monitor = SEISMonitor(x[:48], {"flip": TT.hflip}, layers=["net.0", "net.3"], batch_size=16)
    trainer = pl.Trainer(
        max_epochs=3, callbacks=[SEISCallback(monitor, every_n_epochs=2)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu",
    )  # fmt: skip
    trainer.fit(Module(), loader)
    assert sorted(set(monitor.frame["epoch"])) == [0, 2]
    assert set(monitor.frame["layer"]) == {"net.0", "net.3"}
    with pytest.raises(ValueError, match="every_n_epochs must be >= 1"):
        SEISCallback(monitor, every_n_epochs=0)
