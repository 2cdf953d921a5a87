"""The embedded PyTorch demo, on a short run: the report's files, schema and sanity."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from seis_sklearn.adapters.torch import demo  # noqa: E402

from seis_sklearn.report import COLUMNS  # noqa: E402


def test_short_demo_run_writes_the_report(tmp_path):
    lines = []
    table = demo.run(tmp_path, epochs=1, n_test=200, log=lines.append)
    assert (tmp_path / "layers.png").read_bytes()[:4] == b"\x89PNG"
    header = (tmp_path / "report.csv").read_text().splitlines()[0].split(",")
    assert header == [*COLUMNS, "model", "train_seconds", "test_accuracy"]
    assert set(table["model"]) == {"plain", "rotation-augmented"}
    assert len(table) == 2 * len(demo.LAYERS) * len(demo.TRANSFORMS)
    assert set(table["evaluation"]) == {"held-out"}
    assert ((table["invariance"] <= table["equivariance"]) & (table["equivariance"] <= 1)).all()
    assert table["test_accuracy"].between(0, 1).all()
    assert len(lines) == 2 and "test accuracy" in lines[0]
    text = demo.format_table(table)
    assert "rotation-augmented" in text and "block1" in text


def test_random_rotations_keep_a_centred_disc_and_change_the_image():
    x = torch.from_numpy(demo.digits_images()[0][:8])
    turned = demo.random_rotations(x, torch.Generator().manual_seed(0))
    assert turned.shape == x.shape and not torch.allclose(turned, x)
    # rotations keep (up to interpolation) the mass of a digit that sits inside the disc
    ratio = turned.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert np.all((ratio.numpy() > 0.8) & (ratio.numpy() < 1.2))


def test_cnn_shapes():
    model = demo.make_cnn()
    names = [n for n, _ in model.named_children()]
    assert names[:4] == ["block1", "block2", "block3", "block4"] and names[-1] == "head"
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
